"""Cleaning a generated pool: parsing, validation, dedup, test overlap."""

import collections
import json
import time

import numpy as np
import pytest

from evoselect_jax.data.clean import NGRAM, REASONS, clean, normalize
from evoselect_jax.registry import GENERATORS, TASKS
from evoselect_jax.types import MCQExample

QUESTION = "cards on the table : 3 and 7 and 12 and 5 . the highest card is ?"


def _rec(question=QUESTION, choices=("3", "7", "12", "5"), answer="C", **extra):
  return json.dumps({"question": question, "choices": list(choices), "answer": answer} | extra)


def _without(field):
  record = json.loads(_rec())
  del record[field]
  return json.dumps(record)


def _trigrams(text):
  w = normalize(text).split()
  return collections.Counter(tuple(w[i : i + NGRAM]) for i in range(max(1, len(w) - NGRAM + 1)))


def _trigram_jaccard(a, b):
  """Reference: Jaccard similarity of two texts' word-trigram multisets."""
  a, b = (_trigrams(t) if isinstance(t, str) else t for t in (a, b))
  return sum((a & b).values()) / sum((a | b).values())


def test_valid_records_become_examples():
  raw = [
    _rec(_kind="aligned"),
    _rec("max ( 3 7 ) ?", ["3", "7", "1"], 1),
    _rec("min ( 3 7 9 0 1 ) ?", ["3", " 7", "9", "0", "1 "], " e ", context="A list."),
  ]
  out = clean(raw, test=[], id_prefix="r1-")
  assert out.rejected == collections.Counter() and out.reasons == []
  assert out.examples == [
    MCQExample("r1-0", QUESTION, ("3", "7", "12", "5"), 2),
    MCQExample("r1-1", "max ( 3 7 ) ?", ("3", "7", "1"), 1),
    MCQExample("r1-2", "min ( 3 7 9 0 1 ) ?", ("3", "7", "9", "0", "1"), 4, "A list."),
  ]
  assert [ex.meta for ex in out.examples] == [
    {"source_index": 0, "kind": "aligned"},
    {"source_index": 1},
    {"source_index": 2},
  ]


@pytest.mark.parametrize(
  "text, reason",
  [
    ("Sure! Here is a new question: what is 3 + 4?", "not_json"),
    ("```json\n" + _rec() + "\n```", "not_json"),
    (_rec()[:40], "not_json"),
    ("__import__('os').system('false')", "not_json"),
    ("", "not_json"),
    ("[1, 2]", "not_object"),
    ('"a question"', "not_object"),
    (_without("question"), "missing_field"),
    (_without("choices"), "missing_field"),
    (_without("answer"), "missing_field"),
    (_rec(answer=None), "missing_field"),
    (_rec(question=5), "bad_question"),
    (_rec(question=" ?! "), "bad_question"),
    (_rec(choices=["3", "7"]), "bad_choices"),
    (_rec(choices=["3", "7", "12", "5", "1", "2"]), "bad_choices"),
    (_rec(choices=["3", "7", "7 ", "5"]), "bad_choices"),
    (_rec(choices=["3", "7", "Twelve", "twelve"]), "bad_choices"),
    (_rec(choices=["3", "7", 12, "5"]), "bad_choices"),
    (_rec(choices=["3", "7", "", "5"]), "bad_choices"),
    (_rec(choices=["3", "7", " \n", "5"]), "bad_choices"),
    (json.dumps({"question": QUESTION, "choices": {"A": "3"}, "answer": "A"}), "bad_choices"),
    (_rec(choices="3 7 12 5"), "bad_choices"),
    (_rec(answer="E"), "bad_answer"),
    (_rec(answer="Z"), "bad_answer"),
    (_rec(answer="AB"), "bad_answer"),
    (_rec(answer="(C)"), "bad_answer"),
    (_rec(answer="2"), "bad_answer"),
    (_rec(answer="12"), "bad_answer"),
    (_rec(answer=4), "bad_answer"),
    (_rec(answer=-1), "bad_answer"),
    (_rec(answer=True), "bad_answer"),
    (_rec(answer=2.0), "bad_answer"),
    (_rec(answer=["C"]), "bad_answer"),
    (_rec(context=["a"]), "bad_context"),
  ],
)
def test_each_defect_is_rejected_with_its_reason(text, reason):
  out = clean([text], test=[])
  assert out.examples == []
  assert out.rejected == collections.Counter({reason: 1})
  assert out.reasons == [(0, reason)]


