"""Few-shot generation prompts built from target exemplars, shared by every LLM generator.

A generator shows an LLM a few labelled target examples as JSON objects and asks for
one new item in the same JSON form; :func:`evoselect_jax.data.clean.clean` then parses
and validates what comes back. The instruction is plain chat messages, so a local
model applies its own chat template and an OpenAI-compatible server applies its.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

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
