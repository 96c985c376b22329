"""The synthetic task family and its word tokenizer."""

import collections
import itertools
import json

import numpy as np
import pytest

from evoselect_jax.data.synthetic import (
  FORMATS,
  SKILLS,
  TEMPLATES,
  SyntheticTask,
  solve,
)
from evoselect_jax.data.tokenizer import WordTokenizer
from evoselect_jax.registry import TASKS


def _task(**kwargs):
  return TASKS.build({"name": "synthetic", **kwargs})


def _questions(examples):
  return [ex.question for ex in examples]


def _prompt(question, choice):
  return f"Question: {question}\nAnswer: {choice}"


def test_registered_builder_returns_a_task():
  task = _task()
  assert isinstance(task, SyntheticTask)
  assert (task.target_skill, task.target_format) in {
    (ex.meta["skill"], ex.meta["format"]) for ex in task.target
  }
  assert "('max', 'cards')" in task.describe()


def test_same_seed_same_task_and_other_seed_other_task():
  a, b, c = _task(seed=3), _task(seed=3), _task(seed=4)
  for x, y in [(a.target, b.target), (a.test, b.test), (a.pretrain(300, 1), b.pretrain(300, 1))]:
    assert [e.to_json() for e in x] == [e.to_json() for e in y]
  assert _questions(a.test) != _questions(c.test)
  assert _questions(a.pretrain(300, 1)) != _questions(a.pretrain(300, 2))
  assert _questions(a.pretrain(300, 1)) != _questions(c.pretrain(300, 1))
  x = a.sample("after", "list", 50, np.random.default_rng(7))
  y = a.sample("after", "list", 50, np.random.default_rng(7))
  assert [e.to_json() for e in x] == [e.to_json() for e in y]


def test_splits_are_sized_distinct_and_disjoint():
  task = _task(num_target=40, num_test=300)
  pretrain = task.pretrain(3000, seed=0)
  splits = {"target": task.target, "test": task.test, "pretrain": pretrain}
  assert {k: len(v) for k, v in splits.items()} == {"target": 40, "test": 300, "pretrain": 3000}
  for name, examples in splits.items():
    assert len(set(_questions(examples))) == len(examples), name
    assert len({ex.id for ex in examples}) == len(examples), name
  for (n1, e1), (n2, e2) in itertools.combinations(splits.items(), 2):
    assert not set(_questions(e1)) & set(_questions(e2)), (n1, n2)


@pytest.mark.parametrize(
  "kwargs",
  [{}, {"list_len": 5, "num_choices": 5, "num_range": 9}, {"list_len": (3, 7), "num_choices": 3}],
)
def test_every_answer_is_right_and_options_are_well_formed(kwargs):
  task = _task(**kwargs)
  lo, hi = task.list_len
  rng = np.random.default_rng(0)
  for skill, fmt in itertools.product(SKILLS, FORMATS):
    for ex in task.sample(skill, fmt, 150, rng):
      assert ex.meta == {"skill": skill, "format": fmt}
      assert solve(ex.question) == (skill, fmt, ex.choices[ex.answer])
      assert len(ex.choices) == task.num_choices == len(set(ex.choices))
      numbers = [int(w) for w in ex.question.split() if w.isdigit()]
      items = numbers[1:] if skill in ("after", "count") and fmt in ("ask", "terse") else numbers
      items = items[:-1] if skill in ("after", "count") and fmt in ("list", "cards") else items
      assert lo <= len(items) <= hi
      assert all(0 <= x < task.num_range for x in items)
      if skill == "count":
        assert all(0 <= int(c) <= len(items) for c in ex.choices)
      else:
        assert len(set(items)) == len(items)
        assert all(int(c) in items for c in ex.choices)


def test_answer_positions_are_uniform():
  task = _task(num_test=800)
  counts = collections.Counter(ex.answer for ex in task.test)
  assert sorted(counts) == [0, 1, 2, 3]
  assert min(counts.values()) > 800 / 4 * 0.8


def test_default_warm_up_mix_is_every_pair_but_the_target_evenly():
  task = _task()
  pretrain = task.pretrain(23 * 10 + 5, seed=0)
  counts = collections.Counter((ex.meta["skill"], ex.meta["format"]) for ex in pretrain)
  all_pairs = set(itertools.product(SKILLS, FORMATS))
  assert set(counts) == set(task.pretrain_pairs) == all_pairs - {("max", "cards")}
  assert max(counts.values()) - min(counts.values()) <= 1
  assert [ex.id for ex in pretrain] == [f"pretrain-{i}" for i in range(len(pretrain))]


def test_warm_up_mix_can_be_narrowed_and_never_holds_the_target():
  task = _task(pretrain_skills=("max", "min"), pretrain_formats=("cards", "ask"))
  assert set(task.pretrain_pairs) == {("max", "ask"), ("min", "cards"), ("min", "ask")}
  one_pair = _task(skills=("max",), formats=("cards",))
  with pytest.raises(ValueError, match="warm-up mix is empty"):
    one_pair.pretrain(10, seed=0)


