"""Optimisation: optimizers chosen by name, and the jitted loop that runs them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from evoselect_jax import sharding
from evoselect_jax.train.callables import StaticPart, merge_callable, split_callable

_OPTIMIZERS = {
  "adamw": lambda lr, wd: optax.adamw(lr, weight_decay=wd),
  "sgd": lambda lr, wd: optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr)),
}


# Cached: equal settings give the same (immutable) transformation, so a jitted step
# that takes it as a static argument is not recompiled when it is rebuilt each round.
@functools.cache
def make_optimizer(
  name: str = "adamw",
  *,
  learning_rate: float,
  total_steps: int,
  weight_decay: float = 0.0,
  warmup_steps: int = 0,
  grad_clip: float | None = 1.0,
) -> optax.GradientTransformation:
  """Gradient clipping, then ``name`` with a warmup + cosine learning-rate schedule.

  The rate rises linearly from 0 to ``learning_rate`` over ``warmup_steps`` and decays
  to 0 by a cosine (Loshchilov & Hutter 2017, "SGDR") at ``total_steps``.

  Args:
    name: one of ``"adamw"`` (Loshchilov & Hutter 2019) or ``"sgd"``.
    learning_rate: peak learning rate.
    total_steps: steps of the whole schedule, warmup included.
    weight_decay: decoupled weight decay.
    warmup_steps: linear warmup steps, at most ``total_steps``.
    grad_clip: maximum global gradient norm; ``None`` disables clipping.

  Returns:
    The optax transformation.
  """
  if name not in _OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {name!r}; valid names: {', '.join(sorted(_OPTIMIZERS))}")
  if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
    raise ValueError(
      f"Need total_steps >= 1 and 0 <= warmup_steps <= total_steps, got "
      f"total_steps={total_steps}, warmup_steps={warmup_steps}"
    )
  if grad_clip is not None and grad_clip <= 0:
    raise ValueError(f"grad_clip must be positive or None, got {grad_clip}")
  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps, decay_steps=total_steps
  )
  optimizer = _OPTIMIZERS[name](schedule, weight_decay)
  if grad_clip is None:
    return optimizer
  return optax.chain(optax.clip_by_global_norm(grad_clip), optimizer)


@flax.struct.dataclass
class FitOutput:
  """Result of :func:`fit`.

  Attributes:
    trainable: the trained parameters.
    opt_state: the optimizer state after the last step (to resume training).
    losses: float32[steps] numpy array, the batch loss at each step (before its update).
  """

  trainable: Any
  opt_state: Any
  losses: np.ndarray


@functools.partial(
  jax.jit, static_argnames=("loss_static", "optimizer"), donate_argnames=("trainable", "opt_state")
)
def _train_step(
  loss_static: StaticPart,
  loss_arrays: list[Any],
  optimizer: optax.GradientTransformation,
  trainable: Any,
  opt_state: Any,
  batch: dict[str, jax.Array],
) -> tuple[Any, Any, jax.Array]:
  """One optimizer step on ``batch`` (arrays with leading axis batch_size)."""
  loss_fn = merge_callable(loss_static, loss_arrays)
  loss, grads = jax.value_and_grad(loss_fn)(trainable, batch)
  updates, opt_state = optimizer.update(grads, opt_state, trainable)
  return optax.apply_updates(trainable, updates), opt_state, loss


def batch_indices(key: jax.Array, n: int, steps: int, batch_size: int) -> np.ndarray:
  """Indices of every batch: consecutive slices of a stream of shuffled epochs.

  Every example is seen once per epoch; a batch may straddle two epochs, and when
  ``n < batch_size`` it holds repeats (each example about ``batch_size / n`` times).

  Returns:
    int32[steps, batch_size].
  """
  epochs = -(-steps * batch_size // n)
  keys = jax.random.split(key, epochs)
  perms = jax.vmap(lambda k: jax.random.permutation(k, n))(keys)
  return np.asarray(perms, np.int32).reshape(-1)[: steps * batch_size].reshape(steps, batch_size)


def fit(
  loss_fn: Callable[[Any, dict[str, jax.Array]], jax.Array],
  trainable: Any,
  data: Mapping[str, np.ndarray],
  *,
  steps: int,
  batch_size: int,
  optimizer: optax.GradientTransformation,
  key: jax.Array,
  opt_state: Any = None,
  desc: str = "train",
  progress: bool = True,
  batch_sharding: jax.sharding.NamedSharding | None = None,
  crop: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
) -> FitOutput:
  """Minimises ``loss_fn`` over mini-batches of ``data`` for ``steps`` steps.

  The step is compiled once per (``loss_fn``, ``optimizer``, shapes): calling ``fit``
  again with the same objects and shapes does not recompile. Pass ``loss_fn`` as a
  partial application of a module-level function, ``functools.partial(f, config,
  frozen_params)`` (or ``jax.tree_util.Partial``): its arrays become arguments of the
  step, so new frozen arrays reuse the compiled step (a closure bakes them into the
  program as constants, and a new closure compiles anew). ``trainable`` and
  ``opt_state`` are copied once, so the caller's arrays survive the buffer donation
  of the step.

  Args:
    loss_fn: ``loss_fn(trainable, batch) -> scalar`` mean loss of a batch.
    trainable: pytree of the parameters to train.
    data: arrays with a common leading axis n (the examples); each batch is gathered
      on the host, so the compiled step depends on ``batch_size``, not on n.
    steps: number of optimizer steps.
    batch_size: examples per step (static).
    optimizer: an optax transformation, e.g. from :func:`make_optimizer`.
    key: PRNG key for the batch order.
    opt_state: state to resume from; ``None`` initialises it.
    desc: progress-bar label.
    progress: show a tqdm progress bar.
    batch_sharding: ``None`` (one device) or the sharding of each batch's leading axis
      (data parallel: XLA splits the step over its mesh and all-reduces the gradients;
      ``batch_size`` must divide by the mesh axis); the parameters and the optimizer
      state are replicated on the same mesh.
    crop: ``None``, or a host function applied to each gathered batch before it goes to
      the devices (e.g. :func:`~evoselect_jax.train.losses.crop_padding`); each batch
      shape it returns compiles the step once.

  Returns:
    A :class:`FitOutput`.
  """
  sizes = {name: np.shape(x)[0] for name, x in data.items()}
  if not sizes or len(set(sizes.values())) != 1:
    raise ValueError(f"data needs arrays with one common leading axis, got sizes {sizes}")
  n = next(iter(sizes.values()))
  if n == 0:
    raise ValueError(f"fit({desc!r}) got no examples (data sizes {sizes})")
  if steps < 1 or batch_size < 1:
    raise ValueError(f"Need steps >= 1 and batch_size >= 1, got {steps=}, {batch_size=}")
  loss_static, loss_arrays = split_callable(loss_fn)
  data = {name: np.asarray(x) for name, x in data.items()}
  trainable = jax.tree.map(jnp.array, trainable)
  opt_state = optimizer.init(trainable) if opt_state is None else jax.tree.map(jnp.array, opt_state)
  if batch_sharding is not None:
    replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
    state = sharding.put((trainable, opt_state, loss_arrays), replicated)
    trainable, opt_state, loss_arrays = state

  def put(batch: dict[str, np.ndarray]) -> Any:
    return batch if batch_sharding is None else sharding.put(batch, batch_sharding)

  crop = crop or (lambda batch: batch)

  indices = batch_indices(key, n, steps, batch_size)
  losses = np.zeros(steps, np.float32)
  with tqdm(total=steps, desc=desc, disable=not progress) as bar:

    def record(step: int, loss: jax.Array) -> None:
      losses[step] = loss
      if not np.isfinite(losses[step]):
        raise FloatingPointError(f"fit({desc!r}): loss is {losses[step]} at step {step}")
      bar.set_postfix(loss=f"{losses[step]:.4f}", refresh=False)
      bar.update()

    pending = None
    for step in range(steps):
      trainable, opt_state, loss = _train_step(
        loss_static,
        loss_arrays,
        optimizer,
        trainable,
        opt_state,
        put(crop({name: x[indices[step]] for name, x in data.items()})),
      )
      if pending is not None:  # Read the previous loss while this step runs.
        record(step - 1, pending)
      pending = loss
    record(steps - 1, pending)
  return FitOutput(trainable=trainable, opt_state=opt_state, losses=losses)
