"""``gotd``: top-k candidates by calibrated OT dual potential (Just et al. 2023, GOT-D).

GOT-D solves entropic OT between the candidate pool and the target set and keeps the
candidates whose calibrated potential ``f_i - mean_{j != i} f_j`` is lowest, i.e. those
to which moving mass lowers the OT distance to the target most
(:func:`~evoselect_jax.ot.ot_relevance` with ``score="potential"``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from evoselect_jax.ot import OTConfig, OTReport, make_ot_config, solve
from evoselect_jax.registry import SELECTORS
from evoselect_jax.selectors.base import Selector, make_selector


@functools.partial(jax.jit, static_argnames=("config", "k"))
def _gotd(
  candidates: jax.Array,
  targets: jax.Array,
  mask: jax.Array,
  key: jax.Array,
  *,
  k: int,
  config: OTConfig,
) -> tuple[jax.Array, OTReport]:
  del key
  b = jnp.ones((targets.shape[0],), jnp.float32)
  sol = solve(config, candidates, targets, mask.astype(jnp.float32), b)
  return jax.lax.top_k(sol.relevance, k)[1].astype(jnp.int32), sol.report()


@SELECTORS.register("gotd")
def gotd(ot: dict[str, Any] | None = None) -> Selector:
  """Builds GOT-D selection.

  Args:
    ot: options of :func:`~evoselect_jax.ot.make_ot_config` (``epsilon``, ``cost``,
      solver options, ...); ``score`` is fixed to ``potential``.

  Returns:
    The selector.
  """
  ot = dict(ot or {})
  if ot.setdefault("score", "potential") != "potential":
    raise ValueError(f"gotd ranks by the OT potential; got ot.score={ot['score']!r}")
  config = make_ot_config(**ot)
  return make_selector("gotd", _gotd, config=config)
