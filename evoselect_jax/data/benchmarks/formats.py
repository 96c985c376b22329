"""Parsers for the benchmarks' own published file formats.

One parser per format; each reads one file of one split and returns its examples in
file order. Every parser has the signature ``parse(path, split) -> list[MCQExample]``
(``split`` names the synthesized ids of formats that have none), checks every field
it reads, and raises :class:`FormatError` naming the file, the line (or, for a
single-document JSON file, the record's path in it) and the field. Text fields are
stripped of surrounding whitespace and must not be blank (but for LogiQA 2.0's blank
options, see ``blank_option``); nothing else in the text is changed.

Items a format lets through but a user should know about are kept and marked in
``meta["quirks"]`` (see :data:`QUIRKS`), so they can be counted and dropped on
purpose, never silently.
"""

from __future__ import annotations

import csv
import json
import pathlib
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from evoselect_jax.types import MCQExample

# ``answer`` of an item whose split publishes no answers (CommonsenseQA test).
NO_ANSWER = -1

QUIRKS = {
  "needs_image": "HeadQA: the question refers to an image that is not in the release",
  "option_label_missing": (
    "LogiQA v1: an option line without its letter label (machine translation moved the "
    "label into the text); the line is kept verbatim and its position gives the letter"
  ),
  "options_reordered": (
    "LogiQA v1: option labels out of order in the file (A, C, B, D); choices are put in "
    "label order and the answer letter is read as a label, not a position"
  ),
  "duplicate_label": "OpenBookQA: two options share a label (train 12-1145: A, B, C, D, D)",
  "duplicate_id": "LogiQA 2.0: the id is used by more than one record; the id gets '-L<line>'",
  "blank_option": (
    "LogiQA 2.0 ZH: an option is blank (or only its label) in the source; it is kept as an "
    "empty string, which a scorer cannot score: drop these items to evaluate"
  ),
}

_LETTERS = "ABCDE"


class FormatError(ValueError):
  """A record that does not follow its format.

  Attributes:
    path: the file.
    where: the 1-based line number, or the record's path inside a JSON document.
    field: the field that is missing or wrong.
  """

  def __init__(self, path: pathlib.Path, where: int | str, field: str, problem: str):
    self.path, self.where, self.field = path, where, field
    place = f"line {where}" if isinstance(where, int) else f"record {where}"
    super().__init__(f"{path}, {place}, field {field!r}: {problem}")


def _get(rec: dict, key: str, kind: type | tuple[type, ...], path, where, field: str) -> Any:
  """``rec[key]`` after checking it is present and of type ``kind`` (bool is not int)."""
  if key not in rec:
    raise FormatError(path, where, field, "missing")
  value = rec[key]
  if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _types(kind)):
    names = "/".join(t.__name__ for t in _types(kind))
    raise FormatError(path, where, field, f"expected {names}, got {value!r:.60}")
  return value


def _types(kind: type | tuple[type, ...]) -> tuple[type, ...]:
  return kind if isinstance(kind, tuple) else (kind,)


def _text(rec: dict, key: str, path, where, field: str) -> str:
  """``rec[key]`` as a stripped, non-blank string."""
  return _nonblank(_get(rec, key, str, path, where, field), path, where, field)


def _nonblank(text: str, path, where, field: str) -> str:
  if not text.strip():
    raise FormatError(path, where, field, "blank")
  return text.strip()


def _index(labels: Sequence[str], key: str, path, where, field: str) -> int:
  """Position of the answer ``key`` among ``labels``; it must occur exactly once."""
  if labels.count(key) != 1:
    raise FormatError(path, where, field, f"{key!r} is not exactly one of the labels {labels}")
  return labels.index(key)


def _json_lines(path: pathlib.Path) -> Iterator[tuple[int, dict]]:
  """``(line number, object)`` for each line of a JSON-lines file."""
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        raise FormatError(path, line_no, "record", "blank line")
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise FormatError(path, line_no, "record", f"invalid JSON: {e}") from None
      if not isinstance(rec, dict):
        raise FormatError(path, line_no, "record", f"expected a JSON object, got {rec!r:.60}")
      yield line_no, rec


