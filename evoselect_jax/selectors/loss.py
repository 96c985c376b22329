"""``loss``: top-k candidates by their loss under the current model.

Loss-based selection keeps the examples the model finds hardest (``mode="high"``, as in
online batch selection, Loshchilov & Hutter 2015) or easiest (``mode="low"``); Marion
et al. 2023 ("When Less is More", perplexity under a reference model) compare both
ends for LLM data pruning. The loss is the per-candidate ``losses`` extra [n] the
harness computes under the current model; the features are not used.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from evoselect_jax.registry import SELECTORS
from evoselect_jax.selectors.base import Selector, make_selector

MODES = ("high", "low")


@functools.partial(jax.jit, static_argnames=("k", "mode"))
def _loss(
  candidates: jax.Array,
  targets: jax.Array,
  mask: jax.Array,
  key: jax.Array,
  *,
  k: int,
  mode: str,
  losses: jax.Array,
) -> jax.Array:
  del candidates, targets, key
  score = losses if mode == "high" else -losses
  return jax.lax.top_k(jnp.where(mask, score, -jnp.inf), k)[1].astype(jnp.int32)


@SELECTORS.register("loss")
def loss(mode: str = "high") -> Selector:
  """Builds loss-based selection.

  Args:
    mode: ``high`` keeps the k largest losses, ``low`` the k smallest (ties: lower
      index first).

  Returns:
    The selector; it requires the ``losses`` extra.
  """
  if mode not in MODES:
    raise ValueError(f"loss mode must be one of {MODES}, got {mode!r}")
  return make_selector("loss", _loss, requires=("losses",), mode=mode)
