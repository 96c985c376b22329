"""Our MCQA log-likelihoods for SmolLM2 against transformers' PyTorch model, lm-eval style.

The oracle encodes each option as lm-eval-harness >= 0.4 does for a causal model (the
whole ``prompt + continuation`` encoded without special tokens and split at the
prompt's length) and scores each ``[prompt + option]`` row on its own with the
transformers model loaded from the same GGUF file in float32.
"""

import functools

import numpy as np
import pytest
import torch

from evoselect_jax.data.benchmarks import load_task
from evoselect_jax.eval import (
  HFTokenizer,
  encode_packed,
  format_continuation,
  format_prompt,
  packed_mcqa_accuracy,
)
from evoselect_jax.models import llama

NUM_ITEMS = 50  # The first 50 ARC-Challenge test items.


@pytest.fixture(scope="module")
def examples():
  return load_task("arc_challenge", "test")[:NUM_ITEMS]


def lm_eval_pair(tokenizer, context, continuation):
  """lm-eval-harness's ``_encode_pair`` for causal models (no special tokens, no bos)."""
  whole = tokenizer.encode(context + continuation, add_special_tokens=False)
  context_ids = tokenizer.encode(context, add_special_tokens=False)
  return context_ids, whole[len(context_ids) :]


def torch_logliks(model, examples, tokenizer):
  """float64[n, C] summed continuation log-probabilities, an item's options in one batch."""
  out = np.full((len(examples), max(len(e.choices) for e in examples)), -np.inf)
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # Two threads on two shared cores run several times slower.
  try:
    for i, ex in enumerate(examples):
      prompt = format_prompt(ex)
      pairs = [lm_eval_pair(tokenizer, prompt, format_continuation(c)) for c in ex.choices]
      rows = [context + cont for context, cont in pairs]
      ids = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long)
      mask = torch.zeros_like(ids)
      for j, row in enumerate(rows):  # Right padding leaves the real tokens' positions alone.
        ids[j, : len(row)], mask[j, : len(row)] = torch.tensor(row), 1
      with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
      for j, (context, cont) in enumerate(pairs):
        steps = slice(len(context) - 1, len(context) + len(cont) - 1)
        logp = torch.log_softmax(logits[j, steps].double(), dim=-1)
        out[i, j] = logp[torch.arange(len(cont)), torch.tensor(cont)].sum().item()
  finally:
    torch.set_num_threads(threads)
  return out


def test_hf_tokenizer_smollm2(smollm2):
  tok = HFTokenizer(smollm2.tokenizer)
  assert tok.bos_id is None and tok.pad_id == smollm2.tokenizer.pad_token_id == 2
  assert HFTokenizer(smollm2.tokenizer, add_bos=True).bos_id == 1  # <|im_start|>
  assert tok.encode("Question: Why?\nAnswer:") == smollm2.tokenizer.encode(
    "Question: Why?\nAnswer:", add_special_tokens=False
  )


def test_smollm2_arc_logliks_match_transformers(smollm2, smollm2_torch, examples):
  tok = HFTokenizer(smollm2.tokenizer)
  for ex in examples:  # Separate encoding equals lm-eval's split encoding here.
    for choice in ex.choices:
      prompt, cont = format_prompt(ex), format_continuation(choice)
      assert lm_eval_pair(smollm2.tokenizer, prompt, cont) == (
        tok.encode(prompt),
        tok.encode(cont),
      )
  encoded = encode_packed(tok, examples, max_len=1024, max_choices=5)
  logits_fn = functools.partial(llama.apply, smollm2.config, smollm2.params, None)
  got = packed_mcqa_accuracy(logits_fn, encoded)
  want = torch_logliks(smollm2_torch, examples, smollm2.tokenizer)
  c = want.shape[1]
  assert np.isneginf(got.loglik[:, c:]).all()
  np.testing.assert_allclose(got.loglik[:, :c], want, rtol=0, atol=1e-3)
  np.testing.assert_array_equal(got.pred, want.argmax(1))
  chars = np.array([[len(x) for x in e.choices] + [1] * (c - len(e.choices)) for e in examples])
  np.testing.assert_array_equal(got.pred_norm, (want / chars).argmax(1))
  print(f"max |ours - transformers| = {np.abs(got.loglik[:, :c] - want).max():.2e}")
