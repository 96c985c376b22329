"""Benchmark loaders: every split of shared/data, cross-checks between copies, malformed records.

Reads the real files under ``benchmarks.default_data_dir()`` (``$EVOSELECT_DATA_DIR``,
else ``<repo>/../shared/data``); malformed records are written to ``tmp_path``.
"""

import functools
import json
import pathlib

import pytest

from evoselect_jax.data import benchmarks, load_task
from evoselect_jax.data.benchmarks import FormatError
from evoselect_jax.registry import TASKS

# Example counts per split, as listed in shared/data/SOURCES.md.
COUNTS = {
  ("arc_challenge", "train"): 1119,
  ("arc_challenge", "dev"): 299,
  ("arc_challenge", "test"): 1170,
  ("arc_challenge", "test_full"): 1172,
  ("openbookqa", "train"): 4957,
  ("openbookqa", "dev"): 500,
  ("openbookqa", "test"): 500,
  ("commonsenseqa", "train"): 9741,
  ("commonsenseqa", "dev"): 1221,
  ("commonsenseqa", "test"): 1140,
  ("logiqa", "eval"): 651,
  ("logiqa", "test"): 651,
  ("logiqa", "eval_zh"): 651,
  ("logiqa", "test_zh"): 651,
  ("logiqa2", "dev"): 1569,
  ("logiqa2", "test"): 1572,
  ("logiqa2", "dev_zh"): 1593,
  ("logiqa2", "test_zh"): 1594,
  ("logiqa2", "ood_test"): 575,
  ("medqa", "test"): 1273,
  ("medqa_5opt", "test"): 1273,
  ("medmcqa", "validation"): 4183,
  ("medmcqa", "medagents_subset"): 2816,
  ("headqa", "train"): 2657,
  ("headqa", "dev"): 1366,
  ("headqa", "test"): 2742,
}
UNLABELED = {("commonsenseqa", "test")}
# Files in shared/data that no split reads: docs, and a redundant copy of OBQA test.
NOT_SPLITS = {"SOURCES.md", "headqa/README.txt", "openbookqa/llm_foundry/openbook_qa.jsonl"}


@functools.cache
def _load(name, split):
  return load_task(name, split, allow_unlabeled=(name, split) in UNLABELED)


@pytest.mark.parametrize(("name", "split"), sorted(COUNTS))
def test_split_loads_with_sources_count_and_valid_answers(name, split):
  examples = _load(name, split)
  assert len(examples) == COUNTS[name, split]
  assert len({ex.id for ex in examples}) == len(examples)
  for ex in examples:
    assert 2 <= len(ex.choices) <= 5 and ex.question
    if (name, split) in UNLABELED:
      assert ex.answer == benchmarks.NO_ANSWER
    else:
      assert 0 <= ex.answer < len(ex.choices)
    # A blank option only where the source has one, and marked.
    assert all(ex.choices) or "blank_option" in ex.meta["quirks"], ex.id


def test_every_split_is_counted_and_every_data_file_is_read():
  present = {(n, s) for n in benchmarks.task_names() for s in benchmarks.split_names(n)}
  assert set(COUNTS) == present - {("arc_easy", s) for s in ("train", "dev", "test")}
  root = benchmarks.default_data_dir()
  read = {benchmarks.split_path(n, s).relative_to(root).as_posix() for n, s in COUNTS}
  files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
  assert files - NOT_SPLITS == read