def test_text_too_deeply_nested_to_parse_is_not_json():
  assert clean(["[" * 100_000], test=[]).reasons == [(0, "not_json")]


def test_choice_count_limits_are_options():
  five = _rec(choices=["3", "7", "12", "5", "1"])
  assert clean([five], test=[], max_choices=4).reasons == [(0, "bad_choices")]
  assert len(clean([five], test=[], max_choices=5).examples) == 1


def test_exact_duplicates_ignore_case_spacing_punctuation_and_options():
  raw = [
    _rec(),
    _rec(QUESTION.upper().replace(" ?", "?").replace(" :", ":"), ["5", "12", "7", "3"], "B"),
    _rec("  " + QUESTION.replace(" ", "   ") + " "),
    _rec(QUESTION.replace("12", "13"), ["3", "7", "13", "5"]),
  ]
  out = clean(raw, test=[], near_dup_jaccard=1.0)
  assert [ex.meta["source_index"] for ex in out.examples] == [0, 3]
  assert out.reasons == [(1, "duplicate"), (2, "duplicate")]


def test_near_duplicates_are_judged_on_word_trigram_jaccard():
  filler = QUESTION.replace(" ?", " please ?")
  changed = QUESTION.replace(" 7 ", " 8 ")
  assert _trigram_jaccard(QUESTION, filler) == pytest.approx(13 / 14)
  assert _trigram_jaccard(QUESTION, changed) < 0.7
  out = clean([_rec(), _rec(filler), _rec(changed)], test=[])
  assert out.reasons == [(1, "near_duplicate")]
  assert len(clean([_rec(), _rec(filler)], test=[], near_dup_jaccard=0.93).examples) == 2
  # Order and repeats count: a permuted or a longer count list is another question.
  permuted = QUESTION.replace("3 and 7 and 12", "3 and 12 and 7")
  repeats = ["count ( 6 ; 6 6 6 15 ) ?", "count ( 6 ; 6 6 6 6 15 ) ?"]
  out = clean([_rec(), _rec(permuted), *(_rec(q, ["1", "2", "3"], "A") for q in repeats)], test=[])
  assert len(out.examples) == 4


def test_test_overlap_is_dropped_exactly_and_nearly():
  test = [MCQExample("t0", QUESTION, ("3", "7", "12", "5"), 2)]
  raw = [
    _rec(QUESTION.upper()),
    _rec("okay " + QUESTION),
    _rec(QUESTION.replace("12", "13"), ["3", "7", "13", "5"]),
    _rec(QUESTION.upper()),
  ]
  out = clean(raw, test=test)
  assert out.reasons == [(0, "test_overlap"), (1, "test_overlap"), (3, "test_overlap")]
  assert [ex.meta["source_index"] for ex in out.examples] == [2]
  # The test split is compared with its context, like the records.
  with_context = [MCQExample("t0", QUESTION, ("3", "7"), 0, context="Some passage.")]
  assert clean([_rec()], test=with_context).examples != []


