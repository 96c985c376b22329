"""Few-shot prompts, the packed scorer and the transformers tokenizer adapter."""

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
import transformers
from jax.tree_util import Partial

from evoselect_jax.eval import (
  HFTokenizer,
  bucket_lengths,
  encode_for_scoring,
  encode_packed,
  format_exemplar,
  format_prompt,
  mcqa_accuracy,
  packed_mcqa_accuracy,
  sample_exemplars,
)
from evoselect_jax.models import LlamaConfig, apply, init
from evoselect_jax.types import MCQExample

EXAMPLES = [
  MCQExample("a", "What is red?", ("a rose", "the sky", "grass"), 0),
  MCQExample(
    "b",
    "Which is a planet?",
    ("Mars", "the Moon", "a star", "a comet"),
    0,
    context="Space facts: the planets go round the sun, the moon goes round a planet.",
  ),
  MCQExample("c", "What melts?", ("ice in the sun", "rock"), 1),
  MCQExample("d", "Which is a fruit?", ("a carrot", "an apple", "bread", "milk"), 1),
  MCQExample("e", "What is wet?", ("water", "dust", "sand"), 2),
]
POOL = [
  MCQExample("p1", "What is blue?", ("the sky", "grass"), 0),
  MCQExample("p2", "What is hot?", ("ice", "the sun", "snow"), 1),
  MCQExample("p3", "What is cold?", ("snow", "fire"), 0),
]


class WordTokenizer:
  """Word/punctuation tokenizer over a fixed vocabulary; 0 = pad, 1 = bos."""

  pad_id = 0

  def __init__(self, texts, bos):
    words = sorted({w for t in texts for w in self.split(t)})
    self.vocab = {w: i + 2 for i, w in enumerate(words)}
    self.bos_id = 1 if bos else None

  @staticmethod
  def split(text):
    return re.findall(r"\w+|[^\w\s]", text)

  def encode(self, text):
    return [self.vocab[w] for w in self.split(text)]


TEXTS = [format_prompt(e) for e in EXAMPLES + POOL] + [
  c for e in EXAMPLES + POOL for c in e.choices
]
TOKENIZER = WordTokenizer(TEXTS, bos=True)
CONFIG = LlamaConfig(
  vocab_size=len(TOKENIZER.vocab) + 2,
  hidden_size=16,
  intermediate_size=24,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
)


@pytest.fixture(scope="module")
def weights():
  params, lora = init(CONFIG, jax.random.key(0))
  params = jax.tree.map(lambda x: 10 * np.asarray(x), params)  # Sharper, more varied predictions.
  lora = jax.tree.map(lambda x: np.asarray(jax.random.normal(jax.random.key(1), x.shape)), lora)
  return params, lora


def test_format_fewshot():
  want = (
    "Question: What is blue?\nAnswer: the sky\n\n"
    "Question: What is hot?\nAnswer: the sun\n\n"
    "Space facts: the planets go round the sun, the moon goes round a planet.\n"
    "Question: Which is a planet?\nAnswer:"
  )
  assert format_prompt(EXAMPLES[1], POOL[:2]) == want
  assert format_exemplar(EXAMPLES[1]).endswith("Question: Which is a planet?\nAnswer: Mars")


def test_sample_exemplars():
  pool = [MCQExample(f"q{i}", f"Question {i}?", ("yes", "no"), i % 2) for i in range(9)]
  shots = sample_exemplars(pool, pool, k=3, seed=0)
  assert all(len(s) == 3 and len({x.id for x in s}) == 3 for s in shots)
  assert all(ex not in s for ex, s in zip(pool, shots, strict=True))
  # Deterministic and per example: a reordered subset sees the same exemplars.
  assert sample_exemplars(pool[5:1:-1], pool, k=3, seed=0) == shots[5:1:-1]
  assert sample_exemplars(pool, pool, k=3, seed=1) != shots
  assert sample_exemplars(pool, pool, k=0, seed=0) == [()] * 9
  with pytest.raises(ValueError, match="k=9 exemplars need 0 <= k < len"):
    sample_exemplars(pool, pool, k=9, seed=0)
  unlabeled = [MCQExample("u", "Question?", ("yes", "no"), -1)]
  with pytest.raises(ValueError, match="'u': answer=-1"):
    sample_exemplars(pool, pool + unlabeled, k=1, seed=0)


def test_encode_packed_layout():
  ex = EXAMPLES[2]  # "What melts?" with options "ice in the sun", "rock".
  enc = encode_packed(TOKENIZER, [ex], max_len=32, max_choices=3)
  prompt = [TOKENIZER.bos_id] + TOKENIZER.encode(format_prompt(ex))
  conts = [TOKENIZER.encode(" " + c) for c in ex.choices]
  p, (o1, o2) = len(prompt), map(len, conts)
  assert enc["tokens"][0].tolist() == prompt + conts[0] + conts[1]
  assert enc["segment"][0].tolist() == [0] * p + [1] * o1 + [2] * o2
  assert enc["positions"][0].tolist() == [*range(p), *range(p, p + o1), *range(p, p + o2)]
  # Position p - 1 scores both options' first tokens, each other token the one before.
  assert enc["logits_at"][0].tolist() == [
    p - 1,
    *range(p, p + o1 - 1),
    *range(p + o1, p + o1 + o2 - 1),
  ]
  scoring = enc["logits_at"][0][enc["source"][0, p:]]
  assert scoring.tolist() == [p - 1, p, p + 1, p + 2, p - 1]
  assert enc["num_scored"].tolist() == [o1 + o2 - 1]
  assert enc["length"].tolist() == [p + o1 + o2]
  assert enc["choice_mask"].tolist() == [[True, True, False]]
  assert enc["cont_chars"].tolist() == [[14, 4, 1]] and enc["answer"].tolist() == [1]


