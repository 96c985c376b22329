"""``all``: no selection, every valid candidate (the no-selection baseline).

The harness calls it with ``k`` = the number of valid candidates (``whole_pool``), so
training sees the whole cleaned pool, whatever the budget.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from evoselect_jax.registry import SELECTORS
from evoselect_jax.selectors.base import Selector, make_selector


@functools.partial(jax.jit, static_argnames=("k",))
def _all(
  candidates: jax.Array, targets: jax.Array, mask: jax.Array, key: jax.Array, *, k: int
) -> jax.Array:
  """The first ``k`` valid indices, in pool order."""
  del candidates, targets, key
  return jnp.nonzero(mask, size=k)[0].astype(jnp.int32)


@SELECTORS.register("all")
def all_candidates() -> Selector:
  """Builds the no-selection baseline."""
  return make_selector("all", _all, whole_pool=True)
