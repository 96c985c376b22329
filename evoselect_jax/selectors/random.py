"""``random``: k valid candidates uniformly at random, without replacement."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from evoselect_jax.registry import SELECTORS
from evoselect_jax.selectors.base import Selector, make_selector


@functools.partial(jax.jit, static_argnames=("k",))
def _random(
  candidates: jax.Array, targets: jax.Array, mask: jax.Array, key: jax.Array, *, k: int
) -> jax.Array:
  """Gumbel top-k over the valid candidates: a uniform k-subset, in random order."""
  del candidates, targets
  scores = jnp.where(mask, jax.random.gumbel(key, mask.shape), -jnp.inf)
  return jax.lax.top_k(scores, k)[1].astype(jnp.int32)


@SELECTORS.register("random")
def random() -> Selector:
  """Builds the uniform random baseline."""
  return make_selector("random", _random)
