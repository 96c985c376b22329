"""The selector protocol, the extras a selector may require, and the shared wrapper.

A selector factory (registered in :data:`~evoselect_jax.registry.SELECTORS`) takes its
options and returns ``select(candidates [n, d], targets [m, d], k, key, *, mask=None,
**extras) -> int32[k]``: ``k`` distinct indices of valid candidates (``mask`` True).

``extras`` is side information the harness computes only when a selector asks for it.
A selector declares what it needs in its ``requires`` attribute, a tuple of names from
:data:`EXTRAS`:

- ``losses``: float [n], each candidate's loss under the current model;
- ``candidate_embeddings``: [n, e], an embedding of each candidate;
- ``target_embeddings``: [m, e], an embedding of each target example, same ``e``.

The harness passes (at least) the required extras by name; a missing one is a
``ValueError`` naming it, an unknown name is a ``ValueError`` listing the valid ones, and
extras a selector does not require are ignored.

Every selector is a :class:`CoreSelector` built by :func:`make_selector`: the eager
checks (shapes, ``k`` against the concrete mask, required extras) and then one jitted
core with ``k`` and the options static, so pools padded to one shape never recompile.
A core has the signature ``core(candidates, targets, mask, key, *, k, **options,
**required_extras) -> int32[k]``; a core that solves OT returns ``(int32[k],
OTReport)`` instead, the report of the solve its picks start from, which
:meth:`CoreSelector.select` hands on (the harness records it in the round's metrics).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from evoselect_jax.ot import OTReport
from evoselect_jax.registry import SELECTORS

EXTRAS = ("losses", "candidate_embeddings", "target_embeddings")


class Selector(Protocol):
  """``select(candidates, targets, k, key, *, mask=None, **extras) -> int32[k]``."""

  requires: tuple[str, ...]

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


def check_extras(
  selector: str,
  requires: tuple[str, ...],
  extras: Mapping[str, Any],
  mask: jax.Array,
  m: int,
) -> dict[str, jax.Array]:
  """Validates the extras of a call and returns the required ones as arrays.

  Args:
    selector: the selector's name, for error messages.
    requires: names of the extras the selector needs.
    extras: what the caller passed.
    mask: bool [n] valid candidates; required per-candidate extras must be finite there.
    m: number of targets.

  Returns:
    ``{name: array}`` for each required extra.
  """
  unknown = sorted(set(extras) - set(EXTRAS))
  if unknown:
    raise ValueError(f"Unknown selector extras {unknown}; valid names: {', '.join(EXTRAS)}")
  missing = [name for name in requires if name not in extras]
  if missing:
    raise ValueError(
      f"Selector {selector!r} requires extras {missing} (it requires {list(requires)}); "
      "pass them as keyword arguments"
    )
  n = mask.shape[0]
  out = {name: jnp.asarray(extras[name], jnp.float32) for name in requires}
  rows = {"losses": n, "candidate_embeddings": n, "target_embeddings": m}
  for name, value in out.items():
    ndim = 1 if name == "losses" else 2
    if value.ndim != ndim or value.shape[0] != rows[name]:
      want = f"[{rows[name]}]" if ndim == 1 else f"[{rows[name]}, e]"
      raise ValueError(f"Selector extra {name} must have shape {want}, got {value.shape}")
    valid = jnp.ones((m,), bool) if name == "target_embeddings" else mask
    finite = jnp.all(jnp.isfinite(value.reshape(value.shape[0], -1)), axis=1)
    if not bool(jnp.all(finite | ~valid)):
      raise ValueError(f"Selector extra {name} has NaN or inf values at valid rows")
  if "candidate_embeddings" in out and "target_embeddings" in out:
    e_cand, e_targ = out["candidate_embeddings"].shape[1], out["target_embeddings"].shape[1]
    if e_cand != e_targ:
      raise ValueError(
        f"candidate_embeddings [n, {e_cand}] and target_embeddings [m, {e_targ}] need the "
        "same embedding size"
      )
  return out


@dataclasses.dataclass(frozen=True, eq=False)
class CoreSelector:
  """A selector: the shared eager checks, then one jitted core.

  Attributes:
    name: the registered name, for error messages.
    core: ``core(candidates, targets, mask, key, *, k, **options, **required_extras)
      -> int32[k]`` or ``(int32[k], OTReport)``, jitted with ``k`` and the options
      static.
    requires: names of the extras the core takes (see :data:`EXTRAS`).
    options: the core's static keyword options (hashable values).
    whole_pool: the selector takes every valid candidate (``all``): the harness
      passes ``k`` = the number of valid candidates instead of the budget.
  """

  name: str
  core: Callable[..., jax.Array]
  requires: tuple[str, ...]
  options: Mapping[str, Any]
  whole_pool: bool = False

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
    """Returns int32 [k] distinct indices of valid candidates (see the module doc)."""
    return self.select(candidates, targets, k, key, mask=mask, **extras)[0]

  def select(
    self,
    candidates: jax.Array,
    targets: jax.Array,
    k: int,
    key: jax.Array,
    *,
    mask: jax.Array | None = None,
    **extras: Any,
  ) -> tuple[jax.Array, OTReport | None]:
    """``(int32 [k] indices, the OTReport of its OT solve or None)``; see ``__call__``."""
    mask = check_inputs(candidates, targets, k, mask)
    required = check_extras(self.name, self.requires, extras, mask, targets.shape[0])
    out = self.core(candidates, targets, mask, key, k=int(k), **self.options, **required)
    return out if isinstance(out, tuple) else (out, None)


def make_selector(
  name: str,
  core: Callable[..., jax.Array],
  *,
  requires: tuple[str, ...] = (),
  whole_pool: bool = False,
  **options: Any,
) -> CoreSelector:
  """Builds the :class:`CoreSelector` ``name`` around ``core`` with static ``options``.

  Args:
    name: the registered name.
    core: the jitted core (signature in :class:`CoreSelector`).
    requires: names of the extras the core takes, from :data:`EXTRAS`.
    whole_pool: see :class:`CoreSelector`.
    **options: static keyword options passed to every call of ``core``.

  Returns:
    The selector.
  """
  unknown = [r for r in requires if r not in EXTRAS]
  if unknown:
    raise ValueError(f"Selector {name!r} requires unknown extras {unknown}; valid: {EXTRAS}")
  return CoreSelector(name, core, tuple(requires), dict(options), whole_pool)


def build_selector(cfg: Mapping[str, Any]) -> Selector:
  """Builds the selector ``cfg['name']`` with the other keys of ``cfg`` as its options."""
  return SELECTORS.build(cfg)
