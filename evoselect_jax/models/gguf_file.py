"""Reading llama.cpp GGUF files into a Hugging Face state dict and a :class:`LlamaConfig`.

Tensors are read with ``gguf.GGUFReader`` and dequantized to float32 by
``gguf.quants.dequantize`` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K
are tested here; the other types gguf implements pass through it unchanged). GGUF lists
dimensions fastest-first (``ne``), so a tensor of ``ne = [in, out]`` is the numpy array
``[out, in]``, which is exactly Hugging Face's weight layout.

llama.cpp's ``convert_hf_to_gguf.py`` permutes the rows of the ``llama`` architecture's
q/k weights from the Hugging Face "rotate_half" RoPE layout to the interleaved one;
:func:`unpermute_rope_rows` undoes it. ``qwen2`` files keep the Hugging Face layout.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from evoselect_jax.models.llama import LlamaConfig

# general.architecture values this decoder covers (Mistral files are written as "llama").
ARCHITECTURES = ("llama", "qwen2")
_LAYER_NAMES = {
  "attn_q": "self_attn.q_proj",
  "attn_k": "self_attn.k_proj",
  "attn_v": "self_attn.v_proj",
  "attn_output": "self_attn.o_proj",
  "ffn_gate": "mlp.gate_proj",
  "ffn_up": "mlp.up_proj",
  "ffn_down": "mlp.down_proj",
  "attn_norm": "input_layernorm",
  "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {
  "token_embd.weight": "model.embed_tokens.weight",
  "output_norm.weight": "model.norm.weight",
  "output.weight": "lm_head.weight",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def _gguf_module():
  """The ``gguf`` package, or an error that says how to install it."""
  try:
    import gguf
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
      "Reading GGUF files needs the gguf package: pip install gguf==0.19.0"
    ) from e
  return gguf


def hf_name(gguf_name: str) -> str:
  """The Hugging Face state-dict name of a GGUF tensor name (``blk.3.attn_q.weight`` -> ...)."""
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  match = _LAYER_TENSOR.fullmatch(gguf_name)
  if match is None or match.group(2) not in _LAYER_NAMES:
    raise ValueError(
      f"Unknown GGUF tensor {gguf_name!r}; known: {', '.join(_GLOBAL_NAMES)} and "
      f"blk.N.{{{','.join(_LAYER_NAMES)}}}.{{weight,bias}}"
    )
  layer, kind, leaf = match.groups()
  return f"model.layers.{layer}.{_LAYER_NAMES[kind]}.{leaf}"


def unpermute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of ``LlamaModel.permute`` in llama.cpp's ``convert_hf_to_gguf.py``.

  Args:
    weight: ``[n_heads * head_dim, ...]`` q or k weight (or bias) as stored in the GGUF.
    n_heads: query heads for q, key/value heads for k.

  Returns:
    The same tensor with each head's rows back in the Hugging Face rotate_half order.
  """
  rows = weight.shape[0]
  if rows % (2 * n_heads):
    raise ValueError(f"Cannot unpermute {weight.shape} into {n_heads} heads of even width")
  heads = weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
  return heads.swapaxes(1, 2).reshape(weight.shape)


def dequantize(tensor: Any) -> np.ndarray:
  """A ``gguf.ReaderTensor`` as float32 numpy, in numpy (reversed ``ne``) shape order."""
  gguf = _gguf_module()
  try:
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
  except NotImplementedError as e:
    raise NotImplementedError(
      f"GGUF tensor {tensor.name!r} has type {tensor.tensor_type.name}, which "
      "gguf.quants.dequantize does not implement"
    ) from e
  shape = tuple(int(n) for n in reversed(tensor.shape))
  return np.asarray(values, np.float32).reshape(shape)


def _field(reader: Any, key: str, default: Any = KeyError) -> Any:
  """Metadata value ``key`` of a ``GGUFReader``; ``default`` when absent (or raise)."""
  field = reader.fields.get(key)
  if field is None:
    if default is KeyError:
      raise KeyError(f"GGUF metadata lacks {key!r}")
    return default
  return field.contents()


