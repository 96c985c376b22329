r"""A word-level tokenizer for the embedded synthetic task family.

Text is split on whitespace, and every ``"\n"`` is a token of its own, so the
prompt ``"Question: {question}\nAnswer:"`` plus the continuation ``" {choice}"``
tokenizes as ``[Question:, <question words>, \n, Answer:, <choice>]``. The vocabulary
is a fixed list of tokens whose ids are their positions; the first three are the
special tokens ``<pad>`` (id 0), ``<bos>`` (1) and ``<unk>`` (2).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

PAD = "<pad>"
BOS = "<bos>"
UNK = "<unk>"
NEWLINE = "\n"
SPECIALS = (PAD, BOS, UNK)

# A newline on its own, or a run of characters that are not whitespace.
_TOKEN_RE = re.compile(r"\n|[^\s]+")


class WordTokenizer:
  r"""Whitespace tokenizer over a fixed vocabulary, with ``"\n"`` as its own token.

  Unknown words encode to ``unk_id``; each one is counted in :attr:`unknown_counts`
  (word -> occurrences since construction) rather than raising, so a caller can report
  how much of a generated pool fell outside the vocabulary.
  """

  def __init__(self, tokens: Sequence[str]):
    r"""Builds a tokenizer whose token ``tokens[i]`` has id ``i``.

    Args:
      tokens: the full vocabulary; it must start with ``<pad>, <bos>, <unk>``, hold
        no duplicates, and no token may contain whitespace except ``"\n"`` itself.
    """
    tokens = tuple(tokens)
    if tokens[: len(SPECIALS)] != SPECIALS:
      raise ValueError(f"A vocabulary must start with {SPECIALS}, got {tokens[: len(SPECIALS)]}")
    for i, token in enumerate(tokens):
      if not isinstance(token, str) or not token:
        raise ValueError(f"Vocabulary entry {i} must be a non-empty string, got {token!r}")
      if token != NEWLINE and _TOKEN_RE.fullmatch(token) is None:
        raise ValueError(f"Vocabulary entry {i} ({token!r}) contains whitespace")
    self._tokens = tokens
    self._ids = {token: i for i, token in enumerate(tokens)}
    if len(self._ids) != len(tokens):
      dups = [t for t, c in collections.Counter(tokens).items() if c > 1]
      raise ValueError(f"Vocabulary has duplicate tokens: {dups}")
    self.unknown_counts: collections.Counter[str] = collections.Counter()

  @classmethod
  def from_vocab(cls, words: Iterable[str]) -> WordTokenizer:
    r"""The special tokens, then ``"\n"``, then ``words`` in order (repeats dropped)."""
    head = (*SPECIALS, NEWLINE)
    return cls(head + tuple(w for w in dict.fromkeys(words) if w not in head))

  def to_json(self) -> dict[str, Any]:
    """A JSON-serialisable dict; :meth:`from_json` inverts it."""
    return {"tokens": list(self._tokens)}

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> WordTokenizer:
    """Inverse of :meth:`to_json`."""
    return cls(d["tokens"])

  @property
  def tokens(self) -> tuple[str, ...]:
    """The vocabulary; ``tokens[i]`` has id ``i``."""
    return self._tokens

  @property
  def vocab_size(self) -> int:
    """Number of tokens, special tokens included."""
    return len(self._tokens)

  @property
  def pad_id(self) -> int:
    """Id of ``<pad>``."""
    return self._ids[PAD]

  @property
  def bos_id(self) -> int:
    """Id of ``<bos>``."""
    return self._ids[BOS]

  @property
  def unk_id(self) -> int:
    """Id of ``<unk>``."""
    return self._ids[UNK]

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text``; no ``<bos>`` is added. Unknown words map to ``unk_id``."""
    ids = []
    for word in _TOKEN_RE.findall(text):
      i = self._ids.get(word)
      if i is None:
        self.unknown_counts[word] += 1
        i = self.unk_id
      ids.append(i)
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    r"""Text of ``ids``, skipping ``<pad>`` and ``<bos>``.

    Words are joined by one space, with no space next to ``"\n"``, so
    ``decode(encode(text)) == text`` for every text made of vocabulary words separated
    by single spaces or a bare ``"\n"``, with no leading or trailing whitespace.
    """
    parts: list[str] = []
    previous = None
    for i in ids:
      i = int(i)
      if not 0 <= i < len(self._tokens):
        raise ValueError(f"Token id {i} is outside the vocabulary [0, {len(self._tokens)})")
      if i in (self.pad_id, self.bos_id):
        continue
      token = self._tokens[i]
      if previous is not None and NEWLINE not in (previous, token):
        parts.append(" ")
      parts.append(token)
      previous = token
    return "".join(parts)