def test_ids_and_content_are_the_sources():
  arc = _load("arc_challenge", "test")
  assert arc[0].id == "Mercury_7175875" and arc[0].answer == 2
  assert arc[0].choices[2] == "Planetary days will become shorter."
  csqa = _load("commonsenseqa", "dev")[0]
  assert csqa.id == "1afa02df02c908a558b4036e80242fac" and csqa.meta["concept"] == "revolving door"
  headqa = _load("headqa", "dev")[0]
  assert (
    headqa.id == "Cuaderno_2015_1_B-1" and headqa.choices[headqa.answer] == "The Nernst equation."
  )
  logiqa = _load("logiqa", "eval")[0]
  assert logiqa.context.startswith("Black Americans are twice") and logiqa.answer == 0
  assert logiqa.choices[3].startswith("The blood pressure of Yoruba")  # "D." removed
  assert _load("logiqa2", "ood_test")[0].choices[0].startswith("The people are")  # "A." removed
  assert _load("medmcqa", "validation")[0].choices[0].startswith("Impulse through")


def test_arc_numeric_labels_agree_with_the_full_test_copy():
  # test_full (HF schema) has numeric labels converted to letters: on the 1170 shared ids
  # both parsers give the same choices and gold index.
  raw = benchmarks.split_path("arc_challenge", "test").read_text().splitlines()
  numeric = {r["id"] for r in map(json.loads, raw) if r["question"]["choices"][0]["label"] == "1"}
  assert len(numeric) == 22
  full = {ex.id: ex for ex in _load("arc_challenge", "test_full")}
  test = _load("arc_challenge", "test")
  assert set(full) - {ex.id for ex in test} == {"Mercury_412681", "MCAS_2006_9_43"}
  assert all(full[ex.id] == ex for ex in test)


def test_obqa_tsv_matches_the_llm_foundry_copy_and_keeps_the_five_option_item():
  copy = benchmarks.default_data_dir() / "openbookqa/llm_foundry/openbook_qa.jsonl"
  rows = [json.loads(line) for line in copy.read_text().splitlines()]
  test = _load("openbookqa", "test")
  assert [(r["query"], tuple(r["choices"]), r["gold"]) for r in rows] == [
    (ex.question, ex.choices, ex.answer) for ex in test
  ]
  (odd,) = [ex for ex in _load("openbookqa", "train") if len(ex.choices) != 4]
  assert odd.id == "12-1145" and len(odd.choices) == 5 and odd.answer == 1
  assert benchmarks.quirk_counts(_load("openbookqa", "train")) == {"duplicate_label": 1}


def test_medqa_versions_and_medmcqa_subset_agree():
  four, five = _load("medqa", "test"), _load("medqa_5opt", "test")
  assert [ex.question for ex in four] == [ex.question for ex in five]
  assert [ex.choices[ex.answer] for ex in four] == [ex.choices[ex.answer] for ex in five]
  assert {len(ex.choices) for ex in four} == {4} and {len(ex.choices) for ex in five} == {5}
  assert four[0].meta["step"] == "step1"
  validation = {ex.question: ex for ex in _load("medmcqa", "validation")}
  for ex in _load("medmcqa", "medagents_subset"):
    assert validation[ex.question].choices == ex.choices
    assert validation[ex.question].answer == ex.answer


def test_headqa_items_that_need_an_image_are_counted_not_dropped():
  for split, n in (("train", 68), ("dev", 30), ("test", 67)):
    examples = _load("headqa", split)
    assert benchmarks.quirk_counts(examples) == {"needs_image": n}
    assert sum(bool(ex.meta.get("image")) for ex in examples) == n


def test_logiqa_quirks():
  assert benchmarks.quirk_counts(_load("logiqa", "eval")) == {"option_label_missing": 11}
  assert benchmarks.quirk_counts(_load("logiqa", "test")) == {
    "option_label_missing": 2,
    "options_reordered": 19,
  }
  # Options printed A, C, B, D; answer "b" names the label: valves 2 and 3 (the solution).
  valves = _load("logiqa", "test")[108]
  assert valves.question.startswith("Now we need to open the No.1 valve")
  assert valves.choices[valves.answer] == "No.2 valve and No.3 valve."
  assert valves.meta["quirks"] == ("options_reordered",)
  assert benchmarks.quirk_counts(_load("logiqa2", "dev")) == {"duplicate_id": 4}
  assert "10882-L778" in {ex.id for ex in _load("logiqa2", "dev")}
  assert benchmarks.quirk_counts(_load("logiqa2", "dev_zh")) == {"blank_option": 7}


