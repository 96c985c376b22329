"""The simulated generator: kinds, fractions, determinism."""

import collections
import json

import numpy as np
import pytest

from evoselect_jax.data.clean import clean, normalize
from evoselect_jax.data.synthetic import FILLERS, solve
from evoselect_jax.generators.simulated import DEFECTS, KINDS, SimulatedGenerator
from evoselect_jax.registry import GENERATORS, TASKS

LETTERS = "ABCDE"


@pytest.fixture(scope="module")
def task():
  return TASKS.build({"name": "synthetic"})


def _generator(task, **kwargs):
  return GENERATORS.build({"name": "simulated", **kwargs}, task=task)


def _parse(raw):
  """``(kind, record)`` per raw text; text that is not JSON is a malformed record."""
  out = []
  for text in raw:
    try:
      record = json.loads(text)
    except ValueError:
      out.append(("malformed", None))
      continue
    out.append((record["_kind"], record))
  return out


def test_registered_builder(task):
  assert isinstance(_generator(task), SimulatedGenerator)
  with pytest.raises(TypeError, match="SyntheticTask"):
    _generator(object())


def test_same_seed_same_records_and_other_seed_other_records(task):
  gen = _generator(task)
  a = gen.generate(task.target, 300, seed=5)
  assert a == _generator(task).generate(task.target, 300, seed=5)
  assert a != gen.generate(task.target, 300, seed=6)
  assert all(isinstance(text, str) for text in a) and len(a) == 300


@pytest.mark.parametrize(
  "n, fractions",
  [
    (1000, {}),
    (37, {"noise": 0.2, "off_task": 0.1, "near_dup": 0.3, "malformed": 0.13}),
    (251, {"noise": 0.0, "off_task": 0.5, "near_dup": 0.0, "malformed": 0.5}),
    (99, {"noise": 0.25, "off_task": 0.25, "near_dup": 0.25, "malformed": 0.0}),
    (0, {}),
  ],
)
def test_realised_kind_counts_match_the_fractions(task, n, fractions):
  gen = _generator(task, **fractions)
  counts = collections.Counter(kind for kind, _ in _parse(gen.generate(task.target, n, seed=0)))
  assert sum(counts.values()) == n
  assert set(counts) <= set(KINDS)
  for kind in KINDS:
    assert abs(counts[kind] - gen.fractions[kind] * n) <= 1, (kind, counts)
  assert counts == collections.Counter({k: c for k, c in gen.counts(n).items() if c})


def test_keys_are_right_except_for_noise(task):
  target = ("max", "cards")
  seen = collections.Counter()
  for kind, record in _parse(_generator(task).generate(task.target, 800, seed=1)):
    if kind not in ("aligned", "noise", "off_task"):
      continue
    skill, fmt, answer = solve(record["question"])
    chosen = record["choices"][LETTERS.index(record["answer"])]
    assert len(record["choices"]) == 4 and answer in record["choices"]
    assert ((skill, fmt) == target) == (kind != "off_task"), (kind, record)
    assert (chosen == answer) == (kind != "noise"), (kind, record)
    seen[kind, skill, fmt] += 1
  assert len([k for k in seen if k[0] == "off_task"]) > 15  # off-task spans the other pairs


def test_exemplars_alone_set_the_target(task):
  exemplars = task.sample("after", "terse", 3, np.random.default_rng(0))
  raw = _generator(task, off_task=0.0).generate(exemplars, 50, seed=0)
  pairs = {solve(r["question"])[:2] for kind, r in _parse(raw) if kind in ("aligned", "noise")}
  assert pairs == {("after", "terse")}


def test_near_dups_are_near_identical_and_survive_exact_dedup(task):
  gen = _generator(task, near_dup=0.2, near_dup_sources=5)
  raw = gen.generate(task.target, 500, seed=2)
  parsed = _parse(raw)
  aligned = {r["question"]: r for kind, r in parsed if kind == "aligned"}
  position = {r["question"]: i for i, (kind, r) in enumerate(parsed) if kind != "malformed"}
  near = [r for kind, r in parsed if kind == "near_dup"]
  assert len(near) == 100
  sources = collections.Counter()
  for r in near:
    words = r["question"].split()
    core = " ".join(w for w in words if w not in FILLERS)
    assert 1 <= len(words) - len(core.split()) <= 2
    source = aligned[core]  # the same question, only fillers added
    assert sorted(r["choices"]) == sorted(source["choices"])
    key = r["choices"][LETTERS.index(r["answer"])]
    assert key == source["choices"][LETTERS.index(source["answer"])]
    assert normalize(r["question"]) != normalize(core)
    assert position[core] < position[r["question"]]  # the source comes first
    sources[core] += 1
  assert len(sources) == 5 and set(sources.values()) == {20}
  assert len({normalize(r["question"]) for r in near}) == len(near)
  # Exact dedup (a near-duplicate threshold of 1) keeps every one of them.
  out = clean(raw, test=[], near_dup_jaccard=1.0)
  kept = collections.Counter(ex.meta["kind"] for ex in out.examples)
  assert kept["near_dup"] == 100 and "duplicate" not in out.rejected


def test_malformed_records_cycle_over_the_defects(task):
  gen = _generator(task, malformed=0.4)
  parsed = _parse(gen.generate(task.target, 200, seed=3))
  defects = collections.Counter(
    "not_json" if r is None else r["_defect"] for kind, r in parsed if kind == "malformed"
  )
  assert set(defects) == set(DEFECTS) and set(defects.values()) == {20}


def test_generated_text_is_in_the_task_vocabulary(task):
  tok = task.tokenizer
  for kind, r in _parse(_generator(task).generate(task.target, 400, seed=4)):
    if kind != "malformed":
      tok.encode(" ".join([r["question"], *r["choices"]]))
  assert not tok.unknown_counts


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"noise": 0.5, "off_task": 0.4, "near_dup": 0.2}, "sum to 1.15"),
    ({"noise": -0.1}, "noise=-0.1"),
    ({"malformed": "0.1"}, "malformed='0.1'"),
    ({"near_dup_sources": 0}, "near_dup_sources"),
  ],
)
def test_bad_fractions_fail(task, kwargs, match):
  with pytest.raises(ValueError, match=match):
    _generator(task, **kwargs)


def test_bad_generate_arguments_fail(task):
  gen = _generator(task)
  mixed = task.target[:2] + task.sample("min", "ask", 2, np.random.default_rng(0))
  with pytest.raises(ValueError, match="one \\(skill, format\\) pair"):
    gen.generate(mixed, 10, seed=0)
  bare = [task.target[0].__class__("x", "q", ("1", "2", "3"), 0)]
  with pytest.raises(ValueError, match="meta"):
    gen.generate(bare, 10, seed=0)
  with pytest.raises(ValueError, match="at least one exemplar"):
    gen.generate([], 10, seed=0)
  with pytest.raises(ValueError, match="n must be"):
    gen.generate(task.target, -1, seed=0)
  with pytest.raises(ValueError, match="need aligned"):
    _generator(task, noise=0.5, off_task=0.0, near_dup=0.5, malformed=0.0).generate(
      task.target, 10, seed=0
    )
  with pytest.raises(ValueError, match="raise near_dup_sources"):
    _generator(task, off_task=0.0, near_dup=0.5, near_dup_sources=1).generate(
      task.target, 1000, seed=0
    )