def _quirks(*names: str) -> dict[str, Any]:
  """``{"quirks": names}`` if there are any, else ``{}``."""
  return {"quirks": names} if names else {}


def ai2_jsonl(path: pathlib.Path, split: str, *, labeled: bool = True) -> list[MCQExample]:
  """ARC's and CommonsenseQA's JSON lines (the AI2 schema).

  ``{"id", "question": {"stem", "choices": [{"label", "text"}, ...]}, "answerKey"}``;
  labels are letters or digits (some ARC items use "1".."4"). Other keys (ARC's
  per-choice ``para``) are ignored; CommonsenseQA's ``question_concept`` goes to
  ``meta["concept"]``.

  Args:
    path: the file.
    split: unused (every record has an id); kept for the common signature.
    labeled: ``False`` for a file published without ``answerKey`` (CommonsenseQA
      test); every answer is then :data:`NO_ANSWER`, and an ``answerKey`` is an error.
  """
  del split
  examples = []
  for n, rec in _json_lines(path):
    question = _get(rec, "question", dict, path, n, "question")
    raw_choices = _get(question, "choices", list, path, n, "question.choices")
    labels, choices = [], []
    for i, choice in enumerate(raw_choices):
      field = f"question.choices[{i}]"
      if not isinstance(choice, dict):
        raise FormatError(path, n, field, f"expected an object, got {choice!r:.60}")
      labels.append(_text(choice, "label", path, n, f"{field}.label"))
      choices.append(_text(choice, "text", path, n, f"{field}.text"))
    if len(choices) < 2 or len(set(labels)) != len(labels):
      raise FormatError(path, n, "question.choices", f"need 2+ distinct labels, got {labels}")
    if labeled:
      answer = _index(labels, _text(rec, "answerKey", path, n, "answerKey"), path, n, "answerKey")
    elif "answerKey" in rec:
      raise FormatError(path, n, "answerKey", "present in a split published without answers")
    else:
      answer = NO_ANSWER
    concept = question.get("question_concept")
    examples.append(
      MCQExample(
        id=_text(rec, "id", path, n, "id"),
        question=_text(question, "stem", path, n, "question.stem"),
        choices=tuple(choices),
        answer=answer,
        meta={} if concept is None else {"concept": concept},
      )
    )
  return examples


def arc_hf_jsonl(path: pathlib.Path, split: str) -> list[MCQExample]:
  """ARC in the HF ``ai2_arc`` schema (the icml_kd copy of the full test).

  ``{"id", "question", "choices": {"text": [..], "label": [..]}, "answerKey"}``. Other
  keys (``answer``, ``response`` in the icml_kd copy) are ignored.
  """
  del split
  examples = []
  for n, rec in _json_lines(path):
    choices = _get(rec, "choices", dict, path, n, "choices")
    texts = _get(choices, "text", list, path, n, "choices.text")
    labels = _get(choices, "label", list, path, n, "choices.label")
    if len(texts) != len(labels) or len(texts) < 2 or len(set(labels)) != len(labels):
      raise FormatError(path, n, "choices", f"need 2+ texts with distinct labels, got {labels}")
    for i, text in enumerate(texts):
      if not isinstance(text, str) or not text.strip():
        raise FormatError(path, n, f"choices.text[{i}]", f"expected a non-blank string: {text!r}")
    examples.append(
      MCQExample(
        id=_text(rec, "id", path, n, "id"),
        question=_text(rec, "question", path, n, "question"),
        choices=tuple(t.strip() for t in texts),
        answer=_index(labels, _text(rec, "answerKey", path, n, "answerKey"), path, n, "answerKey"),
      )
    )
  return examples


_OBQA_COLUMNS = ["ID", "Question Stem", "Choices", "Complete Question", "Answer Key"]
_OBQA_CHOICE = re.compile(r"\(([A-D])\) ")


