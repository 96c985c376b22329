"""Batched text generation with a KV cache: greedy, or sampling with temperature/top-k/top-p.

:func:`prefill` runs left-padded prompts into a preallocated
:class:`~evoselect_jax.models.llama.KVCache` and :func:`decode` continues with a
``lax.while_loop`` of one-token steps that ends at a given step or once every row has
ended (both jitted); :func:`generate_ids` is the two in one call.
:func:`generate_completions` wraps them for text: it tokenises already-formatted prompts
(see :func:`chat_prompt`), batches them with left padding to a few static shapes (prompt
lengths rounded up to a power of two, every batch padded to the same number of rows),
decodes in chunks, ends rows at an EOS or a stop string (checked on the text between
chunks, so a batch stops once every row has ended), and returns each new text with why
it ended; :func:`generate` returns the texts alone. Example::

  ckpt = load_checkpoint("smollm2-135m-instruct")
  prompt = chat_prompt(ckpt, [{"role": "user", "content": "Name a red planet."}])
  [text] = generate(ckpt, [prompt], max_new_tokens=32)

Sampling follows Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"
(top-p), after a top-k cut (Fan et al. 2018, "Hierarchical Neural Story Generation"), in
the order of Hugging Face's logits warpers: temperature, top-k, top-p.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from evoselect_jax.models import llama
from evoselect_jax.models.checkpoint import Checkpoint
from evoselect_jax.models.llama import LlamaConfig

# Shortest prompt bucket: a batch's prompts are padded to prompt_bucket(longest), so a
# run compiles once per (rows, bucket) pair.
MIN_BUCKET = 16
# Buckets per doubling of the prompt length: padding is at most 1/BUCKETS_PER_OCTAVE of
# the bucket, at the cost of that many compiles per octave of lengths seen.
BUCKETS_PER_OCTAVE = 4
# Halvings of the top-p threshold's bracket [0, 2): the floor is then within 2**-39 of
# the least kept probability, so the kept set is exact but for near-ties.
NUCLEUS_BISECTIONS = 40


def chat_prompt(checkpoint: Checkpoint, messages: Sequence[Mapping[str, str]]) -> str:
  """A conversation formatted by the checkpoint's chat template, ready for the reply.

  Args:
    checkpoint: a loaded checkpoint whose tokenizer has a chat template.
    messages: ``[{"role": ..., "content": ...}, ...]``.

  Returns:
    The template's text with the generation prompt (e.g. ``<|im_start|>assistant`` and
    a newline) appended; pass it to :func:`generate`.

  Raises:
    ValueError: when the tokenizer has no chat template.
  """
  if not checkpoint.has_chat_template:
    raise ValueError(
      f"The tokenizer of {checkpoint.source} has no chat template; format the prompt text "
      "yourself or load a checkpoint whose tokenizer has one (tokenizer.chat_template)"
    )
  return checkpoint.tokenizer.apply_chat_template(
    [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
  )


def sample_tokens(
  logits: jax.Array, key: jax.Array, *, temperature: float, top_p: float, top_k: int
) -> jax.Array:
  """Draws one token per row from ``softmax(logits / temperature)``, cut by top-k and top-p.

  As Hugging Face's warpers: top-k keeps every token scoring at least the k-th best
  (ties included), then top-p keeps the most likely tokens until their mass reaches
  ``top_p``. No sort over the vocabulary (slow on CPU): the top-p floor is found by
  bisection (:func:`nucleus_floor`) and the draw inverts the cumulative distribution
  with one uniform per row.

  Args:
    logits: float32[b, V].
    key: PRNG key.
    temperature: > 0; ``0`` (greedy decoding) is the caller's branch.
    top_p: nucleus mass in ``(0, 1]``; ``1`` keeps all.
    top_k: keeps the ``top_k`` best tokens; ``0`` keeps all.

  Returns:
    int32[b] token ids.
  """
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    best = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0]
    # min, not best[:, -1]: XLA CPU turns a sliced top_k into a full sort (~100x slower).
    logits = jnp.where(logits < jnp.min(best, axis=-1, keepdims=True), -jnp.inf, logits)
  probs = jax.nn.softmax(logits, axis=-1)
  if top_p < 1.0:
    probs = jnp.where(probs >= nucleus_floor(probs, top_p)[:, None], probs, 0.0)
  kept = probs > 0
  # XLA's cumsum is not sequential, so the cdf may dip by an ulp: draw below the largest
  # kept value and take the first kept token past it, never a cut one.
  cdf = jnp.cumsum(probs, axis=-1)
  total = jnp.max(jnp.where(kept, cdf, 0.0), axis=-1, keepdims=True)
  u = jax.random.uniform(key, (probs.shape[0], 1)) * total
  return jnp.argmax(kept & (cdf > u), axis=-1).astype(jnp.int32)


def nucleus_floor(probs: jax.Array, top_p: float) -> jax.Array:
  """The least probability kept by top-p: the largest ``f`` with ``sum(p[p >= f]) >= top_p``.

  Bisection on ``[0, 2)``, ``NUCLEUS_BISECTIONS`` halvings; a sort would give the same
  set up to ties and float rounding, at a far higher cost on CPU.

  Args:
    probs: float32[b, V], rows summing to 1.
    top_p: in ``(0, 1)``.

  Returns:
    float32[b]; keep ``probs >= floor``.
  """

  def halve(_, bounds):
    lo, hi = bounds  # mass(lo) >= top_p > mass(hi)
    mid = (lo + hi) / 2
    mass = jnp.sum(jnp.where(probs >= mid[:, None], probs, 0.0), axis=-1)
    enough = mass >= top_p
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

  b = probs.shape[0]
  bounds = (jnp.zeros(b, probs.dtype), jnp.full(b, 2.0, probs.dtype))
  return jax.lax.fori_loop(0, NUCLEUS_BISECTIONS, halve, bounds)[0]


class DecodeState(NamedTuple):
  """The decoding loop's carry, between :func:`prefill` and :func:`decode` calls.

  Attributes:
    step: int32[], the next column of ``out`` to write (tokens generated so far).
    token: int32[b], each row's last token.
    done: bool[b], rows that have ended (an EOS, or marked by the caller).
    out: int32[b, max_new_tokens], the new tokens; ``eos_ids[0]`` after a row ends.
    cache: the KV cache of ``t + max_new_tokens`` slots.
  """

  step: jax.Array
  token: jax.Array
  done: jax.Array
  out: jax.Array
  cache: llama.KVCache


_SAMPLING = ("eos_ids", "temperature", "top_p", "top_k")


def _pick(logits, step, key, temperature, top_p, top_k):
  """The token of decoding step ``step``: argmax, or a draw keyed by ``(key, step)``."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  step_key = jax.random.fold_in(key, step)
  return sample_tokens(logits, step_key, temperature=temperature, top_p=top_p, top_k=top_k)


