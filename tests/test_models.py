import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evoselect_jax.models import PROJECTIONS, LlamaConfig, apply, init, llama, params_to_hf
from evoselect_jax.models.llama import Llama, init_cache, merge_lora

apply_jit = jax.jit(apply, static_argnums=0)

# Small odd shapes: GQA with 6 query heads on 2 kv heads, head_dim 4, vocab 37.
CONFIG = LlamaConfig(
  vocab_size=37,
  hidden_size=24,
  intermediate_size=40,
  num_layers=2,
  num_heads=6,
  num_kv_heads=2,
  lora_rank=3,
  lora_alpha=5.0,
)


def random_tree(tree, seed, scale=0.3):
  """Gaussian noise shaped like ``tree`` (numpy, so no per-shape compilation)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: (scale * rng.normal(size=x.shape)).astype(np.float32), tree)


@functools.cache
def model(config=CONFIG):
  """Params with random (not identity) norms, and LoRA with nonzero B."""
  params, lora = init(config, jax.random.key(0))
  params = jax.tree.map(lambda x, r: np.asarray(x) + r, params, random_tree(params, 1, 0.1))
  return params, random_tree(lora, 2)


def tokens(shape, seed=3):
  return jax.random.randint(jax.random.key(seed), shape, 0, CONFIG.vocab_size, jnp.int32)


def test_config_validation():
  assert CONFIG.head_dim == 4
  with pytest.raises(ValueError, match="num_kv_heads=4"):
    LlamaConfig(37, 24, 40, 2, num_heads=6, num_kv_heads=4)
  with pytest.raises(ValueError, match="'qproj'"):
    LlamaConfig(37, 24, 40, 2, 6, 2, lora_targets=("qproj",))
  with pytest.raises(ValueError, match="'float16'"):
    LlamaConfig(37, 24, 40, 2, 6, 2, dtype="float16")
  with pytest.raises(ValueError, match="head_dim"):
    LlamaConfig(37, 25, 40, 2, 6, 2)
  assert hash(LlamaConfig(37, 24, 40, 2, 6, 2, lora_targets=["q_proj"])) is not None


def test_shapes_and_collections():
  params, lora = init(CONFIG, jax.random.key(0))
  attn = params["layers_1"]["self_attn"]
  assert attn["q_proj"]["kernel"].shape == (24, 24)
  assert attn["k_proj"]["kernel"].shape == (24, 8)  # 2 kv heads x head_dim 4.
  assert params["embed_tokens"]["embedding"].shape == (37, 24)
  assert "lm_head" not in params
  assert set(lora["layers_0"]["self_attn"]) == {"q_proj", "v_proj"}
  assert lora["layers_0"]["self_attn"]["v_proj"]["lora_a"].shape == (24, 3)
  assert lora["layers_0"]["self_attn"]["v_proj"]["lora_b"].shape == (3, 8)
  assert not np.any(lora["layers_0"]["self_attn"]["v_proj"]["lora_b"])
  logits = apply_jit(CONFIG, params, lora, tokens((2, 7)))
  assert logits.shape == (2, 7, 37) and logits.dtype == jnp.float32


def test_zero_lora_b_equals_base_model():
  params, lora = init(CONFIG, jax.random.key(0))
  x = tokens((3, 5))
  np.testing.assert_array_equal(
    apply_jit(CONFIG, params, lora, x), apply_jit(CONFIG, params, None, x)
  )


def merge(config, params, lora):
  """Base params with W + (alpha / r) A B on every adapted projection."""
  scale = config.lora_alpha / config.lora_rank
  merged = jax.tree.map(np.asarray, params)
  for layer, modules in lora.items():
    for group, projs in modules.items():
      for name, ab in projs.items():
        w = merged[layer][group][name]["kernel"]
        merged[layer][group][name]["kernel"] = w + scale * np.asarray(ab["lora_a"]) @ ab["lora_b"]
  return merged


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ("k_proj", "o_proj", "down_proj")])
def test_lora_equals_merged_weights(targets):
  config = LlamaConfig(37, 24, 40, 2, 6, 2, lora_rank=3, lora_alpha=5.0, lora_targets=targets)
  params, lora = model(config)
  assert {n for layer in lora.values() for g in layer.values() for n in g} == set(targets)
  x = tokens((2, 6))
  merged = merge(config, params, lora)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
    merge_lora(config, params, lora),
    merged,
  )
  want = apply_jit(config, merged, None, x)
  got = apply_jit(config, params, lora, x)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
  assert not np.allclose(got, apply_jit(config, params, None, x), atol=1e-3)


def test_lora_gradient_is_separate_collection():
  params, lora = model()
  x = tokens((2, 5))
  grads = jax.jit(jax.grad(lambda lo: jnp.sum(apply(CONFIG, params, lo, x) ** 2)))(lora)
  assert jax.tree.structure(grads) == jax.tree.structure(lora)
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


def test_causal():
  params, lora = model()
  x = tokens((2, 9))
  y = x.at[:, 6].set((x[:, 6] + 1) % CONFIG.vocab_size)
  a, b = apply_jit(CONFIG, params, lora, x), apply_jit(CONFIG, params, lora, y)
  np.testing.assert_array_equal(a[:, :6], b[:, :6])
  assert not np.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_unpadded_rows(side):
  params, lora = model()
  lengths, t = [7, 3, 5], 7
  x = np.zeros((3, t), np.int32)
  mask = np.zeros((3, t), bool)
  rows = [np.asarray(tokens((1, n), seed=10 + i))[0] for i, n in enumerate(lengths)]
  for i, (row, n) in enumerate(zip(rows, lengths, strict=True)):
    sl = slice(t - n, t) if side == "left" else slice(0, n)
    x[i, sl], mask[i, sl] = row, True
  batch = apply_jit(CONFIG, params, lora, x, mask)
  assert np.all(np.isfinite(batch))
  for i, row in enumerate(rows):
    single = apply_jit(CONFIG, params, lora, row[None])[0]
    np.testing.assert_allclose(batch[i][mask[i]], single, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_at_equal_the_full_logits_there(side):
  params, lora = model()
  x = np.asarray(tokens((3, 9)))
  mask = np.ones((3, 9), bool)
  if side == "left":
    mask[1, :3] = False
  else:
    mask[2, -4:] = False
  at = np.array([[8, 0, 4, 4], [3, 7, 8, 5], [1, 2, 6, 0]], np.int32)  # any order, repeats
  full = np.asarray(apply_jit(CONFIG, params, lora, x, mask))
  got = jax.jit(apply, static_argnums=0)(CONFIG, params, lora, x, mask, at)
  assert got.shape == (3, 4, CONFIG.vocab_size)
  np.testing.assert_allclose(got, np.take_along_axis(full, at[..., None], 1), atol=2e-5)
  with pytest.raises(ValueError, match="logits_at applies without a cache"):
    Llama(CONFIG, use_lora=False).apply({"params": params}, x, mask, init_cache(CONFIG, 3, 16), at)


def test_tied_equals_untied_with_transposed_embedding():
  params, _ = model()
  untied = LlamaConfig(37, 24, 40, 2, 6, 2, tie_word_embeddings=False)
  untied_params, _ = init(untied, jax.random.key(0))
  assert untied_params["lm_head"].shape == (24, 37)
  untied_params = dict(params, lm_head=params["embed_tokens"]["embedding"].T)
  x = tokens((2, 5))
  np.testing.assert_allclose(
    apply_jit(untied, untied_params, None, x), apply_jit(CONFIG, params, None, x), atol=1e-6
  )


def test_bfloat16_close_to_float32():
  params, lora = model()
  bf16 = LlamaConfig(37, 24, 40, 2, 6, 2, lora_rank=3, lora_alpha=5.0, dtype="bfloat16")
  x = tokens((2, 6))
  want = apply_jit(CONFIG, params, lora, x)
  got = apply_jit(bf16, params, lora, x)
  assert got.dtype == jnp.float32
  err = np.abs(np.asarray(got) - np.asarray(want)).max()
  assert 0 < err < 0.05 * np.abs(np.asarray(want)).max()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_matches_transformers(family):
  import torch
  import transformers

  config = LlamaConfig(
    37,
    24,
    40,
    2,
    6,
    2,
    rope_theta=500.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=family == "qwen2",
    attention_bias=family == "qwen2",
  )
  params, _ = init(config, jax.random.key(4))
  params = jax.tree.map(lambda x, r: np.asarray(x) + r, params, random_tree(params, 5, 0.1))
  kwargs = dict(
    vocab_size=37,
    hidden_size=24,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    rope_theta=500.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=config.tie_word_embeddings,
  )
  if family == "llama":
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs))
  else:
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kwargs))
  state = {k: torch.tensor(v) for k, v in params_to_hf(params, config).items()}
  missing, unexpected = hf.load_state_dict(state, strict=False)
  assert not unexpected and set(missing) <= {"lm_head.weight"}
  x = np.asarray(tokens((2, 8)))
  with torch.no_grad():
    want = hf(torch.tensor(x, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(apply_jit(config, params, None, x), want, atol=2e-5, rtol=1e-4)


def test_projection_names_cover_every_dense():
  params, _ = init(LlamaConfig(37, 24, 40, 1, 6, 2), jax.random.key(0))
  layer = params["layers_0"]
  assert set(layer["self_attn"]) | set(layer["mlp"]) == set(PROJECTIONS)


def naive_attention(q, k, v, mask, scale):
  """Softmax attention as autodiff sees it: q [b, kv, g, q, d], k/v [b, kv, s, d]."""
  scores = jnp.einsum("bkgqd,bksd->bkgqs", q, k, preferred_element_type=jnp.float32) * scale
  scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  return jnp.einsum("bkgqs,bksd->bkgqd", probs.astype(v.dtype), v)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_attend_equals_autodiff_of_softmax_attention(dtype):
  """The hand-written backward equals autodiff's, with GQA groups, padding and a blind row."""
  rng = np.random.default_rng(0)
  b, kv, g, tq, s, d = 2, 2, 3, 5, 7, 4
  shapes = [(b, kv, g, tq, d), (b, kv, s, d), (b, kv, s, d)]
  q, k, v = (jnp.asarray(rng.normal(size=shape), dtype) for shape in shapes)
  mask = np.tril(np.ones((tq, s), bool), k=s - tq)[None].repeat(b, 0)
  mask[1, :, :2] = False  # padded keys
  mask[1, 0] = False  # a query that sees no key
  cotangent = jnp.asarray(rng.normal(size=(b, kv, g, tq, d)), dtype)
  scale = 0.37
  got_out, got_vjp = jax.vjp(lambda *a: llama.attend(*a, mask, scale), q, k, v)
  want_out, want_vjp = jax.vjp(lambda *a: naive_attention(*a, mask, scale), q, k, v)
  tol = dict(rtol=1e-5, atol=1e-6) if dtype == jnp.float32 else dict(rtol=3e-2, atol=3e-2)
  f32 = lambda x: np.asarray(x, np.float32)
  np.testing.assert_allclose(f32(got_out), f32(want_out), **tol)
  for got, want in zip(got_vjp(cotangent), want_vjp(cotangent), strict=True):
    assert got.dtype == dtype
    np.testing.assert_allclose(f32(got), f32(want), **tol)


def test_rotary_tables_equal_the_angles_at_the_positions():
  positions = jnp.asarray([[0, 1, 2, 2], [5, 3, 0, 4]])
  inv_freq = np.asarray([1.0, 0.1, 0.01], np.float32)
  cos, sin = llama.rotary(positions, inv_freq, 6)
  angles = np.asarray(positions, np.float32)[..., None] * inv_freq
  angles = np.concatenate([angles, angles], axis=-1)[:, :, None]
  np.testing.assert_allclose(cos, np.cos(angles), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(sin, np.sin(angles), rtol=1e-6, atol=1e-6)