def obqa_tsv(path: pathlib.Path, split: str) -> list[MCQExample]:
  """OpenBookQA's official TSV: ``ID, Question Stem, Choices, Complete Question, Answer Key``.

  Read with ``csv`` and ``QUOTE_NONE``; ``Choices`` is split on ``(A) `` .. ``(D) ``.
  One item (train ``12-1145``) has five options labelled A, B, C, D, D: all five are
  kept and it is marked ``duplicate_label``; an answer key that names a repeated label
  is an error.
  """
  del split
  examples = []
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    if header != _OBQA_COLUMNS:
      raise FormatError(path, 1, "header", f"expected {_OBQA_COLUMNS}, got {header}")
    for row in reader:
      n = reader.line_num
      if len(row) != len(_OBQA_COLUMNS):
        raise FormatError(path, n, "row", f"expected 5 tab-separated fields, got {len(row)}")
      rec = dict(zip(_OBQA_COLUMNS, row, strict=True))
      parts = _OBQA_CHOICE.split(rec["Choices"])
      labels, texts = parts[1::2], parts[2::2]
      if parts[0].strip() or len(labels) < 2:
        raise FormatError(path, n, "Choices", f"expected '(A) .. (B) ..': {rec['Choices']!r:.60}")
      choices = [
        _nonblank(t, path, n, f"Choices ({label})") for label, t in zip(labels, texts, strict=True)
      ]
      answer = _index(labels, rec["Answer Key"].strip(), path, n, "Answer Key")
      examples.append(
        MCQExample(
          id=_text(rec, "ID", path, n, "ID"),
          question=_text(rec, "Question Stem", path, n, "Question Stem"),
          choices=tuple(choices),
          answer=answer,
          meta=_quirks(*(["duplicate_label"] if len(set(labels)) < len(labels) else [])),
        )
      )
  return examples


# A LogiQA v1 option label: a letter and punctuation (ASCII or full-width), e.g. "A.",
# "d.", "B．", "C，", "A:", "D、", "A?"; or the expected letter and a space ("A No ...").
_LOGIQA_LABEL = re.compile(r"([A-Da-d])\s*[.．,，:：、。?]\s*")
_LOGIQA_RECORD = ("separator", "answer", "context", "question")


def logiqa_txt(path: pathlib.Path, split: str) -> list[MCQExample]:
  """LogiQA v1's text format: 8 lines per record.

  A blank line, the answer letter (``a``-``d``), the context (a passage, kept in
  ``context``), the question, then four option lines labelled ``A.`` .. ``D.``. Ids
  are ``f"{split}-{record index}"``. The labels are irregular in the release (see
  ``option_label_missing`` and ``options_reordered`` in :data:`QUIRKS`); every record
  must end up with the labels A-D once each.
  """
  lines = path.read_text(encoding="utf-8").split("\n")
  if lines[-1] == "":
    lines.pop()
  examples = []
  for start in range(0, len(lines), 8):
    record, first = lines[start : start + 8], start + 1  # first: the record's 1-based line
    if len(record) < 8:
      raise FormatError(path, first, "record", f"the file ends after {len(record)} of 8 lines")
    if record[0].strip():
      raise FormatError(path, first, "separator", f"expected a blank line, got {record[0]!r:.60}")
    letter = record[1].strip()
    if letter not in ("a", "b", "c", "d"):
      raise FormatError(path, first + 1, "answer", f"expected a letter a-d, got {letter!r:.60}")
    context, question = (_nonblank(record[i], path, first + i, _LOGIQA_RECORD[i]) for i in (2, 3))
    options, quirks = {}, []
    for k, line in enumerate(record[4:]):
      line_no, expected = first + 4 + k, "ABCD"[k]
      line = _nonblank(line, path, line_no, f"options[{k}]")
      match = _LOGIQA_LABEL.match(line) or re.match(rf"({expected})\s+", line)
      if match is None:
        label, text = expected, line
        quirks.append("option_label_missing")
      else:
        label = match[1].upper()
        text = _nonblank(line[match.end() :], path, line_no, f"options[{k}]")
      if label in options:
        raise FormatError(path, line_no, f"options[{k}]", f"label {label} appears twice")
      options[label] = text
    if list(options) != sorted(options):
      quirks.append("options_reordered")
    examples.append(
      MCQExample(
        id=f"{split}-{start // 8}",
        question=question,
        choices=tuple(options[label] for label in "ABCD"),
        answer="abcd".index(letter),
        context=context,
        meta=_quirks(*dict.fromkeys(quirks)),
      )
    )
  return examples