def test_generator_output_is_rejected_for_the_right_reasons():
  task = TASKS.build({"name": "synthetic"})
  gen = GENERATORS.build({"name": "simulated", "malformed": 0.3}, task=task)
  raw = gen.generate(task.target, 1000, seed=0)
  out = clean(raw, test=task.test)
  reason_of = dict(out.reasons)
  kept = {ex.meta["source_index"]: ex for ex in out.examples}
  assert len(kept) + len(reason_of) == len(raw) and not set(kept) & set(reason_of)
  for i, text in enumerate(raw):
    try:
      record = json.loads(text)
    except ValueError:
      assert reason_of[i] == "not_json"
      continue
    if record["_kind"] == "malformed":
      assert reason_of[i] == record["_defect"], record
    elif record["_kind"] == "near_dup":
      assert reason_of.get(i) in (None, "near_duplicate")
    else:  # other records differ from each other by more than a few words
      assert reason_of.get(i) in (None, "test_overlap")
    if i in kept:
      assert kept[i].meta["kind"] == record["_kind"]
  assert (
    sum(out.rejected[d] for d in ("not_json", "missing_field", "bad_choices", "bad_answer")) == 300
  )
  assert sum(out.rejected.values()) == len(out.reasons)
  assert set(out.rejected) <= set(REASONS)


def _random_pool(rng, size):
  """Questions over a 4-word vocabulary, with many exact and near copies."""
  questions = []
  for _ in range(size):
    if questions and rng.random() < 0.5:
      words = questions[rng.integers(len(questions))].split()
      for _ in range(rng.integers(0, 3)):  # edit: insert, delete or replace one word
        j = rng.integers(len(words) + 1)
        op = rng.integers(3)
        if op == 0:
          words.insert(j, "abcd"[rng.integers(4)])
        elif len(words) > 1 and j < len(words):
          if op == 1:
            del words[j]
          else:
            words[j] = "abcd"[rng.integers(4)]
    else:
      words = ["abcd"[k] for k in rng.integers(4, size=rng.integers(1, 14))]
    questions.append(" ".join(words))
  return questions


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.8, 0.9, 1.0])
def test_dedup_matches_brute_force(threshold):
  rng = np.random.default_rng(int(threshold * 10))
  questions = _random_pool(rng, 400)
  test_questions, pool = questions[:20], questions[20:]
  test = [MCQExample(f"t{i}", q, ("1", "2", "3"), 0) for i, q in enumerate(test_questions)]
  out = clean([_rec(q, ["1", "2", "3"], "A") for q in pool], test=test, near_dup_jaccard=threshold)
  grams = {q: _trigrams(q) for q in questions}
  expected, kept = [], []
  for i, q in enumerate(pool):
    if any(_trigram_jaccard(grams[q], grams[t]) >= threshold for t in test_questions):
      expected.append((i, "test_overlap"))
    elif normalize(q) in {normalize(k) for k in kept}:
      expected.append((i, "duplicate"))
    elif any(_trigram_jaccard(grams[q], grams[k]) >= threshold for k in kept):
      expected.append((i, "near_duplicate"))
    else:
      kept.append(q)
  assert out.reasons == expected
  assert [ex.question for ex in out.examples] == kept
  assert len(kept) > 20 and {"test_overlap", "duplicate"} <= {r for _, r in expected}
  assert threshold == 1.0 or "near_duplicate" in {r for _, r in expected}


def test_five_thousand_records_clean_in_well_under_two_seconds():
  task = TASKS.build({"name": "synthetic"})
  raw = GENERATORS.build({"name": "simulated"}, task=task).generate(task.target, 5000, seed=0)
  start = time.perf_counter()
  out = clean(raw, test=task.test)
  elapsed = time.perf_counter() - start
  assert len(out.examples) > 4000
  assert elapsed < 1.5, elapsed


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"near_dup_jaccard": 0.0}, "near_dup_jaccard"),
    ({"near_dup_jaccard": 1.5}, "near_dup_jaccard"),
    ({"min_choices": 4, "max_choices": 3}, "min_choices"),
    ({"max_choices": 6}, "max_choices"),
  ],
)
def test_bad_options_fail(kwargs, match):
  with pytest.raises(ValueError, match=match):
    clean([], test=[], **kwargs)


def test_bad_inputs_fail_naming_the_index():
  with pytest.raises(TypeError, match="raw\\[1\\]"):
    clean([_rec(), {"question": "q"}], test=[])
  with pytest.raises(TypeError, match="test\\[0\\]"):
    clean([_rec()], test=[{"question": "q"}])
