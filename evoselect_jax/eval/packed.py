"""MCQA scoring with the prompt computed once per example: all options packed in one row.

:func:`~evoselect_jax.eval.mcqa.mcqa_accuracy` scores one ``[prompt + option]`` row per
option, so a long prompt (a LogiQA passage, a MedQA vignette, few-shot exemplars) is run
C times. Here an example is one row ``[prompt, option 1, ..., option C]``: option j's
tokens attend to the prompt and to their own earlier tokens only, and take the positions
they would have right after the prompt, so each option's log-likelihood is the one its own
``[prompt + option]`` row gives (same tokens, same RoPE positions, same visible keys). The
first token of every option is scored by the logits at the prompt's last position. Only
the positions that score an option token get logits (``logits_at`` of
:class:`~evoselect_jax.models.llama.Llama`): the last block's queries, its MLP and the
head run there only, which skips most of the head on a long prompt.

Rows are grouped by length into power-of-two buckets (at least ``min_length``) and each
bucket is run in batches of ``batch_tokens // length`` rows, the last one shrunk to the
power of two that holds the rest: a row pads to less than twice its length, a batch to
less than twice its rows, its scored positions to less than twice theirs, and a bucket
compiles a few shapes (powers of two) that every split scored with the same model
shares (Gao et al. 2021, "A framework for few-shot language model evaluation", for the
scores; packing is the prefix-sharing of batched inference servers).

The block mask and positions reach the model through a Flax method interceptor on
:class:`evoselect_jax.models.llama.Attention`, whose ``__call__(x, tables, mask, ...)``
gets them (the positions as RoPE tables) in place of the causal ones
:class:`~evoselect_jax.models.llama.Llama` builds;
a ``logits_fn`` that runs no such module is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from evoselect_jax.eval.mcqa import MCQAOutput
from evoselect_jax.eval.prompts import (
  Tokenizer,
  check_choices,
  check_exemplars,
  check_pair_length,
  encode_continuation,
  encode_prompt,
)
from evoselect_jax.models import llama
from evoselect_jax.train.callables import StaticPart, merge_callable, split_callable
from evoselect_jax.types import MCQExample

PAD_SEGMENT = -1  # ``segment`` of padding; 0 is the prompt, j + 1 is option j.


def encode_packed(
  tokenizer: Tokenizer,
  examples: Sequence[MCQExample],
  max_len: int,
  max_choices: int,
  *,
  exemplars: Sequence[Sequence[MCQExample]] | None = None,
) -> dict[str, np.ndarray]:
  """Each example as one row: bos + prompt, then every option's continuation.

  Prompt and continuations are encoded as in
  :func:`~evoselect_jax.eval.prompts.encode_for_scoring`.

  Args:
    tokenizer: the scoring model's tokenizer.
    examples: n labelled examples.
    max_len: the most tokens of a prompt + one option (as in ``encode_for_scoring``); a
      longer pair raises.
    max_choices: C, the option slots per example.
    exemplars: ``None`` for zero-shot, else each example's few-shot exemplars.

  Returns:
    ``tokens int32[n, T]`` (right-padded with ``pad_id``), ``segment int32[n, T]`` (0 on
    the prompt, j + 1 on option j, -1 on padding), ``positions int32[n, T]`` (option
    tokens continue from the prompt's end), ``logits_at int32[n, S]`` (the positions
    whose logits score an option token, in order; 0 after the row's ``num_scored``),
    ``source int32[n, T]`` (the index into ``logits_at`` of the position that scores each
    option token; 0 elsewhere), ``num_scored int32[n]``, ``length int32[n]``,
    ``choice_mask bool[n, C]``, ``answer int32[n]`` and ``cont_chars float32[n, C]``
    (characters of each option; 1 on padding options), with T the longest row and S the
    most scored positions of a row.
  """
  n, c = len(examples), max_choices
  if n == 0:
    raise ValueError("encode_packed got no examples")
  shots = check_exemplars(examples, exemplars)
  rows = []
  choice_mask = np.zeros((n, c), bool)
  answer = np.zeros(n, np.int32)
  cont_chars = np.ones((n, c), np.float32)
  for i, ex in enumerate(examples):
    check_choices(ex, c)
    answer[i] = ex.answer
    prompt = encode_prompt(tokenizer, ex, shots[i])
    conts = [encode_continuation(tokenizer, ex, j) for j in range(len(ex.choices))]
    for j, cont in enumerate(conts):
      check_pair_length(ex, j, len(prompt) + len(cont), max_len)
    rows.append((prompt, conts))
    choice_mask[i, : len(ex.choices)] = True
    # lm-eval-harness divides by len(choice) in characters, without the leading space.
    cont_chars[i, : len(ex.choices)] = [len(choice) for choice in ex.choices]
  t = max(len(p) + sum(map(len, cs)) for p, cs in rows)
  # The prompt's last position scores every option's first token; each other option
  # token is scored by the position before it.
  num_scored = np.array([1 + sum(len(cont) - 1 for cont in cs) for _, cs in rows], np.int32)
  tokens = np.full((n, t), tokenizer.pad_id, np.int32)
  segment = np.full((n, t), PAD_SEGMENT, np.int32)
  positions = np.zeros((n, t), np.int32)
  logits_at = np.zeros((n, num_scored.max()), np.int32)
  source = np.zeros((n, t), np.int32)
  length = np.zeros(n, np.int32)
  for i, (prompt, conts) in enumerate(rows):
    p = len(prompt)
    tokens[i, :p], segment[i, :p], positions[i, :p] = prompt, 0, np.arange(p)
    logits_at[i, 0], scored, start = p - 1, 1, p
    for j, cont in enumerate(conts):
      span, inner = slice(start, start + len(cont)), len(cont) - 1
      tokens[i, span], segment[i, span] = cont, j + 1
      positions[i, span] = p + np.arange(len(cont))
      logits_at[i, scored : scored + inner] = np.arange(start, start + inner)
      source[i, span] = [0, *range(scored, scored + inner)]
      scored, start = scored + inner, start + len(cont)
    length[i] = start
  return {
    "tokens": tokens,
    "segment": segment,
    "positions": positions,
    "logits_at": logits_at,
    "source": source,
    "num_scored": num_scored,
    "length": length,
    "choice_mask": choice_mask,
    "answer": answer,
    "cont_chars": cont_chars,
  }


def bucket_lengths(length: np.ndarray, min_length: int) -> np.ndarray:
  """int[n]: the power of two >= each length, at least ``min_length``."""
  return np.maximum(min_length, _next_power_of_two(np.asarray(length)))


def _next_power_of_two(x: np.ndarray | int) -> np.ndarray:
  """The smallest power of two >= x (1 for x <= 1), elementwise."""
  return (2 ** np.ceil(np.log2(np.maximum(x, 1)))).astype(int)


def _packed_attention(positions: jax.Array, mask: jax.Array, calls: list[str]):
  """A Flax interceptor that gives every Attention call ``positions`` and ``mask``."""

  def interceptor(next_fun, args, kwargs, context):
    if not (isinstance(context.module, llama.Attention) and context.method_name == "__call__"):
      return next_fun(*args, **kwargs)
    if len(args) < 3:
      raise TypeError(
        f"Attention.__call__ got {len(args)} positional arguments; packed scoring expects "
        "(x, rope tables, mask, ...)"
      )
    calls.append(context.module.name)
    inv_freq = context.module.config.rope_inv_freq()
    tables = llama.rotary(positions, inv_freq, positions.shape[1])  # positions < t
    return next_fun(args[0], tables, mask, *args[3:], **kwargs)

  return interceptor


@functools.partial(jax.jit, static_argnames=("logits_static", "num_choices"))
def _packed_logliks(
  logits_static: StaticPart,
  logits_arrays: list,
  tokens: jax.Array,
  segment: jax.Array,
  positions: jax.Array,
  logits_at: jax.Array,
  source: jax.Array,
  num_choices: int,
) -> jax.Array:
  """float32[b, C]: summed log-probability of each option of each packed row."""
  t = tokens.shape[1]
  real = segment != PAD_SEGMENT
  visible = (segment[:, :, None] == segment[:, None, :]) | (segment[:, None, :] == 0)
  mask = jnp.tril(jnp.ones((t, t), bool))[None] & visible & real[:, None, :]  # [b, q, k]
  calls: list[str] = []
  with nn.intercept_methods(_packed_attention(positions, mask, calls)):
    logits_fn = merge_callable(logits_static, logits_arrays)
    logits = logits_fn(tokens, real, logits_at=logits_at)  # [b, s, V]
  if not calls:
    raise ValueError(
      "packed scoring needs a logits_fn that runs evoselect_jax.models.llama.Attention "
      "(e.g. functools.partial(llama.apply, config, params, lora)), not wrapped in jax.jit"
    )
  rows = jnp.arange(tokens.shape[0])[:, None]
  lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)  # [b, s]
  logp = logits[rows, source, tokens].astype(jnp.float32) - lse[rows, source]  # [b, t]
  option = segment[..., None] == jnp.arange(1, num_choices + 1)  # [b, t, C]
  return jnp.sum(jnp.where(option, logp[..., None], 0.0), axis=1)


def packed_mcqa_accuracy(
  logits_fn: Callable[..., jax.Array],
  encoded: dict[str, np.ndarray],
  *,
  batch_tokens: int = 2048,
  min_length: int = 64,
) -> MCQAOutput:
  """Scores every option of every packed example and reports acc and acc_norm.

  Args:
    logits_fn: ``logits_fn(tokens int32[b, T], attention_mask bool[b, T], logits_at=
      int32[b, S]) -> [b, S, V]`` running :class:`~evoselect_jax.models.llama.Llama`, as a
      partial application of :func:`evoselect_jax.models.llama.apply` (not wrapped in
      ``jax.jit``: its arrays are traced, so new weights reuse the compiled programs).
    encoded: the output of :func:`encode_packed`.
    batch_tokens: tokens per forward pass (rows x bucket length); a bucket longer than
      this runs one row at a time.
    min_length: the shortest bucket.

  Returns:
    An :class:`~evoselect_jax.eval.mcqa.MCQAOutput`, as from
    :func:`~evoselect_jax.eval.mcqa.mcqa_accuracy` on the same examples.
  """
  if batch_tokens < 1 or min_length < 1:
    raise ValueError(f"batch_tokens={batch_tokens} and min_length={min_length} must be >= 1")
  choice_mask = np.asarray(encoded["choice_mask"], bool)
  n, c = choice_mask.shape
  buckets = bucket_lengths(encoded["length"], min_length)
  logits_static, logits_arrays = split_callable(logits_fn)
  loglik = np.zeros((n, c), np.float32)
  for length in np.unique(buckets):
    rows = np.flatnonzero(buckets == length)
    scored = int(_next_power_of_two(np.asarray(encoded["num_scored"])[rows].max()))
    fields = [
      _pad_columns(np.asarray(encoded[k])[rows], width, fill)
      for k, width, fill in (
        ("tokens", length, 0),
        ("segment", length, PAD_SEGMENT),
        ("positions", length, 0),
        ("logits_at", scored, 0),
        ("source", length, 0),
      )
    ]
    scores = [
      _packed_logliks(logits_static, logits_arrays, *(f[batch] for f in fields), num_choices=c)
      for batch in _batches(len(rows), max(1, batch_tokens // length))
    ]
    loglik[rows] = np.concatenate([np.asarray(s) for s in scores])[: len(rows)]
  loglik[~choice_mask] = -np.inf
  return MCQAOutput.from_loglik(loglik, encoded["answer"], encoded["cont_chars"])


def _batches(n: int, size: int) -> list[np.ndarray]:
  """Row indices of batches of ``size`` rows, then one of the power of two that holds the rest.

  The last batch (at most ``size`` rows) repeats row n - 1 as padding.
  """
  starts = range(0, n - n % size, size)
  full = [np.arange(start, start + size) for start in starts]
  rest = n % size
  if not rest:
    return full
  tail_size = min(size, _next_power_of_two(rest))
  tail = np.minimum(np.arange(n - rest, n - rest + tail_size), n - 1)
  return [*full, tail]


def _pad_columns(x: np.ndarray, length: int, fill: int) -> np.ndarray:
  """``x [b, T]`` cut or right-padded with ``fill`` to ``[b, length]``."""
  if x.shape[1] >= length:
    return x[:, :length]
  return np.pad(x, ((0, 0), (0, length - x.shape[1])), constant_values=fill)