def test_encode_packed_errors():
  with pytest.raises(ValueError, match="'b' option 1 needs 29 tokens > max_len=28"):
    encode_packed(TOKENIZER, EXAMPLES, max_len=28, max_choices=4)
  with pytest.raises(ValueError, match="'b' has 4 choices > max_choices=3"):
    encode_packed(TOKENIZER, EXAMPLES, max_len=64, max_choices=3)
  with pytest.raises(ValueError, match="Got 1 exemplar lists for 5 examples"):
    encode_packed(TOKENIZER, EXAMPLES, max_len=64, max_choices=4, exemplars=[POOL])


def test_bucket_lengths():
  assert bucket_lengths([1, 8, 9, 16, 17, 100], 8).tolist() == [8, 8, 16, 16, 32, 128]


@pytest.mark.parametrize("shots, use_lora", [(0, False), (2, True)])
def test_packed_matches_rows(weights, use_lora, shots):
  params, lora = weights
  lora = lora if use_lora else None
  examples = EXAMPLES + POOL
  exemplars = sample_exemplars(examples, POOL, k=shots, seed=3) if shots else None
  packed = encode_packed(TOKENIZER, examples, 64, 5, exemplars=exemplars)
  # Buckets 16/32/64 hold 1-7 rows, run in batches of 64 // length rows; the zero-shot
  # bucket 16 ends in a padded batch (7 = 4 + 3 rows, the last batch padded to 4).
  buckets = bucket_lengths(packed["length"], 16)
  assert len(set(buckets)) > 1
  chex.clear_trace_counter()  # Each parameter set compiles its own programs.
  counted = chex.assert_max_traces(apply, n=2 * len(set(buckets)))  # Full and last batches.
  got = packed_mcqa_accuracy(
    Partial(counted, CONFIG, params, lora), packed, batch_tokens=64, min_length=16
  )
  rows = encode_for_scoring(TOKENIZER, examples, 64, 5, exemplars=exemplars)
  want = mcqa_accuracy(Partial(apply, CONFIG, params, lora), rows, batch_size=8)
  np.testing.assert_allclose(got.loglik, want.loglik, rtol=1e-4, atol=1e-4)
  assert np.isneginf(got.loglik[~packed["choice_mask"]]).all()
  np.testing.assert_array_equal(got.pred, want.pred)
  np.testing.assert_array_equal(got.pred_norm, want.pred_norm)
  assert (got.acc, got.acc_norm) == (want.acc, want.acc_norm)
  # New weights reuse the compiled programs.
  scaled = jax.tree.map(lambda x: 1.1 * x, params)
  again = packed_mcqa_accuracy(
    functools.partial(counted, CONFIG, scaled, lora), packed, batch_tokens=64, min_length=16
  )
  assert not np.allclose(again.loglik[packed["choice_mask"]], got.loglik[packed["choice_mask"]])


def test_packed_refuses_other_models():
  packed = encode_packed(TOKENIZER, EXAMPLES[:2], 64, 4)
  with pytest.raises(ValueError, match="needs a logits_fn that runs .*Attention"):
    packed_mcqa_accuracy(
      lambda t, m, logits_at: jnp.zeros((*logits_at.shape, CONFIG.vocab_size)), packed
    )


def hf_tokenizer(pad):
  """A word-level transformers tokenizer whose default encoding adds bos."""
  vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<pad>", "hi", "there"])}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.post_processor = tokenizers.processors.TemplateProcessing(
    single="<s> $A", special_tokens=[("<s>", 1)]
  )
  kwargs = dict(bos_token="<s>", eos_token="</s>") | ({"pad_token": "<pad>"} if pad else {})
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def test_hf_tokenizer():
  tok = hf_tokenizer(pad=True)
  assert tok.encode("hi there") == [1, 4, 5]  # The default adds bos ...
  adapted = HFTokenizer(tok)
  assert adapted.encode("hi there") == [4, 5]  # ... the adapter never does.
  assert (adapted.pad_id, adapted.bos_id) == (3, None)
  assert HFTokenizer(tok, add_bos=True).bos_id == 1
  assert HFTokenizer(hf_tokenizer(pad=False)).pad_id == 2  # No pad token: eos.
  tok.bos_token = None
  with pytest.raises(ValueError, match="add_bos=True but .* has no bos token"):
    HFTokenizer(tok, add_bos=True)
