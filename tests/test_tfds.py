"""TFDS: a benchmark prepared as array_record and read back with tfds.data_source, no TensorFlow."""

import importlib.util
import json

import pytest
import tensorflow_datasets as tfds

from evoselect_jax.data import benchmarks, load_task, tfds_builder


@pytest.fixture(autouse=True)
def _quiet():
  tfds.disable_progress_bar()


def test_no_tensorflow_is_needed():
  assert importlib.util.find_spec("tensorflow") is None
  assert importlib.util.find_spec("array_record") is not None


def test_logiqa_round_trips_through_array_record(tmp_path):
  builder = tfds_builder.prepare("logiqa", tmp_path)
  assert builder.info.file_format.value == "array_record"
  assert set(builder.info.splits) == set(benchmarks.split_names("logiqa"))
  assert sorted(p.name for p in builder.data_path.glob("*.array_record*")) == sorted(
    f"evoselect_mcqa-{split}.array_record-00000-of-00001"
    for split in benchmarks.split_names("logiqa")
  )
  for split in benchmarks.split_names("logiqa"):
    assert tfds_builder.load("logiqa", split, tmp_path) == load_task("logiqa", split)
  raw = tfds.data_source("evoselect_mcqa/logiqa", split="test", data_dir=tmp_path)
  assert len(raw) == 651 and raw[108]["answer"] == 1
  assert raw[0]["context"].decode().startswith("In the planning of a new district")


def test_unlabeled_split_keeps_answer_minus_one(tmp_path):
  source = tmp_path / "source"
  record = {
    "id": "q1",
    "question": {
      "stem": "Pick b.",
      "choices": [{"label": "A", "text": "a"}, {"label": "B", "text": "b"}],
    },
    "answerKey": "B",
  }
  files = {
    "train": record,
    "dev": record,
    "test": {k: v for k, v in record.items() if k != "answerKey"},
  }
  for split, rec in files.items():
    path = benchmarks.split_path("commonsenseqa", split, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec) + "\n")
  tfds_builder.prepare("commonsenseqa", tmp_path / "tfds", source)
  (test,) = tfds_builder.load("commonsenseqa", "test", tmp_path / "tfds")
  assert test.answer == benchmarks.NO_ANSWER and test.context is None
  (dev,) = tfds_builder.load("commonsenseqa", "dev", tmp_path / "tfds")
  assert dev == load_task("commonsenseqa", "dev", source)[0] and dev.answer == 1


def test_unknown_benchmark(tmp_path):
  with pytest.raises(ValueError, match="valid names: arc_challenge"):
    tfds_builder.prepare("arc", tmp_path)


def test_a_missing_source_file_fails_the_preparation(tmp_path):
  with pytest.raises(FileNotFoundError, match="arc_easy/train: no file"):
    tfds_builder.prepare("arc_easy", tmp_path / "tfds", tmp_path)
