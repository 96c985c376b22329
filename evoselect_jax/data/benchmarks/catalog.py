"""Where each benchmark's splits live and which parser reads them; :func:`load_task`.

Paths are relative to the data directory (layout of ``shared/data``, described file
by file in its ``SOURCES.md``): ``$EVOSELECT_DATA_DIR`` when set, else
``<repo>/../shared/data`` (CI checks ``shared/`` out beside the clone).

- ``arc_challenge``: train 1119, dev 299, test 1170 (ARC jsonl), test_full 1172 (the
  full official test, HF schema).
- ``arc_easy``: train, dev, test in ``arc_easy/`` (any ARC-format directory; not in
  shared/data).
- ``openbookqa``: train 4957, dev 500, test 500 (official TSV).
- ``commonsenseqa``: train 9741, dev 1221, test 1140 without answers (AI2 jsonl).
- ``logiqa``: eval 651, test 651, eval_zh 651, test_zh 651 (8-line text records; no train).
- ``logiqa2``: dev 1569, test 1572, dev_zh 1593, test_zh 1594, ood_test 575 (JSON lines;
  no train).
- ``medqa``: test 1273, 4 options; ``medqa_5opt``: the same 1273 questions with 5 options.
- ``medmcqa``: validation 4183 (the official dev split, reduced jsonl), medagents_subset
  2816 (a subset of validation with the original ids).
- ``headqa``: train 2657, dev 1366, test 2742 (English; exam JSON).

MedQA's 4- and 5-option versions are two tasks, not two splits: they hold the same
1273 questions, so they must never be target and test of one another.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections import Counter
from collections.abc import Callable, Iterable

from evoselect_jax.data.benchmarks import formats
from evoselect_jax.types import MCQExample

DATA_DIR_ENV = "EVOSELECT_DATA_DIR"
# evoselect_jax/data/benchmarks/catalog.py -> the repository root.
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]


def default_data_dir() -> pathlib.Path:
  """``$EVOSELECT_DATA_DIR`` if set, else ``<repo>/../shared/data``."""
  env = os.environ.get(DATA_DIR_ENV)
  return pathlib.Path(env) if env else _REPO_ROOT.parent / "shared" / "data"


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: its file (relative to the task's directory) and the parser that reads it."""

  file: str
  parse: Callable[[pathlib.Path, str], list[MCQExample]]


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One task: its directory, splits, default target/test splits, and a one-line description."""

  directory: str
  splits: dict[str, Split]
  target_split: str
  test_split: str
  description: str


def _arc(directory: str, name: str) -> Benchmark:
  splits = {s: Split(f"{s}.jsonl", formats.ai2_jsonl) for s in ("train", "dev", "test")}
  if directory == "arc_challenge":
    splits["test_full"] = Split("icml_kd/test.jsonl", formats.arc_hf_jsonl)
  return Benchmark(directory, splits, "train", "test", f"{name} (AI2 Reasoning Challenge)")


BENCHMARKS: dict[str, Benchmark] = {
  "arc_challenge": _arc("arc_challenge", "ARC-Challenge"),
  "arc_easy": _arc("arc_easy", "ARC-Easy"),
  "openbookqa": Benchmark(
    "openbookqa",
    {s: Split(f"{s}.tsv", formats.obqa_tsv) for s in ("train", "dev", "test")},
    "train",
    "test",
    "OpenBookQA (elementary science, closed book: no facts)",
  ),
  "commonsenseqa": Benchmark(
    "commonsenseqa",
    {
      "train": Split("train_rand_split.jsonl", formats.ai2_jsonl),
      "dev": Split("dev_rand_split.jsonl", formats.ai2_jsonl),
      "test": Split(
        "test_rand_split_no_answers.jsonl", functools.partial(formats.ai2_jsonl, labeled=False)
      ),
    },
    "train",
    "dev",
    "CommonsenseQA (random split; test has no answers, dev is the evaluation set)",
  ),
  "logiqa": Benchmark(
    "logiqa",
    {
      "eval": Split("Eval.txt", formats.logiqa_txt),
      "test": Split("Test.txt", formats.logiqa_txt),
      "eval_zh": Split("zh_eval.txt", formats.logiqa_txt),
      "test_zh": Split("zh_test.txt", formats.logiqa_txt),
    },
    "eval",
    "test",
    "LogiQA v1 (logical reasoning over a passage; no train split)",
  ),
  "logiqa2": Benchmark(
    "logiqa2",
    {
      "dev": Split("dev.txt", formats.logiqa2_jsonl),
      "test": Split("test.txt", formats.logiqa2_jsonl),
      "dev_zh": Split("dev_zh.txt", formats.logiqa2_jsonl),
      "test_zh": Split("test_zh.txt", formats.logiqa2_jsonl),
      "ood_test": Split("ood_test.jsonl", formats.logiqa2_jsonl),
    },
    "dev",
    "test",
    "LogiQA 2.0 (logical reasoning over a passage; no train split)",
  ),
  "medqa": Benchmark(
    "medqa",
    {
      "test": Split(
        "4_options/test.jsonl", functools.partial(formats.options_dict_jsonl, letters="ABCD")
      )
    },
    "test",
    "test",
    "MedQA USMLE, 4 options (test only: target and test are carved from it)",
  ),
  "medqa_5opt": Benchmark(
    "medqa",
    {
      "test": Split(
        "5_options/test.jsonl", functools.partial(formats.options_dict_jsonl, letters="ABCDE")
      )
    },
    "test",
    "test",
    "MedQA USMLE, 5 options (test only: target and test are carved from it)",
  ),
  "medmcqa": Benchmark(
    "medmcqa",
    {
      "validation": Split("validation.jsonl", formats.medmcqa_jsonl),
      "medagents_subset": Split(
        "medagents_subset/test.jsonl",
        functools.partial(formats.options_dict_jsonl, letters="ABCD", id_field="realidx"),
      ),
    },
    "validation",
    "validation",
    "MedMCQA (official validation split only: target and test are carved from it)",
  ),
  "headqa": Benchmark(
    "headqa",
    {s: Split(f"{s}_HEAD_EN.json", formats.headqa_json) for s in ("train", "dev", "test")},
    "train",
    "test",
    "HEAD-QA, English (Spanish healthcare exams, machine-translated)",
  ),
}


def task_names() -> list[str]:
  """Every benchmark :func:`load_task` knows, sorted."""
  return sorted(BENCHMARKS)


def benchmark(name: str) -> Benchmark:
  """The :class:`Benchmark` called ``name``; the error lists the valid names."""
  if name not in BENCHMARKS:
    raise ValueError(f"Unknown benchmark {name!r}; valid names: {', '.join(task_names())}")
  return BENCHMARKS[name]


def split_names(name: str) -> list[str]:
  """The splits of benchmark ``name``, in catalog order."""
  return list(benchmark(name).splits)


def split_path(name: str, split: str, data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The file that holds ``split`` of benchmark ``name`` under ``data_dir``."""
  bench = benchmark(name)
  if split not in bench.splits:
    raise ValueError(f"Unknown split {split!r} of {name}; valid splits: {', '.join(bench.splits)}")
  root = default_data_dir() if data_dir is None else pathlib.Path(data_dir)
  return root / bench.directory / bench.splits[split].file


