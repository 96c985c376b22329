"""Geometries for the fast Sinkhorn paths: the cost computed once, a stabilised kernel.

ott-jax's ``PointCloud`` derives the [n, m] cost from the points inside the Sinkhorn
loop (as written, in every update) and its log-domain updates take an ``exp`` per cost
entry; its stored-kernel ``Geometry`` raises the kernel to the power ``epsilon / eps``
(an elementwise ``pow`` over [n, m]) and multiplies by ``kernel.T`` (on XLA:CPU a
transposed copy, ~10x the product's time at 50k x 1k) in every matrix-vector product.
On CPU these dominate a solve. Here:

- :func:`dense_cost`: the [n, m] cost of a point cloud in one matrix product (``cosine``:
  ``1 - cos``; ``sqeuclidean``), computed once per solve.
- :class:`KernelGeometry`: an ott-jax ``Geometry`` holding the row-stabilised kernel
  ``K~_ij = exp(-(C_ij - r_i) / eps)`` with ``r_i = min_j C_ij``, whose products are plain
  ``K~ v`` and ``u K~`` (Schmitzer 2019, "absorption" of the row minimum into the
  scaling). Every row of ``K~`` has a largest entry of 1, so no row underflows; a
  column underflows when its target is far (more than about ``87 eps`` in cost beyond
  each candidate's nearest target) from every candidate, which :func:`kernel_is_safe`
  detects.
- :class:`RowBlockPointCloud`: ott-jax's online ``PointCloud`` whose kernel products
  (both directions, kernel and log domain) run over blocks of ``batch_size`` candidate
  rows: each block's [batch_size, m] cost is one matrix product, the features are read
  once per product, and memory is O(batch_size m). ott-jax's own online transpose
  product maps over target columns instead, holding [n, batch_size] cost blocks and
  reading all n features once per block.
- :class:`CostGeometry`: ott-jax's ``Geometry`` on a stored cost, whose log-domain
  products run through :func:`logsumexp`.
- :class:`ZeroSafeCosine`: ``1 - cos`` where a zero vector is at cost 1 from everything
  (ott-jax's ``Cosine`` adds a ridge to the norms instead, which biases small vectors).

The shift ``r`` changes the scalings, not the plan: with ``u~_i = u_i exp(-r_i / eps)``
the plan ``u_i K_ij v_j = u~_i K~_ij v_j``, so ``f_i = eps log u~_i + r_i``. For a
relaxed candidate marginal (``tau_a < 1``) the update ``u = (a / K v)^tau_a`` is not
invariant under the shift; it becomes so with the candidate weights
``a~_i = a_i exp(-r_i (1 - tau_a) / (eps tau_a))`` (:func:`shifted_weights`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from ott.geometry import costs, geometry, pointcloud

# Smallest largest-entry a kernel column may have for the kernel mode to be trusted: the
# float32 normal range ends at 1.2e-38, and the scalings need headroom above it.
KERNEL_FLOOR = 1e-30


def inv_norm(z: jax.Array) -> jax.Array:
  """``1 / ||z_i||`` per row [n]; 0 for zero rows (which then have cosine 0 to all)."""
  norm = jnp.linalg.norm(z, axis=-1)
  return jnp.where(norm > 0, 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0)


@jtu.register_pytree_node_class
class ZeroSafeCosine(costs.CostFn):
  """Cosine distance ``1 - <x, y> / (|x| |y|)``; a zero vector has cosine 0 to all."""

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """Cost between vectors ``x`` [d] and ``y`` [d]."""
    return 1.0 - jnp.vdot(x, y) * inv_norm(x) * inv_norm(y)

  def all_pairs(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """Costs [n, m] between rows of ``x`` [n, d] and ``y`` [m, d], one matrix product."""
    return 1.0 - (x @ y.T) * inv_norm(x)[:, None] * inv_norm(y)[None, :]


def logsumexp(x: jax.Array, axis: int) -> jax.Array:
  """``log Σ exp(x)`` along ``axis`` (0 or 1) of ``x`` [n, m], stabilised by the slice max.

  ``jax.scipy.special.logsumexp``'s formula (a slice all ``-inf`` gives ``-inf``), with
  the row sums (``axis=1``) taken by a product with a vector of ones: on XLA:CPU (jax
  0.10.2) a row sum fused with the elementwise ops after it, as the Sinkhorn updates
  have, ran 4-5x slower than the same sum alone (100k x 500: 97 against 20 ms), which
  made one lse iteration 175 ms against 124 ms this way (in cache, at 20k x 1k, this way
  is 20-25% slower). Column sums do not fuse so.
  """
  peak = jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
  peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
  e = jnp.exp(x - peak)
  if axis == 1:
    total = jnp.dot(e, jnp.ones(x.shape[1], x.dtype), precision=jax.lax.Precision.HIGHEST)
  else:
    total = jnp.sum(e, axis=0)
  return jnp.log(total) + jnp.squeeze(peak, axis)


def _lse_output(
  res: jax.Array, f: jax.Array, g: jax.Array, axis: int
) -> tuple[jax.Array, jax.Array]:
  """``apply_lse_kernel``'s output as ott-jax's: ``res`` less ``f`` (``axis=1``) or ``g``, signs."""
  remove = f if axis == 1 else g
  return res - jnp.where(jnp.isfinite(remove), remove, 0), jnp.ones_like(res)


def _over_row_blocks(
  n: int,
  size: int,
  block_fn,
  carry,
):
  """Folds ``block_fn(start, rows, carry) -> carry`` over row blocks ``[start, start+rows)``.

  Full blocks of ``size`` rows run in a ``fori_loop`` (``start`` traced, ``rows`` static),
  the remainder (if any) once after it; slices are ``dynamic_slice``, never a copy of
  the features.
  """
  full = n // size
  if full:
    carry = jax.lax.fori_loop(0, full, lambda i, c: block_fn(i * size, size, c), carry)
  if n % size:
    carry = block_fn(full * size, n % size, carry)
  return carry


@jtu.register_pytree_node_class
class RowBlockPointCloud(pointcloud.PointCloud):
  """A ``PointCloud`` whose online kernel products run over candidate-row blocks.

  With ``batch_size=None`` it is ott-jax's ``PointCloud``. With a ``batch_size``, the
  Sinkhorn products (``apply_kernel``; ``apply_lse_kernel`` without ``vec``) take
  ``batch_size`` rows of ``x`` at a time: ``K v`` block by block, ``u^T K`` and the
  column log-sum-exp accumulated over blocks. Other methods are ott-jax's.
  """

  def _rows(self) -> int:
    return min(self.x.shape[0], self._batch_size)

  def _cost_block(self, start: jax.Array | int, rows: int) -> jax.Array:
    x = jax.lax.dynamic_slice_in_dim(self.x, start, rows)
    return self.cost_fn.all_pairs(x, self.y) * self.inv_scale_cost

  def apply_kernel(
    self, vec: jax.Array, eps: jax.Array | float | None = None, axis: int = 0
  ) -> jax.Array:
    """``K vec`` (``axis=1``, [n]) or ``vec^T K`` (``axis=0``, [m]), ``K = exp(-C/eps)``."""
    if not self.is_online:
      return super().apply_kernel(vec, eps, axis)
    eps = self.epsilon if eps is None else eps
    n, m = self.shape

    def block(start, rows, out):
      kernel = jnp.exp(-self._cost_block(start, rows) / eps)
      if axis == 1:
        return jax.lax.dynamic_update_slice_in_dim(out, kernel @ vec, start, 0)
      return out + jax.lax.dynamic_slice_in_dim(vec, start, rows) @ kernel

    out = jnp.zeros((n,) if axis == 1 else (m,), vec.dtype)
    return _over_row_blocks(n, self._rows(), block, out)

  def apply_lse_kernel(
    self,
    f: jax.Array,
    g: jax.Array,
    eps: jax.Array | float,
    vec: jax.Array | None = None,
    axis: int = 0,
  ) -> tuple[jax.Array, jax.Array]:
    """ott-jax's ``apply_lse_kernel``, by row blocks when online and ``vec`` is ``None``.

    Returns ``eps lse((f + g - C)/eps)`` along ``axis`` less ``f`` (``axis=1``) or ``g``
    (``axis=0``), and the signs (all 1).
    """
    if not self.is_online or vec is not None:
      return super().apply_lse_kernel(f, g, eps, vec, axis)
    n, m = self.shape

    def block(start, rows, out):
      f_blk = jax.lax.dynamic_slice_in_dim(f, start, rows)
      logits = (f_blk[:, None] + g[None, :] - self._cost_block(start, rows)) / eps
      if axis == 1:
        return jax.lax.dynamic_update_slice_in_dim(out, logsumexp(logits, 1), start, 0)
      return jnp.logaddexp(out, logsumexp(logits, 0))

    init = jnp.full((n,) if axis == 1 else (m,), -jnp.inf, f.dtype)
    return _lse_output(eps * _over_row_blocks(n, self._rows(), block, init), f, g, axis)


@jtu.register_pytree_node_class
class CostGeometry(geometry.Geometry):
  """ott-jax's ``Geometry`` on a stored ``cost_matrix``, log-domain products by :func:`logsumexp`.

  Only ``apply_lse_kernel`` without ``vec`` (the Sinkhorn updates) differs from
  ott-jax's, and only in how the row sums are taken.
  """

  def apply_lse_kernel(
    self,
    f: jax.Array,
    g: jax.Array,
    eps: jax.Array | float,
    vec: jax.Array | None = None,
    axis: int = 0,
  ) -> tuple[jax.Array, jax.Array]:
    """``eps lse((f + g - C)/eps)`` along ``axis`` less ``f`` (``axis=1``) or ``g``, signs."""
    if vec is not None:
      return super().apply_lse_kernel(f, g, eps, vec, axis)
    res = eps * logsumexp((f[:, None] + g[None, :] - self.cost_matrix) / eps, axis)
    return _lse_output(res, f, g, axis)


def dense_cost(geom: pointcloud.PointCloud) -> jax.Array:
  """The [n, m] cost of ``geom`` (cosine or squared Euclidean) in one matrix product."""
  x, y = geom.x, geom.y
  if isinstance(geom.cost_fn, costs.SqEuclidean):
    sq = jnp.sum(x * x, axis=1)[:, None] + jnp.sum(y * y, axis=1)[None, :] - 2.0 * (x @ y.T)
    return jnp.maximum(sq, 0.0)
  return geom.cost_fn.all_pairs(x, y)


@jtu.register_pytree_node_class
class KernelGeometry(geometry.Geometry):
  """A stored, row-stabilised kernel ``K~`` [n, m] with a fixed ``epsilon``.

  Args:
    kernel: [n, m] ``exp(-(C_ij - shift_i) / epsilon)``.
    shift: [n] the row shifts ``r`` (``f = epsilon log u~ + r``).
    epsilon: the entropic regularisation the kernel was built with.
  """

  def __init__(self, kernel: jax.Array, shift: jax.Array, epsilon: jax.Array | float):
    super().__init__(kernel_matrix=kernel, epsilon=epsilon)
    self.shift = shift

  @classmethod
  def from_cost(cls, cost: jax.Array, epsilon: jax.Array | float) -> KernelGeometry:
    """Builds the stabilised kernel of ``cost`` [n, m]."""
    shift = jnp.min(cost, axis=1)
    return cls(jnp.exp((shift[:, None] - cost) / epsilon), shift, epsilon)

  def apply_kernel(
    self, vec: jax.Array, eps: jax.Array | float | None = None, axis: int = 0
  ) -> jax.Array:
    """``K~ vec`` (``axis=1``) or ``vec K~`` (``axis=0``); ``eps`` must be the geometry's."""
    del eps  # no epsilon schedule: ott-jax passes the geometry's own epsilon
    kernel = self._kernel_matrix
    return kernel @ vec if axis == 1 else vec @ kernel

  def to_potentials(self, u: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Potentials ``(f, g)`` of the original cost from scalings of ``K~``."""
    return self.potential_from_scaling(u) + self.shift, self.potential_from_scaling(v)

  def to_scalings(self, f: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Scalings of ``K~`` from potentials ``(f, g)`` of the original cost."""
    return self.scaling_from_potential(f - self.shift), self.scaling_from_potential(g)

  def uniform_scalings(self) -> tuple[jax.Array, jax.Array]:
    """Scalings of constant potentials, ott-jax's and POT's start, so the iterates match.

    ``u~_i = exp((min_k r_k - r_i) / eps)``, at least ``KERNEL_FLOOR`` (below it the
    unshifted kernel row would underflow entirely), and ``v = 1``.
    """
    u = jnp.exp((jnp.min(self.shift) - self.shift) / self.epsilon)
    m = self.shape[1]
    return jnp.maximum(u, KERNEL_FLOOR), jnp.ones((m,), u.dtype)

  def tree_flatten(self):  # noqa: D102
    return (self._kernel_matrix, self.shift, self._epsilon_init), None

  @classmethod
  def tree_unflatten(cls, aux_data, children):  # noqa: D102
    del aux_data
    return cls(*children)


def shifted_weights(a: jax.Array, shift: jax.Array, epsilon: jax.Array, tau_a: float) -> jax.Array:
  """Candidate weights under which the shifted kernel solves the same problem as ``a``."""
  if tau_a == 1.0:
    return a
  return a * jnp.exp(-shift * (1.0 - tau_a) / (epsilon * tau_a))


def kernel_is_safe(geom: KernelGeometry, b: jax.Array) -> jax.Array:
  """Bool scalar: every target with mass has a kernel entry of at least ``KERNEL_FLOOR``."""
  column_max = jnp.max(geom.kernel_matrix, axis=0)
  return jnp.all((column_max >= KERNEL_FLOOR) | (b == 0))
