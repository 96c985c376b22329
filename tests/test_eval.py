import functools
import re

import chex
import jax
import numpy as np
import pytest
from jax.tree_util import Partial

from evoselect_jax.eval import (
  encode_for_scoring,
  encode_for_training,
  format_continuation,
  format_prompt,
  mcqa_accuracy,
)
from evoselect_jax.models import LlamaConfig, apply, init
from evoselect_jax.train import token_losses
from evoselect_jax.types import MCQExample

EXAMPLES = [
  MCQExample("a", "What is red?", ("a rose", "the sky", "grass"), 0),
  MCQExample(
    "b", "Which is a planet?", ("Mars", "the Moon", "a star", "a comet"), 0, context="Space facts."
  ),
  MCQExample("c", "What melts?", ("ice in the sun", "rock"), 1),
  MCQExample("d", "Which is a fruit?", ("a carrot", "an apple", "bread", "milk"), 1),
  MCQExample("e", "What is wet?", ("water", "dust", "sand"), 2),
]


class WordTokenizer:
  """Whitespace/punctuation word tokenizer over a fixed vocabulary; 0 = pad, 1 = bos."""

  pad_id = 0

  def __init__(self, texts, bos=True):
    words = sorted({w for t in texts for w in self.split(t)})
    self.vocab = {w: i + 2 for i, w in enumerate(words)}
    self.words = {i: w for w, i in self.vocab.items()}
    self.bos_id = 1 if bos else None

  @staticmethod
  def split(text):
    return re.findall(r"\w+|[^\w\s]", text)

  def encode(self, text):
    return [self.vocab[w] for w in self.split(text)]

  def decode(self, ids):
    return " ".join(self.words[i] for i in ids)


def all_texts(examples):
  return [format_prompt(e) for e in examples] + [c for e in examples for c in e.choices]


apply_jit = jax.jit(apply, static_argnums=0)
TOKENIZER = WordTokenizer(all_texts(EXAMPLES))
CONFIG = LlamaConfig(
  vocab_size=len(TOKENIZER.vocab) + 2,
  hidden_size=16,
  intermediate_size=24,
  num_layers=2,
  num_heads=4,
  num_kv_heads=1,
)


def test_format():
  assert format_prompt(EXAMPLES[0]) == "Question: What is red?\nAnswer:"
  assert format_prompt(EXAMPLES[1]) == "Space facts.\nQuestion: Which is a planet?\nAnswer:"
  assert format_continuation("Mars") == " Mars"


@pytest.mark.parametrize("bos", [True, False])
def test_encode_for_training_round_trip(bos):
  tok = WordTokenizer(all_texts(EXAMPLES), bos=bos)
  enc = encode_for_training(tok, EXAMPLES, max_len=17)
  assert {k: (v.shape, v.dtype) for k, v in enc.items()} == {
    "tokens": ((5, 17), np.int32),
    "loss_mask": ((5, 17), bool),
    "attention_mask": ((5, 17), bool),
  }
  for ex, tokens, loss_mask, attn in zip(
    EXAMPLES, enc["tokens"], enc["loss_mask"], enc["attention_mask"], strict=True
  ):
    n = attn.sum()
    assert attn[:n].all() and not attn[n:].any() and (tokens[n:] == tok.pad_id).all()
    real = tokens[:n].tolist()
    if bos:
      assert real[0] == tok.bos_id
      real = real[1:]
    assert tok.decode(real) == tok.decode(
      tok.encode(format_prompt(ex) + " " + ex.choices[ex.answer])
    )
    assert tok.decode(tokens[loss_mask]) == tok.decode(tok.encode(ex.choices[ex.answer]))
    assert loss_mask[:n].sum() and not loss_mask[n:].any() and loss_mask[n - 1]


def test_encoding_errors():
  with pytest.raises(ValueError, match="'b' option 0 needs 14 tokens > max_len=13"):
    encode_for_training(TOKENIZER, EXAMPLES, max_len=13)
  with pytest.raises(ValueError, match="'b' has 4 choices > max_choices=3"):
    encode_for_scoring(TOKENIZER, EXAMPLES, max_len=17, max_choices=3)
  bad = MCQExample("z", "What is red?", ("a rose", "grass"), 2)
  with pytest.raises(ValueError, match="'z': answer=2"):
    encode_for_training(TOKENIZER, [bad], max_len=17)


