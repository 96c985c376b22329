"""The selector protocol and the input checks every selector shares.

A selector factory (registered in :data:`~evoselect_jax.registry.SELECTORS`) takes its
options and returns ``select(candidates [n, d], targets [m, d], k, key, *, mask=None,
**extras) -> int32[k]``: ``k`` distinct indices of valid candidates (``mask`` True).
``extras`` carries side information a harness passes to every selector alike (e.g.
per-candidate losses); a selector ignores what it does not use. Selectors are called
eagerly (they check ``k`` against the concrete mask) and run jitted cores with ``k``
static, so pools padded to one shape never recompile.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from evoselect_jax.registry import SELECTORS


class Selector(Protocol):
  """``select(candidates, targets, k, key, *, mask=None, **extras) -> int32[k]``."""

  def __call__(
    self,
    candidates: jax.Array,
    targets: jax.Array,
    k: int,
    key: jax.Array,
    *,
    mask: jax.Array | None = None,
    **extras: Any,
  ) -> jax.Array:
    """Returns int32 [k] distinct indices of valid candidates."""
    ...


def check_inputs(
  candidates: jax.Array, targets: jax.Array, k: int, mask: jax.Array | None
) -> jax.Array:
  """Validates a selector call and returns the mask as a bool [n] array.

  Args:
    candidates: [n, d] candidate features.
    targets: [m, d] target features.
    k: budget, a positive int no larger than the number of valid candidates.
    mask: bool [n] valid candidates, or ``None`` for all.

  Returns:
    The bool [n] mask.
  """
  if candidates.ndim != 2 or targets.ndim != 2 or candidates.shape[1] != targets.shape[1]:
    raise ValueError(
      f"Selectors need candidates [n, d] and targets [m, d] with the same d; got "
      f"{candidates.shape} and {targets.shape}"
    )
  if targets.shape[0] < 1:
    raise ValueError("Selectors need at least one target")
  n = candidates.shape[0]
  if mask is None:
    mask = jnp.ones((n,), bool)
  if jnp.shape(mask) != (n,):
    raise ValueError(f"mask must have shape [{n}], got {jnp.shape(mask)}")
  mask = jnp.asarray(mask, bool)
  if not isinstance(k, int | np.integer) or k < 1:
    raise ValueError(f"k must be a positive int, got {k!r}")
  valid = int(jnp.sum(mask))
  if k > valid:
    raise ValueError(f"k={k} is larger than the number of valid candidates ({valid} of {n})")
  return mask


def build_selector(cfg: Mapping[str, Any]) -> Selector:
  """Builds the selector ``cfg['name']`` with the other keys of ``cfg`` as its options."""
  return SELECTORS.build(cfg)
