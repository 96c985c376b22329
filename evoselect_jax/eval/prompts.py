r"""Zero- and few-shot MCQA prompts and their token arrays, in the lm-eval-harness ARC format.

A prompt is ``"Question: {question}\nAnswer:"`` (after an optional context line), and
each option is scored as the continuation ``" " + choice`` (Gao et al. 2021, "A
framework for few-shot language model evaluation", the ``arc_challenge`` task). A
k-shot prompt puts k exemplars first, each rendered as its own prompt followed by its
correct continuation, every one followed by a blank line (lm-eval's
``fewshot_delimiter``). Prompt and continuation are encoded separately and concatenated,
so the continuation's tokens are exactly the tokens of ``" " + choice``. lm-eval >= 0.4
instead encodes ``prompt + continuation`` whole and splits it at the prompt's length; on
the eight benchmarks of :mod:`evoselect_jax.data.benchmarks` with the SmolLM2 tokenizer
the two agree on every option (the prompt ends in ``":"``, and the pre-tokenizer splits
before the continuation's leading space).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from evoselect_jax.types import MCQExample


class Tokenizer(Protocol):
  """What encoding needs from a tokenizer.

  ``encode`` must not add special tokens: the bos token is added here when ``bos_id``
  is not ``None``.
  """

  pad_id: int
  bos_id: int | None

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text``."""
    ...


FEWSHOT_DELIMITER = "\n\n"


def format_prompt(example: MCQExample, exemplars: Sequence[MCQExample] = ()) -> str:
  r"""``"{context}\nQuestion: {question}\nAnswer:"``; no context line when it is None.

  Each of ``exemplars`` comes first as :func:`format_exemplar` followed by a blank line.
  """
  shots = "".join(format_exemplar(shot) + FEWSHOT_DELIMITER for shot in exemplars)
  prefix = "" if example.context is None else f"{example.context}\n"
  return f"{shots}{prefix}Question: {example.question}\nAnswer:"


def format_continuation(choice: str) -> str:
  """The scored text of an option: ``" " + choice``."""
  return " " + choice


def format_exemplar(example: MCQExample) -> str:
  """A solved example: its zero-shot prompt followed by its correct continuation."""
  _check_answer(example)
  return format_prompt(example) + format_continuation(example.choices[example.answer])


def sample_exemplars(
  examples: Sequence[MCQExample], pool: Sequence[MCQExample], k: int, seed: int
) -> list[tuple[MCQExample, ...]]:
  """``k`` exemplars from ``pool`` for each example, never the example itself.

  An example's exemplars depend only on ``seed``, its id and ``pool``, not on the
  other examples or their order, so a subset of a split sees the same prompts.

  Args:
    examples: the examples to prompt.
    pool: labelled candidates (e.g. the benchmark's train or dev split); an item with
      the example's id is skipped, so the pool may be the evaluated split itself.
    k: exemplars per example.
    seed: sampling seed.

  Returns:
    One tuple of ``k`` distinct pool items per example, in sampled order.
  """
  if k < 0 or k >= len(pool):
    raise ValueError(f"k={k} exemplars need 0 <= k < len(pool)={len(pool)}")
  for shot in pool:
    _check_answer(shot)
  out = []
  for ex in examples:
    rng = np.random.default_rng([seed, zlib.crc32(ex.id.encode())])
    picks = rng.choice(len(pool), size=k + 1, replace=False)  # One spare for ex itself.
    out.append(tuple(pool[i] for i in picks if pool[i].id != ex.id)[:k])
  return out


def encode_prompt(
  tokenizer: Tokenizer, example: MCQExample, exemplars: Sequence[MCQExample] = ()
) -> list[int]:
  """Token ids of the prompt: bos (when the tokenizer has ``bos_id``) + the prompt text."""
  bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
  prompt = bos + list(tokenizer.encode(format_prompt(example, exemplars)))
  if not prompt:
    raise ValueError(f"Example {example.id!r}: the prompt encodes to no tokens")
  return prompt


def encode_continuation(tokenizer: Tokenizer, example: MCQExample, choice: int) -> list[int]:
  """Token ids of option ``choice``'s continuation; raises for an empty option."""
  if not example.choices[choice]:
    raise ValueError(f"Example {example.id!r}: option {choice} is empty")
  cont = list(tokenizer.encode(format_continuation(example.choices[choice])))
  if not cont:
    raise ValueError(f"Example {example.id!r}: option {choice} encodes to no tokens")
  return cont


def _encode_pair(
  tokenizer: Tokenizer,
  example: MCQExample,
  choice: int,
  max_len: int,
  exemplars: Sequence[MCQExample] = (),
) -> tuple[list[int], int]:
  """``(ids, n_prompt)``: bos + prompt + continuation ids; the first n_prompt are context."""
  prompt = encode_prompt(tokenizer, example, exemplars)
  cont = encode_continuation(tokenizer, example, choice)
  check_pair_length(example, choice, len(prompt) + len(cont), max_len)
  return prompt + cont, len(prompt)


