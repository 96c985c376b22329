"""Shared record types."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class MCQExample:
  """One multiple-choice item.

  Attributes:
    id: unique identifier (stable across runs for the same seed).
    question: the question text.
    choices: the option texts, 3-5 of them.
    answer: index of the correct option in ``choices``.
    context: optional passage shown before the question.
    meta: free-form provenance (e.g. skill, format, generator kind); never used
      by selection, only reported.
  """

  id: str
  question: str
  choices: tuple[str, ...]
  answer: int
  context: str | None = None
  meta: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

  def to_json(self) -> dict[str, Any]:
    """A JSON-serialisable dict."""
    return dataclasses.asdict(self) | {"choices": list(self.choices)}

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> MCQExample:
    """Inverse of :meth:`to_json`."""
    return cls(**(d | {"choices": tuple(d["choices"])}))
