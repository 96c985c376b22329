"""Per-example gradients and factored features of the decoder, against a loop of jax.grad."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from evoselect_jax import features, loop
from evoselect_jax.features import factored, per_example_grads
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


def dense_kron_matrix(tree_projector):
  """The stacked [P, out_dim] matrix kron(P_a, P_b) of every leaf, built in numpy."""
  return np.concatenate(
    [np.kron(np.asarray(p.left), np.asarray(p.right)) for p in tree_projector.projectors]
  )


def loop_grads_flat(loss, diff, batch, n):
  rows, grad = [], jax.jit(jax.grad(loss))
  for i in range(n):
    g = grad(diff, {k: v[i] for k, v in batch.items()})
    rows.append(np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(g)]))
  return np.stack(rows)


def perturbed(tree, seed, scale):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten(
    [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
  )


@pytest.mark.parametrize(
  ("collection", "tied", "bias", "micro_batch"),
  [("params", True, False, 3), ("params", False, True, 2), ("lora", True, True, 8)],
)
def test_factored_features_equal_dense_kron_projection_of_true_grads(
  model, collection, tied, bias, micro_batch
):
  config = dataclasses.replace(CONFIG, tie_word_embeddings=tied, attention_bias=bias)
  params, lora = llama.init(config, jax.random.key(0))
  params, lora = perturbed(params, 2, 0.05), perturbed(lora, 1, 0.1)  # B != 0, biases != 0
  _, _, batch = model
  n = 7
  diff = params if collection == "params" else lora
  proj = features.make_tree_projector("factored", diff, 12, jax.random.key(3))
  got = features.factored_features(
    config, params, lora, diff, batch, proj, collection=collection, micro_batch=micro_batch
  )
  if collection == "params":
    loss = lambda p, ex: losses.example_loss(config, p, lora, ex)
  else:
    loss = lambda lo, ex: losses.example_loss(config, params, lo, ex)
  want = loop_grads_flat(loss, diff, batch, n) @ dense_kron_matrix(proj)
  assert got.features.shape == (n, 12) and bool(got.finite.all())
  unit = want / np.linalg.norm(want, axis=1, keepdims=True)
  np.testing.assert_allclose(got.features, unit, rtol=1e-4, atol=1e-5)


def test_factored_features_of_a_subtree_and_bf16(model):
  params, lora, batch = model
  diff = {"layers_1": params["layers_1"]}
  proj = features.make_tree_projector("factored", diff, 16, jax.random.key(4))
  got = features.factored_features(
    CONFIG, params, lora, diff, batch, proj, collection="params", normalize=False
  )
  loss = lambda d, ex: losses.example_loss(CONFIG, params | d, lora, ex)
  want = proj(features.per_example_grads(loss, diff, batch))
  np.testing.assert_allclose(got.features, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
  bf16 = dataclasses.replace(CONFIG, dtype="bfloat16")
  low = features.factored_features(bf16, params, lora, diff, batch, proj, collection="params")
  cos = np.sum(np.asarray(low.features) * np.asarray(got.features), axis=1) / np.linalg.norm(
    got.features, axis=1
  )
  assert low.features.dtype == jnp.float32 and np.all(cos > 0.95)


def test_factored_features_flag_non_finite_examples(model):
  config = dataclasses.replace(CONFIG, tie_word_embeddings=False)
  params, lora = llama.init(config, jax.random.key(0))
  _, _, batch = model
  token = int(batch["tokens"][2, 0])  # an inf embedding row: only examples with that token
  params["embed_tokens"]["embedding"] = params["embed_tokens"]["embedding"].at[token].set(np.inf)
  proj = features.make_tree_projector("factored", lora, 8, jax.random.key(0))
  out = features.factored_features(config, params, lora, lora, batch, proj, collection="lora")
  uses = (batch["tokens"] == token).any(axis=1)
  assert uses.any() and not uses.all()
  np.testing.assert_array_equal(out.finite, ~uses)
  np.testing.assert_array_equal(out.features[uses], 0.0)
  np.testing.assert_allclose(np.linalg.norm(out.features[~uses], axis=1), 1.0, rtol=1e-5)


def test_factored_features_reject_other_projectors(model):
  params, lora, batch = model
  dense = features.make_tree_projector("gaussian", lora, 8, jax.random.key(0))
  with pytest.raises(ValueError, match="Kronecker leaf projectors"):
    features.factored_features(CONFIG, params, lora, lora, batch, dense, collection="lora")
  other = features.make_tree_projector("factored", params, 8, jax.random.key(0))
  with pytest.raises(ValueError, match="Projector built for"):
    features.factored_features(CONFIG, params, lora, lora, batch, other, collection="lora")
  kron = features.make_tree_projector("factored", lora, 8, jax.random.key(0))
  with pytest.raises(ValueError, match="collection"):
    features.factored_features(CONFIG, params, lora, lora, batch, kron, collection="adapters")
  with pytest.raises(ValueError, match="No output gradient for layers_0/mlp/out: the decoder"):
    factored.decoder_factors(CONFIG, params, lora, batch, outputs={("layers_0", "mlp", "out")})


@pytest.mark.parametrize("which", ["lora", "last_k_layers", "all"])
def test_loop_featurize_with_factored_equals_kronecker(model, which):
  params, lora, batch = model
  learner = loop.Learner(CONFIG, params, lora)
  diff = loop.feature_params(learner, which, last_k=1)
  cfg = ml_collections.ConfigDict(dict(params=which, last_k=1, preconditioner="sgd", micro_batch=3))
  key = jax.random.key(5)
  fac = features.make_tree_projector("factored", diff, 16, key)
  kron = features.make_tree_projector("kronecker", diff, 16, key)
  scored = losses.num_scored(batch["loss_mask"], multiple=1)  # factored: answers only
  assert scored < batch["tokens"].shape[1] - 1
  featurize = functools.partial(loop.featurize, CONFIG, params, lora, diff, batch, which=which)
  got = featurize(fac, None, micro_batch=3, num_scored=scored)
  want = featurize(kron, None, micro_batch=3)  # every position scored
  np.testing.assert_allclose(got.features, want.features, rtol=1e-4, atol=1e-5)
  if which == "lora":
    cfg.update(preconditioner="adam", projector=dict(name="factored"))
    with pytest.raises(ValueError, match="factored"):
      loop.check_features_config(cfg)