def test_unlabeled_split_needs_the_flag():
  with pytest.raises(ValueError, match="allow_unlabeled=True"):
    load_task("commonsenseqa", "test")


def test_unknown_names_list_the_valid_ones(tmp_path):
  with pytest.raises(ValueError, match="valid names: arc_challenge, arc_easy, commonsenseqa"):
    load_task("arc", "test")
  with pytest.raises(ValueError, match="valid splits: eval, test, eval_zh, test_zh"):
    load_task("logiqa", "train")
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "arc_easy" / "dev.jsonl")):
    load_task("arc_easy", "dev", tmp_path)


_ARC_GOOD = json.dumps(
  {
    "id": "q1",
    "question": {
      "stem": "Pick 2.",
      "choices": [{"label": str(i), "text": t} for i, t in enumerate(["one", "two", "three"], 1)],
    },
    "answerKey": "2",
  }
)
_MEDQA_GOOD = {
  "question": "Q?",
  "options": dict(zip("ABCD", "wxyz", strict=True)),
  "answer_idx": "B",
  "answer": "x",
}
_LOGIQA_GOOD = ["", "a", "Context.", "Question?", "A.one", "B.two", "C.three", "D.four"]
_HEADQA_GOOD = {
  "qid": "1",
  "qtext": "Q?",
  "ra": "2",
  "image": "",
  "answers": [{"aid": 1, "atext": "one"}, {"aid": 2, "atext": "two"}],
}


def _jsonl(*records):
  return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n"


def _headqa(item):
  exam = {"name": "E", "category": "biology", "year": "2015", "data": [_HEADQA_GOOD, item]}
  return json.dumps({"version": "1.0", "language": "en", "exams": {"E": exam}})


_TSV_HEAD = "ID\tQuestion Stem\tChoices\tComplete Question\tAnswer Key\n"
_TSV_GOOD = "1-1\tStem\t(A) a (B) b (C) c (D) d\tStem (A) a (B) b (C) c (D) d\tB\n"

# (benchmark, split, file content, expected location, expected field): one per format.
MALFORMED = [
  pytest.param(
    "arc_challenge",
    "dev",
    _jsonl(_ARC_GOOD, {**json.loads(_ARC_GOOD), "answerKey": "5"}),
    "line 2",
    "answerKey",
    id="arc-jsonl",
  ),
  pytest.param(
    "arc_challenge",
    "test_full",
    _jsonl(
      {
        "id": "x",
        "question": "Q?",
        "choices": {"text": ["a", "b"], "label": ["A"]},
        "answerKey": "A",
      }
    ),
    "line 1",
    "choices",
    id="arc-hf-jsonl",
  ),
  pytest.param(
    "openbookqa",
    "dev",
    _TSV_HEAD + _TSV_GOOD + "1-2\tStem\t(A) a (B) b\tx\tC\n",
    "line 3",
    "Answer Key",
    id="obqa-tsv",
  ),
  pytest.param(
    "openbookqa", "dev", _TSV_HEAD + "1-2\tStem\ta b\tx\n", "line 2", "row", id="obqa-tsv-columns"
  ),
  pytest.param(
    "commonsenseqa",
    "test",
    _jsonl({**json.loads(_ARC_GOOD), "answerKey": "1"}),
    "line 1",
    "answerKey",
    id="csqa-unlabeled-with-answer",
  ),
  pytest.param(
    "commonsenseqa",
    "dev",
    _jsonl(_ARC_GOOD, '{"id": "q2", "question": '),
    "line 2",
    "record",
    id="csqa-bad-json",
  ),
  pytest.param(
    "logiqa",
    "eval",
    "\n".join(_LOGIQA_GOOD + ["", "e", *_LOGIQA_GOOD[2:]]),
    "line 10",
    "answer",
    id="logiqa-txt",
  ),
  pytest.param(
    "logiqa",
    "eval",
    "\n".join(_LOGIQA_GOOD + _LOGIQA_GOOD[:5]),
    "line 9",
    "record",
    id="logiqa-txt-truncated",
  ),
  pytest.param(
    "logiqa2",
    "dev",
    _jsonl({"id": 1, "answer": 4, "text": "T", "question": "Q", "options": ["a", "b", "c", "d"]}),
    "line 1",
    "answer",
    id="logiqa2-jsonl",
  ),
  pytest.param(
    "medqa",
    "test",
    _jsonl(_MEDQA_GOOD, {**_MEDQA_GOOD, "answer": "w"}),
    "line 2",
    "answer",
    id="medqa-jsonl",
  ),
  pytest.param(
    "medmcqa",
    "validation",
    _jsonl({"question": "Q", "choices": ["A. a", 3], "answer": 0}),
    "line 1",
    "choices[1]",
    id="medmcqa-jsonl",
  ),
  pytest.param(
    "headqa",
    "dev",
    _headqa({**_HEADQA_GOOD, "ra": "7"}),
    "record exams['E'].data[1]",
    "ra",
    id="headqa-json",
  ),
]


