"""Each benchmark as a task of ``registry.TASKS``: labelled target examples and a test split.

``TASKS.build({"name": "arc_challenge"})`` gives the train split as target and the
test split as test (each benchmark's defaults are in :data:`catalog.BENCHMARKS`). A
benchmark published with one evaluation split only (MedQA, MedMCQA) names it as both:
``num_target`` examples are then drawn from it as target and the rest are the test.

A benchmark task has ``target``, ``test`` and ``describe()``; it has no tokenizer and no
warm-up mix (a real model brings its own tokenizer).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from evoselect_jax.data.benchmarks import catalog, formats
from evoselect_jax.registry import TASKS
from evoselect_jax.types import MCQExample


class BenchmarkTask:
  """A benchmark's target and test examples, from its configured splits.

  Attributes:
    name: the benchmark.
    target: labelled target examples (few-shot exemplars, OT target).
    test: held-out examples, for evaluation only.
    excluded: how many examples of target and test were dropped for each quirk.
  """

  def __init__(
    self,
    name: str,
    *,
    target_split: str | None = None,
    test_split: str | None = None,
    num_target: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
    exclude: Sequence[str] = (),
    data_dir: str | os.PathLike | None = None,
  ):
    """Loads the splits.

    Args:
      name: a benchmark of :func:`catalog.task_names`.
      target_split: the split the target is drawn from; ``None``: the benchmark's default.
      test_split: the test split; ``None``: the benchmark's default.
      num_target: the target's size, drawn without replacement (seeded); ``None`` keeps
        the whole target split. Required when the two splits are one: the target is
        then drawn from it and the test is the rest.
      num_test: evaluate on a seeded sample of this many test examples (fixed across
        rounds and methods; for CPU-sized runs); ``None`` keeps the whole test split.
      seed: seeds the draw of the target.
      exclude: quirks (:data:`formats.QUIRKS`) whose examples are dropped from both,
        e.g. ``("needs_image",)`` for HeadQA; the drop counts are in :attr:`excluded`.
      data_dir: the data directory; ``None``: :func:`catalog.default_data_dir`.
    """
    bench = catalog.benchmark(name)
    unknown = sorted(set(exclude) - set(formats.QUIRKS))
    if unknown or isinstance(exclude, str):
      raise ValueError(f"exclude must be quirk names of {sorted(formats.QUIRKS)}, got {exclude!r}")
    self.name = name
    self.target_split = target_split or bench.target_split
    self.test_split = test_split or bench.test_split
    self.exclude = tuple(exclude)
    self.excluded: dict[str, int] = {}
    same = self.test_split == self.target_split
    target = self._load(self.target_split, data_dir)
    n = len(target)
    low, high = (1, n - 1) if same else (1, n)
    if (same and num_target is None) or not (num_target is None or low <= num_target <= high):
      raise ValueError(
        f"{name}: num_target must be in {low}..{high} (split {self.target_split!r}"
        + (", which is also the test split" if same else "")
        + f"), got {num_target!r}"
      )
    chosen = np.zeros(n, bool)
    if num_target is None:
      chosen[:] = True
    else:
      chosen[np.random.default_rng(seed).choice(n, num_target, replace=False)] = True
    self.target = [ex for ex, c in zip(target, chosen, strict=True) if c]
    if same:
      self.test = [ex for ex, c in zip(target, chosen, strict=True) if not c]
    else:
      self.test = self._load(self.test_split, data_dir)
    if num_test is not None:
      if not 1 <= num_test <= len(self.test):
        raise ValueError(f"{name}: num_test must be in 1..{len(self.test)}, got {num_test!r}")
      keep = np.random.default_rng([seed, 1]).choice(len(self.test), num_test, replace=False)
      self.test = [self.test[i] for i in sorted(keep)]

  def _load(self, split: str, data_dir) -> list[MCQExample]:
    examples = catalog.load_task(self.name, split, data_dir)
    kept = [ex for ex in examples if not set(self.exclude) & set(ex.meta.get("quirks", ()))]
    for quirk, count in catalog.quirk_counts(examples).items():
      if quirk in self.exclude:
        self.excluded[f"{split}/{quirk}"] = count
    return kept

  def describe(self) -> str:
    """One line that says what this task is."""
    dropped = ", ".join(f"{k}: {v}" for k, v in self.excluded.items()) or "none"
    return (
      f"{self.name}: {catalog.benchmark(self.name).description}; target {len(self.target)} "
      f"from {self.target_split!r}, test {len(self.test)} from {self.test_split!r}; "
      f"excluded by quirk: {dropped}; quirks kept: {catalog.quirk_counts(self.target + self.test)}"
    )


def _register(name: str) -> None:
  def build(**kwargs) -> BenchmarkTask:
    return BenchmarkTask(name, **kwargs)

  build.__doc__ = f"The {name} benchmark as a task; see :class:`BenchmarkTask`."
  TASKS.register(name)(build)


for _name in catalog.task_names():
  _register(_name)
