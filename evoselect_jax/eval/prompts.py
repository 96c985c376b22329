r"""Zero-shot MCQA prompts and their token arrays, in the lm-eval-harness ARC format.

A prompt is ``"Question: {question}\nAnswer:"`` (after an optional context line), and
each option is scored as the continuation ``" " + choice`` (Gao et al. 2021, "A
framework for few-shot language model evaluation", the ``arc_challenge`` task). Prompt
and continuation are encoded separately and concatenated, so the continuation's
tokens are exactly the tokens of ``" " + choice``.
"""

from __future__ import annotations

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


def format_prompt(example: MCQExample) -> str:
  r"""``"{context}\nQuestion: {question}\nAnswer:"``; no context line when it is None."""
  prefix = "" if example.context is None else f"{example.context}\n"
  return f"{prefix}Question: {example.question}\nAnswer:"


def format_continuation(choice: str) -> str:
  """The scored text of an option: ``" " + choice``."""
  return " " + choice


def _encode_pair(
  tokenizer: Tokenizer, example: MCQExample, choice: int, max_len: int
) -> tuple[list[int], int]:
  """``(ids, n_prompt)``: bos + prompt + continuation ids; the first n_prompt are context."""
  if not example.choices[choice]:
    raise ValueError(f"Example {example.id!r}: option {choice} is empty")
  bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
  prompt = bos + list(tokenizer.encode(format_prompt(example)))
  cont = list(tokenizer.encode(format_continuation(example.choices[choice])))
  if not cont:
    raise ValueError(f"Example {example.id!r}: option {choice} encodes to no tokens")
  if len(prompt) + len(cont) > max_len:
    raise ValueError(
      f"Example {example.id!r} option {choice} needs {len(prompt) + len(cont)} tokens "
      f"> max_len={max_len}; raise max_len or drop the example"
    )
  return prompt + cont, len(prompt)


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
  tokenizer: Tokenizer, examples: Sequence[MCQExample], max_len: int, max_choices: int
) -> dict[str, np.ndarray]:
  """Every (example, option) pair as a right-padded row, for :func:`mcqa_accuracy`.

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
  for i, ex in enumerate(examples):
    _check_answer(ex)
    if len(ex.choices) > c:
      raise ValueError(f"Example {ex.id!r} has {len(ex.choices)} choices > max_choices={c}")
    answer[i] = ex.answer
    for j, choice in enumerate(ex.choices):
      ids, n_prompt = _encode_pair(tokenizer, ex, j, max_len)
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