def _strip_label(option: str, k: int) -> str:
  """``option`` without a leading ``"A."``/``"A．"`` when it is the expected letter."""
  match = re.match(rf"{_LETTERS[k]}\s*[.．]\s*", option)
  return option[match.end() :] if match else option


def logiqa2_jsonl(path: pathlib.Path, split: str) -> list[MCQExample]:
  """LogiQA 2.0's JSON lines (``.txt`` or ``.jsonl``).

  ``{"id" | "example_id", "answer": 0-based int, "text", "question", "options": [4],
  "type"?}``; ``text`` is the passage (kept in ``context``), the true ``type`` keys go
  to ``meta["types"]``. Options in the ZH and OOD files may start with their label
  (``"A."``), which is removed. A few ZH options are blank in the source: they are kept
  as ``""`` and the item is marked ``blank_option``. A few ids repeat within a file
  (dev and test, with different questions): those records get ``f"{id}-L{line}"`` and
  ``duplicate_id``.
  """
  del split
  records = []
  for n, rec in _json_lines(path):
    keys = [k for k in ("id", "example_id") if k in rec]
    if len(keys) != 1:
      raise FormatError(path, n, "id", f"expected exactly one of 'id', 'example_id', got {keys}")
    records.append((n, rec, str(_get(rec, keys[0], (int, str), path, n, keys[0]))))
  id_counts = Counter(native for _, _, native in records)
  examples = []
  for n, rec, native in records:
    raw = _get(rec, "options", list, path, n, "options")
    if len(raw) < 2:
      raise FormatError(path, n, "options", f"need 2+ options, got {len(raw)}")
    options = []
    for k, option in enumerate(raw):
      if not isinstance(option, str):
        raise FormatError(path, n, f"options[{k}]", f"expected str, got {option!r:.60}")
      options.append(_strip_label(option.strip(), k).strip())
    answer = _get(rec, "answer", int, path, n, "answer")
    if not 0 <= answer < len(options):
      raise FormatError(path, n, "answer", f"{answer} is not an index into {len(options)} options")
    types = _get(rec, "type", dict, path, n, "type") if "type" in rec else {}
    quirks = ["blank_option"] if "" in options else []
    if id_counts[native] > 1:
      native, quirks = f"{native}-L{n}", [*quirks, "duplicate_id"]
    examples.append(
      MCQExample(
        id=native,
        question=_text(rec, "question", path, n, "question"),
        choices=tuple(options),
        answer=answer,
        context=_text(rec, "text", path, n, "text"),
        meta=({"types": sorted(t for t, on in types.items() if on)} if types else {})
        | _quirks(*quirks),
      )
    )
  return examples


def options_dict_jsonl(
  path: pathlib.Path, split: str, *, letters: str, id_field: str | None = None
) -> list[MCQExample]:
  """MedQA's and the medagents MedMCQA subset's JSON lines.

  ``{"question", "options": {"A": .., "B": .., ...}, "answer_idx": letter, "answer":
  text, ...}``; ``answer`` must equal ``options[answer_idx]``. MedQA's ``meta_info``
  (``step1`` / ``step2&3``) goes to ``meta["step"]``.

  Args:
    path: the file.
    split: names the ids when ``id_field`` is ``None``.
    letters: the option keys every record must have, in order (``"ABCD"``).
    id_field: the record's id field; ``None`` gives ids ``f"{split}-{record index}"``
      (MedQA's ``realidx`` equals that index).
  """
  examples = []
  for i, (n, rec) in enumerate(_json_lines(path)):
    options = _get(rec, "options", dict, path, n, "options")
    if list(options) != list(letters):
      raise FormatError(path, n, "options", f"expected keys {list(letters)}, got {list(options)}")
    choices = tuple(_text(options, k, path, n, f"options.{k}") for k in letters)
    answer = _index(letters, _text(rec, "answer_idx", path, n, "answer_idx"), path, n, "answer_idx")
    if _text(rec, "answer", path, n, "answer") != choices[answer]:
      raise FormatError(path, n, "answer", f"differs from options.{letters[answer]}")
    step = rec.get("meta_info")
    if id_field is None:
      example_id = f"{split}-{i}"
    else:
      example_id = str(_get(rec, id_field, (int, str), path, n, id_field))
    examples.append(
      MCQExample(
        id=example_id,
        question=_text(rec, "question", path, n, "question"),
        choices=choices,
        answer=answer,
        meta={} if step is None else {"step": step},
      )
    )
  return examples


