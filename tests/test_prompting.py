import json

import pytest

from evoselect_jax.data.clean import TEXT_REASONS, clean
from evoselect_jax.generators.prompting import (
  exemplar_json,
  exemplar_text,
  extract_json_object,
  generation_messages,
  generation_text,
  item_start,
)
from evoselect_jax.types import MCQExample

EX = MCQExample("t-0", "Which gas do plants absorb?", ("oxygen", "carbon dioxide", "helium"), 1)


def test_exemplar_json_round_trips_through_clean():
  out = clean([exemplar_json(EX)], test=[])
  assert [(e.question, e.choices, e.answer) for e in out.examples] == [
    (EX.question, EX.choices, EX.answer)
  ]


def test_messages_hold_every_exemplar():
  other = MCQExample("t-1", "2 + 2 = ?", ("3", "4", "5", "22"), 1, context="Arithmetic.")
  messages = generation_messages([EX, other])
  assert [m["role"] for m in messages] == ["system", "user"]
  lines = [json.loads(x) for x in messages[1]["content"].splitlines() if x.startswith("{")]
  assert lines[0]["answer"] == "B" and lines[1]["context"] == "Arithmetic."
  with pytest.raises(ValueError, match="at least one"):
    generation_messages([])


@pytest.mark.parametrize(
  ("text", "want"),
  [
    ('Sure! ```json\n{"a": "}{", "b": {"c": 1}}\n``` done', '{"a": "}{", "b": {"c": 1}}'),
    ('{"a": "say \\"}\\" ok"} trailing', '{"a": "say \\"}\\" ok"}'),
    ("no object here", "no object here"),
    ('{"unclosed": 1', '{"unclosed": 1'),
  ],
)
def test_extract_json_object(text, want):
  assert extract_json_object(text) == want


# --- The text format: completion prompts in the MCQ layout, parsed line by line -------------

CTX = MCQExample("t-1", "2 + 2 = ?", ("3", "4", "5", "22"), 1, context="Some\narithmetic.")
GOOD = (
  "Question: Which gas do plants absorb?\nA. oxygen\nB. carbon dioxide\nC. helium\nAnswer: B\n\n"
)


def _text_reasons(records, test=(), **kwargs):
  out = clean(records, test=list(test), format="text", **kwargs)
  return [r for _, r in out.reasons], out


def test_exemplar_text_layout_and_round_trip_through_clean():
  assert exemplar_text(EX) == GOOD
  assert exemplar_text(CTX) == (
    "Context: Some arithmetic.\nQuestion: 2 + 2 = ?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer: B\n\n"
  )
  reasons, out = _text_reasons([exemplar_text(EX), exemplar_text(CTX)])
  assert reasons == []
  assert [(e.question, e.choices, e.answer, e.context) for e in out.examples] == [
    (EX.question, EX.choices, EX.answer, None),
    (CTX.question, CTX.choices, CTX.answer, "Some arithmetic."),
  ]
  # The same text is no JSON: a format mismatch rejects everything, loudly.
  assert clean([GOOD], test=[]).rejected == {"not_json": 1}


def test_generation_text_ends_with_the_next_items_label():
  assert generation_text([EX, CTX]) == exemplar_text(EX) + exemplar_text(CTX) + "Question:"
  assert generation_text([CTX]) == exemplar_text(CTX) + "Context:"
  assert item_start([EX, CTX]) == "Question:" and item_start([CTX]) == "Context:"
  with pytest.raises(ValueError, match="at least one"):
    generation_text([])


@pytest.mark.parametrize(
  ("record", "reason"),
  [
    (GOOD[:-2], "truncated"),
    (GOOD[:-1], "truncated"),
    ("Question: Which gas do plants absorb?\nA. oxygen\nB. carbon", "truncated"),
    ("Question:\nWhich gas?\nA. a\nB. b\nC. c\nAnswer: A\n\n", "no_question"),
    ("Question: ?!\nA. a\nB. b\nC. c\nAnswer: A\n\n", "no_question"),
    ("Question:What?\nA. a\nB. b\nC. c\nAnswer: A\n\n", "no_question"),
    ("The question: what?\nA. a\nB. b\nC. c\nAnswer: A\n\n", "no_question"),
    ("Context: a passage\nA. a\nB. b\nC. c\nAnswer: A\n\n", "no_question"),
    ("Question: What?\nA. a\nB. b\nC. c\nD. d\n\n", "no_answer"),
    ("Question: What?\n\n", "no_answer"),
    ("Question: What?\nA. a\nB. b\nC. c\nAnswer: the sun\n\n", "no_answer"),
    ("Question: What?\nA. a\nB. b\nC. c\nAnswer: b\n\n", "no_answer"),
    ("Question: What?\nA. a\nB. b\nC. c\nAnswer: B.\n\n", "no_answer"),
    ("Question: What?\nA. a\nC. b\nD. c\nAnswer: A\n\n", "bad_line"),
    ("Question: What?\nA. a\nB.\nC. c\nAnswer: A\n\n", "bad_line"),
    ("Question: What?\nA) a\nB) b\nC) c\nAnswer: A\n\n", "bad_line"),
    ("Question: What?\nA. a\nB. b\nC. c\nQuestion: Why?\nAnswer: A\n\n", "bad_line"),
    ("Context: \nQuestion: What?\nA. a\nB. b\nC. c\nAnswer: A\n\n", "bad_line"),
    ("Question: What?\nA. a\nB. b\nC. c\nAnswer: A\nExplanation: a is a.\n\n", "extra_text"),
    ("Question: What?\nA. a\nB. b\nAnswer: A\n\n", "option_count"),
    ("Question: What?\nA. a\nB. b\nC. c\nD. d\nE. e\nAnswer: A\n\n", "option_count"),
    ("Question: What?\nA. a\nB. b\nC. c\nD. d\nE. e\nF. f\nAnswer: A\n\n", "bad_line"),
    ("Question: What?\nA. Red\nB. blue\nC.  red \nAnswer: A\n\n", "bad_line"),
    ("Question: What?\nA. Red\nB. blue\nC. red \nAnswer: A\n\n", "duplicate_options"),
    ("Question: What?\nA. a\nB. b\nC. c\nAnswer: D\n\n", "answer_out_of_range"),
  ],
)
def test_text_records_rejected_with_their_reason(record, reason):
  reasons, out = _text_reasons([record], max_choices=4)
  assert reasons == [reason] and not out.examples
  assert reason in TEXT_REASONS


def test_text_records_accept_the_layout_with_trailing_spaces_and_five_options():
  five = "Question: What?  \nA. a\nB. b \nC. c\nD. d\nE. e\nAnswer: E \n\n"
  reasons, out = _text_reasons([five])
  assert reasons == [] and out.examples[0].choices == ("a", "b", "c", "d", "e")
  assert out.examples[0].answer == 4 and out.examples[0].question == "What?"


def test_text_records_are_deduplicated_like_json_records():
  other = GOOD.replace("Which gas", "Which  GAS")
  reasons, out = _text_reasons([GOOD, other, exemplar_text(CTX)], test=[CTX])
  assert reasons == ["duplicate", "test_overlap"] and len(out.examples) == 1
  with pytest.raises(ValueError, match="format must be one of"):
    clean([GOOD], test=[], format="yaml")
