"""Multiple-choice accuracy by the log-likelihood of each option (lm-eval-harness).

For each option the score is the summed log-probability of its continuation tokens
given the prompt; ``acc`` takes the argmax of the score and ``acc_norm`` the argmax of
the score divided by the option's length in characters (``len(choice)``, without the
leading space, as lm-eval's ``acc_norm``; not bytes) (Gao et al. 2021, "A framework
for few-shot language model evaluation").
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from evoselect_jax.train.callables import StaticPart, merge_callable, split_callable
from evoselect_jax.train.losses import token_logprobs


@flax.struct.dataclass
class MCQAOutput:
  """Scores of n examples with up to C options each.

  Attributes:
    acc: fraction of examples whose highest-likelihood option is the answer.
    acc_norm: the same with likelihoods divided by option length in characters.
    loglik: float32[n, C] summed log-probability of each option; -inf on padding options.
    pred: int32[n] argmax of ``loglik``.
    pred_norm: int32[n] argmax of ``loglik / cont_chars``.
  """

  acc: float
  acc_norm: float
  loglik: np.ndarray
  pred: np.ndarray
  pred_norm: np.ndarray

  @classmethod
  def from_loglik(
    cls, loglik: np.ndarray, answer: np.ndarray, cont_chars: np.ndarray
  ) -> MCQAOutput:
    """Predictions and accuracies from ``loglik float32[n, C]`` (-inf on padding options).

    Args:
      loglik: summed log-probability of each option.
      answer: int32[n] index of the correct option.
      cont_chars: float32[n, C] characters of each option (1 on padding options).
    """
    pred = np.argmax(loglik, axis=-1).astype(np.int32)
    pred_norm = np.argmax(loglik / cont_chars, axis=-1).astype(np.int32)
    answer = np.asarray(answer)
    return cls(
      acc=float(np.mean(pred == answer)),
      acc_norm=float(np.mean(pred_norm == answer)),
      loglik=loglik,
      pred=pred,
      pred_norm=pred_norm,
    )


@functools.partial(jax.jit, static_argnames="logits_static")
def _row_logliks(
  logits_static: StaticPart,
  logits_arrays: list,
  tokens: jax.Array,
  attention_mask: jax.Array,
  cont_mask: jax.Array,
) -> jax.Array:
  """float32[b]: summed log-probability of the ``cont_mask`` tokens of each row."""
  logits = merge_callable(logits_static, logits_arrays)(tokens, attention_mask)
  return jnp.sum(jnp.where(cont_mask, token_logprobs(logits, tokens), 0.0), axis=-1)


def mcqa_accuracy(
  logits_fn: Callable[[jax.Array, jax.Array], jax.Array],
  encoded: dict[str, np.ndarray],
  *,
  batch_size: int = 64,
) -> MCQAOutput:
  """Scores every option of every example and reports acc and acc_norm.

  The real (example, option) rows are flattened and padded to a multiple of
  ``batch_size``, so one compiled shape serves every batch. As in
  :func:`evoselect_jax.train.fit`, pass ``logits_fn`` as a partial application, e.g.
  ``functools.partial(llama.apply, config, params, lora)``, not wrapped in ``jax.jit``:
  its arrays are then traced, and new weights reuse the compiled program.

  Args:
    logits_fn: ``logits_fn(tokens int32[b, T], attention_mask bool[b, T]) -> [b, T, V]``.
    encoded: the output of :func:`encode_for_scoring`.
    batch_size: rows per forward pass.

  Returns:
    An :class:`MCQAOutput`.
  """
  choice_mask = np.asarray(encoded["choice_mask"], bool)
  n, c = choice_mask.shape
  if n == 0:
    raise ValueError("mcqa_accuracy got no examples")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  rows = np.flatnonzero(choice_mask.reshape(-1))
  padded = np.pad(rows, (0, -len(rows) % batch_size))  # Padding rows repeat row 0.
  fields = [
    np.asarray(encoded[k]).reshape(n * c, -1)[padded]
    for k in ("tokens", "attention_mask", "cont_mask")
  ]
  logits_static, logits_arrays = split_callable(logits_fn)
  scores = [
    _row_logliks(logits_static, logits_arrays, *(f[i : i + batch_size] for f in fields))
    for i in range(0, len(padded), batch_size)
  ]
  loglik = np.full(n * c, -np.inf, np.float32)
  loglik[rows] = np.concatenate([np.asarray(s) for s in scores])[: len(rows)]
  return MCQAOutput.from_loglik(loglik.reshape(n, c), encoded["answer"], encoded["cont_chars"])