def check_pair_length(example: MCQExample, choice: int, length: int, max_len: int) -> None:
  """Raises if prompt + option ``choice`` (``length`` tokens) exceeds ``max_len``."""
  if length > max_len:
    raise ValueError(
      f"Example {example.id!r} option {choice} needs {length} tokens > max_len={max_len}; "
      "raise max_len or drop the example"
    )


def check_choices(example: MCQExample, max_choices: int) -> None:
  """Raises unless ``example`` has a valid answer and at most ``max_choices`` options."""
  _check_answer(example)
  if len(example.choices) > max_choices:
    raise ValueError(
      f"Example {example.id!r} has {len(example.choices)} choices > max_choices={max_choices}"
    )


def check_exemplars(
  examples: Sequence[MCQExample], exemplars: Sequence[Sequence[MCQExample]] | None
) -> Sequence[Sequence[MCQExample]]:
  """``exemplars``, or no exemplars for every example when it is ``None``; checks its length."""
  if exemplars is None:
    return [()] * len(examples)
  if len(exemplars) != len(examples):
    raise ValueError(f"Got {len(exemplars)} exemplar lists for {len(examples)} examples")
  return exemplars


def _check_answer(example: MCQExample) -> None:
  if not 0 <= example.answer < len(example.choices):
    raise ValueError(
      f"Example {example.id!r}: answer={example.answer} is not an index into its "
      f"{len(example.choices)} choices"
    )


def encode_for_training(
  tokenizer: Tokenizer, examples: Sequence[MCQExample], max_len: int
) -> dict[str, np.ndarray]:
  """Prompt + correct option, right-padded to ``max_len``; the option tokens are targets.

  Returns:
    ``tokens int32[n, T]``, ``loss_mask bool[n, T]`` (true on the continuation tokens),
    ``attention_mask bool[n, T]``, with T = ``max_len``.
  """
  n = len(examples)
  tokens = np.full((n, max_len), tokenizer.pad_id, np.int32)
  loss_mask = np.zeros((n, max_len), bool)
  attention_mask = np.zeros((n, max_len), bool)
  for i, ex in enumerate(examples):
    _check_answer(ex)
    ids, n_prompt = _encode_pair(tokenizer, ex, ex.answer, max_len)
    tokens[i, : len(ids)] = ids
    loss_mask[i, n_prompt : len(ids)] = True
    attention_mask[i, : len(ids)] = True
  return {"tokens": tokens, "loss_mask": loss_mask, "attention_mask": attention_mask}


def encode_for_scoring(
  tokenizer: Tokenizer,
  examples: Sequence[MCQExample],
  max_len: int,
  max_choices: int,
  *,
  exemplars: Sequence[Sequence[MCQExample]] | None = None,
) -> dict[str, np.ndarray]:
  """Every (example, option) pair as a right-padded row, for :func:`mcqa_accuracy`.

  Args:
    tokenizer: the scoring model's tokenizer.
    examples: n labelled examples.
    max_len: T, the row length; a longer prompt + option raises.
    max_choices: C, the option slots per example.
    exemplars: ``None`` for zero-shot, else each example's few-shot exemplars (as from
      :func:`sample_exemplars`), one sequence per example.

  Returns:
    ``tokens int32[n, C, T]``, ``cont_mask bool[n, C, T]`` (the option's tokens),
    ``attention_mask bool[n, C, T]``, ``choice_mask bool[n, C]`` (false on the padding
    options of examples with fewer than C), ``answer int32[n]`` and ``cont_chars
    float32[n, C]`` (characters of each option, the acc_norm denominator; 1 on padding
    options), with C = ``max_choices`` and T = ``max_len``.
  """
  n, c = len(examples), max_choices
  tokens = np.full((n, c, max_len), tokenizer.pad_id, np.int32)
  cont_mask = np.zeros((n, c, max_len), bool)
  attention_mask = np.zeros((n, c, max_len), bool)
  choice_mask = np.zeros((n, c), bool)
  answer = np.zeros(n, np.int32)
  cont_chars = np.ones((n, c), np.float32)
  shots = check_exemplars(examples, exemplars)
  for i, ex in enumerate(examples):
    check_choices(ex, c)
    answer[i] = ex.answer
    for j, choice in enumerate(ex.choices):
      ids, n_prompt = _encode_pair(tokenizer, ex, j, max_len, shots[i])
      tokens[i, j, : len(ids)] = ids
      cont_mask[i, j, n_prompt : len(ids)] = True
      attention_mask[i, j, : len(ids)] = True
      choice_mask[i, j] = True
      # lm-eval-harness divides by len(choice), without the leading space.
      cont_chars[i, j] = len(choice)
  return {
    "tokens": tokens,
    "cont_mask": cont_mask,
    "attention_mask": attention_mask,
    "choice_mask": choice_mask,
    "answer": answer,
    "cont_chars": cont_chars,
  }