def _ended(tokens, eos_ids):
  return jnp.any(tokens[:, None] == jnp.asarray(eos_ids, jnp.int32)[None, :], axis=-1)


def _prefill(
  config, params, lora, input_ids, attention_mask, max_new_tokens, eos_ids, key, **sampling
):
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  b, t = input_ids.shape
  pad = eos_ids[0] if eos_ids else 0  # Only ever written after a row ends.
  cache = llama.init_cache(config, b, t + max_new_tokens)
  logits, cache = llama.apply_with_cache(config, params, lora, input_ids, attention_mask, cache)
  token = _pick(logits, 0, key, **sampling)
  out = jnp.full((b, max_new_tokens), pad, jnp.int32).at[:, 0].set(token)
  return DecodeState(jnp.int32(1), token, _ended(token, eos_ids), out, cache)


def _decode(config, params, lora, state, until, eos_ids, key, **sampling):
  b, max_new_tokens = state.out.shape
  pad = eos_ids[0] if eos_ids else 0
  until = jnp.minimum(until, max_new_tokens)
  real = jnp.ones((b, 1), bool)

  def cond(s):
    return (s.step < until) & ~jnp.all(s.done)

  def body(s):
    logits, cache = llama.apply_with_cache(config, params, lora, s.token[:, None], real, s.cache)
    token = jnp.where(s.done, pad, _pick(logits, s.step, key, **sampling))
    out = jax.lax.dynamic_update_slice(s.out, token[:, None], (0, s.step))
    return DecodeState(s.step + 1, token, s.done | _ended(token, eos_ids), out, cache)

  return jax.lax.while_loop(cond, body, state)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", *_SAMPLING))
def prefill(
  config: LlamaConfig,
  params: dict,
  lora: dict | None,
  input_ids: jax.Array,
  attention_mask: jax.Array,
  *,
  max_new_tokens: int,
  eos_ids: tuple[int, ...],
  key: jax.Array,
  temperature: float,
  top_p: float,
  top_k: int,
) -> DecodeState:
  """Runs the prompts into a fresh cache and picks each row's first new token (jitted).

  Arguments as :func:`generate_ids`; continue with :func:`decode`.
  """
  sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k)
  return _prefill(
    config, params, lora, input_ids, attention_mask, max_new_tokens, eos_ids, key, **sampling
  )


