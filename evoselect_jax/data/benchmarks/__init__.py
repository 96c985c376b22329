"""Real benchmarks, each read from its own published format; :func:`load_task` is the entry point.

``load_task(name, split, data_dir=None)`` returns a split's examples as
:class:`~evoselect_jax.types.MCQExample` objects: ARC-Challenge/Easy, OpenBookQA,
CommonsenseQA, LogiQA, LogiQA 2.0, MedQA (4 and 5 options), MedMCQA and HEAD-QA (the
splits and the data directory are listed in :mod:`.catalog`, the formats and their
quirks in :mod:`.formats`). Each benchmark is also a task of ``registry.TASKS``
(:mod:`.task`). :mod:`evoselect_jax.data.tfds_builder` writes them as TFDS
``array_record`` datasets.

Decisions:

- Unlabeled splits (CommonsenseQA test) load only with ``allow_unlabeled=True``, with
  ``answer == NO_ANSWER`` (-1); every other answer is a valid index into ``choices``.
- Items that need something missing or are irregular in the source are kept and marked in
  ``meta["quirks"]`` (HeadQA items that need an image: ``needs_image``); count them with
  :func:`quirk_counts`, drop them with ``BenchmarkTask(exclude=...)``.
- Passages (LogiQA, LogiQA 2.0) go to ``context``; ARC's retrieved ``para`` is ignored.
"""

from evoselect_jax.data.benchmarks.catalog import (
  BENCHMARKS,
  DATA_DIR_ENV,
  default_data_dir,
  load_task,
  quirk_counts,
  split_names,
  split_path,
  task_names,
)
from evoselect_jax.data.benchmarks.formats import NO_ANSWER, QUIRKS, FormatError
from evoselect_jax.data.benchmarks.task import BenchmarkTask

__all__ = [
  "BENCHMARKS",
  "DATA_DIR_ENV",
  "NO_ANSWER",
  "QUIRKS",
  "BenchmarkTask",
  "FormatError",
  "default_data_dir",
  "load_task",
  "quirk_counts",
  "split_names",
  "split_path",
  "task_names",
]
