"""The round's stages: pool padding, feature options, per-example losses."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from evoselect_jax import loop
from evoselect_jax.data.synthetic import SyntheticTask
from evoselect_jax.eval import prompts
from evoselect_jax.features import make_tree_projector
from evoselect_jax.models import llama
from evoselect_jax.train import losses

MODEL = dict(
  hidden_size=16,
  intermediate_size=24,
  num_layers=2,
  num_heads=2,
  num_kv_heads=1,
  lora_rank=2,
  lora_targets=("q_proj", "v_proj"),
)


@pytest.fixture(scope="module")
def setup():
  task = SyntheticTask(num_target=8, num_test=8)
  config = llama.LlamaConfig(vocab_size=task.tokenizer.vocab_size, **MODEL)
  params, lora = llama.init(config, jax.random.key(0))
  # Nonzero B so that gradients w.r.t. A are nonzero too.
  lora = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), lora)
  learner = loop.Learner(config, params, lora)
  # Questions said 1-4 times: rows of 23-77 tokens, cut to widths 32, 64 and 96 (= t).
  examples = [
    dataclasses.replace(x, question=" ".join([x.question] * r))
    for x, r in zip(task.target[:7], [1, 3, 1, 2, 1, 4, 1], strict=True)
  ]
  encoded = prompts.encode_for_training(task.tokenizer, examples, 96)
  return task, learner, {k: jnp.asarray(v) for k, v in encoded.items()}


def _features_cfg(**kw):
  return ml_collections.ConfigDict(
    dict(params="lora", last_k=1, preconditioner="sgd", micro_batch=3, min_length=8) | kw
  )


@pytest.mark.parametrize("which", ["lora", "last_k_layers", "all"])
def test_featurize_equals_loop_of_grads_projected(setup, which):
  _, learner, encoded = setup
  diff = loop.feature_params(learner, which, last_k=1)
  projector = make_tree_projector("gaussian", diff, 16, jax.random.key(2))
  cfg = _features_cfg(params=which)
  rows = np.array([0, 1, 3, 4, 5])  # 2 and 6 are pool padding
  out, used = loop._features(learner, encoded, projector, cfg, candidates=True, rows=rows)
  assert used == "sgd"

  def loss(d, i):
    example = {k: v[i] for k, v in encoded.items()}
    if which == "lora":
      return losses.example_loss(learner.config, learner.params, d, example)
    return losses.example_loss(learner.config, learner.params | d, learner.lora, example)

  for i in rows:  # each at full width (96), every position scored
    z = projector(jax.tree.map(lambda x: x[None], jax.grad(loss)(diff, i)))[0]
    np.testing.assert_allclose(out.features[i], z / jnp.linalg.norm(z), atol=2e-5)
  assert out.finite.tolist() == [True, True, False, True, True, True, False]
  assert not out.features[[2, 6]].any()
  if which == "last_k_layers":
    assert set(diff) == {"layers_1"}


def test_adam_preconditioner_only_for_candidates_after_training(setup):
  _, learner, encoded = setup
  projector = make_tree_projector("rademacher", learner.lora, 8, jax.random.key(3))
  cfg = _features_cfg(preconditioner="adam")
  _, used = loop._features(learner, encoded, projector, cfg, candidates=True)
  assert used == "sgd"  # no optimizer moments before the first fine-tuning
  trained = loop.finetune(
    learner,
    jax.tree.map(np.asarray, encoded),
    key=jax.random.key(4),
    cfg=ml_collections.ConfigDict(dict(steps=3, batch_size=4, learning_rate=1e-2, min_length=8)),
    progress=False,
  )
  cand, used = loop._features(trained, encoded, projector, cfg, candidates=True)
  targ, used_t = loop._features(trained, encoded, projector, cfg, candidates=False)
  assert (used, used_t) == ("adam", "sgd")
  assert not np.allclose(cand.features, targ.features)


def test_feature_config_errors(setup):
  _, learner, _ = setup
  with pytest.raises(ValueError, match="Unknown features.params 'head'; valid: lora"):
    loop.check_features_config(_features_cfg(params="head"))
  with pytest.raises(ValueError, match="needs features.params='lora'"):
    loop.check_features_config(_features_cfg(params="all", preconditioner="adam"))
  with pytest.raises(ValueError, match=r"last_k=3 must be in \[1, 2\]"):
    loop.feature_params(learner, "last_k_layers", last_k=3)


def test_by_length_runs_chunks_of_cut_rows_and_puts_them_back(setup):
  _, learner, encoded = setup
  model = (learner.config, learner.params, learner.lora)
  shapes = []

  def fn(batch, num):
    shapes.append((batch["tokens"].shape, num))
    return loop.example_losses(*model, batch, micro_batch=3, num_scored=num)

  rows = np.array([6, 5, 0, 1, 3, 2])
  got = loop._by_length(fn, encoded, rows, size=9, chunk=2, min_length=8, layout=None)
  # widths: rows 0 2 6 -> 32, 3 -> 64, 1 5 -> 96; 8 scored positions, at most width - 1
  assert sorted(shapes) == [((2, 32), 8), ((2, 32), 8), ((2, 64), 8), ((2, 96), 8)]
  want = loop.example_losses(*model, encoded, micro_batch=3)
  np.testing.assert_allclose(got[rows], np.asarray(want)[rows], rtol=1e-5)
  assert got.shape == (9,) and not got[[4, 7, 8]].any()
  with pytest.raises(ValueError, match="No rows"):
    loop._by_length(fn, encoded, np.arange(0), size=9, chunk=2, min_length=8, layout=None)


def test_example_losses_match_batch_losses(setup):
  _, learner, encoded = setup
  got = loop.example_losses(learner.config, learner.params, learner.lora, encoded, micro_batch=3)
  logits = llama.apply(
    learner.config, learner.params, learner.lora, encoded["tokens"], encoded["attention_mask"]
  )
  want = losses.token_losses(logits, encoded["tokens"], encoded["loss_mask"])
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_make_pool_pads_with_mask_and_rejects_empty(setup):
  task, _, _ = setup
  raw = [
    '{"question": "max ( 1 2 3 4 ) ?", "choices": ["1", "2", "3", "4"], "answer": "D"}',
    "not json",
  ]
  make = functools.partial(
    loop.make_pool,
    test=task.test,
    tokenizer=task.tokenizer,
    size=5,
    max_len=32,
    round_idx=1,
    clean_cfg={},
  )
  pool = make(raw)
  assert len(pool.examples) == 1 and pool.mask.tolist() == [True, False, False, False, False]
  assert pool.encoded["tokens"].shape == (5, 32)
  assert pool.rejected == {"not_json": 1}
  with pytest.raises(ValueError, match=r"Round 1: no valid candidates among 1 generated.*not_json"):
    make(["not json"])


def test_example_embeddings_mean_of_final_hidden_states(setup):
  _, learner, encoded = setup
  got = loop.example_embeddings(
    learner.config, learner.params, learner.lora, encoded, micro_batch=3
  )
  h = llama.hidden_states(
    learner.config, learner.params, learner.lora, encoded["tokens"], encoded["attention_mask"]
  )
  for i in range(7):
    real = np.asarray(encoded["attention_mask"][i])
    np.testing.assert_allclose(got[i], np.asarray(h[i])[real].mean(0), rtol=1e-4, atol=1e-5)
  # The hidden states are what the LM head reads: tied head -> logits = h @ E^T.
  logits = llama.apply(learner.config, learner.params, learner.lora, encoded["tokens"])
  emb = learner.params["embed_tokens"]["embedding"]
  h_all = llama.hidden_states(learner.config, learner.params, learner.lora, encoded["tokens"])
  np.testing.assert_allclose(logits, h_all @ emb.T, rtol=1e-4, atol=1e-4)
