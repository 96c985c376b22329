"""``less``: top-k candidates by gradient cosine to the target set (Xia et al. 2024).

LESS scores a candidate by its cosine similarity to the target examples' (projected,
normalised) gradients, reduced over targets by ``max`` (the paper's choice: a candidate
useful for any one target example is kept) or ``mean``. LESS's Adam preconditioning of
candidate gradients happens upstream, in
:func:`~evoselect_jax.features.adam_preconditioner`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from evoselect_jax.registry import SELECTORS
from evoselect_jax.selectors.base import Selector, check_inputs
from evoselect_jax.selectors.diversity import unit_rows

REDUCTIONS = ("max", "mean")


@functools.partial(jax.jit, static_argnames=("k", "reduce"))
def _less(
  candidates: jax.Array, targets: jax.Array, mask: jax.Array, k: int, reduce: str
) -> jax.Array:
  sim = unit_rows(candidates) @ unit_rows(targets).T
  score = jnp.max(sim, axis=1) if reduce == "max" else jnp.mean(sim, axis=1)
  return jax.lax.top_k(jnp.where(mask, score, -jnp.inf), k)[1].astype(jnp.int32)


@SELECTORS.register("less")
def less(reduce: str = "max") -> Selector:
  """Builds LESS selection.

  Args:
    reduce: ``max`` or ``mean`` cosine over the targets.

  Returns:
    The selector.
  """
  if reduce not in REDUCTIONS:
    raise ValueError(f"less reduce must be one of {REDUCTIONS}, got {reduce!r}")

  def select(
    candidates: jax.Array,
    targets: jax.Array,
    k: int,
    key: jax.Array,
    *,
    mask: jax.Array | None = None,
    **extras: Any,
  ) -> jax.Array:
    del key, extras
    mask = check_inputs(candidates, targets, k, mask)
    return _less(candidates, targets, mask, k, reduce)

  return select
