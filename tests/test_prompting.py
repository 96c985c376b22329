import json

import pytest

from evoselect_jax.data.clean import clean
from evoselect_jax.generators.prompting import (
  exemplar_json,
  extract_json_object,
  generation_messages,
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
