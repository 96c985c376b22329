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
- ``kronecker``: ``vec(X) -> vec(P_aᵀ X P_b)`` for the input viewed as a matrix X [a, b]:
  the projection by ``kron(P_a, P_b)`` with Gaussian factors P_a [a, r_a], P_b [b, r_b]
  and ``out_dim = r_a·r_b`` (the structured projection of LoGra, Choe et al. 2024, "What
  is your data worth to GPT?"; Jin, Kolda & Ward 2019 analyse Kronecker JL maps). Two
  small matmuls, the first over the contiguous axis, so it runs at memory speed and
  stores only [a + b, r] numbers. A weight-gradient leaf [d_in, d_out] is viewed as
  itself, which is what lets :mod:`evoselect_jax.features.factored` project a linear
  layer's per-example gradient from its two factors without forming it.
- ``factored``: the ``kronecker`` projection, marked so that the loop computes it with
  :func:`~evoselect_jax.features.factored.factored_features` (from layer inputs and
  output gradients) instead of from per-example gradients; the numbers are the same.

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
  rows, values = _sjlt_arrays(key, in_dim, out_dim, nonzeros)
  return SparseProjector(rows, values, out_dim)


@functools.partial(jax.jit, static_argnames=("in_dim", "out_dim", "nonzeros"))
def _sjlt_arrays(key: jax.Array, in_dim: int, out_dim: int, nonzeros: int):
  """Rows and values of :func:`sjlt`, one jitted program (one compilation per shape)."""
  block = out_dim // nonzeros
  row_key, sign_key = jax.random.split(key)
  offsets = jax.random.randint(row_key, (in_dim, nonzeros), 0, block, jnp.int32)
  rows = offsets + block * jnp.arange(nonzeros, dtype=jnp.int32)
  signs = jax.random.rademacher(sign_key, (in_dim, nonzeros), jnp.float32)
  return rows, signs * (1.0 / math.sqrt(nonzeros))


def _default_split(in_dim: int) -> tuple[int, int]:
  """``(a, b)``, ``a·b = in_dim``, with ``b`` the smallest divisor ``>= sqrt(in_dim)``."""
  b = next(d for d in range(math.isqrt(in_dim), in_dim + 1) if in_dim % d == 0 and d * d >= in_dim)
  return in_dim // b, b


def _default_out_shape(a: int, b: int, out_dim: int) -> tuple[int, int]:
  """``(r_a, r_b)``, ``r_a·r_b = out_dim``: as square as ``out_dim`` allows, ``r_a <= a``.

  A vector (``a = 1``) gets ``(1, out_dim)``: a plain dense Gaussian projection.
  """
  divisors = [d for d in range(1, out_dim + 1) if out_dim % d == 0]
  r_a = max(d for d in divisors if d * d <= out_dim and d <= a)
  return r_a, out_dim // r_a


@struct.dataclass
class KroneckerProjector:
  """``x -> vec(leftᵀ X right)``, X = ``x.reshape(a, b)``: the matrix ``kron(left, right)``.

  Attributes:
    left: [a, r_a] float32.
    right: [b, r_b] float32.
  """

  left: jax.Array
  right: jax.Array

  @property
  def in_shape(self) -> tuple[int, int]:
    """``(a, b)``, the matrix view of an input row."""
    return self.left.shape[0], self.right.shape[0]

  @property
  def out_shape(self) -> tuple[int, int]:
    """``(r_a, r_b)``, the matrix view of an output row."""
    return self.left.shape[1], self.right.shape[1]

  @property
  def in_dim(self) -> int:
    """Input dimension ``a·b``."""
    return math.prod(self.in_shape)

  @property
  def out_dim(self) -> int:
    """Output dimension ``r_a·r_b``."""
    return math.prod(self.out_shape)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Projects ``x`` [n, a·b] to [n, r_a·r_b] in float32.

    The contiguous axis b is contracted first ([n·a, b] @ [b, r_b], a streaming matmul),
    then a ([n, a, r_b] with [a, r_a]).
    """
    _check_input(x, self.in_dim)
    (a, b), (r_a, r_b) = self.in_shape, self.out_shape
    n = x.shape[0]
    y = (x.astype(self.right.dtype).reshape(n * a, b) @ self.right).reshape(n, a, r_b)
    return jnp.einsum("nas,ar->nrs", y, self.left).reshape(n, r_a * r_b)


def _kronecker(
  in_dim: int,
  out_dim: int,
  key: jax.Array,
  in_shape: tuple[int, ...] | None,
  out_shape: tuple[int, int] | None,
) -> KroneckerProjector:
  _check_dims(in_dim, out_dim)
  if in_shape is None:
    a, b = _default_split(in_dim)
  else:
    in_shape = tuple(int(s) for s in in_shape)
    if math.prod(in_shape) != in_dim:
      raise ValueError(
        f"kronecker in_shape={in_shape} has {math.prod(in_shape)} entries, not in_dim={in_dim}"
      )
    # A leaf's last axis is b, the rest is a; a vector or scalar is (1, size).
    a, b = (math.prod(in_shape[:-1]), in_shape[-1]) if in_shape else (1, 1)
  if out_shape is None:
    r_a, r_b = _default_out_shape(a, b, out_dim)
  else:
    r_a, r_b = (int(r) for r in out_shape)
    if r_a < 1 or r_b < 1 or r_a * r_b != out_dim:
      raise ValueError(
        f"kronecker out_shape={tuple(out_shape)} must be two positive ints with product "
        f"out_dim={out_dim}"
      )
  left_key, right_key = jax.random.split(key)
  if a == 1 and r_a == 1:  # a vector: no left factor, a dense Gaussian on the right
    left = jnp.ones((1, 1), jnp.float32)
  else:
    left = _gaussian_matrix(left_key, a, r_a)
  return KroneckerProjector(left, _gaussian_matrix(right_key, b, r_b))


@PROJECTORS.register("kronecker")
def kronecker(
  in_dim: int,
  out_dim: int,
  key: jax.Array,
  in_shape: tuple[int, ...] | None = None,
  out_shape: tuple[int, int] | None = None,
) -> KroneckerProjector:
  """Kronecker-structured Gaussian projection ``kron(P_a, P_b)`` (LoGra, Choe et al. 2024).

  P_a [a, r_a] has N(0, 1/r_a) entries and P_b [b, r_b] N(0, 1/r_b), so E‖Px‖² = ‖x‖².

  Args:
    in_dim: input dimension.
    out_dim: output dimension ``r_a·r_b``.
    key: PRNG key; P_a and P_b are drawn from its two halves.
    in_shape: the input viewed as a tensor of this shape (``make_tree_projector`` passes
      the leaf's shape): the last axis is b, the others are flattened into a; a vector is
      ``(1, size)`` and is projected by a dense Gaussian P_b [size, out_dim]. Default:
      ``a·b = in_dim`` with b the smallest divisor of ``in_dim`` at least its square root.
    out_shape: ``(r_a, r_b)``; default as square as ``out_dim`` allows with ``r_a <= a``.

  Returns:
    The projector; memory [a, r_a] + [b, r_b].
  """
  return _kronecker(in_dim, out_dim, key, in_shape, out_shape)


@PROJECTORS.register("factored")
def factored(
  in_dim: int,
  out_dim: int,
  key: jax.Array,
  in_shape: tuple[int, ...] | None = None,
  out_shape: tuple[int, int] | None = None,
) -> KroneckerProjector:
  """The ``kronecker`` projection, computed by the loop from factors; see the module docstring."""
  return _kronecker(in_dim, out_dim, key, in_shape, out_shape)


# Kinds built per leaf with the leaf's shape (``in_shape``) by make_tree_projector, and the
# kind whose TreeProjector is marked ``factored``.
kronecker.takes_leaf_shape = True
factored.takes_leaf_shape = True
factored.factored = True


def make_projector(name: str, in_dim: int, out_dim: int, key: jax.Array, **options: Any) -> Any:
  """Builds the projector ``name`` ([n, in_dim] -> [n, out_dim]) from ``key``.

  Args:
    name: a name registered in ``PROJECTORS``: ``gaussian``, ``rademacher``, ``sjlt``,
      ``kronecker``, ``factored``.
    in_dim: input dimension.
    out_dim: output dimension.
    key: PRNG key; the same key gives the same projection.
    **options: the kind's own options (``sjlt``: ``nonzeros``; ``kronecker``: ``in_shape``,
      ``out_shape``).

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
    factored: built by the ``factored`` kind: the same map as ``kronecker``, which the loop
      computes from layer factors (:mod:`evoselect_jax.features.factored`).
  """

  projectors: tuple[Any, ...]
  treedef: Any = struct.field(pytree_node=False)
  leaf_shapes: tuple[tuple[int, ...], ...] = struct.field(pytree_node=False)
  factored: bool = struct.field(pytree_node=False, default=False)

  @property
  def out_dim(self) -> int:
    """Output dimension."""
    return self.projectors[0].out_dim

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
  leaf.size, out_dim, jax.random.fold_in(key, l))`` (``kronecker`` and ``factored`` also
  get ``in_shape=leaf.shape``); summing the leaves' projections equals projecting the
  concatenation of the flattened leaves with the stacked matrix.

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
  factory = PROJECTORS.get(name)
  shaped = getattr(factory, "takes_leaf_shape", False)
  shapes = tuple(tuple(leaf.shape) for leaf in leaves)

  projectors = tuple(
    make_projector(
      name,
      math.prod(shape),
      out_dim,
      jax.random.fold_in(key, i),
      **({"in_shape": shape} if shaped else {}),
      **options,
    )
    for i, shape in enumerate(shapes)
  )
  return TreeProjector(projectors, treedef, shapes, getattr(factory, "factored", False))
