"""Clean a generated pool: parse, validate, deduplicate, drop test overlap.

The ``clean`` step of the loop (docs: EVOSELECT.md). Each raw record is a string in
one of two formats (:data:`FORMATS`), the one its generator was asked for; generated
text is data, only ever passed to ``json.loads`` or matched line by line.

``json`` (the default): one JSON object ``{"question": str, "choices": [str, ...],
"answer": key}`` with an optional ``"context"`` (string or null); other fields are
ignored, except ``"_kind"`` (a simulated generator's ground truth), which is copied to
``meta["kind"]`` for reporting. Checks, in order; the first that fails names the
record's rejection reason:

==================  ==========================================================
``not_json``        the string is not valid JSON (nothing around the object is
                    stripped: no code fences, no prose)
``not_object``      the JSON value is not an object
``missing_field``   ``question``, ``choices`` or ``answer`` is absent or null
``bad_question``    the question is not a string, or has no word
``bad_choices``     not a list of ``min_choices``-``max_choices`` non-blank strings,
                    distinct up to case and whitespace
``bad_answer``      not exactly one valid key: a letter (``A``-``E``, either case)
                    or a 0-based int index, within the options
``bad_context``     a context that is neither a string nor null
==================  ==========================================================

``text``: one item in the plain multiple-choice layout that small models continue
from few-shot examples (:func:`evoselect_jax.generators.prompting.exemplar_text`
writes it), one field per line and a blank line after the item::

  Context: <passage>          (optional)
  Question: <question>
  A. <option>
  B. <option>
  ...
  Answer: <letter>
  <blank line>

Labels, the ``"X. "`` option prefixes and the letter order are matched exactly
(trailing spaces on a line are ignored). The item is read top to bottom and its first
departure from the layout names the reason (the first five below); a whole item is
then checked for its number of options, repeated options and the answer's range:

=======================  =====================================================
``truncated``            the record does not end with the blank line that ends
                         an item (the generator ran out of tokens mid-item)
``no_question``          no ``Question: <text with a word>`` line where the
                         layout has it (first, or after the ``Context:`` line)
``no_answer``            the options are followed by no ``Answer: <letter>``
                         line (none at all, or one whose value is not a single
                         letter ``A``-``E``)
``bad_line``             a line the layout has no place for: an option out of
                         letter order or without text, a second question, a
                         blank context, prose between the options
``extra_text``           lines after the answer line, within the item
``option_count``         fewer than ``min_choices`` or more than
                         ``max_choices`` options
``duplicate_options``    two options equal up to case and whitespace
``answer_out_of_range``  the answer letter names no option (``D`` of three)
=======================  =====================================================

Then, for both formats (:data:`DEDUP_REASONS`):

==================  ==========================================================
``test_overlap``    the question is (near-)identical to a question of the test split
``duplicate``       the question equals a kept one after normalisation
``near_duplicate``  word-trigram Jaccard similarity >= ``near_dup_jaccard`` to a kept
                    question
==================  ==========================================================

Questions are compared on their normalised text (context and question, lower case,
punctuation removed, whitespace collapsed), never on their options: models are scored
on the question alone (options are not shown), so two records with one question teach
the same thing, whatever their options' order. Near-duplicates use multisets of word
trigrams (n = 3, a repeated trigram counts twice): unigrams ignore order (a permuted
list is a different ``first`` question), and bigrams miss it when items are joined by
a word (``3 and 7 and 12`` and ``3 and 12 and 7`` share every bigram); a trigram
still reaches a similarity of T/(T+1) for one word added at either end of a question
of T trigrams (0.9 from 11 words on). The search is exact:
an inverted index over each set's rarest shingles (prefix filtering, Bayardo et al.,
"Scaling up all pairs similarity search", WWW 2007) finds every pair at or above the
threshold, then the Jaccard similarity is computed exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from evoselect_jax.types import MCQExample

NGRAM = 3
_LETTERS = "ABCDE"
_NOT_WORD_RE = re.compile(r"[^\w\s]+")
_Shingle = tuple[tuple[str, ...], int]

FORMATS = ("json", "text")

# Rejection reasons, in the order the checks run: parsing (by format), then dedup.
JSON_REASONS = (
  "not_json",
  "not_object",
  "missing_field",
  "bad_question",
  "bad_choices",
  "bad_answer",
  "bad_context",
)
TEXT_REASONS = (
  "truncated",
  "no_question",
  "no_answer",
  "bad_line",
  "extra_text",
  "option_count",
  "duplicate_options",
  "answer_out_of_range",
)
DEDUP_REASONS = ("test_overlap", "duplicate", "near_duplicate")
REASONS = JSON_REASONS + TEXT_REASONS + DEDUP_REASONS

# The ``text`` layout: field labels, option lines ``"A. <option>"``, and the blank line
# that ends an item.
CONTEXT_LABEL = "Context:"
QUESTION_LABEL = "Question:"
ANSWER_LABEL = "Answer:"
ITEM_END = "\n\n"
_OPTION_RE = re.compile(r"([A-E])\. (\S.*)")
_ANSWER_RE = re.compile(re.escape(ANSWER_LABEL) + r" ([A-E])")


@dataclasses.dataclass(frozen=True)
class CleanOutput:
  """What :func:`clean` kept and why it rejected the rest.

  Attributes:
    examples: the kept records, in input order; ``id`` is ``f"{id_prefix}{index}"``
      and ``meta`` holds ``source_index`` (position in the raw list) and ``kind``
      (from ``"_kind"``, when present).
    rejected: number of rejected records per reason (see :data:`REASONS`).
    reasons: ``(index, reason)`` for every rejected record, by index.
  """

  examples: list[MCQExample]
  rejected: collections.Counter[str]
  reasons: list[tuple[int, str]]


def normalize(text: str) -> str:
  """Lower case, punctuation removed, whitespace collapsed to single spaces."""
  return " ".join(_NOT_WORD_RE.sub(" ", text.lower()).split())


def clean(
  raw: Sequence[str],
  *,
  test: Sequence[MCQExample],
  near_dup_jaccard: float = 0.9,
  min_choices: int = 3,
  max_choices: int = 5,
  id_prefix: str = "",
  format: str = "json",
) -> CleanOutput:
  """Parses, validates and deduplicates raw generated records.

  Args:
    raw: one string per generated record.
    test: the held-out split; records whose question matches one of these (exactly
      or at ``near_dup_jaccard``) are dropped.
    near_dup_jaccard: word-trigram Jaccard similarity, in (0, 1], at or above which a
      question is a near-duplicate of a kept (or test) one.
    min_choices: fewest options a record may have.
    max_choices: most options a record may have, at most 5 (letter keys A-E).
    id_prefix: prefix of the kept examples' ids.
    format: the records' format, one of :data:`FORMATS` (see the module docstring).

  Returns:
    The kept examples and every rejection with its reason.
  """
  if not 0 < near_dup_jaccard <= 1:
    raise ValueError(f"near_dup_jaccard must be in (0, 1], got {near_dup_jaccard!r}")
  if not 1 <= min_choices <= max_choices <= len(_LETTERS):
    raise ValueError(
      f"Need 1 <= min_choices <= max_choices <= {len(_LETTERS)}, got {min_choices}, {max_choices}"
    )
  if format not in FORMATS:
    raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
  parse = _parse if format == "json" else _parse_text
  reasons: list[tuple[int, str]] = []
  parsed: list[tuple[int, MCQExample, str]] = []
  for i, text in enumerate(raw):
    if not isinstance(text, str):
      raise TypeError(f"raw[{i}] must be a string, got {type(text).__name__}")
    result = parse(text, min_choices, max_choices)
    if isinstance(result, str):
      reasons.append((i, result))
      continue
    question, choices, answer, context, kind = result
    meta: dict[str, Any] = {"source_index": i} | ({} if kind is None else {"kind": kind})
    example = MCQExample(f"{id_prefix}{i}", question, choices, answer, context, meta)
    parsed.append((i, example, _key(example)))

  test_keys = []
  for j, ex in enumerate(test):
    if not isinstance(ex, MCQExample):
      raise TypeError(f"test[{j}] must be an MCQExample, got {type(ex).__name__}")
    test_keys.append(_key(ex))
  shingles = {key: _shingles(key) for key in test_keys + [key for _, _, key in parsed]}
  rank = _rank_by_rarity(shingles.values())
  ranks = {key: sorted(rank[s] for s in shingle_set) for key, shingle_set in shingles.items()}
  test_index = _JaccardIndex(near_dup_jaccard)
  for key in set(test_keys):
    test_index.add(ranks[key])
  kept_index = _JaccardIndex(near_dup_jaccard)
  kept_keys: set[str] = set()
  examples = []
  for i, example, key in parsed:
    if test_index.contains(ranks[key]):
      reasons.append((i, "test_overlap"))
    elif key in kept_keys:
      reasons.append((i, "duplicate"))
    elif kept_index.contains(ranks[key]):
      reasons.append((i, "near_duplicate"))
    else:
      kept_keys.add(key)
      kept_index.add(ranks[key])
      examples.append(example)
  reasons.sort()
  return CleanOutput(examples, collections.Counter(r for _, r in reasons), reasons)


def _parse(
  text: str, min_choices: int, max_choices: int
) -> str | tuple[str, tuple[str, ...], int, str | None, Any]:
  """``(question, choices, answer, context, kind)``, or the rejection reason."""
  try:
    record = json.loads(text)
  # JSONDecodeError, ints too long to convert, nesting too deep to parse.
  except (ValueError, RecursionError):
    return "not_json"
  if not isinstance(record, dict):
    return "not_object"
  if any(record.get(field) is None for field in ("question", "choices", "answer")):
    return "missing_field"
  question, choices, key = record["question"], record["choices"], record["answer"]
  if not isinstance(question, str) or not normalize(question):
    return "bad_question"
  if (
    not isinstance(choices, list)
    or not min_choices <= len(choices) <= max_choices
    or not all(isinstance(c, str) and c.strip() for c in choices)
    or len({" ".join(c.lower().split()) for c in choices}) != len(choices)
  ):
    return "bad_choices"
  if isinstance(key, str) and len(key.strip()) == 1 and key.strip().upper() in _LETTERS:
    answer = _LETTERS.index(key.strip().upper())
  elif isinstance(key, int) and not isinstance(key, bool):
    answer = key
  else:
    return "bad_answer"
  if not 0 <= answer < len(choices):
    return "bad_answer"
  context = record.get("context")
  if context is not None and not isinstance(context, str):
    return "bad_context"
  return question.strip(), tuple(c.strip() for c in choices), answer, context, record.get("_kind")


def _parse_text(
  text: str, min_choices: int, max_choices: int
) -> str | tuple[str, tuple[str, ...], int, str | None, None]:
  """``(question, choices, answer, context, None)`` of a ``text`` record, or the reason."""
  if not text.endswith(ITEM_END):
    return "truncated"
  lines = [line.rstrip() for line in text[: -len(ITEM_END)].split("\n")]
  i, context = 0, None
  if lines[0].startswith(CONTEXT_LABEL):
    context = _field(lines[0], CONTEXT_LABEL)
    if context is None:
      return "bad_line"
    i = 1
  question = _field(lines[i], QUESTION_LABEL) if i < len(lines) else None
  if question is None:
    return "no_question"
  i += 1
  choices: list[str] = []
  while i < len(lines) and len(choices) < len(_LETTERS):
    option = _OPTION_RE.fullmatch(lines[i])
    if option is None or option[1] != _LETTERS[len(choices)]:
      break
    choices.append(option[2].strip())
    i += 1
  if i == len(lines):
    return "no_answer"
  key = _ANSWER_RE.fullmatch(lines[i])
  if key is None:
    return "no_answer" if lines[i].startswith(ANSWER_LABEL) else "bad_line"
  if i + 1 < len(lines):
    return "extra_text"
  if not min_choices <= len(choices) <= max_choices:
    return "option_count"
  if len({" ".join(c.lower().split()) for c in choices}) != len(choices):
    return "duplicate_options"
  answer = _LETTERS.index(key[1])
  if answer >= len(choices):
    return "answer_out_of_range"
  return question, tuple(choices), answer, context, None


def _field(line: str, label: str) -> str | None:
  """The value of a ``"<label> <value>"`` line, or ``None`` if absent or without a word."""
  if not line.startswith(label + " ") or not normalize(line[len(label) :]):
    return None
  return line[len(label) :].strip()


def _key(example: MCQExample) -> str:
  """The normalised text that duplicates are judged on: context and question."""
  return normalize(f"{example.context or ''} {example.question}")


def _shingles(key: str) -> frozenset[_Shingle]:
  """Word n-grams (n = :data:`NGRAM`) of a normalised text, as a multiset.

  Each n-gram is paired with its number of earlier occurrences, so repeats count
  (``6 6 6 15`` and ``6 6 6 6 15`` differ). A text shorter than n is one shingle.
  """
  words = key.split()
  seen: collections.Counter[tuple[str, ...]] = collections.Counter()
  shingles = []
  for i in range(max(1, len(words) - NGRAM + 1)):
    gram = tuple(words[i : i + NGRAM])
    shingles.append((gram, seen[gram]))
    seen[gram] += 1
  return frozenset(shingles)


def _rank_by_rarity(sets: Iterable[frozenset[_Shingle]]) -> dict[_Shingle, int]:
  """A global order of shingles, rarest first (ties by text), as integer ranks."""
  freq = collections.Counter(s for shingle_set in sets for s in shingle_set)
  return {s: r for r, s in enumerate(sorted(freq, key=lambda s: (freq[s], s)))}


class _JaccardIndex:
  """Exact search for a stored set with Jaccard similarity >= ``threshold``.

  Sets are given as sorted ranks (rarest shingle first). If J(A, B) >= t then
  |A ∩ B| >= t·|A| and >= t·|B|, so A and B share a rank among the first
  ``|X| - ceil(t·|X|) + 1`` ranks of each (their prefixes): only stored sets whose
  prefix shares a rank with the query's prefix are verified. Rare shingles come
  first, so the postings of the prefixes are short.
  """

  def __init__(self, threshold: float):
    self.threshold = threshold
    self._sets: list[frozenset[int]] = []
    self._postings: dict[int, list[int]] = collections.defaultdict(list)

  def _prefix(self, ranks: list[int]) -> list[int]:
    # The tolerance keeps ceil(0.9 * 10) at 9 despite rounding (9.000000000000002).
    return ranks[: len(ranks) - math.ceil(self.threshold * len(ranks) - 1e-9) + 1]

  def add(self, ranks: list[int]) -> None:
    """Stores the set ``ranks`` (sorted)."""
    for r in self._prefix(ranks):
      self._postings[r].append(len(self._sets))
    self._sets.append(frozenset(ranks))

  def contains(self, ranks: list[int]) -> bool:
    """Whether a stored set has Jaccard similarity >= threshold to ``ranks`` (sorted)."""
    query = frozenset(ranks)
    checked = set()
    for r in self._prefix(ranks):
      for j in self._postings.get(r, ()):
        if j not in checked:
          checked.add(j)
          inter = len(query & self._sets[j])
          if inter >= self.threshold * (len(query) + len(self._sets[j]) - inter) - 1e-9:
            return True
    return False
