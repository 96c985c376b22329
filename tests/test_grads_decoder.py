"""per_example_grads on the project's decoder with LoRA, against a loop of jax.grad."""

import jax
import numpy as np
import pytest

from evoselect_jax.features import per_example_grads
from evoselect_jax.models import llama
from evoselect_jax.train import losses

CONFIG = llama.LlamaConfig(
  vocab_size=23,
  hidden_size=16,
  intermediate_size=24,
  num_layers=2,
  num_heads=2,
  num_kv_heads=1,
  lora_rank=2,
  lora_targets=("q_proj", "v_proj", "down_proj"),
)


@pytest.fixture(scope="module")
def model():
  params, lora = llama.init(CONFIG, jax.random.key(0))
  lora = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), lora)
  rng = np.random.default_rng(0)
  n, t = 7, 9
  tokens = rng.integers(1, CONFIG.vocab_size, (n, t)).astype(np.int32)
  lengths = rng.integers(4, t + 1, n)
  attention = np.arange(t)[None] < lengths[:, None]
  loss_mask = attention & (np.arange(t)[None] >= lengths[:, None] - 2)
  batch = {"tokens": tokens, "attention_mask": attention, "loss_mask": loss_mask}
  return params, lora, batch


@pytest.mark.parametrize(("n", "micro_batch"), [(1, 4), (5, 1), (7, 3), (7, 8)])
def test_decoder_lora_grads_equal_loop(model, n, micro_batch):
  params, lora, batch = model
  batch = {k: v[:n] for k, v in batch.items()}
  loss = lambda lo, ex: losses.example_loss(CONFIG, params, lo, ex)
  got = per_example_grads(loss, lora, batch, micro_batch=micro_batch)
  for i in range(n):
    want = jax.grad(loss)(lora, {k: v[i] for k, v in batch.items()})
    jax.tree.map(
      lambda g, w, i=i: np.testing.assert_allclose(g[i], w, rtol=1e-4, atol=1e-6), got, want
    )
