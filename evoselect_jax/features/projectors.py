"""Random projections of gradients: Johnson-Lindenstrauss sketches with E‖Px‖² = ‖x‖².

A projector is a pytree with one method, ``__call__([n, in_dim]) -> [n, out_dim]`` (the
interface of TRAK's projectors, Park et al. 2023, without hidden RNG state or backend
fallbacks). Its random matrix is drawn once, from ``key``, when it is built, so two
projectors built from the same key are the same map. Being a pytree, a projector can be
passed into ``jax.jit`` as an argument instead of being baked into the program as a
constant.

A projector depends on its kind, dimensions and key only, never on the devices: its
arrays are drawn by ``jax.random`` from the key, bit for bit the same eagerly or inside
a ``jit`` whose output is sharded over any number of devices, and it is applied row by
row, so a batch sharded over the devices is projected exactly as the unsharded batch is
(tests/test_features.py checks 1, 2 and 8 devices).

Kinds (registered in :data:`~evoselect_jax.registry.PROJECTORS`):

- ``gaussian``: dense i.i.d. N(0, 1/out_dim) entries (Johnson & Lindenstrauss 1984).
- ``rademacher``: dense i.i.d. ±1/sqrt(out_dim) entries (Achlioptas 2003).
- ``sjlt``: sparse JL transform / CountSketch with ``nonzeros`` entries ±1/sqrt(nonzeros)
  per input coordinate, one in each of ``nonzeros`` blocks of output rows (the block
  construction of Kane & Nelson 2014). Stores [in_dim, nonzeros] integers instead of a
  dense [in_dim, out_dim] matrix, so it is the kind that scales to millions of
  parameters.

:func:`make_tree_projector` projects a pytree of gradients leaf by leaf: leaf ``l`` gets
its own projector keyed by ``fold_in(key, l)``, and the per-leaf projections are summed,
which equals projecting the concatenated vector with the block matrix [P_0; P_1; ...]
without ever concatenating.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from evoselect_jax.registry import PROJECTORS


def _check_dims(in_dim: int, out_dim: int) -> None:
  for name, value in (("in_dim", in_dim), ("out_dim", out_dim)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"Projector {name} must be a positive int, got {value!r}")


def _check_input(x: jax.Array, in_dim: int) -> None:
  if not hasattr(x, "ndim"):
    raise TypeError(
      f"Projector expects an [n, {in_dim}] array, got {type(x).__name__}; project "
      "pytrees of gradients with make_tree_projector"
    )
  if x.ndim != 2 or x.shape[1] != in_dim:
    raise ValueError(f"Projector expects an [n, {in_dim}] array, got shape {x.shape}")


@struct.dataclass
class DenseProjector:
  """``x @ matrix`` for a dense random ``matrix`` [in_dim, out_dim]."""

  matrix: jax.Array

  @property
  def in_dim(self) -> int:
    """Input dimension."""
    return self.matrix.shape[0]

  @property
  def out_dim(self) -> int:
    """Output dimension."""
    return self.matrix.shape[1]

  def __call__(self, x: jax.Array) -> jax.Array:
    """Projects ``x`` [n, in_dim] to [n, out_dim] in the matrix's dtype."""
    _check_input(x, self.in_dim)
    return x.astype(self.matrix.dtype) @ self.matrix


@struct.dataclass
class SparseProjector:
  """Sparse JL transform stored as the output row and sign of each nonzero.

  Attributes:
    rows: int32 [in_dim, nonzeros], the output coordinate of each nonzero.
    values: float32 [in_dim, nonzeros], each ±1/sqrt(nonzeros).
    out_dim: output dimension.
  """

  rows: jax.Array
  values: jax.Array
  out_dim: int = struct.field(pytree_node=False)

  @property
  def in_dim(self) -> int:
    """Input dimension."""
    return self.rows.shape[0]

  def __call__(self, x: jax.Array) -> jax.Array:
    """Projects ``x`` [n, in_dim] to [n, out_dim] by scatter-adding signed inputs."""
    _check_input(x, self.in_dim)
    x = x.astype(self.values.dtype)
    out = jnp.zeros((x.shape[0], self.out_dim), self.values.dtype)
    for r in range(self.rows.shape[1]):
      out = out.at[:, self.rows[:, r]].add(x * self.values[:, r])
    return out


@functools.partial(jax.jit, static_argnames=("in_dim", "out_dim"))
def _gaussian_matrix(key: jax.Array, in_dim: int, out_dim: int) -> jax.Array:
  """[in_dim, out_dim] N(0, 1/out_dim) entries.

  Always one jitted program: XLA fuses the scaling into the normal transform, so an
  eager draw and a draw inside a caller's ``jit`` would otherwise differ in the last bit.
  """
  return jax.random.normal(key, (in_dim, out_dim), jnp.float32) * (1.0 / math.sqrt(out_dim))


@PROJECTORS.register("gaussian")
def gaussian(in_dim: int, out_dim: int, key: jax.Array) -> DenseProjector:
  """Dense Gaussian projection, entries N(0, 1/out_dim); memory [in_dim, out_dim]."""
  _check_dims(in_dim, out_dim)
  return DenseProjector(_gaussian_matrix(key, in_dim, out_dim))