def load_task(
  name: str,
  split: str,
  data_dir: str | os.PathLike | None = None,
  *,
  allow_unlabeled: bool = False,
) -> list[MCQExample]:
  """The examples of one split of a benchmark, read from its own published format.

  Args:
    name: a benchmark, one of :func:`task_names`.
    split: one of ``split_names(name)``.
    data_dir: the data directory; ``None`` means :func:`default_data_dir`.
    allow_unlabeled: a split published without answers (CommonsenseQA test) raises
      unless this is set; its examples then have ``answer ==`` :data:`NO_ANSWER` (-1).

  Returns:
    The examples in file order. Ids are the source's own where it has them (else
    ``f"{split}-{index}"``) and unique within the split. ``meta["quirks"]``, when
    present, names the item's quirks (:data:`~formats.QUIRKS`).

  Raises:
    ValueError: unknown name or split, or an unlabeled split without ``allow_unlabeled``.
    FileNotFoundError: the split's file is not under ``data_dir``.
    formats.FormatError: a malformed record (names the file, line and field).
  """
  path = split_path(name, split, data_dir)
  if not path.is_file():
    raise FileNotFoundError(
      f"{name}/{split}: no file {path} (data dir: the data_dir argument, else "
      f"${DATA_DIR_ENV}, else <repo>/../shared/data; layout in its SOURCES.md)"
    )
  examples = benchmark(name).splits[split].parse(path, split)
  unlabeled = sum(ex.answer == formats.NO_ANSWER for ex in examples)
  if unlabeled and not allow_unlabeled:
    raise ValueError(
      f"{name}/{split} ({path}) has {unlabeled} of {len(examples)} examples without an "
      f"answer; pass allow_unlabeled=True to load them with answer={formats.NO_ANSWER}"
    )
  duplicates = [i for i, c in Counter(ex.id for ex in examples).items() if c > 1]
  if duplicates:
    raise ValueError(f"{name}/{split} ({path}): ids occur more than once: {duplicates[:5]}")
  return examples


def quirk_counts(examples: Iterable[MCQExample]) -> dict[str, int]:
  """How many examples carry each quirk of ``meta["quirks"]``, by quirk name."""
  return dict(sorted(Counter(q for ex in examples for q in ex.meta.get("quirks", ())).items()))