@functools.partial(jax.jit, static_argnames=("config", *_SAMPLING))
def decode(
  config: LlamaConfig,
  params: dict,
  lora: dict | None,
  state: DecodeState,
  until: jax.Array | int,
  *,
  eos_ids: tuple[int, ...],
  key: jax.Array,
  temperature: float,
  top_p: float,
  top_k: int,
) -> DecodeState:
  """One-token steps from ``state`` until ``step == until`` or every row is done (jitted).

  ``until`` is traced (one compile for every chunk of a run) and clipped to
  ``max_new_tokens``. Step ``s`` draws with ``fold_in(key, s)`` whatever the chunking,
  so decoding in chunks gives the tokens of one :func:`generate_ids` call.
  """
  sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k)
  return _decode(config, params, lora, state, until, eos_ids, key, **sampling)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", *_SAMPLING))
def generate_ids(
  config: LlamaConfig,
  params: dict,
  lora: dict | None,
  input_ids: jax.Array,
  attention_mask: jax.Array,
  *,
  max_new_tokens: int,
  eos_ids: tuple[int, ...],
  key: jax.Array,
  temperature: float,
  top_p: float,
  top_k: int,
) -> jax.Array:
  """New tokens for a left-padded batch of prompts (jitted; shapes and options static).

  :func:`prefill` then :func:`decode` to the end in one compiled call. The cache holds
  ``t + max_new_tokens`` slots, so compiles are one per input shape and option set;
  decoding stops early once every row has ended.

  Args:
    config: the architecture.
    params: the ``params`` collection.
    lora: the ``lora`` collection, or ``None`` for the base model.
    input_ids: int32[b, t] prompts, left-padded: the last column is real in every row
      (a row of padding alone yields meaningless tokens).
    attention_mask: bool[b, t], true on real tokens.
    max_new_tokens: tokens to generate per row, >= 1.
    eos_ids: ids that end a row; empty to always generate ``max_new_tokens``.
    key: PRNG key of the sampling (unused when greedy).
    temperature: ``0`` for greedy (argmax) decoding, else the sampling temperature.
    top_p: nucleus mass when sampling; see :func:`sample_tokens`.
    top_k: top-k cut when sampling, ``0`` for none.

  Returns:
    int32[b, max_new_tokens]: each row's new tokens up to and including its first EOS,
    then ``eos_ids[0]`` to the end.
  """
  sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k)
  state = _prefill(
    config, params, lora, input_ids, attention_mask, max_new_tokens, eos_ids, key, **sampling
  )
  return _decode(config, params, lora, state, max_new_tokens, eos_ids, key, **sampling).out


