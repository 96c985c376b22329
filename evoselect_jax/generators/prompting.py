"""Few-shot generation prompts built from target exemplars, shared by every LLM generator.

A generator shows an LLM a few labelled target examples and asks for one new item in
the same form; :func:`evoselect_jax.data.clean.clean` then parses and validates what
comes back, in the same format. Two formats (``clean``'s :data:`~evoselect_jax.data.clean.FORMATS`):

- ``json``: chat messages (:func:`generation_messages`) that show the exemplars as JSON
  objects and ask for one more; a local model applies its own chat template and an
  OpenAI-compatible server applies its. Suits instruction-following models.
- ``text``: a plain completion prompt, no chat template (:func:`generation_text`): the
  exemplars in the benchmark's own multiple-choice layout (``Question:``, ``A. ...``,
  ``Answer: B``, a blank line after each), ending with the label that starts the next
  item, for the model to continue. A small model that cannot hold a JSON schema still
  continues a pattern; the record is :func:`item_start` plus the continuation up to the
  blank line that ends the item.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from evoselect_jax.data.clean import ANSWER_LABEL, CONTEXT_LABEL, ITEM_END, QUESTION_LABEL
from evoselect_jax.types import MCQExample

_LETTERS = "ABCDE"

SYSTEM = "You write multiple-choice questions. Answer with one JSON object and nothing else."


def exemplar_json(example: MCQExample) -> str:
  """The JSON object a generator is asked to produce, for one labelled example."""
  record = {"question": example.question, "choices": list(example.choices)}
  if example.context:
    record = {"context": example.context} | record
  return json.dumps(record | {"answer": _LETTERS[example.answer]}, ensure_ascii=False)


def generation_messages(exemplars: Sequence[MCQExample]) -> list[dict[str, str]]:
  """Chat messages asking for one new item like ``exemplars`` (few-shot).

  Args:
    exemplars: labelled target examples shown as JSON objects, at least one.

  Returns:
    ``[{"role": "system", ...}, {"role": "user", ...}]``.
  """
  if not exemplars:
    raise ValueError("A generation prompt needs at least one target exemplar")
  shots = "\n".join(exemplar_json(ex) for ex in exemplars)
  user = (
    f"Here are {len(exemplars)} examples of a multiple-choice task, one JSON object per line:\n"
    f"{shots}\n"
    "Write one new question of the same kind, with a different question, in the same JSON "
    'form: "question", "choices" (a list of options) and "answer" (the letter of the one '
    "correct option)."
  )
  return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def exemplar_text(example: MCQExample) -> str:
  """One labelled example in the ``text`` layout, with the blank line that ends it.

  Each field is one line: whitespace runs in it (newlines of a passage included) are
  written as single spaces, so ``clean(..., format="text")`` reads the item back.
  """
  lines = [f"{CONTEXT_LABEL} {_one_line(example.context)}"] if example.context else []
  lines.append(f"{QUESTION_LABEL} {_one_line(example.question)}")
  lines += [f"{_LETTERS[i]}. {_one_line(c)}" for i, c in enumerate(example.choices)]
  lines.append(f"{ANSWER_LABEL} {_LETTERS[example.answer]}")
  return "\n".join(lines) + ITEM_END


def item_start(exemplars: Sequence[MCQExample]) -> str:
  """The label a new item starts with: ``Context:`` when every exemplar has one."""
  return CONTEXT_LABEL if all(ex.context for ex in exemplars) else QUESTION_LABEL


def generation_text(exemplars: Sequence[MCQExample]) -> str:
  """A completion prompt for one new item like ``exemplars`` (few-shot, ``text`` layout).

  Args:
    exemplars: labelled target examples, at least one.

  Returns:
    The exemplars in the ``text`` layout, then :func:`item_start` for the model to
    continue (stop it at :data:`~evoselect_jax.data.clean.ITEM_END`).
  """
  if not exemplars:
    raise ValueError("A generation prompt needs at least one target exemplar")
  return "".join(exemplar_text(ex) for ex in exemplars) + item_start(exemplars)


def _one_line(text: str) -> str:
  return " ".join(text.split())


def extract_json_object(text: str) -> str:
  """The first balanced ``{...}`` span of a completion (string-aware), else ``text``.

  Chat models often wrap the object in a code fence or a sentence; this cuts it out
  without interpreting it. Text with no complete object is returned unchanged, so
  the clean step rejects it as ``not_json`` and counts it.
  """
  start = text.find("{")
  if start < 0:
    return text
  depth, in_string, escaped = 0, False, False
  for i in range(start, len(text)):
    ch = text[i]
    if in_string:
      if escaped:
        escaped = False
      elif ch == "\\":
        escaped = True
      elif ch == '"':
        in_string = False
    elif ch == '"':
      in_string = True
    elif ch == "{":
      depth += 1
    elif ch == "}":
      depth -= 1
      if depth == 0:
        return text[start : i + 1]
  return text
