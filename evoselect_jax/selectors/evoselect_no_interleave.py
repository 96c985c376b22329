"""``evoselect_no_interleave``: EvoSelect's ablation with alignment, then diversification.

EvoSelect (Li et al. 2026, arXiv 2604.26170) interleaves OT alignment and
diversification (:mod:`evoselect_jax.selectors.evoselect`). This ablation runs them one
after the other: one OT solve between the valid candidates and the targets gives a
relevance per candidate (``ot.score``, GOT-D's calibrated potential by default, Just et
al. 2023), min-max normalised to [0, 1] over the valid candidates, and then maximal
marginal relevance (Carbonell & Goldstein 1998,
:func:`~evoselect_jax.selectors.diversity.mmr`) picks k greedily: ``argmax_i lam * rel_i
- (1 - lam) * max_{s in S} cos(u_i, u_s)``. No demand is tracked and OT is never
re-solved, so what is already selected changes only the redundancy term.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from evoselect_jax.ot import OTConfig, OTReport, make_ot_config, solve
from evoselect_jax.registry import SELECTORS
from evoselect_jax.selectors.base import Selector, make_selector
from evoselect_jax.selectors.diversity import min_max, mmr


@functools.partial(jax.jit, static_argnames=("k", "config", "lam"))
def _evoselect_no_interleave(
  candidates: jax.Array,
  targets: jax.Array,
  mask: jax.Array,
  key: jax.Array,
  *,
  k: int,
  config: OTConfig,
  lam: float,
) -> tuple[jax.Array, OTReport]:
  del key
  b = jnp.ones((targets.shape[0],), jnp.float32)
  sol = solve(config, candidates, targets, mask.astype(jnp.float32), b)
  return mmr(min_max(sol.relevance, mask), candidates, k, lam, mask), sol.report()


@SELECTORS.register("evoselect_no_interleave")
def evoselect_no_interleave(ot: dict[str, Any] | None = None, lam: float = 0.5) -> Selector:
  """Builds the no-interleaving ablation.

  Args:
    ot: options of :func:`~evoselect_jax.ot.make_ot_config` for the one OT solve.
    lam: MMR trade-off in [0, 1] between normalised relevance and redundancy; 1 is
      top-k relevance (GOT-D for the default ``ot.score``).

  Returns:
    The selector.
  """
  if not 0 <= lam <= 1:
    raise ValueError(f"evoselect_no_interleave lam must be in [0, 1], got {lam!r}")
  return make_selector(
    "evoselect_no_interleave",
    _evoselect_no_interleave,
    config=make_ot_config(**(ot or {})),
    lam=float(lam),
  )
