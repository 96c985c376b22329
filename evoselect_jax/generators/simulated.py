"""A simulated generator: a stand-in for an LLM prompted with target exemplars.

It writes raw text records, one JSON object per string, as an LLM told to answer in
JSON would: ``{"question": ..., "choices": [...], "answer": "B"}`` with a letter key.
Each record is one of these kinds, in fractions set by the constructor:

- ``aligned``: a fresh question of the target (skill, format), correct key.
- ``noise``: a fresh question of the target pair with a wrong key.
- ``off_task``: a question of another (skill, format) pair of the family, correct key.
- ``near_dup``: a copy of one of a few aligned records of the same call, with the
  options shuffled and one filler word (two once a source's 20 one-filler variants
  are used up) added at the start and/or before the final ``?`` (see
  :data:`~evoselect_jax.data.synthetic.FILLERS`): same list, same answer, distinct
  text, so exact-text dedup keeps it. It comes after its source, as a model repeats
  what it wrote. Whether ``clean``'s near-duplicate pass catches it depends on the
  question's length (a word-trigram Jaccard of T/(T+1) for one filler on a question
  of T trigrams).
- ``malformed``: a broken output, cycling over :data:`DEFECTS`: JSON cut off halfway
  (``not_json``), a missing ``question``/``choices``/``answer`` (``missing_field``),
  2 or 6 options (``bad_choices``), a key one past the last option (``bad_answer``).

Every parseable record carries its true kind in ``"_kind"`` (and a malformed one its
defect in ``"_defect"``), for reporting what a selector picked; selection never reads
them.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from evoselect_jax.data.synthetic import FILLERS, SyntheticTask
from evoselect_jax.registry import GENERATORS
from evoselect_jax.types import MCQExample

KINDS = ("aligned", "noise", "off_task", "near_dup", "malformed")


def kind_counts(fractions: dict[str, float], n: int) -> dict[str, int]:
  """Records of each kind among ``n``: largest remainders, each within 1 of fraction·n.

  Ties go to the kind listed first in ``fractions``.
  """
  kinds = list(fractions)
  quotas = {kind: fractions[kind] * n for kind in kinds}
  counts = {kind: math.floor(q) for kind, q in quotas.items()}
  by_remainder = sorted(kinds, key=lambda k: (counts[k] - quotas[k], kinds.index(k)))
  for kind in by_remainder[: n - sum(counts.values())]:
    counts[kind] += 1
  return counts


DEFECTS = ("not_json", "missing_field", "bad_choices", "bad_answer")
LETTERS = "ABCDEFGHIJ"

# Surface variants of a near-duplicate: up to two fillers at the start (``head``) and
# up to two before the final token (``tail``), grouped by how many fillers they add.
_FILLS = [(), *((f,) for f in FILLERS), *itertools.product(FILLERS, FILLERS)]
_VARIANT_GROUPS = [
  [(head, tail) for head in _FILLS for tail in _FILLS if len(head) + len(tail) == size]
  for size in (1, 2)
]
_NUM_VARIANTS = sum(map(len, _VARIANT_GROUPS))

# Random stream of the generator, apart from those of the task.
_GENERATE_STREAM = 2


@GENERATORS.register("simulated")
class SimulatedGenerator:
  """Turns target exemplars into a pool of raw JSON records of known kinds."""

  def __init__(
    self,
    task: SyntheticTask,
    *,
    noise: float = 0.15,
    off_task: float = 0.3,
    near_dup: float = 0.1,
    malformed: float = 0.05,
    near_dup_sources: int = 8,
  ):
    """Sets the fractions of each kind; ``aligned`` is the rest.

    Args:
      task: the family to draw questions from (its skills, formats, list lengths).
      noise: fraction of target-pair records with a wrong key.
      off_task: fraction of records of the other pairs of ``task``.
      near_dup: fraction of near-duplicates of aligned records.
      malformed: fraction of broken records.
      near_dup_sources: near-duplicates are spread evenly over the first
        ``min(near_dup_sources, number of aligned records)`` aligned records; a source
        has 320 distinct variants (one or two of the 10 fillers).
    """
    if not isinstance(task, SyntheticTask):
      raise TypeError(f"The simulated generator needs a SyntheticTask, got {type(task).__name__}")
    self.task = task
    given = {"noise": noise, "off_task": off_task, "near_dup": near_dup, "malformed": malformed}
    for kind, f in given.items():
      if isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f <= 1:
        raise ValueError(f"Fraction {kind}={f!r} must be a number in [0, 1]")
    total = sum(given.values())
    if total > 1 + 1e-9:
      raise ValueError(f"Fractions {given} sum to {total:.6g} > 1")
    self.fractions = {"aligned": max(0.0, 1 - total), **given}
    if (
      isinstance(near_dup_sources, bool)
      or not isinstance(near_dup_sources, int)
      or near_dup_sources < 1
    ):
      raise ValueError(f"near_dup_sources must be an int >= 1, got {near_dup_sources!r}")
    self.near_dup_sources = near_dup_sources

  def counts(self, n: int) -> dict[str, int]:
    """Records of each kind in a call for ``n`` (see :func:`kind_counts`)."""
    return kind_counts(self.fractions, n)

  def generate(self, exemplars: Sequence[MCQExample], n: int, seed: int) -> list[str]:
    """``n`` raw records imitating ``exemplars``, in random order.

    Args:
      exemplars: target examples; only their ``meta['skill']`` and ``meta['format']``
        are read (one pair for all), as an LLM would imitate them.
      n: number of records.
      seed: the same seed (and task) gives the same records.
    """
    skill, fmt = _target_pair(exemplars)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
      raise ValueError(f"n must be an int >= 0, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
      raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    counts = self.counts(n)
    if counts["near_dup"] and not counts["aligned"]:
      raise ValueError(f"{counts['near_dup']} near-duplicates need aligned records: {counts}")
    rng = np.random.default_rng([seed, _GENERATE_STREAM])

    fresh = self.task.sample(
      skill, fmt, counts["aligned"] + counts["noise"] + counts["malformed"], rng
    )
    aligned = fresh[: counts["aligned"]]
    noise = fresh[counts["aligned"] : counts["aligned"] + counts["noise"]]
    broken = fresh[counts["aligned"] + counts["noise"] :]
    records: list[dict[str, Any] | str] = [_record(ex, ex.answer, "aligned") for ex in aligned]
    k = self.task.num_choices
    records += [_record(ex, (ex.answer + rng.integers(1, k)) % k, "noise") for ex in noise]
    records += [_malformed(ex, i) for i, ex in enumerate(broken)]
    off_task = self._off_task(skill, fmt, counts["off_task"], rng)
    records += [_record(ex, ex.answer, "off_task") for ex in off_task]
    near_dups = self._near_dups(aligned, counts["near_dup"], rng)
    # Random order, except that a source comes before its copies (as a model repeats
    # what it wrote): first-wins dedup then keeps the aligned record of each group.
    position = np.empty(len(records) + len(near_dups), int)
    position[rng.permutation(len(position))] = np.arange(len(position))
    groups = collections.defaultdict(list)  # source's record index -> its copies'
    for j, (source, _) in enumerate(near_dups):
      groups[source].append(len(records) + j)
    for source, copies in groups.items():
      first = min(copies, key=position.__getitem__)
      if position[first] < position[source]:
        position[[source, first]] = position[[first, source]]
    records += [record for _, record in near_dups]
    ordered = [records[i] for i in np.argsort(position)]
    return [r if isinstance(r, str) else json.dumps(r) for r in ordered]

  def _off_task(
    self, skill: str, fmt: str, count: int, rng: np.random.Generator
  ) -> list[MCQExample]:
    """``count`` correct examples of the other pairs, a uniform pair for each."""
    if not count:
      return []
    family = itertools.product(self.task.skills, self.task.formats)
    pairs = [pair for pair in family if pair != (skill, fmt)]
    if not pairs:
      raise ValueError(f"off_task={self.fractions['off_task']} but the family has one pair")
    per_pair = np.bincount(rng.integers(len(pairs), size=count), minlength=len(pairs))
    return [
      ex
      for pair, m in zip(pairs, per_pair, strict=True)
      for ex in self.task.sample(*pair, int(m), rng)
    ]

  def _near_dups(
    self, aligned: list[MCQExample], count: int, rng: np.random.Generator
  ) -> list[tuple[int, dict[str, Any]]]:
    """``count`` near-duplicates spread round-robin over the first aligned records.

    Returns:
      ``(s, record)`` pairs, a near-duplicate of ``aligned[s]`` in each.
    """
    sources = aligned[: self.near_dup_sources]
    records = []
    for s, source in enumerate(sources):
      copies = len(range(s, count, len(sources)))
      if copies > _NUM_VARIANTS:
        raise ValueError(
          f"{copies} near-duplicates of one source exceed its {_NUM_VARIANTS} variants: "
          f"raise near_dup_sources ({self.near_dup_sources}) or lower near_dup"
        )
      # One-filler variants in random order, then two-filler ones.
      variants = [group[j] for group in _VARIANT_GROUPS for j in rng.permutation(len(group))]
      words = source.question.split()
      for head, tail in variants[:copies]:
        perm = rng.permutation(len(source.choices))
        records.append(
          (
            s,
            _record(
              source,
              int(np.flatnonzero(perm == source.answer)[0]),
              "near_dup",
              question=" ".join([*head, *words[:-1], *tail, words[-1]]),
              choices=[source.choices[i] for i in perm],
            ),
          )
        )
    return records


def _target_pair(exemplars: Sequence[MCQExample]) -> tuple[str, str]:
  """The one (skill, format) pair in the exemplars' meta."""
  if not exemplars:
    raise ValueError("The simulated generator needs at least one exemplar")
  pairs = set()
  for ex in exemplars:
    if "skill" not in ex.meta or "format" not in ex.meta:
      raise ValueError(f"Exemplar {ex.id!r} has no meta['skill'] and meta['format']: {ex.meta}")
    pairs.add((ex.meta["skill"], ex.meta["format"]))
  if len(pairs) != 1:
    raise ValueError(f"Exemplars must share one (skill, format) pair, got {sorted(pairs)}")
  return pairs.pop()


