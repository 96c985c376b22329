"""Next-token log-likelihoods and cross-entropy losses of a causal LM."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from evoselect_jax.models import llama


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """Log-probability of each token given the tokens before it.

  Args:
    logits: [b, t, V]; position i scores token i + 1.
    tokens: int32[b, t].

  Returns:
    float32[b, t]: entry i is ``log p(tokens[i] | tokens[:i])``; entry 0 (no context) is 0.
  """
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  return jnp.pad(picked, ((0, 0), (1, 0)))


def token_losses(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy over the target tokens of each sequence.

  Args:
    logits: [b, t, V]; position i scores token i + 1.
    tokens: int32[b, t].
    loss_mask: [b, t]; true where the token is a target (its prediction, from position
      i - 1, is scored). Position 0 cannot be a target; a mask there is ignored.

  Returns:
    float32[b]; 0 for a sequence without targets.
  """
  mask = jnp.asarray(loss_mask, jnp.float32).at[:, 0].set(0.0)
  nll = -token_logprobs(logits, tokens) * mask
  return nll.sum(-1) / jnp.maximum(mask.sum(-1), 1.0)


def real_lengths(attention_mask: np.ndarray) -> np.ndarray:
  """Each row's last real position + 1, int[b] (0 for a row without tokens)."""
  mask = np.asarray(attention_mask, bool)
  return np.where(mask.any(1), mask.shape[1] - np.argmax(mask[:, ::-1], axis=1), 0)


def padded_width(lengths: np.ndarray, t: int, min_length: int) -> np.ndarray:
  """``lengths`` rounded up to a power of two, at least ``min_length``, at most ``t``.

  The few widths that host batches are cut to (:func:`crop_padding`), each compiled once.
  """
  lengths = np.maximum(np.asarray(lengths, np.int64), 1)
  return np.minimum(t, np.maximum(min_length, 2 ** np.ceil(np.log2(lengths)).astype(np.int64)))


def crop_padding(batch: dict[str, np.ndarray], min_length: int) -> dict[str, np.ndarray]:
  """A right-padded host batch without the padding columns that no row needs.

  Every array is [b, t] (``tokens``, ``attention_mask``, ``loss_mask``, as
  :func:`~evoselect_jax.eval.prompts.encode_for_training` pads them) and is cut to the
  longest row's real tokens rounded up to a power of two, at least ``min_length`` (at
  most t, :func:`padded_width`). Causal attention never looks right, so the losses are
  unchanged (up to float rounding).
  """
  t = batch["attention_mask"].shape[1]
  shapes = {name: np.shape(x) for name, x in batch.items()}
  if any(len(shape) != 2 or shape[1] != t for shape in shapes.values()):
    raise ValueError(f"crop_padding needs [b, t] arrays with one t, got shapes {shapes}")
  width = int(padded_width(real_lengths(batch["attention_mask"]).max(initial=1), t, min_length))
  return {name: np.asarray(x)[:, :width] for name, x in batch.items()}


def num_scored(loss_mask: np.ndarray, multiple: int = 8) -> int:
  """How many positions per row :func:`batch_losses` must score for this (host) batch.

  The most targets in any row (position 0 cannot be one), rounded up to a multiple of
  ``multiple`` so that batches of similar answers share one compilation, at most t - 1.
  """
  targets = np.asarray(loss_mask, bool)[:, 1:]
  most = int(targets.sum(1).max()) if targets.size else 0
  return max(1, min(targets.shape[1], -(-most // multiple) * multiple))


def scored_positions(loss_mask: jax.Array, num: int) -> jax.Array:
  """The positions that predict each row's targets, int32[b, num], in order.

  Position i predicts token i + 1. Rows with fewer than ``num`` targets are filled with
  positions of non-targets (their logits are computed and ignored); rows with more
  would be cut, so ``num`` must be at least :func:`num_scored` of the batch.
  """
  targets = jnp.asarray(loss_mask, bool)[:, 1:]
  return jnp.argsort(~targets, axis=-1, stable=True)[:, :num].astype(jnp.int32)


def scored_losses(
  logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array, logits_at: jax.Array | None
) -> jax.Array:
  """:func:`token_losses` from the logits at ``logits_at`` only (all positions if ``None``).

  Args:
    logits: [b, s, V], the logits at ``logits_at`` ([b, t, V] if it is ``None``).
    tokens: int32[b, t].
    loss_mask: [b, t], as in :func:`token_losses`.
    logits_at: int32[b, s] from :func:`scored_positions`, or ``None``.

  Returns:
    float32[b], equal to ``token_losses`` on the full logits.
  """
  if logits_at is None:
    return token_losses(logits, tokens, loss_mask)
  targets = jnp.take_along_axis(tokens, logits_at + 1, axis=1)
  valid = jnp.take_along_axis(jnp.asarray(loss_mask, bool)[:, 1:], logits_at, axis=1)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  valid = valid.astype(jnp.float32)
  return -(picked * valid).sum(-1) / jnp.maximum(valid.sum(-1), 1.0)


def batch_losses(
  config: llama.LlamaConfig,
  params: dict,
  lora: dict | None,
  batch: dict[str, jax.Array],
  num: int | None = None,
) -> jax.Array:
  """Mean target cross-entropy of each sequence of a batch under the model, float32[b].

  Args:
    config: the model architecture.
    params: the model's ``params`` collection.
    lora: its ``lora`` collection, or ``None``.
    batch: ``tokens int32[b, t]``, ``loss_mask [b, t]``, ``attention_mask bool[b, t]``.
    num: ``None`` (logits at every position), or at least :func:`num_scored` of the
      batch: only the ``num`` positions per row that predict targets get logits
      (:func:`scored_positions`), which skips most of the head and of the last block
      when answers are short. Same losses either way, up to float rounding.
  """
  tokens, mask = batch["tokens"], batch["attention_mask"]
  at = None if num is None else scored_positions(batch["loss_mask"], num)
  logits = llama.apply(config, params, lora, tokens, mask, logits_at=at)
  return scored_losses(logits, tokens, batch["loss_mask"], at)


def example_loss(
  config: llama.LlamaConfig,
  params: dict,
  lora: dict | None,
  example: dict[str, jax.Array],
  num: int | None = None,
) -> jax.Array:
  """Loss of one example without a batch axis, for ``jax.vmap(jax.grad(...))``.

  Args:
    config: the model architecture.
    params: the model's ``params`` collection.
    lora: its ``lora`` collection, or ``None``.
    example: ``tokens int32[t]``, ``loss_mask [t]``, ``attention_mask bool[t]``.
    num: ``None`` or the positions scored, see :func:`batch_losses`.

  Returns:
    The scalar mean cross-entropy over the example's target tokens.
  """
  return batch_losses(config, params, lora, jax.tree.map(lambda x: x[None], example), num)[0]