def test_each_pair_has_a_word_no_other_template_uses():
  words = {(s, f): set(TEMPLATES[f][s].split()) for s in SKILLS for f in FORMATS}
  for pair, own in words.items():
    others = set().union(*(w for p, w in words.items() if p != pair))
    assert own - others, pair


def test_solve_returns_none_for_text_outside_the_family():
  assert solve("what is the capital of france ?") is None
  assert solve("max ( 3 7 12 ) ? now") is None
  assert solve("next ( 12 ; 3 7 12 ) ?") is None  # the cue is last
  assert solve("next ( 4 ; 3 7 12 ) ?") is None  # the cue is missing
  assert solve("next ( 7 ; 3 7 12 ) ?") == ("after", "terse", "12")


def test_prompts_fit_32_tokens_without_unknown_words():
  task = _task()
  tok = task.tokenizer
  lengths = [
    len(tok.encode(_prompt(ex.question, c)))
    for ex in [*task.target, *task.test, *task.pretrain(2000, seed=0)]
    for c in ex.choices
  ]
  assert max(lengths) <= 32
  assert not tok.unknown_counts


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"skills": ("max", "sum")}, "unknown: \\['sum'\\]"),
    ({"skills": "max"}, "sequence of names"),
    ({"skills": ("max",), "target_skill": "min"}, "target_skill"),
    ({"target_format": "essay"}, "target_format"),
    ({"list_len": 3}, "list_len"),
    ({"list_len": (6, 4)}, "list_len"),
    ({"list_len": "5"}, "list_len"),
    ({"num_choices": 6}, "num_choices"),
    ({"num_range": 5}, "num_range"),
    ({"num_test": 0}, "num_test"),
    ({"seed": -1}, "seed"),
    ({"pretrain_formats": ()}, "pretrain_formats"),
    ({"num_range": 4, "list_len": 4}, "distinct"),  # 24 lists < num_target + num_test
  ],
)
def test_bad_config_fails_naming_the_value(kwargs, match):
  with pytest.raises(ValueError, match=match):
    _task(**kwargs)


def test_bad_sample_arguments():
  task = _task()
  with pytest.raises(ValueError, match="skill"):
    task.sample("sum", "ask", 3, np.random.default_rng(0))
  with pytest.raises(TypeError, match="Generator"):
    task.sample("max", "ask", 3, 0)


def test_tokenizer_round_trip():
  task = _task()
  tok = task.tokenizer
  assert (tok.pad_id, tok.bos_id, tok.unk_id) == (0, 1, 2)
  for ex in task.test[:50]:
    text = _prompt(ex.question, ex.choices[ex.answer])
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos_id, *ids, tok.pad_id, tok.pad_id]) == text
    words = ex.question.split()
    assert ids == tok.encode(
      " ".join(["Question:", *words, "\n", "Answer:", ex.choices[ex.answer]])
    )
    assert tok.tokens[ids[len(words) + 1]] == "\n"


def test_tokenizer_counts_unknown_words_without_failing():
  tok = _task().tokenizer
  ids = tok.encode("what is the zorp of zorp ?\tfoo")
  assert ids.count(tok.unk_id) == 3
  assert tok.unknown_counts == collections.Counter({"zorp": 2, "foo": 1})
  assert tok.decode(ids) == "what is the <unk> of <unk> ? <unk>"


def test_tokenizer_saves_and_loads():
  task = _task()
  tok = WordTokenizer.from_json(json.loads(json.dumps(task.tokenizer.to_json())))
  assert tok.tokens == task.tokenizer.tokens
  assert tok.vocab_size == len(tok.tokens)
  text = _prompt(task.test[0].question, "7")
  assert tok.encode(text) == task.tokenizer.encode(text)


def test_vocabulary_does_not_depend_on_the_target_or_the_enabled_pairs():
  a = _task()
  b = _task(
    skills=("min", "count"), formats=("terse",), target_skill="count", target_format="terse"
  )
  assert a.tokenizer.tokens == b.tokenizer.tokens


@pytest.mark.parametrize(
  "tokens, match",
  [
    (["a", "<pad>", "<bos>", "<unk>"], "must start with"),
    (["<pad>", "<bos>", "<unk>", "a", "a"], "duplicate"),
    (["<pad>", "<bos>", "<unk>", "a b"], "whitespace"),
    (["<pad>", "<bos>", "<unk>", ""], "non-empty"),
  ],
)
def test_tokenizer_rejects_bad_vocabularies(tokens, match):
  with pytest.raises(ValueError, match=match):
    WordTokenizer(tokens)


def test_tokenizer_decode_rejects_ids_outside_the_vocabulary():
  tok = WordTokenizer.from_vocab(["a", "b"])
  assert tok.tokens == ("<pad>", "<bos>", "<unk>", "\n", "a", "b")
  with pytest.raises(ValueError, match="Token id 6"):
    tok.decode([4, 6])