def medmcqa_jsonl(path: pathlib.Path, split: str) -> list[MCQExample]:
  """MedMCQA's reduced JSON lines: ``{"question", "choices": ["A. ..", ...], "answer": int}``.

  The ``"A. "`` label of each choice is removed; ids are ``f"{split}-{record index}"``.
  """
  examples = []
  for i, (n, rec) in enumerate(_json_lines(path)):
    raw = _get(rec, "choices", list, path, n, "choices")
    if not 2 <= len(raw) <= len(_LETTERS):
      raise FormatError(path, n, "choices", f"need 2-{len(_LETTERS)} choices, got {len(raw)}")
    choices = []
    for k, choice in enumerate(raw):
      if not isinstance(choice, str):
        raise FormatError(path, n, f"choices[{k}]", f"expected str, got {choice!r:.60}")
      choices.append(_nonblank(_strip_label(choice.strip(), k), path, n, f"choices[{k}]"))
    answer = _get(rec, "answer", int, path, n, "answer")
    if not 0 <= answer < len(choices):
      raise FormatError(path, n, "answer", f"{answer} is not an index into {len(choices)} choices")
    examples.append(
      MCQExample(
        id=f"{split}-{i}",
        question=_text(rec, "question", path, n, "question"),
        choices=tuple(choices),
        answer=answer,
      )
    )
  return examples


def headqa_json(path: pathlib.Path, split: str) -> list[MCQExample]:
  """HEAD-QA's exam JSON: ``{"exams": {name: {"category", "year", "data": [item, ...]}}}``.

  An item is ``{"qid", "qtext", "ra", "image", "answers": [{"aid", "atext"}, ...]}``,
  ``ra`` being the right answer's ``aid`` as a string. Ids are ``f"{exam}-{qid}"``;
  ``meta`` holds ``exam``, ``category`` and ``year``. Items whose ``image`` is set refer
  to an image that is not in the release: they are kept, with ``meta["image"]`` and
  the quirk ``needs_image``. Errors name the record as ``exams['<name>'].data[<i>]``.
  """
  del split
  try:
    doc = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise FormatError(path, e.lineno, "document", f"invalid JSON: {e}") from None
  if not isinstance(doc, dict):
    raise FormatError(path, "<root>", "document", f"expected a JSON object, got {doc!r:.60}")
  examples = []
  for name, exam in _get(doc, "exams", dict, path, "<root>", "exams").items():
    where = f"exams[{name!r}]"
    if not isinstance(exam, dict):
      raise FormatError(path, where, "exam", f"expected an object, got {exam!r:.60}")
    meta = {
      "exam": name,
      "category": _text(exam, "category", path, where, "category"),
      "year": _text(exam, "year", path, where, "year"),
    }
    for i, item in enumerate(_get(exam, "data", list, path, where, "data")):
      where = f"exams[{name!r}].data[{i}]"
      if not isinstance(item, dict):
        raise FormatError(path, where, "item", f"expected an object, got {item!r:.60}")
      aids, choices = [], []
      for k, ans in enumerate(_get(item, "answers", list, path, where, "answers")):
        if not isinstance(ans, dict):
          raise FormatError(path, where, f"answers[{k}]", f"expected an object, got {ans!r:.60}")
        aids.append(str(_get(ans, "aid", int, path, where, f"answers[{k}].aid")))
        choices.append(_text(ans, "atext", path, where, f"answers[{k}].atext"))
      if len(choices) < 2 or len(set(aids)) != len(aids):
        raise FormatError(path, where, "answers", f"need 2+ distinct aids, got {aids}")
      image = _get(item, "image", str, path, where, "image").strip()
      examples.append(
        MCQExample(
          id=f"{name}-{_text(item, 'qid', path, where, 'qid')}",
          question=_text(item, "qtext", path, where, "qtext"),
          choices=tuple(choices),
          answer=_index(aids, _text(item, "ra", path, where, "ra"), path, where, "ra"),
          meta=meta | ({"image": image} | _quirks("needs_image") if image else {}),
        )
      )
  return examples
