"""Compatibility shims for released dependencies, in one place.

ott-jax 0.6.0 (the newest release) flattens arguments of its online geometry
(``PointCloud(batch_size=...)``) with ``is_leaf=jax.interpreters.batching.is_vmappable``.
jax 0.9 removed that function (ott-jax issue #700, fixed upstream, not released).
In the jax versions that still had it, it was true only for ``Jumble`` objects and
types registered with ``batching.register_vmappable``, both removed along with it,
so ``lambda x: False`` is the same predicate. :func:`install` adds it only where it
is missing; delete this module once an ott-jax release carries the fix.
"""

from __future__ import annotations

from jax.interpreters import batching


def _is_vmappable(x: object) -> bool:
  """Nothing is a custom vmappable type in jax >= 0.9."""
  del x
  return False


def install() -> None:
  """Installs every shim this jax needs. Idempotent."""
  if not hasattr(batching, "is_vmappable"):
    batching.is_vmappable = _is_vmappable