def metadata(reader: Any) -> dict[str, Any]:
  """The GGUF's scalar metadata (token lists and merges left out), key -> value."""
  skip = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")
  return {k: f.contents() for k, f in reader.fields.items() if k not in skip}


def config_from_gguf(reader: Any, dtype: str = "float32") -> LlamaConfig:
  """A :class:`LlamaConfig` from a ``GGUFReader``'s ``{arch}.*`` metadata and tensor list.

  Args:
    reader: an open ``gguf.GGUFReader``.
    dtype: compute dtype, ``"float32"`` or ``"bfloat16"``.

  Raises:
    ValueError: for an architecture outside ``ARCHITECTURES``, RoPE scaling (llama.cpp
      stores Llama 3.1 scaling as a ``rope_freqs`` tensor, unsupported here), a sliding
      window or partial rotary dimensions.
  """
  arch = _field(reader, "general.architecture")
  if arch not in ARCHITECTURES:
    raise ValueError(
      f"Unsupported GGUF architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}"
    )
  names = {t.name: t for t in reader.tensors}
  scaling = _field(reader, f"{arch}.rope.scaling.type", "none")
  if scaling != "none" or "rope_freqs.weight" in names:
    raise ValueError(
      f"GGUF RoPE scaling (type {scaling!r}, rope_freqs tensor: {'rope_freqs.weight' in names})"
      " is not supported; load the Hugging Face checkpoint for llama3 rope scaling"
    )
  window = _field(reader, f"{arch}.attention.sliding_window", None)
  if window is not None:
    raise ValueError(f"GGUF {arch} with attention.sliding_window={window} is not supported")
  hidden = int(_field(reader, f"{arch}.embedding_length"))
  heads = int(_field(reader, f"{arch}.attention.head_count"))
  head_dim = int(_field(reader, f"{arch}.attention.key_length", hidden // heads))
  rotary = int(_field(reader, f"{arch}.rope.dimension_count", head_dim))
  if rotary != head_dim:
    raise ValueError(f"GGUF rope.dimension_count={rotary} != head_dim={head_dim} (partial RoPE)")
  embed = names["token_embd.weight"]
  return LlamaConfig(
    vocab_size=int(_field(reader, f"{arch}.vocab_size", int(embed.shape[1]))),
    hidden_size=hidden,
    intermediate_size=int(_field(reader, f"{arch}.feed_forward_length")),
    num_layers=int(_field(reader, f"{arch}.block_count")),
    num_heads=heads,
    num_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
    head_dim=head_dim,
    # llama.cpp's own default base when the key is absent.
    rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
    rms_norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
    tie_word_embeddings="output.weight" not in names,
    attention_bias=arch == "qwen2",
    dtype=dtype,
  )


def read_gguf(path: str, dtype: str = "float32") -> tuple[LlamaConfig, dict[str, np.ndarray], dict]:
  """Config, float32 Hugging Face state dict and metadata of a GGUF file.

  Args:
    path: a ``.gguf`` file.
    dtype: compute dtype of the returned config.

  Returns:
    ``(config, state, metadata)``: ``state`` maps HF names to float32 numpy arrays with
    q/k rows back in HF order; feed it to :func:`convert.params_from_hf`.
  """
  reader = _gguf_module().GGUFReader(path)
  config = config_from_gguf(reader, dtype)
  arch = _field(reader, "general.architecture")
  state = {}
  for tensor in reader.tensors:
    name = hf_name(tensor.name)
    value = dequantize(tensor)
    if arch == "llama" and ".self_attn.q_proj." in name:
      value = unpermute_rope_rows(value, config.num_heads)
    elif arch == "llama" and ".self_attn.k_proj." in name:
      value = unpermute_rope_rows(value, config.num_kv_heads)
    state[name] = value
  return config, state, metadata(reader)
