"""The replay generator (benchmark items with noise and off-task items) and the jsonl pool."""

import collections
import json

import pytest

from evoselect_jax.data.benchmarks import BenchmarkTask, load_task
from evoselect_jax.data.clean import clean
from evoselect_jax.generators.jsonl import JsonlGenerator
from evoselect_jax.generators.replay import ReplayGenerator
from evoselect_jax.registry import GENERATORS

LETTERS = "ABCDE"


def write_arc(path, prefix, count, num_choices=4):
  """``count`` ARC-format items whose key is option ``i % num_choices``."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("w") as f:
    for i in range(count):
      choices = [
        {"label": LETTERS[j], "text": f"{prefix} option {i}.{j}"} for j in range(num_choices)
      ]
      question = {"stem": f"{prefix} question number {i} asks what?", "choices": choices}
      key = LETTERS[i % num_choices]
      f.write(json.dumps({"id": f"{prefix}-{i}", "question": question, "answerKey": key}) + "\n")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  write_arc(root / "arc_challenge" / "train.jsonl", "challenge", 11)
  write_arc(root / "arc_challenge" / "test.jsonl", "held out", 3)
  write_arc(root / "arc_easy" / "train.jsonl", "easy", 7, num_choices=3)
  return root


def replay(data_dir, **kwargs):
  options = dict(source="arc_challenge", split="train", data_dir=str(data_dir))
  return GENERATORS.build({"name": "replay", **options, **kwargs}, task=None)


def kinds(raw):
  return [json.loads(r)["_kind"] for r in raw]


MIX = dict(noise=0.2, off_task=0.3, off_task_source="arc_easy", off_task_split="train")


def test_replays_items_with_right_and_wrong_keys(data_dir):
  gen = replay(data_dir, **MIX)
  assert isinstance(gen, ReplayGenerator)
  source = {ex.question: ex for ex in load_task("arc_challenge", "train", data_dir)}
  easy = {ex.question: ex for ex in load_task("arc_easy", "train", data_dir)}
  raw = gen.generate([], 10, seed=0)
  assert collections.Counter(kinds(raw)) == {"aligned": 5, "noise": 2, "off_task": 3}
  assert gen.counts(10) == {"aligned": 5, "noise": 2, "off_task": 3}
  for record in map(json.loads, raw):
    ex = (easy if record["_kind"] == "off_task" else source)[record["question"]]
    assert record["choices"] == list(ex.choices)
    assert (LETTERS.index(record["answer"]) == ex.answer) == (record["_kind"] != "noise")
  # clean parses every record and keeps the true kind for reporting.
  out = clean(raw, test=load_task("arc_challenge", "test", data_dir))
  assert len(out.examples) == 10
  assert collections.Counter(ex.meta["kind"] for ex in out.examples) == collections.Counter(
    kinds(raw)
  )


@pytest.mark.parametrize("n", [0, 1, 9, 37])
def test_realised_fractions(data_dir, n):
  gen = replay(data_dir, **MIX)
  counts = collections.Counter(kinds(gen.generate([], n, seed=1)))
  assert sum(counts.values()) == n
  for kind, fraction in gen.fractions.items():
    assert abs(counts[kind] - fraction * n) <= 1


def test_deterministic_by_seed(data_dir):
  a = replay(data_dir, **MIX).generate([], 9, seed=5)
  assert a == replay(data_dir, **MIX).generate([], 9, seed=5)
  assert a != replay(data_dir, **MIX).generate([], 9, seed=6)


def test_no_item_twice_in_a_call_unless_the_split_runs_out(data_dir):
  gen = replay(data_dir, noise=0.5)
  questions = [json.loads(r)["question"] for r in gen.generate([], 11, seed=2)]
  assert len(set(questions)) == 11  # aligned and noise items come from one draw
  uses = collections.Counter(json.loads(r)["question"] for r in gen.generate([], 25, seed=2))
  assert len(uses) == 11 and set(uses.values()) <= {2, 3}  # whole passes over the split


def test_exemplars_are_left_out(data_dir):
  items = load_task("arc_challenge", "train", data_dir)
  raw = replay(data_dir).generate(items[:4], 7, seed=0)
  assert {json.loads(r)["question"] for r in raw} == {ex.question for ex in items[4:]}
  with pytest.raises(ValueError, match="no items left"):
    replay(data_dir).generate(items, 1, seed=0)


def test_refuses_to_replay_the_test_split(data_dir):
  task = BenchmarkTask("arc_challenge", data_dir=data_dir)
  with pytest.raises(ValueError, match="test split"):
    GENERATORS.build(
      {"name": "replay", "source": "arc_challenge", "split": "test", "data_dir": data_dir},
      task=task,
    )
  built = GENERATORS.build(
    {"name": "replay", "source": "arc_challenge", "split": "train", "data_dir": data_dir}, task=task
  )
  assert len(built.items) == 11


def test_replay_errors(data_dir):
  with pytest.raises(ValueError, match="needs off_task_source"):
    replay(data_dir, off_task=0.2)
  with pytest.raises(ValueError, match="off_task is 0"):
    replay(data_dir, off_task_source="arc_easy", off_task_split="train")
  with pytest.raises(ValueError, match="source itself"):
    replay(data_dir, off_task=0.2, off_task_source="arc_challenge", off_task_split="train")
  with pytest.raises(ValueError, match="sum to"):
    replay(data_dir, **(MIX | {"noise": 0.8}))
  with pytest.raises(ValueError, match="noise"):
    replay(data_dir, noise=-0.1)
  with pytest.raises(FileNotFoundError, match="arc_challenge/dev"):
    replay(data_dir, split="dev")
  with pytest.raises(ValueError, match="Unknown benchmark"):
    replay(data_dir, source="nope")
  with pytest.raises(ValueError, match="seed"):
    replay(data_dir).generate([], 3, seed=-1)


# --- jsonl ------------------------------------------------------------------------------------


def pool_file(tmp_path, text):
  path = tmp_path / "pool.jsonl"
  path.write_bytes(text.encode())
  return path


def test_jsonl_hands_out_lines_in_order(tmp_path):
  lines = [
    json.dumps({"question": f"Q{i}?", "choices": ["a", "b", "c"], "answer": "A"}) for i in range(7)
  ]
  path = pool_file(tmp_path, "\n".join(lines) + "\n")
  gen = GENERATORS.build({"name": "jsonl", "path": str(path)}, task=None)
  assert isinstance(gen, JsonlGenerator)
  assert gen.generate([], 3, seed=9) == lines[:3]
  assert gen.generate([], 0, seed=9) == []
  assert gen.generate([], 2, seed=0) == lines[3:5]  # the seed does not matter
  assert gen.position == 5
  with pytest.raises(
    ValueError, match=r"3 records asked, but .*pool.jsonl has 2 left \(lines 6..7"
  ):
    gen.generate([], 3, seed=0)
  assert gen.position == 5  # nothing consumed
  assert gen.generate([], 2, seed=0) == lines[5:]
  restarted = GENERATORS.build({"name": "jsonl", "path": path, "start": 3}, task=None)
  assert restarted.generate([], 4, seed=0) == lines[3:]
  assert len(clean(lines, test=[]).examples) == 7


def test_jsonl_lines_are_verbatim(tmp_path):
  path = pool_file(tmp_path, '{"a": 1}\r\n\n  not json \u2028 x\r\n{"b": 2}')
  gen = JsonlGenerator(path=path)
  assert gen.records == ['{"a": 1}', "", "  not json \u2028 x", '{"b": 2}']
  assert clean(gen.generate([], 4, seed=0), test=[]).rejected["not_json"] == 2


def test_jsonl_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no pool file"):
    JsonlGenerator(path=tmp_path / "missing.jsonl")
  with pytest.raises(ValueError, match="holds no records"):
    JsonlGenerator(path=pool_file(tmp_path, ""))
  latin1 = tmp_path / "latin1.jsonl"
  latin1.write_bytes(b"caf\xe9\n")
  with pytest.raises(ValueError, match="not UTF-8"):
    JsonlGenerator(path=latin1)
  with pytest.raises(ValueError, match="start"):
    JsonlGenerator(path=pool_file(tmp_path, "a\nb\n"), start=3)