def test_encode_for_scoring_shapes():
  enc = encode_for_scoring(TOKENIZER, EXAMPLES, max_len=17, max_choices=5)
  assert enc["tokens"].shape == enc["cont_mask"].shape == enc["attention_mask"].shape == (5, 5, 17)
  np.testing.assert_array_equal(enc["choice_mask"].sum(1), [3, 4, 2, 4, 3])
  np.testing.assert_array_equal(enc["answer"], [0, 0, 1, 1, 2])
  assert enc["cont_chars"][0].tolist() == [6, 7, 5, 1, 1]
  assert not enc["attention_mask"][~enc["choice_mask"]].any()


def brute_force_logliks(config, params, examples, tokenizer):
  """Per-option sum of continuation log-probs, one unpadded sequence at a time."""
  out = np.full((len(examples), 5), -np.inf)
  for i, ex in enumerate(examples):
    for j, choice in enumerate(ex.choices):
      prompt = [tokenizer.bos_id] + tokenizer.encode(format_prompt(ex))
      cont = tokenizer.encode(" " + choice)
      logits = np.asarray(apply_jit(config, params, None, np.array([prompt + cont])), np.float64)
      z = logits[0] - logits[0].max(-1, keepdims=True)
      logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
      out[i, j] = sum(logp[len(prompt) + k - 1, c] for k, c in enumerate(cont))
  return out


def test_mcqa_accuracy_matches_brute_force():
  params, _ = init(CONFIG, jax.random.key(0))
  params = jax.tree.map(lambda x: 20 * np.asarray(x), params)  # Sharper, more varied predictions.
  enc = encode_for_scoring(TOKENIZER, EXAMPLES, max_len=17, max_choices=5)
  counted_apply = chex.assert_max_traces(apply, n=1)
  out = mcqa_accuracy(Partial(counted_apply, CONFIG, params, None), enc, batch_size=4)
  want = brute_force_logliks(CONFIG, params, EXAMPLES, TOKENIZER)
  np.testing.assert_allclose(out.loglik, want, rtol=1e-4, atol=1e-4)
  assert out.loglik.shape == (5, 5) and np.isneginf(out.loglik[~enc["choice_mask"]]).all()
  answer = np.array([e.answer for e in EXAMPLES])
  np.testing.assert_array_equal(out.pred, want.argmax(1))
  chars = np.array([[len(c) for c in e.choices] + [1] * (5 - len(e.choices)) for e in EXAMPLES])
  np.testing.assert_array_equal(out.pred_norm, (want / chars).argmax(1))
  assert out.acc == np.mean(want.argmax(1) == answer)
  assert out.acc_norm == np.mean((want / chars).argmax(1) == answer)
  # New weights reuse the compiled program (the Partial's arrays are traced).
  params2 = jax.tree.map(lambda x: 1.1 * x, params)
  out2 = mcqa_accuracy(functools.partial(counted_apply, CONFIG, params2, None), enc, batch_size=4)
  assert not np.allclose(out2.loglik[enc["choice_mask"]], out.loglik[enc["choice_mask"]])


def test_training_loss_is_scoring_loglik_of_answer():
  params, _ = init(CONFIG, jax.random.key(1))
  train = encode_for_training(TOKENIZER, EXAMPLES, max_len=17)
  scored = mcqa_accuracy(
    Partial(apply, CONFIG, params, None),
    encode_for_scoring(TOKENIZER, EXAMPLES, max_len=17, max_choices=4),
    batch_size=8,
  )
  logits = apply_jit(CONFIG, params, None, train["tokens"], train["attention_mask"])
  losses = token_losses(logits, train["tokens"], train["loss_mask"]) * train["loss_mask"].sum(1)
  want = -scored.loglik[np.arange(5), [e.answer for e in EXAMPLES]]
  np.testing.assert_allclose(losses, want, rtol=1e-5)
