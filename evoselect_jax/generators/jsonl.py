"""A pre-generated pool as generator: raw records read from a file, one per line.

For records generated elsewhere (another machine, a paid API, an earlier run), stored
one raw record per line, e.g. as the ``openai`` generator returns them. Lines are
returned verbatim (only the line break is removed) for
:func:`~evoselect_jax.data.clean.clean` to parse: an empty or broken line is a record
that ``clean`` rejects and counts, not something skipped here.

Calls read the file in order: each :meth:`JsonlGenerator.generate` returns the next
``n`` lines, so the rounds of a run get disjoint pools, and the records of a call do
not depend on ``seed`` or the exemplars (the file fixed them). A run restarted at a
later round passes ``start`` = the lines earlier rounds used. A call for more lines
than remain raises and consumes nothing.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any

from evoselect_jax.registry import GENERATORS
from evoselect_jax.types import MCQExample


@GENERATORS.register("jsonl")
class JsonlGenerator:
  """Hands out the lines of a pool file in order.

  Attributes:
    path: the pool file.
    records: every line of the file.
    position: index of the next line to hand out.
  """

  def __init__(self, task: Any = None, *, path: str | os.PathLike, start: int = 0):
    """Reads the whole file (UTF-8).

    Args:
      task: unused: the file fixed the records.
      path: the pool file, one raw record per line (LF or CRLF line breaks; a
        final line break is optional).
      start: index of the first line to hand out (0-based).

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: the file is empty or not UTF-8, or ``start`` is out of range.
    """
    del task
    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise FileNotFoundError(f"jsonl generator: no pool file at {str(self.path)!r}")
    try:
      text = self.path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
      raise ValueError(f"jsonl generator: {self.path} is not UTF-8: {e}") from None
    lines = text.split("\n")
    if lines[-1] == "":  # The final line break ends the last record; it starts none.
      lines.pop()
    if not lines:
      raise ValueError(f"jsonl generator: {self.path} holds no records")
    self.records = [line.removesuffix("\r") for line in lines]
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= len(lines):
      raise ValueError(f"start must be an int in [0, {len(lines)}] ({self.path}), got {start!r}")
    self.position = start

  def __repr__(self) -> str:
    return f"JsonlGenerator(path={str(self.path)!r}, position={self.position}/{len(self.records)})"

  def generate(self, exemplars: Sequence[MCQExample], n: int, seed: int) -> list[str]:
    """The next ``n`` lines of the file.

    Args:
      exemplars: unused (the file fixed the records).
      n: number of records.
      seed: unused (the file fixed the records).

    Raises:
      ValueError: fewer than ``n`` lines remain; nothing is consumed.
    """
    del exemplars, seed
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
      raise ValueError(f"n must be an int >= 0, got {n!r}")
    left = len(self.records) - self.position
    if n > left:
      raise ValueError(
        f"jsonl generator: {n} records asked, but {self.path} has {left} left "
        f"(lines {self.position + 1}..{len(self.records)} of {len(self.records)}); give a "
        "larger pool file or ask for fewer records (rounds x pool_size, over all seeds)"
      )
    out = self.records[self.position : self.position + n]
    self.position += n
    return out
