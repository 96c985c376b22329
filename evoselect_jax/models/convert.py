"""Hugging Face ↔ ours: the architecture config and the parameter tree.

The name mapping is the table in :mod:`evoselect_jax.models.llama`'s docstring: HF
``[out, in]`` weights become ``[in, out]`` kernels, everything else keeps its shape.
Both directions are driven by one table (:func:`hf_parameter_table`), so they cannot
drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from evoselect_jax.models.llama import LlamaConfig

# Hugging Face ``model_type`` values whose models are this decoder.
ARCHITECTURES = ("llama", "mistral", "qwen2")
# Buffers some older checkpoints store; they are recomputed from the config.
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


def hf_parameter_table(config: LlamaConfig) -> list[tuple[str, tuple[str, ...], bool, tuple]]:
  """Every parameter of ``config``'s model as ``(hf_name, our_path, transposed, our_shape)``.

  Args:
    config: the architecture.

  Returns:
    One row per leaf of the ``params`` collection; ``transposed`` marks kernels, stored
    ``[out, in]`` by Hugging Face and ``[in, out]`` here.
  """
  c = config
  d, q_dim, kv_dim = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
  rows = [
    ("model.embed_tokens.weight", ("embed_tokens", "embedding"), False, (c.vocab_size, d)),
    ("model.norm.weight", ("norm", "scale"), False, (d,)),
  ]
  projections = {
    "self_attn": {"q_proj": (d, q_dim), "k_proj": (d, kv_dim), "v_proj": (d, kv_dim)},
    "mlp": {"gate_proj": (d, c.intermediate_size), "up_proj": (d, c.intermediate_size)},
  }
  projections["self_attn"]["o_proj"] = (q_dim, d)
  projections["mlp"]["down_proj"] = (c.intermediate_size, d)
  for i in range(c.num_layers):
    hf, ours = f"model.layers.{i}", f"layers_{i}"
    for group, shapes in projections.items():
      for name, shape in shapes.items():
        rows.append((f"{hf}.{group}.{name}.weight", (ours, group, name, "kernel"), True, shape))
        if c.attention_bias and name in ("q_proj", "k_proj", "v_proj"):
          rows.append((f"{hf}.{group}.{name}.bias", (ours, group, name, "bias"), False, shape[1:]))
    for norm in ("input_layernorm", "post_attention_layernorm"):
      rows.append((f"{hf}.{norm}.weight", (ours, norm, "scale"), False, (d,)))
  if not c.tie_word_embeddings:
    rows.append(("lm_head.weight", ("lm_head",), True, (d, c.vocab_size)))
  return rows


def params_from_hf(state: Mapping[str, Any], config: LlamaConfig) -> dict:
  """Our ``params`` collection (float32 jax arrays) from a Hugging Face state dict.

  Args:
    state: HF name -> array (numpy, jax or anything ``jnp.asarray`` takes; any float dtype).
    config: the architecture the state dict is checked against.

  Returns:
    The ``params`` tree that :func:`evoselect_jax.models.llama.apply` takes.

  Raises:
    ValueError: on a missing or unexpected tensor, or one of the wrong shape. With tied
      embeddings a stored ``lm_head.weight`` is ignored, as Hugging Face does.
  """
  rows = hf_parameter_table(config)
  expected = {row[0] for row in rows}
  ignored = {"lm_head.weight"} if config.tie_word_embeddings else set()
  missing = sorted(expected - set(state))
  unexpected = sorted(k for k in set(state) - expected - ignored if not _IGNORED.fullmatch(k))
  if missing or unexpected:
    raise ValueError(
      f"State dict does not match {config}: missing {_head(missing)}, unexpected "
      f"{_head(unexpected)}"
    )
  params: dict = {}
  for hf_name, path, transposed, shape in rows:
    value = state[hf_name]
    hf_shape = shape[::-1] if transposed else shape
    if tuple(value.shape) != hf_shape:
      raise ValueError(f"{hf_name} has shape {tuple(value.shape)}; {config} needs {hf_shape}")
    value = jnp.asarray(value, jnp.float32)
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value.T if transposed else value
  return params


def _head(names: list[str], n: int = 8) -> str:
  """The first ``n`` of ``names``, with ``...`` when there are more."""
  return f"{names[:n]}{'...' if len(names) > n else ''}"


def params_to_hf(params: Mapping, config: LlamaConfig) -> dict[str, np.ndarray]:
  """Our ``params`` as a Hugging Face numpy state dict; the inverse of :func:`params_from_hf`."""
  state = {}
  for hf_name, path, transposed, _ in hf_parameter_table(config):
    value = params
    for key in path:
      value = value[key]
    value = np.asarray(value)
    state[hf_name] = np.ascontiguousarray(value.T) if transposed else value
  return state


def config_from_hf(hf_config: Any, dtype: str = "float32") -> LlamaConfig:
  """A :class:`LlamaConfig` from a transformers config (``AutoConfig`` or a model's ``.config``).

  Args:
    hf_config: a transformers ``PretrainedConfig`` of ``model_type`` in ``ARCHITECTURES``.
    dtype: compute dtype, ``"float32"`` or ``"bfloat16"``.

  Returns:
    The matching architecture, with default LoRA settings.

  Raises:
    ValueError: for another ``model_type``, a feature this decoder lacks (sliding-window
      attention in effect, biases on o_proj or the MLP, an activation other than SiLU) or
      an unsupported RoPE scaling type.
  """
  kind = hf_config.model_type
  if kind not in ARCHITECTURES:
    raise ValueError(
      f"Unsupported architecture model_type={kind!r}; supported: {', '.join(ARCHITECTURES)}"
    )
  if hf_config.hidden_act != "silu":
    raise ValueError(f"{kind} with hidden_act={hf_config.hidden_act!r}; only 'silu' is supported")
  if kind == "llama" and (hf_config.attention_bias or hf_config.mlp_bias):
    raise ValueError(
      f"llama with attention_bias={hf_config.attention_bias}, mlp_bias={hf_config.mlp_bias} "
      "(biases on o_proj or the MLP) is not supported"
    )
  _check_no_sliding_window(hf_config)
  rope = dict(hf_config.rope_parameters)
  return LlamaConfig(
    vocab_size=hf_config.vocab_size,
    hidden_size=hf_config.hidden_size,
    intermediate_size=hf_config.intermediate_size,
    num_layers=hf_config.num_hidden_layers,
    num_heads=hf_config.num_attention_heads,
    num_kv_heads=hf_config.num_key_value_heads or hf_config.num_attention_heads,
    head_dim=getattr(hf_config, "head_dim", None),
    rope_theta=float(rope["rope_theta"]),
    rope_scaling=rope,
    rms_norm_eps=float(hf_config.rms_norm_eps),
    tie_word_embeddings=bool(hf_config.tie_word_embeddings),
    attention_bias=kind == "qwen2",
    dtype=dtype,
  )


def _check_no_sliding_window(hf_config: Any) -> None:
  """Raises if sliding-window attention would change any logits of ``hf_config``'s model."""
  layer_types = getattr(hf_config, "layer_types", None) or []
  sliding = [i for i, kind in enumerate(layer_types) if kind != "full_attention"]
  if sliding:
    raise ValueError(
      f"{hf_config.model_type} uses sliding-window attention (window "
      f"{hf_config.sliding_window}) on layers {sliding}; only full attention is supported"
    )
  window = getattr(hf_config, "sliding_window", None)
  if hf_config.model_type == "mistral" and window is not None:
    if window < hf_config.max_position_embeddings:
      raise ValueError(
        f"mistral with sliding_window={window} < max_position_embeddings="
        f"{hf_config.max_position_embeddings}: sliding-window attention is not supported"
      )