@PROJECTORS.register("rademacher")
def rademacher(in_dim: int, out_dim: int, key: jax.Array) -> DenseProjector:
  """Dense Rademacher projection, entries ±1/sqrt(out_dim); memory [in_dim, out_dim]."""
  _check_dims(in_dim, out_dim)
  signs = jax.random.rademacher(key, (in_dim, out_dim), jnp.float32)
  return DenseProjector(signs * (1.0 / math.sqrt(out_dim)))


@PROJECTORS.register("sjlt")
def sjlt(in_dim: int, out_dim: int, key: jax.Array, nonzeros: int = 4) -> SparseProjector:
  """Sparse JL transform (Kane & Nelson 2014, block construction).

  The output rows are split into ``nonzeros`` blocks of ``out_dim // nonzeros``; every
  input coordinate gets one nonzero ±1/sqrt(nonzeros) at a uniform row of each block,
  so each column of the [out_dim, in_dim] matrix has unit norm and E‖Px‖² = ‖x‖².

  Args:
    in_dim: input dimension.
    out_dim: output dimension, a multiple of ``nonzeros``.
    key: PRNG key.
    nonzeros: nonzeros per input coordinate (s in Kane & Nelson).

  Returns:
    The projector; memory [in_dim, nonzeros].
  """
  _check_dims(in_dim, out_dim)
  if not isinstance(nonzeros, int) or not 1 <= nonzeros <= out_dim or out_dim % nonzeros:
    raise ValueError(
      f"sjlt nonzeros must be an int in [1, out_dim={out_dim}] dividing out_dim, got {nonzeros!r}"
    )
  block = out_dim // nonzeros
  row_key, sign_key = jax.random.split(key)
  offsets = jax.random.randint(row_key, (in_dim, nonzeros), 0, block, jnp.int32)
  rows = offsets + block * jnp.arange(nonzeros, dtype=jnp.int32)
  signs = jax.random.rademacher(sign_key, (in_dim, nonzeros), jnp.float32)
  return SparseProjector(rows, signs * (1.0 / math.sqrt(nonzeros)), out_dim)


def make_projector(name: str, in_dim: int, out_dim: int, key: jax.Array, **options: Any) -> Any:
  """Builds the projector ``name`` ([n, in_dim] -> [n, out_dim]) from ``key``.

  Args:
    name: a name registered in ``PROJECTORS``: ``gaussian``, ``rademacher``, ``sjlt``.
    in_dim: input dimension.
    out_dim: output dimension.
    key: PRNG key; the same key gives the same projection.
    **options: the kind's own options (``sjlt``: ``nonzeros``).

  Returns:
    A pytree callable ``project([n, in_dim]) -> [n, out_dim]``.
  """
  return PROJECTORS.get(name)(in_dim=in_dim, out_dim=out_dim, key=key, **options)


@struct.dataclass
class TreeProjector:
  """Projects a batch of pytrees leaf by leaf and sums the per-leaf projections.

  Attributes:
    projectors: one projector per leaf, in ``jax.tree.leaves`` order.
    treedef: the structure of the projected pytrees.
    leaf_shapes: the shape of each leaf, without the batch axis.
  """

  projectors: tuple[Any, ...]
  treedef: Any = struct.field(pytree_node=False)
  leaf_shapes: tuple[tuple[int, ...], ...] = struct.field(pytree_node=False)

  def __call__(self, tree: Any) -> jax.Array:
    """Projects ``tree`` (leaves [n, *leaf_shape]) to [n, out_dim]."""
    leaves, treedef = jax.tree.flatten(tree)
    if treedef != self.treedef:
      raise ValueError(f"TreeProjector built for {self.treedef}, got {treedef}")
    out = None
    for projector, leaf, shape in zip(self.projectors, leaves, self.leaf_shapes, strict=True):
      if leaf.shape[1:] != shape:
        raise ValueError(f"Leaf of shape {leaf.shape}; expected [n, {', '.join(map(str, shape))}]")
      part = projector(leaf.reshape(leaf.shape[0], -1))
      out = part if out is None else out + part
    return out


def make_tree_projector(
  name: str, params_like: Any, out_dim: int, key: jax.Array, **options: Any
) -> TreeProjector:
  """Builds a leaf-by-leaf projector for batches of pytrees shaped like ``params_like``.

  Leaf ``l`` (in ``jax.tree.leaves`` order) is projected with ``make_projector(name,
  leaf.size, out_dim, jax.random.fold_in(key, l))``; summing the leaves' projections
  equals projecting the concatenation of the flattened leaves with the stacked matrix.

  Args:
    name: projector kind, as for :func:`make_projector`.
    params_like: a pytree of arrays (or ``jax.ShapeDtypeStruct``) giving leaf shapes.
    out_dim: output dimension.
    key: PRNG key.
    **options: the kind's own options.

  Returns:
    A :class:`TreeProjector` mapping a pytree with leaves [n, *leaf.shape] to [n, out_dim].
  """
  leaves, treedef = jax.tree.flatten(params_like)
  if not leaves:
    raise ValueError("make_tree_projector needs a pytree with at least one leaf")
  projectors = tuple(
    make_projector(name, math.prod(leaf.shape), out_dim, jax.random.fold_in(key, i), **options)
    for i, leaf in enumerate(leaves)
  )
  shapes = tuple(tuple(leaf.shape) for leaf in leaves)
  return TreeProjector(projectors, treedef, shapes)
