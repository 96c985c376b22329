"""Per-example gradients and their projected features, in bounded memory.

``jax.vmap(jax.grad(loss_fn))`` runs over micro-batches of ``micro_batch`` examples
inside ``jax.lax.map``, so at most [micro_batch, P] gradient entries are alive at once.
:func:`per_example_features` projects each micro-batch's gradients leaf by leaf inside
the mapped function, so the [n, P] gradient matrix is never materialised. These are the
proxy gradient representations of LESS (Xia et al. 2024) and EvoSelect.

Neither function is jitted here: both are pure and traceable, so wrap the caller in
``jax.jit`` (with the projector and preconditioner as arguments, they are pytrees).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct


class Features(NamedTuple):
  """Projected per-example gradient features.

  Attributes:
    features: [n, out_dim]; rows whose gradient was not finite are zeros.
    finite: bool [n], False where the example's gradient (or its projection) had a
      NaN or inf.
  """

  features: jax.Array
  finite: jax.Array


@struct.dataclass
class AdamPreconditioner:
  """LESS's Adam-preconditioned gradient (Xia et al. 2024, Eq. 2).

  The example's gradient ``g`` is folded into the optimizer's moments without bias
  correction, as LESS does: ``m = b1·mu + (1-b1)·g``, ``v = b2·nu + (1-b2)·g²``, and the
  feature is ``m / (sqrt(v) + eps)`` (optax's placement of ``eps``; LESS writes
  ``sqrt(v + eps)``).

  Attributes:
    mu: first moments, a pytree shaped like the parameters.
    nu: second moments, same structure.
    b1: first-moment decay of the optimizer.
    b2: second-moment decay of the optimizer.
    eps: the optimizer's epsilon.
  """

  mu: Any
  nu: Any
  b1: float = struct.field(pytree_node=False, default=0.9)
  b2: float = struct.field(pytree_node=False, default=0.999)
  eps: float = struct.field(pytree_node=False, default=1e-8)

  def __call__(self, grads: Any) -> Any:
    """Preconditions ``grads`` (leaves [n, *param_shape])."""

    def leaf(g: jax.Array, mu: jax.Array, nu: jax.Array) -> jax.Array:
      m = self.b1 * mu + (1.0 - self.b1) * g
      v = self.b2 * nu + (1.0 - self.b2) * jnp.square(g)
      return m / (jnp.sqrt(v) + self.eps)

    return jax.tree.map(leaf, grads, self.mu, self.nu)


def adam_preconditioner(
  opt_state: Any, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> AdamPreconditioner:
  """The :class:`AdamPreconditioner` of the one ``optax.ScaleByAdamState`` in ``opt_state``.

  Args:
    opt_state: an optax optimizer state (any nesting, e.g. ``optax.adamw(...).init(p)``).
    b1: the optimizer's ``b1``.
    b2: the optimizer's ``b2``.
    eps: the optimizer's ``eps``.

  Returns:
    The preconditioner built from the Adam moments.
  """
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  states = [s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s)]
  if len(states) != 1:
    raise ValueError(
      f"Expected exactly one optax.ScaleByAdamState in the optimizer state, found "
      f"{len(states)} in {type(opt_state).__name__}"
    )
  return AdamPreconditioner(states[0].mu, states[0].nu, b1=b1, b2=b2, eps=eps)


def _map_micro_batches(fn: Callable[[Any], Any], batch: Any, micro_batch: int) -> Any:
  """Applies ``fn`` (batched) to ``batch`` in micro-batches via ``lax.map``.

  ``batch`` (leading axis n) is padded to a multiple of the micro-batch by repeating
  example 0, mapped, and the outputs are sliced back to n rows.
  """
  if not isinstance(micro_batch, int) or micro_batch < 1:
    raise ValueError(f"micro_batch must be a positive int, got {micro_batch!r}")
  leaves = jax.tree.leaves(batch)
  if not leaves:
    raise ValueError("batch has no leaves")
  sizes = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
  if len(sizes) != 1 or None in sizes or 0 in sizes:
    raise ValueError(f"Every batch leaf needs the same leading axis n >= 1; got sizes {sizes}")
  (n,) = sizes
  size = min(micro_batch, n)
  chunks = -(-n // size)
  index = jnp.arange(chunks * size)
  index = jnp.where(index < n, index, 0)
  padded = jax.tree.map(lambda x: x[index].reshape(chunks, size, *x.shape[1:]), batch)
  out = jax.lax.map(fn, padded)
  return jax.tree.map(lambda y: y.reshape(chunks * size, *y.shape[2:])[:n], out)


def per_example_grads(
  loss_fn: Callable[[Any, Any], jax.Array], params: Any, batch: Any, *, micro_batch: int = 64
) -> Any:
  """Per-example gradients ``jax.grad(loss_fn)(params, example)`` for every example.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example (no batch axis).
    params: the parameters to differentiate.
    batch: a pytree whose leaves share a leading axis n.
    micro_batch: examples per ``vmap``; bounds memory to [micro_batch, P] gradients.

  Returns:
    A pytree shaped like ``params`` with a leading axis n.
  """
  grad_fn = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))
  return _map_micro_batches(lambda examples: grad_fn(params, examples), batch, micro_batch)


def _all_finite(tree: Any) -> jax.Array:
  """Whether every entry of each example's slice of ``tree`` is finite, bool [n]."""
  per_leaf = [
    jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1) for x in jax.tree.leaves(tree)
  ]
  return jnp.stack(per_leaf).all(axis=0)


def finish_features(z: jax.Array, finite: jax.Array, normalize: bool) -> Features:
  """Zeros the rows of ``z`` [n, k] that are not ``finite`` [n] and L2-normalises the rest."""
  z = jnp.where(finite[:, None], z, 0.0)
  if normalize:
    norm = jnp.linalg.norm(z, axis=1, keepdims=True)
    z = z / jnp.where(norm > 0, norm, 1.0)
  return Features(z, finite)


def per_example_features(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  batch: Any,
  projector: Callable[[Any], jax.Array],
  *,
  micro_batch: int = 64,
  preconditioner: Callable[[Any], Any] | None = None,
  normalize: bool = True,
) -> Features:
  """Projected (optionally preconditioned, L2-normalised) per-example gradients.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    params: the parameters to differentiate.
    batch: a pytree whose leaves share a leading axis n.
    projector: maps a gradient pytree with leaves [b, *param_shape] to [b, out_dim],
      e.g. :func:`~evoselect_jax.features.make_tree_projector`; applied per micro-batch.
    micro_batch: examples per ``vmap``.
    preconditioner: ``None`` (plain SGD gradients) or a map applied to the batched
      gradients before projection, e.g. :func:`adam_preconditioner` (LESS).
    normalize: L2-normalise each row; zero rows stay zero.

  Returns:
    :class:`Features` with ``features`` [n, out_dim] and the ``finite`` mask [n]; rows
    whose gradient or projection has a NaN/inf are zeros with ``finite`` False.
  """
  if preconditioner is not None and not callable(preconditioner):
    raise TypeError(
      f"preconditioner must be None or a callable on gradients, got "
      f"{type(preconditioner).__name__}; for an optax state pass "
      "adam_preconditioner(opt_state, b1=..., b2=..., eps=...)"
    )
  grad_fn = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))

  def featurize(examples: Any) -> Features:
    grads = grad_fn(params, examples)
    if preconditioner is not None:
      grads = preconditioner(grads)
    z = projector(grads)
    return finish_features(z, _all_finite(grads) & jnp.all(jnp.isfinite(z), axis=1), normalize)

  return _map_micro_batches(featurize, batch, micro_batch)
