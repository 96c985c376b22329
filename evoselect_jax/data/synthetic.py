r"""The embedded synthetic task family: list questions in several skills and formats.

The project's default task: procedurally generated multiple-choice questions about a
short list of distinct numbers, so the whole generate → clean → select → train loop
runs on a laptop CPU with no download and no real LLM.

A question combines a *skill* (what to compute) with a *format* (how it is asked):

============  ===========================================================
skill         answer
============  ===========================================================
``max``       the largest item
``min``       the smallest item
``first``     the first item
``last``      the last item
``after``     the item right after a cue item (the cue is never last)
``count``     how many times a cue item occurs (1 .. len - 1; the only skill
              whose list repeats an item)
============  ===========================================================

Each format has its own frame, item separator and word for every skill (see
:data:`TEMPLATES`), e.g. with the items 3 7 12 5 9::

  ask    what is the largest number in 3 7 12 5 9 ?
  list   numbers : 3 , 7 , 12 , 5 , 9 . which one is the biggest ?
  terse  max ( 3 7 12 5 9 ) ?
  cards  cards on the table : 3 and 7 and 12 and 5 and 9 . the highest card is ?

Models score an item by option log-likelihood: prompt ``"Question: {question}\nAnswer:"``
and continuation ``" {choice}"`` (options not shown, lm-eval ARC style). Every choice
is one number, i.e. one token of :class:`~evoselect_jax.data.tokenizer.WordTokenizer`,
and at the defaults prompt plus continuation is at most 28 tokens. The options are the
answer and ``num_choices - 1`` distractors: other items of the list, or, for
``count``, other counts in ``0 .. len``; the answer's position is uniform.

The target is one (skill, format) pair. By default the warm-up (pretraining) mix is
every other pair: the model learns every skill (in other formats) and every format
(with other skills), but never the target's word in the target's frame (each
(skill, format) pair has its own word, e.g. ``highest`` only in ``cards``), so the
target starts near chance and has to be learned from the examples selected from a
generated pool. That is learnable from a few hundred good examples, and it makes
selection matter: off-task items (other pairs) teach nothing new, noisy keys teach
the wrong mapping, near-duplicates waste budget.

With the defaults (lists of 4-6 distinct numbers in 0..19) each skill has more than
10^5 distinct questions, so the target, test, pretraining and generated sets barely
collide by chance; target, test and pretraining are disjoint by construction (the
pretraining mix never holds the target pair, and target and test are drawn as one set
of distinct questions).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Sequence

import numpy as np

from evoselect_jax.data.tokenizer import WordTokenizer
from evoselect_jax.registry import TASKS
from evoselect_jax.types import MCQExample

SKILLS = ("max", "min", "first", "last", "after", "count")
FORMATS = ("ask", "list", "terse", "cards")

# format -> skill -> question template. ``{items}`` is the list joined by the
# format's separator, ``{cue}`` the cue item. Words are separated by single spaces, so
# whitespace tokenization needs no rules for punctuation.
TEMPLATES: dict[str, dict[str, str]] = {
  "ask": {
    "max": "what is the largest number in {items} ?",
    "min": "what is the smallest number in {items} ?",
    "first": "what is the first number in {items} ?",
    "last": "what is the last number in {items} ?",
    "after": "what number comes after {cue} in {items} ?",
    "count": "how many times does {cue} appear in {items} ?",
  },
  "list": {
    "max": "numbers : {items} . which one is the biggest ?",
    "min": "numbers : {items} . which one is the least ?",
    "first": "numbers : {items} . which one is at the start ?",
    "last": "numbers : {items} . which one is at the end ?",
    "after": "numbers : {items} . which one follows {cue} ?",
    "count": "numbers : {items} . how often is {cue} there ?",
  },
  "terse": {
    "max": "max ( {items} ) ?",
    "min": "min ( {items} ) ?",
    "first": "head ( {items} ) ?",
    "last": "tail ( {items} ) ?",
    "after": "next ( {cue} ; {items} ) ?",
    "count": "count ( {cue} ; {items} ) ?",
  },
  "cards": {
    "max": "cards on the table : {items} . the highest card is ?",
    "min": "cards on the table : {items} . the lowest card is ?",
    "first": "cards on the table : {items} . the leftmost card is ?",
    "last": "cards on the table : {items} . the rightmost card is ?",
    "after": "cards on the table : {items} . the card right of {cue} is ?",
    "count": "cards on the table : {items} . the tally of {cue} cards is ?",
  },
}
SEPARATORS = {"ask": " ", "list": " , ", "terse": " ", "cards": " and "}

# The words of the scoring prompt "Question: {question}\nAnswer:".
PROMPT_WORDS = ("Question:", "Answer:")

# Words a paraphrase may add to a question without changing it (the simulated
# generator's near-duplicates); in the vocabulary so they never encode to <unk>.
FILLERS = ("please", "now", "quickly", "again", "then", "so", "well", "okay", "here", "today")

# Independent random streams under one task seed.
_SPLITS_STREAM = 0
_PRETRAIN_STREAM = 1

# Rounds in a row without one new distinct question before sampling gives up.
_MAX_STALLED_DRAWS = 10


def _template_regex(template: str, separator: str) -> re.Pattern[str]:
  """A regex that matches exactly the questions ``template`` renders."""
  items = rf"(?P<items>\d+(?:{re.escape(separator)}\d+)*)"
  parts = re.split(r"(\{items\}|\{cue\})", template)
  return re.compile(
    "".join(
      items if p == "{items}" else r"(?P<cue>\d+)" if p == "{cue}" else re.escape(p) for p in parts
    )
  )


_REGEXES = {
  (skill, fmt): _template_regex(TEMPLATES[fmt][skill], SEPARATORS[fmt])
  for fmt in FORMATS
  for skill in SKILLS
}


def solve(question: str) -> tuple[str, str, str] | None:
  """Ground truth for a question of the family, parsed from its text alone.

  Independent of how items are drawn, so it audits anything that claims to be a
  family question (generated pools, a real LLM's output on synthetic exemplars).

  Returns:
    ``(skill, format, answer)`` with the answer as text, or ``None`` when ``question``
    is not exactly a question of the family or is ill-posed (an ``after`` cue that is
    missing from the list or last in it).
  """
  for (skill, fmt), regex in _REGEXES.items():
    m = regex.fullmatch(question)
    if m is None:
      continue
    items = [int(x) for x in m["items"].split(SEPARATORS[fmt])]
    cue = int(m["cue"]) if "cue" in regex.groupindex else None
    if skill == "max":
      answer = max(items)
    elif skill == "min":
      answer = min(items)
    elif skill == "first":
      answer = items[0]
    elif skill == "last":
      answer = items[-1]
    elif skill == "after":
      if cue not in items[:-1]:
        return None
      answer = items[items.index(cue) + 1]
    else:
      answer = items.count(cue)
    return skill, fmt, str(answer)
  return None


def vocabulary(num_range: int, max_len: int) -> list[str]:
  """Every word the family can produce: prompt words, numbers, template words, fillers.

  It depends only on the item range and the longest list (counts go up to
  ``max_len``), not on which skills, formats or target are enabled, so one tokenizer
  (and one pretrained checkpoint) serves every target of the same family.
  """
  numbers = [str(i) for i in range(max(num_range, max_len + 1))]
  template_words = [
    word
    for fmt in FORMATS
    for template in (*TEMPLATES[fmt].values(), SEPARATORS[fmt])
    for word in template.split()
    if word not in ("{items}", "{cue}")
  ]
  return [*PROMPT_WORDS, *numbers, *template_words, *FILLERS]


def _check_names(kind: str, given: Sequence[str], valid: Sequence[str]) -> tuple[str, ...]:
  """``given`` as a tuple, after checking it holds distinct names from ``valid``."""
  if isinstance(given, str) or not isinstance(given, Sequence):
    raise ValueError(f"{kind} must be a sequence of names from {valid}, got {given!r}")
  given = tuple(given)
  bad = [g for g in given if g not in valid]
  if bad or not given or len(set(given)) != len(given):
    raise ValueError(
      f"{kind} must be distinct names from {valid}, got {given}"
      + (f" (unknown: {bad})" if bad else "")
    )
  return given


def _check_name(kind: str, name: str, valid: Sequence[str]) -> str:
  if name not in valid:
    raise ValueError(f"{kind} must be one of {valid}, got {name!r}")
  return name


def _check_count(name: str, value: int, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


@TASKS.register("synthetic")
class SyntheticTask:
  """A target (skill, format) of the synthetic family, with its splits and tokenizer.

  Attributes:
    target: ``num_target`` labelled target examples (few-shot exemplars, OT target).
    test: ``num_test`` held-out examples of the target pair, for evaluation only.
    tokenizer: a :class:`WordTokenizer` over :func:`vocabulary`.
    pretrain_pairs: the (skill, format) pairs of the warm-up mix.
  """

  def __init__(
    self,
    *,
    seed: int = 0,
    list_len: int | Sequence[int] = (4, 6),
    num_range: int = 20,
    num_choices: int = 4,
    skills: Sequence[str] = SKILLS,
    formats: Sequence[str] = FORMATS,
    target_skill: str = "max",
    target_format: str = "cards",
    num_target: int = 64,
    num_test: int = 500,
    pretrain_skills: Sequence[str] | None = None,
    pretrain_formats: Sequence[str] | None = None,
  ):
    """Draws the target and test splits.

    Args:
      seed: seeds every split; the same arguments give the same task.
      list_len: list length, an int or an inclusive ``(min, max)`` range drawn
        uniformly per question; at least ``num_choices`` (the distractors of most
        skills are other items of the list).
      num_range: items are the distinct numbers ``0 .. num_range - 1``; at least the
        longest list.
      num_choices: options per question, 3-5.
      skills: the skills of the family, a subset of :data:`SKILLS`.
      formats: the formats of the family, a subset of :data:`FORMATS`.
      target_skill: the target pair's skill, one of ``skills``.
      target_format: the target pair's format, one of ``formats``.
      num_target: size of the labelled target set.
      num_test: size of the held-out test split.
      pretrain_skills: skills of the warm-up mix; ``None`` means all of ``skills``.
      pretrain_formats: formats of the warm-up mix; ``None`` means all of ``formats``.
        The mix is every pair of these two except the target pair.
    """
    self.seed = _check_count("seed", seed, 0)
    if isinstance(list_len, int | np.integer) and not isinstance(list_len, bool):
      lo = hi = int(list_len)
    elif isinstance(list_len, Sequence) and len(list_len) == 2:
      lo, hi = (_check_count("list_len", v, 1) for v in list_len)
    else:
      raise ValueError(f"list_len must be an int or a (min, max) pair, got {list_len!r}")
    self.num_choices = _check_count("num_choices", num_choices, 3)
    if self.num_choices > 5:
      raise ValueError(f"num_choices must be 3-5, got {num_choices}")
    if not self.num_choices <= lo <= hi:
      raise ValueError(f"list_len must satisfy num_choices <= min <= max, got {list_len!r}")
    self.list_len = (lo, hi)
    self.num_range = _check_count("num_range", num_range, hi)
    self.skills = _check_names("skills", skills, SKILLS)
    self.formats = _check_names("formats", formats, FORMATS)
    self.target_skill = _check_name("target_skill", target_skill, self.skills)
    self.target_format = _check_name("target_format", target_format, self.formats)
    self.num_target = _check_count("num_target", num_target, 1)
    self.num_test = _check_count("num_test", num_test, 1)
    p_skills = self.skills if pretrain_skills is None else pretrain_skills
    p_formats = self.formats if pretrain_formats is None else pretrain_formats
    p_skills = _check_names("pretrain_skills", p_skills, self.skills)
    p_formats = _check_names("pretrain_formats", p_formats, self.formats)
    self.pretrain_pairs = tuple(
      pair for pair in itertools.product(p_skills, p_formats) if pair != self.target_pair
    )
    self.tokenizer = WordTokenizer.from_vocab(vocabulary(self.num_range, hi))

    rng = np.random.default_rng([self.seed, _SPLITS_STREAM])
    both = self.sample(*self.target_pair, self.num_target + self.num_test, rng, id_prefix="")
    self.target = [_renamed(ex, f"target-{i}") for i, ex in enumerate(both[: self.num_target])]
    self.test = [_renamed(ex, f"test-{i}") for i, ex in enumerate(both[self.num_target :])]

  @property
  def target_pair(self) -> tuple[str, str]:
    """``(target_skill, target_format)``."""
    return self.target_skill, self.target_format

  def describe(self) -> str:
    """One line that says what this task is."""
    lo, hi = self.list_len
    return (
      f"synthetic: {len(self.skills)} skills ({', '.join(self.skills)}) x {len(self.formats)} "
      f"formats ({', '.join(self.formats)}); lists of {lo}-{hi} distinct numbers in "
      f"0..{self.num_range - 1}, {self.num_choices} options; target {self.target_pair}: "
      f"{self.num_target} labelled, {self.num_test} test; warm-up mix of "
      f"{len(self.pretrain_pairs)} other pairs; vocabulary {self.tokenizer.vocab_size}"
    )

  def sample(
    self, skill: str, format: str, n: int, rng: np.random.Generator, *, id_prefix: str = "sample"
  ) -> list[MCQExample]:
    """``n`` examples of one (skill, format) pair with distinct questions.

    Args:
      skill: one of :attr:`skills`.
      format: one of :attr:`formats`.
      n: number of examples.
      rng: the only source of randomness; the same state gives the same examples.
      id_prefix: ids are ``f"{id_prefix}-{i}"``.

    Returns:
      Examples whose ``meta`` holds ``skill`` and ``format``.
    """
    _check_name("skill", skill, self.skills)
    _check_name("format", format, self.formats)
    n = _check_count("n", n, 0)
    if not isinstance(rng, np.random.Generator):
      raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    template, separator = TEMPLATES[format][skill], SEPARATORS[format]
    examples: dict[str, MCQExample] = {}
    stalled = 0
    while len(examples) < n:
      before = len(examples)
      for items, cue, choices, answer in zip(
        *self._draw(skill, n - len(examples), rng), strict=True
      ):
        question = template.format(items=separator.join(map(str, items)), cue=cue)
        if question not in examples:
          examples[question] = MCQExample(
            id=f"{id_prefix}-{len(examples)}",
            question=question,
            choices=tuple(map(str, choices)),
            answer=int(answer),
            meta={"skill": skill, "format": format},
          )
      stalled = stalled + 1 if len(examples) == before else 0
      if stalled == _MAX_STALLED_DRAWS:
        raise ValueError(
          f"Found only {len(examples)} distinct ({skill}, {format}) questions, {n} asked: "
          f"raise num_range ({self.num_range}) or list_len ({self.list_len})"
        )
    return list(examples.values())

  def pretrain(self, n: int, seed: int) -> list[MCQExample]:
    """The warm-up mix: ``n`` examples spread evenly over :attr:`pretrain_pairs`, shuffled.

    Args:
      n: number of examples; pair counts differ by at most one.
      seed: combined with the task seed, so tasks with different seeds differ.
    """
    n = _check_count("n", n, 0)
    if not self.pretrain_pairs:
      raise ValueError(
        f"The warm-up mix is empty: it would hold only the target {self.target_pair}"
      )
    rng = np.random.default_rng([self.seed, _PRETRAIN_STREAM, _check_count("seed", seed, 0)])
    per_pair, extra = divmod(n, len(self.pretrain_pairs))
    examples = [
      ex
      for i, pair in enumerate(self.pretrain_pairs)
      for ex in self.sample(*pair, per_pair + (i < extra), rng)
    ]
    return [_renamed(examples[j], f"pretrain-{i}") for i, j in enumerate(rng.permutation(n))]

  def _draw(self, skill: str, n: int, rng: np.random.Generator) -> tuple[list, ...]:
    """Draws ``n`` questions of ``skill``, vectorised over questions.

    Returns:
      Lists of length ``n``: items (list of ints), cue (int or ``None``), choices
      (``num_choices`` ints) and the answer's index in choices.
    """
    lo, hi = self.list_len
    rows = np.arange(n)
    lengths = rng.integers(lo, hi + 1, size=n)  # [n]
    valid = np.arange(hi)[None, :] < lengths[:, None]  # [n, hi]
    # Distinct items per row: the first ``hi`` of a random permutation of the range.
    perm = np.argsort(rng.random((n, self.num_range)), axis=1)[:, :hi]  # [n, hi]
    cue = None
    if skill == "count":
      cue = perm[:, 0]
      count = 1 + (rng.random(n) * (lengths - 1)).astype(int)  # [n], in 1 .. len - 1
      # ``count`` copies of the cue, then distinct other items, then shuffled in place.
      other = np.take_along_axis(perm, np.clip(1 + np.arange(hi) - count[:, None], 0, hi - 1), 1)
      items = np.where(np.arange(hi)[None, :] < count[:, None], cue[:, None], other)
      order = np.argsort(np.where(valid, rng.random((n, hi)), np.inf), axis=1)
      items = np.take_along_axis(items, order, 1)
      answer = count
      values = np.arange(hi + 1)[None, :]  # candidate counts 0 .. hi
      keys = rng.random((n, hi + 1))
      keys[(values > lengths[:, None]) | (values == count[:, None])] = np.inf
      distractors = np.argsort(keys, axis=1)[:, : self.num_choices - 1]
    else:
      items = perm
      if skill == "max":
        pos = np.where(valid, items, -1).argmax(1)
      elif skill == "min":
        pos = np.where(valid, items, self.num_range).argmin(1)
      elif skill == "first":
        pos = np.zeros(n, int)
      elif skill == "last":
        pos = lengths - 1
      else:  # after
        cue_pos = (rng.random(n) * (lengths - 1)).astype(int)  # never the last item
        cue = items[rows, cue_pos]
        pos = cue_pos + 1
      answer = items[rows, pos]
      keys = np.where(valid, rng.random((n, hi)), np.inf)
      keys[rows, pos] = np.inf
      distractors = np.take_along_axis(
        items, np.argsort(keys, axis=1)[:, : self.num_choices - 1], 1
      )
    choices = np.concatenate([answer[:, None], distractors], axis=1)  # [n, num_choices]
    order = np.argsort(rng.random((n, self.num_choices)), axis=1)
    choices = np.take_along_axis(choices, order, 1)
    answer_index = np.argmax(order == 0, axis=1)
    return (
      [list(row[:length]) for row, length in zip(items.tolist(), lengths, strict=True)],
      [None] * n if cue is None else cue.tolist(),
      choices.tolist(),
      answer_index.tolist(),
    )


def _renamed(example: MCQExample, new_id: str) -> MCQExample:
  return dataclasses.replace(example, id=new_id)
