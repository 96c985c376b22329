"""``random``: k valid candidates uniformly at random, without replacement."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from evoselect_jax.registry import SELECTORS
from evoselect_jax.selectors.base import Selector, check_inputs


@functools.partial(jax.jit, static_argnames=("k",))
def _random(key: jax.Array, mask: jax.Array, k: int) -> jax.Array:
  """Gumbel top-k over the valid candidates: a uniform k-subset, in random order."""
  scores = jnp.where(mask, jax.random.gumbel(key, mask.shape), -jnp.inf)
  return jax.lax.top_k(scores, k)[1].astype(jnp.int32)


@SELECTORS.register("random")
def random() -> Selector:
  """Builds the uniform random baseline."""

  def select(
    candidates: jax.Array,
    targets: jax.Array,
    k: int,
    key: jax.Array,
    *,
    mask: jax.Array | None = None,
    **extras: Any,
  ) -> jax.Array:
    del extras
    mask = check_inputs(candidates, targets, k, mask)
    return _random(key, mask, k)

  return select
