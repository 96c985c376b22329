"""``less``: top-k candidates by gradient cosine to the target set (Xia et al. 2024).

LESS scores a candidate by its cosine similarity to the target examples' (projected,
normalised) gradients, reduced over targets by ``max`` (the paper's choice: a candidate
useful for any one target example is kept) or ``mean``. LESS's Adam preconditioning of
candidate gradients happens upstream, in
:func:`~evoselect_jax.features.adam_preconditioner`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from evoselect_jax.registry import SELECTORS
from evoselect_jax.selectors.base import Selector, make_selector
from evoselect_jax.selectors.diversity import unit_rows

REDUCTIONS = ("max", "mean")


@functools.partial(jax.jit, static_argnames=("k", "reduce"))
def _less(
  candidates: jax.Array,
  targets: jax.Array,
  mask: jax.Array,
  key: jax.Array,
  *,
  k: int,
  reduce: str,
) -> jax.Array:
  del key
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
  return make_selector("less", _less, reduce=reduce)
