"""A strong generator's stand-in: human-written benchmark items, replayed as raw records.

A strong LLM writes on-task items with right keys most of the time; human-written
items of the target benchmark stand in for them (an upper bound on quality), with
two kinds of damage mixed in at set fractions, as :mod:`.simulated` does for the
synthetic family:

- ``aligned``: an item of the ``source`` benchmark's ``split``, its key unchanged.
- ``noise``: another item of that split with its key moved to a wrong option
  (uniform over the others).
- ``off_task``: an item of ``off_task_source``'s ``off_task_split`` (another
  benchmark), key unchanged.

Each record is a JSON object as an LLM told to answer in JSON would write it:
``{"context"?, "question", "choices", "answer": "B", "_kind": kind}``; ``clean`` copies
``_kind`` to ``meta["kind"]`` for reporting (selection never reads it).

Within a call, items are drawn without replacement from each split (aligned and
noise items from one draw, so no item is both); only when a call needs more items
than a split has does it start another pass over the split, in a new order. The
exemplars of the call are left out of the draw (a generator does not hand back its
prompt). Records come in a random order; the same seed gives the same records.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from evoselect_jax.data.benchmarks import BenchmarkTask, load_task
from evoselect_jax.generators.simulated import kind_counts
from evoselect_jax.registry import GENERATORS
from evoselect_jax.types import MCQExample

KINDS = ("aligned", "noise", "off_task")
LETTERS = "ABCDEFGHIJ"

# Random stream of the generator (the stream's entropy is [seed, this]).
_GENERATE_STREAM = 3


@GENERATORS.register("replay")
class ReplayGenerator:
  """Replays benchmark items as raw records, with noisy keys and off-task items mixed in.

  Attributes:
    items: the source split's items.
    off_task_items: the off-task split's items (empty when ``off_task`` is 0).
    fractions: the fraction of each kind; ``aligned`` is the rest.
  """

  def __init__(
    self,
    task: Any = None,
    *,
    source: str,
    split: str,
    noise: float = 0.0,
    off_task: float = 0.0,
    off_task_source: str | None = None,
    off_task_split: str | None = None,
    data_dir: str | os.PathLike | None = None,
  ):
    """Loads the splits.

    Args:
      task: the experiment's task; when it is a :class:`BenchmarkTask`, replaying its
        test split is refused (every record would be dropped as ``test_overlap``).
      source: the benchmark replayed (a name of ``load_task``).
      split: its split replayed.
      noise: fraction of records with a wrong key.
      off_task: fraction of records from ``off_task_source``.
      off_task_source: the benchmark of off-task records; required when ``off_task > 0``.
      off_task_split: its split; required when ``off_task > 0``.
      data_dir: the data directory; ``None``: ``load_task``'s default.
    """
    given = {"noise": noise, "off_task": off_task}
    for kind, f in given.items():
      if isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f <= 1:
        raise ValueError(f"Fraction {kind}={f!r} must be a number in [0, 1]")
    if noise + off_task > 1 + 1e-9:
      raise ValueError(f"Fractions {given} sum to {noise + off_task:.6g} > 1")
    self.fractions = {"aligned": max(0.0, 1 - noise - off_task), **given}
    if off_task and (off_task_source is None or off_task_split is None):
      raise ValueError(
        f"off_task={off_task} needs off_task_source and off_task_split (a benchmark and "
        f"split), got {off_task_source!r} and {off_task_split!r}"
      )
    if not off_task and (off_task_source is not None or off_task_split is not None):
      raise ValueError(
        f"off_task_source={off_task_source!r} / off_task_split={off_task_split!r} are set "
        "but off_task is 0: set a fraction or drop them"
      )
    splits = [(source, split)] + ([(off_task_source, off_task_split)] if off_task else [])
    if isinstance(task, BenchmarkTask):
      for name, s in splits:
        if (name, s) == (task.name, task.test_split):
          raise ValueError(
            f"replay of {name}/{s}: that is the task's test split; replay another split"
          )
    if (off_task_source, off_task_split) == (source, split):
      raise ValueError(f"off_task_source/off_task_split name the source itself ({source}/{split})")
    self.items = load_task(source, split, data_dir)
    self.off_task_items = load_task(off_task_source, off_task_split, data_dir) if off_task else []
    self.source = f"{source}/{split}"
    self.off_task_source = f"{off_task_source}/{off_task_split}" if off_task else None

  def __repr__(self) -> str:
    return (
      f"ReplayGenerator(source={self.source!r}, off_task_source={self.off_task_source!r}, "
      f"fractions={self.fractions})"
    )

  def counts(self, n: int) -> dict[str, int]:
    """Records of each kind in a call for ``n`` (see :func:`simulated.kind_counts`)."""
    return kind_counts(self.fractions, n)

  def generate(self, exemplars: Sequence[MCQExample], n: int, seed: int) -> list[str]:
    """``n`` raw records, in random order.

    Args:
      exemplars: left out of the draw; otherwise unused.
      n: number of records.
      seed: the same seed (and exemplars) gives the same records.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
      raise ValueError(f"n must be an int >= 0, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
      raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    counts = self.counts(n)
    rng = np.random.default_rng([seed, _GENERATE_STREAM])
    shown = set(exemplars)
    own = _draw(
      [ex for ex in self.items if ex not in shown],
      counts["aligned"] + counts["noise"],
      rng,
      self.source,
    )
    records = [_record(ex, ex.answer, "aligned") for ex in own[: counts["aligned"]]]
    for ex in own[counts["aligned"] :]:
      wrong = (ex.answer + rng.integers(1, len(ex.choices))) % len(ex.choices)
      records.append(_record(ex, wrong, "noise"))
    off = [ex for ex in self.off_task_items if ex not in shown]
    off = _draw(off, counts["off_task"], rng, str(self.off_task_source))
    records += [_record(ex, ex.answer, "off_task") for ex in off]
    return [json.dumps(records[i], ensure_ascii=False) for i in rng.permutation(len(records))]


def _draw(
  items: list[MCQExample], count: int, rng: np.random.Generator, name: str
) -> list[MCQExample]:
  """``count`` items: random passes over ``items``, each without replacement."""
  if not count:
    return []
  if not items:
    raise ValueError(f"replay: {count} records asked of {name}, which has no items left")
  passes = [rng.permutation(len(items)) for _ in range(-(-count // len(items)))]
  return [items[i] for i in np.concatenate(passes)[:count]]


def _record(ex: MCQExample, answer: int, kind: str) -> dict[str, Any]:
  """An item as an LLM would write it, with a letter key."""
  record = {"context": ex.context} if ex.context else {}
  return record | {
    "question": ex.question,
    "choices": list(ex.choices),
    "answer": LETTERS[int(answer)],
    "_kind": kind,
  }