@pytest.mark.parametrize(("name", "split", "content", "where", "field"), MALFORMED)
def test_malformed_record_names_file_line_and_field(tmp_path, name, split, content, where, field):
  path = benchmarks.split_path(name, split, tmp_path)
  path.parent.mkdir(parents=True)
  path.write_text(content, encoding="utf-8")
  with pytest.raises(FormatError) as info:
    load_task(name, split, tmp_path, allow_unlabeled=True)
  assert str(info.value).startswith(f"{path}, {where}, field {field!r}: ")
  assert (info.value.path, info.value.field) == (path, field)


def test_data_dir_env_var(tmp_path, monkeypatch):
  (tmp_path / "arc_easy").mkdir()
  (tmp_path / "arc_easy" / "dev.jsonl").write_text(_ARC_GOOD + "\n")
  monkeypatch.setenv(benchmarks.DATA_DIR_ENV, str(tmp_path))
  assert benchmarks.default_data_dir() == tmp_path
  (ex,) = load_task("arc_easy", "dev")
  assert ex.choices == ("one", "two", "three") and ex.answer == 1


def test_registered_tasks():
  assert set(benchmarks.task_names()) <= set(TASKS.names())
  arc = TASKS.build({"name": "arc_challenge", "num_target": 64})
  assert len(arc.target) == 64 and len(arc.test) == 1170
  assert {ex.id for ex in arc.target} <= {ex.id for ex in _load("arc_challenge", "train")}
  headqa = TASKS.build({"name": "headqa", "exclude": ["needs_image"]})
  assert (len(headqa.target), len(headqa.test)) == (2657 - 68, 2742 - 67)
  assert "test/needs_image: 67" in headqa.describe()
  medqa = TASKS.build({"name": "medqa", "num_target": 100, "seed": 3})
  assert len(medqa.target) == 100 and len(medqa.test) == 1173
  assert not {ex.id for ex in medqa.target} & {ex.id for ex in medqa.test}
  with pytest.raises(ValueError, match="num_target must be in 1..1272"):
    TASKS.build({"name": "medqa"})
  with pytest.raises(ValueError, match="exclude must be quirk names"):
    TASKS.build({"name": "headqa", "exclude": ["images"]})


def test_default_data_dir_is_shared_beside_the_repo(monkeypatch):
  monkeypatch.delenv(benchmarks.DATA_DIR_ENV, raising=False)
  repo = pathlib.Path(__file__).resolve().parents[1]
  assert benchmarks.default_data_dir() == repo.parent / "shared" / "data"