def prompt_bucket(length: int) -> int:
  """The padded length of a batch whose longest prompt has ``length`` tokens.

  ``length`` rounded up to a multiple of an eighth of its next power of two (at least
  :data:`MIN_BUCKET`): above ``4 * MIN_BUCKET`` tokens, four buckets per octave, each
  less than a quarter padding. The padding costs prefill compute and, through the
  cache's slots, every decoding step's attention: the weak generator's 3-shot
  ARC-Challenge prompts (218 tokens at the median) pad to 320 or 384 here instead of
  512 for a power of two, and 192 of its records took 305 s instead of 470 s on 2 CPU
  cores.
  """
  if length < 1:
    raise ValueError(f"A prompt needs at least one token, got length {length}")
  granule = max(MIN_BUCKET, (1 << (length - 1).bit_length()) // (2 * BUCKETS_PER_OCTAVE))
  return -(-length // granule) * granule


def encode_batch(
  tokenizer: Any, prompts: Sequence[str], rows: int
) -> tuple[np.ndarray, np.ndarray]:
  """Tokenises prompts (no added special tokens) and left-pads them to a static shape.

  Args:
    tokenizer: a transformers tokenizer.
    prompts: at most ``rows`` formatted prompts, each at least one token long.
    rows: rows of the batch; rows past ``len(prompts)`` are all padding.

  Returns:
    ``(int32[rows, T] ids, bool[rows, T] mask)`` with ``T = prompt_bucket(longest)``;
    padding slots hold id 0 and are masked out.
  """
  if len(prompts) > rows:
    raise ValueError(f"{len(prompts)} prompts do not fit in a batch of {rows} rows")
  encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
  empty = [i for i, ids in enumerate(encoded) if not ids]
  if empty:
    raise ValueError(f"Prompts {empty} have no tokens; every prompt needs at least one")
  width = prompt_bucket(max(map(len, encoded)))
  ids = np.zeros((rows, width), np.int32)
  mask = np.zeros((rows, width), bool)
  for i, row in enumerate(encoded):
    ids[i, width - len(row) :], mask[i, width - len(row) :] = row, True
  return ids, mask


@dataclasses.dataclass(frozen=True)
class Completion:
  """One prompt's continuation.

  Attributes:
    text: the new text, before the first EOS and cut before the earliest stop string.
    finish: why the row ended: ``"stop"`` (a stop string), ``"eos"`` (an
      end-of-sequence token) or ``"length"`` (``max_new_tokens`` reached).
    num_tokens: tokens the row generated until it ended: its EOS or the token that
      completed the stop string included.
  """

  text: str
  finish: str
  num_tokens: int


def generate(checkpoint: Checkpoint, prompts: list[str], **options: Any) -> list[str]:
  """The text of each prompt's continuation: :func:`generate_completions`' texts.

  ``options`` are :func:`generate_completions`' keyword arguments (``max_new_tokens``,
  ``temperature``, ``stop``, ...).
  """
  return [c.text for c in generate_completions(checkpoint, prompts, **options)]


def generate_completions(
  checkpoint: Checkpoint,
  prompts: list[str],
  *,
  max_new_tokens: int,
  temperature: float = 0.0,
  top_p: float = 1.0,
  top_k: int = 0,
  stop: Sequence[str] = (),
  seed: int = 0,
  lora: dict | None = None,
  batch_size: int = 8,
  stop_check_every: int = 16,
  first: int = 0,
  on_batch: Callable[[list[Completion]], None] | None = None,
) -> list[Completion]:
  """Continues each already-formatted prompt; returns only the new text, and why it ended.

  Prompts are tokenised as they are (special tokens in the text are kept, none are
  added), batched in order with left padding, and decoded greedily or by sampling. A
  row ends at any of ``checkpoint.eos_token_ids`` (not part of the text), at a stop
  string, or after ``max_new_tokens``; its text is cut before the earliest stop string.

  Stop strings are matched on the decoded text, so they hold across token boundaries:
  the batch is decoded in chunks of ``stop_check_every`` steps (:func:`decode`), and
  between chunks every row whose text holds a stop string is marked done. A batch whose
  rows have all ended stops, so it pays for at most ``stop_check_every - 1`` steps past
  its last stop instead of running to ``max_new_tokens``. The chunking does not change
  the tokens: step ``s`` samples with ``fold_in(key, s)`` whatever the chunk.

  Args:
    checkpoint: the model and tokenizer.
    prompts: formatted prompts, e.g. from :func:`chat_prompt`.
    max_new_tokens: most tokens generated per prompt, >= 1.
    temperature: ``0`` for greedy decoding, else the sampling temperature.
    top_p: nucleus mass in ``(0, 1]`` when sampling.
    top_k: keep the ``top_k`` most likely tokens when sampling; ``0`` keeps all.
    stop: strings that end a completion; the text is cut before the first one.
    seed: seed of the sampling; the same seed, prompts and batch size give the same text.
    lora: the ``lora`` collection to decode with, or ``None`` for the base model.
    batch_size: most prompts per batch; every batch is padded to
      ``min(batch_size, len(prompts))`` rows, so the last one does not recompile.
    stop_check_every: decoding steps between two stop-string checks, >= 1 (a host
      sync each); unused without stop strings.
    first: start at this prompt, a multiple of the batch's rows: a call that stopped
      after some batches continues with the completions it would have made (each batch
      samples with ``fold_in(key, batch index)``).
    on_batch: called with each batch's completions as soon as they are decoded.

  Returns:
    One :class:`Completion` per prompt from ``first`` on, in order.
  """
  _check_options(max_new_tokens, temperature, top_p, top_k, stop, seed, batch_size)
  if isinstance(stop_check_every, bool) or not isinstance(stop_check_every, int):
    raise ValueError(f"stop_check_every must be an int >= 1, got {stop_check_every!r}")
  if stop_check_every < 1:
    raise ValueError(f"stop_check_every must be an int >= 1, got {stop_check_every!r}")
  if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
    raise TypeError("prompts must be a list of strings")
  if not prompts:
    return []
  if temperature == 0:  # Greedy ignores the sampling cuts; one compile for any of them.
    top_p, top_k = 1.0, 0
  stop = tuple(stop)
  chunk = stop_check_every if stop else max_new_tokens
  rows = min(batch_size, len(prompts))
  if isinstance(first, bool) or not isinstance(first, int) or not 0 <= first <= len(prompts):
    raise ValueError(f"first must be an int in [0, {len(prompts)}], got {first!r}")
  if first % rows and first != len(prompts):
    raise ValueError(f"first={first} must be a multiple of the batch's {rows} rows")
  key = jax.random.key(seed)
  tokenizer, eos = checkpoint.tokenizer, tuple(checkpoint.eos_token_ids)
  options = dict(eos_ids=eos, temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
  model = (checkpoint.config, checkpoint.params, lora)
  completions = []
  for start in range(first, len(prompts), rows):
    batch = prompts[start : start + rows]
    ids, mask = encode_batch(tokenizer, batch, rows)
    batch_key = jax.random.fold_in(key, start // rows)
    state = prefill(
      *model,
      jnp.asarray(ids),
      jnp.asarray(mask),
      max_new_tokens=max_new_tokens,
      key=batch_key,
      **options,
    )
    # Padding rows have nothing to decode: done from the start, so they never hold a batch.
    done = np.arange(rows) >= len(batch)
    state = state._replace(done=state.done | jnp.asarray(done))
    stopped_at = np.zeros(rows, np.int64)  # Tokens up to a row's stop string; 0: none yet.
    checked = 0  # Steps whose text has been searched for stop strings.
    while True:
      state = decode(*model, state, int(state.step) + chunk, key=batch_key, **options)
      step, done = int(state.step), np.asarray(state.done)
      if stop:
        out = np.asarray(state.out)
        for i in np.flatnonzero(~done):
          stopped_at[i] = _stop_point(tokenizer, out[i].tolist(), checked, step, stop)
        if (stopped_at > 0).any():
          done = done | (stopped_at > 0)
          state = state._replace(done=jnp.asarray(done))
      checked = step
      if step >= max_new_tokens or done.all():
        break
    out = np.asarray(state.out)[: len(batch)].tolist()
    batch_completions = [
      _completion(tokenizer, row, eos, stop, int(stopped_at[i])) for i, row in enumerate(out)
    ]
    if on_batch is not None:
      on_batch(batch_completions)
    completions += batch_completions
  return completions


def _stop_point(tokenizer: Any, ids: list[int], checked: int, step: int, stop: tuple[str, ...]):
  """The fewest tokens of ``ids[:step]`` whose text holds a stop string, else 0.

  ``ids[:checked]`` held none (the previous check), so only ``(checked, step]`` is tried.
  """
  if not any(s in tokenizer.decode(ids[:step], skip_special_tokens=False) for s in stop):
    return 0
  for n in range(checked + 1, step + 1):
    if any(s in tokenizer.decode(ids[:n], skip_special_tokens=False) for s in stop):
      return n
  return step


def _completion(
  tokenizer: Any, ids: list[int], eos: tuple[int, ...], stop: Sequence[str], stopped_at: int = 0
) -> Completion:
  """The completion of one row's new tokens ``ids`` (``stopped_at``: see :func:`_stop_point`)."""
  if stopped_at > 0:
    ids = ids[:stopped_at]
  ends = [i for i, token in enumerate(ids) if token in eos]
  text = tokenizer.decode(ids[: ends[0]] if ends else ids, skip_special_tokens=False)
  cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
  if cuts:
    if not stopped_at:  # A stop string before an EOS of the same chunk.
      stopped_at = _stop_point(tokenizer, ids, 0, ends[0] if ends else len(ids), stop)
    return Completion(text[: min(cuts)], "stop", stopped_at)
  if ends:
    return Completion(text, "eos", ends[0] + 1)
  return Completion(text, "length", len(ids))


def _check_options(
  max_new_tokens: Any,
  temperature: Any,
  top_p: Any,
  top_k: Any,
  stop: Any,
  seed: Any,
  batch_size: Any,
) -> None:
  """Raises ``ValueError`` naming the first bad option of :func:`generate`."""

  def is_int(x):
    return isinstance(x, int | np.integer) and not isinstance(x, bool)

  def is_real(x):
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)

  if not is_int(max_new_tokens) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
  if not is_real(temperature) or not temperature >= 0:
    raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature!r}")
  if not is_real(top_p) or not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
  if not is_int(top_k) or top_k < 0:
    raise ValueError(f"top_k must be an int >= 0 (0 keeps every token), got {top_k!r}")
  if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
    raise ValueError(f"stop must be a sequence of non-empty strings, got {stop!r}")
  if not is_int(seed) or seed < 0:
    raise ValueError(f"seed must be an int >= 0, got {seed!r}")
  if not is_int(batch_size) or batch_size < 1:
    raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