def _record(
  ex: MCQExample,
  answer: int,
  kind: str,
  *,
  question: str | None = None,
  choices: Sequence[str] | None = None,
) -> dict[str, Any]:
  """A record as an LLM would write it, with a letter key."""
  return {
    "question": ex.question if question is None else question,
    "choices": list(ex.choices if choices is None else choices),
    "answer": LETTERS[int(answer)],
    "_kind": kind,
  }


def _malformed(ex: MCQExample, i: int) -> dict[str, Any] | str:
  """The ``i``-th broken record, with defect ``DEFECTS[i % len(DEFECTS)]``."""
  defect = DEFECTS[i % len(DEFECTS)]
  variant = i // len(DEFECTS)
  record = _record(ex, ex.answer, "malformed") | {"_defect": defect}
  if defect == "not_json":  # cut off halfway, as at a token limit
    text = json.dumps(record)
    return text[: len(text) // 2]
  if defect == "missing_field":
    del record[("question", "choices", "answer")[variant % 3]]
  elif defect == "bad_choices":
    if variant % 2:  # too many: the options plus numbers that are not among them
      extra = [str(x) for x in range(100) if str(x) not in ex.choices]
      record["choices"] += extra[: 6 - len(ex.choices)]
    else:  # too few: the answer and one distractor
      record["choices"] = [ex.choices[ex.answer], ex.choices[ex.answer - 1]]
      record["answer"] = "A"
  else:  # bad_answer: one past the last option
    record["answer"] = LETTERS[len(ex.choices)]
  return record
