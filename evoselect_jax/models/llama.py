"""A Llama-family decoder in Flax linen, with LoRA adapters in their own collection.

Covers Llama 2/3, Qwen2 (``attention_bias=True``), Mistral (without sliding window) and
SmolLM: RMSNorm, rotary position embeddings (Su et al. 2021, "RoFormer", in the Hugging
Face "rotate_half" layout; optionally with Llama 3.1 frequency scaling), grouped-query
causal self-attention (Ainslie et al. 2023, "GQA"), a SwiGLU MLP (Shazeer 2020, "GLU
Variants Improve Transformer") and LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
Large Language Models").

Parameter names follow the Hugging Face checkpoints so that an importer only renames
leaves and transposes kernels:

  HF name                                  here (collection ``params``)
  model.embed_tokens.weight [V, d]         embed_tokens/embedding [V, d]
  model.layers.{i}.self_attn.q_proj.weight layers_{i}/self_attn/q_proj/kernel [in, out]
  (likewise k/v/o_proj, mlp.{gate,up,down}_proj; ``.bias`` -> bias)
  model.layers.{i}.input_layernorm.weight  layers_{i}/input_layernorm/scale [d]
  model.norm.weight                        norm/scale [d]
  lm_head.weight [V, d] (untied only)      lm_head/kernel [d, V]

LoRA factors live in the collection ``lora`` under the same module path
(``layers_{i}/self_attn/q_proj/{lora_a [in, r], lora_b [r, out]}``), so a gradient
can be taken w.r.t. the adapters alone: ``jax.grad(lambda lora: loss(apply(config,
params, lora, ...)))``.

For decoding, :func:`apply_with_cache` runs a chunk of tokens against a preallocated
:class:`KVCache` (keys and values of every earlier token), so each new token costs one
position instead of the whole sequence.

Taps (for factored per-example gradients, :mod:`evoselect_jax.features.factored`): every
parametrised map records its input factor in the ``taps`` collection (when that
collection is mutable) and adds a zero ``perturbations`` variable to its output (when
that collection is given), whose gradient is d loss / d output (``nn.Module.perturb``).
Projections record their input ``in`` and output ``out``, RMSNorms the normalised input
``in`` (before the scale) and ``out``; the root records ``embed_out`` (the embedding
lookup), ``head_in`` and ``head_out`` (the logits). Without those collections both are
no-ops.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import struct

TAPS = "taps"  # the collection of recorded layer inputs, see the module docstring
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
  """Llama 3.1 RoPE frequency scaling (Hugging Face ``rope_type="llama3"``).

  From Meta 2024, "The Llama 3 Herd of Models": wavelengths shorter than
  ``original_max_position_embeddings / high_freq_factor`` keep their frequency, those longer
  than ``original_max_position_embeddings / low_freq_factor`` are divided by ``factor``, and
  the band between is interpolated smoothly.

  Attributes:
    factor: divisor of the low frequencies.
    low_freq_factor: sets the long-wavelength edge of the interpolated band.
    high_freq_factor: sets the short-wavelength edge; must exceed ``low_freq_factor``.
    original_max_position_embeddings: context length of pretraining.
  """

  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int

  def __post_init__(self):
    if self.factor <= 0 or self.low_freq_factor <= 0 or self.original_max_position_embeddings < 1:
      raise ValueError(f"Llama3RopeScaling needs positive factors and length, got {self}")
    if self.high_freq_factor <= self.low_freq_factor:
      raise ValueError(
        f"Llama3RopeScaling.high_freq_factor={self.high_freq_factor} must exceed "
        f"low_freq_factor={self.low_freq_factor}"
      )

  def scale(self, inv_freq: np.ndarray) -> np.ndarray:
    """Scales ``inv_freq float32[hd/2]`` in float32, as HF's ``_compute_llama3_parameters``."""
    f32 = np.float32
    old_len = f32(self.original_max_position_embeddings)
    low, high = f32(self.low_freq_factor), f32(self.high_freq_factor)
    wavelen = f32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / f32(self.factor), inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / f32(self.factor) + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return np.where(medium, smoothed, scaled).astype(f32)


def rope_scaling_from_dict(spec: Mapping[str, Any]) -> Llama3RopeScaling | None:
  """Parses a Hugging Face ``rope_parameters`` / ``rope_scaling`` dict.

  Args:
    spec: a dict with ``rope_type`` (or the older ``type``) and that type's fields; other
      keys (``rope_theta``, ...) are ignored.

  Returns:
    ``None`` for ``rope_type="default"``, a :class:`Llama3RopeScaling` for ``"llama3"``.

  Raises:
    ValueError: for any other type (``linear``, ``dynamic``, ``yarn``, ``longrope``, ...).
  """
  kind = spec.get("rope_type", spec.get("type"))
  if kind == "default":
    return None
  if kind == "llama3":
    fields = [f.name for f in dataclasses.fields(Llama3RopeScaling)]
    missing = [f for f in fields if f not in spec]
    if missing:
      raise ValueError(f"llama3 rope scaling {dict(spec)} lacks {missing}")
    return Llama3RopeScaling(**{f: spec[f] for f in fields})
  raise ValueError(
    f"Unsupported RoPE scaling type {kind!r} in {dict(spec)}; supported: 'default', 'llama3'"
  )


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Architecture of a Llama-family decoder; hashable, so it can be a static jit argument.

  Attributes:
    vocab_size: number of token ids V.
    hidden_size: model width d.
    intermediate_size: hidden width of the SwiGLU MLP.
    num_layers: number of decoder blocks.
    num_heads: query heads.
    num_kv_heads: key/value heads (grouped-query attention); divides ``num_heads``.
    head_dim: per-head width; ``None`` means ``hidden_size // num_heads``.
    rope_theta: RoPE base.
    rope_scaling: ``None`` for plain RoPE, or :class:`Llama3RopeScaling`; a Hugging Face
      ``rope_parameters`` dict is accepted and parsed by :func:`rope_scaling_from_dict`.
    rms_norm_eps: epsilon inside RMSNorm.
    tie_word_embeddings: use the embedding matrix as the output projection.
    attention_bias: biases on q/k/v projections (Qwen2).
    lora_rank: rank r of every LoRA adapter.
    lora_alpha: LoRA scale numerator; the update is ``(alpha / r) * x A B``.
    lora_targets: which projections get adapters, a subset of ``PROJECTIONS``.
    dtype: compute dtype, ``"float32"`` or ``"bfloat16"``; parameters are stored in
      float32 and logits are returned in float32.
  """

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int | None = None
  rope_theta: float = 10000.0
  rope_scaling: Llama3RopeScaling | None = None
  rms_norm_eps: float = 1e-5
  tie_word_embeddings: bool = True
  attention_bias: bool = False
  lora_rank: int = 8
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
  dtype: str = "float32"

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads"):
      if getattr(self, name) < 1:
        raise ValueError(f"LlamaConfig.{name} must be >= 1, got {getattr(self, name)}")
    if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"LlamaConfig.num_kv_heads={self.num_kv_heads} must be >= 1 and divide "
        f"num_heads={self.num_heads}"
      )
    if self.head_dim is None:
      if self.hidden_size % self.num_heads:
        raise ValueError(
          f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
          "set head_dim explicitly"
        )
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
    if self.head_dim < 2 or self.head_dim % 2:
      raise ValueError(f"LlamaConfig.head_dim must be even and >= 2 for RoPE, got {self.head_dim}")
    if isinstance(self.rope_scaling, Mapping):
      object.__setattr__(self, "rope_scaling", rope_scaling_from_dict(self.rope_scaling))
    if self.rope_scaling is not None and not isinstance(self.rope_scaling, Llama3RopeScaling):
      raise ValueError(
        f"LlamaConfig.rope_scaling={self.rope_scaling!r}; valid: None, Llama3RopeScaling or a "
        "Hugging Face rope_parameters dict"
      )
    if self.lora_rank < 1:
      raise ValueError(f"LlamaConfig.lora_rank must be >= 1, got {self.lora_rank}")
    object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
    unknown = [t for t in self.lora_targets if t not in PROJECTIONS]
    if unknown:
      raise ValueError(f"Unknown lora_targets {unknown}; valid: {', '.join(PROJECTIONS)}")
    if self.dtype not in DTYPES:
      raise ValueError(f"LlamaConfig.dtype={self.dtype!r}; valid: {', '.join(DTYPES)}")

  @property
  def compute_dtype(self) -> jnp.dtype:
    """The jnp dtype named by ``dtype``."""
    return DTYPES[self.dtype]

  def rope_inv_freq(self) -> np.ndarray:
    """RoPE inverse frequencies ``float32[head_dim / 2]``, scaled when ``rope_scaling`` is set.

    Computed in float32 numpy as Hugging Face does in torch, so both see the same angles.
    """
    exponents = np.arange(0, self.head_dim, 2, dtype=np.float32) / np.float32(self.head_dim)
    inv_freq = (np.float32(1.0) / np.float32(self.rope_theta) ** exponents).astype(np.float32)
    return inv_freq if self.rope_scaling is None else self.rope_scaling.scale(inv_freq)


@struct.dataclass
class KVCache:
  """Keys and values of the tokens seen so far, preallocated to ``T`` slots per row.

  Every row writes its chunks at the same slots (``length`` is shared), so a batch of
  left-padded prompts stays aligned; ``mask`` tells real tokens from padding. Build
  one with :func:`init_cache`.

  One array per layer, not one stacked [layers, ...] array: XLA's CPU backend fuses a
  layer's slice of a stacked cache into the attention's batched matmuls and runs them
  about 4× slower than on an array of their own (32 rows over 448 slots on 2 CPU cores:
  the 30 layers' score matmuls alone 114 ms against 27 ms; a whole decoding step 238-264
  ms against 188-208 ms).

  Attributes:
    keys: per layer, [b, kv_heads, T, head_dim] keys after RoPE, in the compute dtype.
    values: per layer, [b, kv_heads, T, head_dim] values, in the compute dtype.
    mask: bool[b, T], true on slots that hold a real token.
    length: int32[], slots written so far; the next chunk goes to ``[length, length + t)``.
  """

  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  mask: jax.Array
  length: jax.Array

  @property
  def max_length(self) -> int:
    """``T``, the number of slots per row."""
    return self.mask.shape[1]


def init_cache(config: LlamaConfig, batch: int, max_length: int) -> KVCache:
  """An empty :class:`KVCache` of ``max_length`` slots for ``batch`` rows."""
  if batch < 1 or max_length < 1:
    raise ValueError(f"A KV cache needs batch >= 1 and max_length >= 1, got {batch}, {max_length}")
  c = config
  shape = (batch, c.num_kv_heads, max_length, c.head_dim)
  return KVCache(
    keys=tuple(jnp.zeros(shape, c.compute_dtype) for _ in range(c.num_layers)),
    values=tuple(jnp.zeros(shape, c.compute_dtype) for _ in range(c.num_layers)),
    mask=jnp.zeros((batch, max_length), bool),
    length=jnp.zeros((), jnp.int32),
  )


class RMSNorm(nn.Module):
  """Root-mean-square norm (Zhang & Sennrich 2019), statistics in float32 as in HF."""

  eps: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalises ``x [..., d]`` over its last axis."""
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    normed = x32.astype(self.dtype)
    return _tap(self, normed, scale.astype(self.dtype) * normed)


def _tap(module: nn.Module, x: jax.Array, y: jax.Array) -> jax.Array:
  """Records ``x`` as tap ``in`` and returns ``y`` with the perturbation ``out``; see the taps."""
  module.sow(TAPS, "in", x)
  return module.perturb("out", y)


class Projection(nn.Module):
  """``x W (+ b)``, plus the LoRA update ``(alpha / r) x A B`` when ``use_lora``."""

  features: int
  use_bias: bool
  use_lora: bool
  config: LlamaConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps ``x [..., in]`` to ``[..., features]`` in the compute dtype."""
    dtype, fan_in = self.config.compute_dtype, x.shape[-1]
    kernel = self.param(
      "kernel", nn.initializers.normal(0.02), (fan_in, self.features), jnp.float32
    )
    y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(dtype)
    if self.use_lora:
      rank = self.config.lora_rank
      # A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming-uniform with a=sqrt(5)); B = 0.
      bound = 1.0 / math.sqrt(fan_in)
      a = self.variable(
        "lora",
        "lora_a",
        lambda: jax.random.uniform(
          self.make_rng("params"), (fan_in, rank), jnp.float32, -bound, bound
        ),
      ).value
      b = self.variable("lora", "lora_b", jnp.zeros, (rank, self.features), jnp.float32).value
      scale = self.config.lora_alpha / rank
      y = y + scale * jnp.dot(jnp.dot(x.astype(dtype), a.astype(dtype)), b.astype(dtype))
    return _tap(self, x, y)


def gather_positions(x: jax.Array, index: jax.Array) -> jax.Array:
  """``x [b, t, ...]`` at ``index int32[b, q]`` along axis 1: ``[b, q, ...]``."""
  index = index.reshape(*index.shape, *([1] * (x.ndim - 2)))
  return jnp.take_along_axis(x, index, axis=1)


def rotate_half(x: jax.Array) -> jax.Array:
  """``[x1, x2] -> [-x2, x1]`` over the last axis (the HF RoPE layout)."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def rotary(positions: jax.Array, inv_freq: np.ndarray, length: int) -> tuple[jax.Array, jax.Array]:
  """The RoPE tables ``(cos, sin)``, float32[b, t, 1, hd], at ``positions int32[b, t]``.

  ``inv_freq float32[hd/2]`` comes from :meth:`LlamaConfig.rope_inv_freq`; positions
  lie in ``[0, length)``. The decoder computes the tables once per call for all its
  layers, as transformers does, and looks them up: computed from the positions
  directly, XLA fuses the cosines into every rotation and evaluates them once per head
  and layer (on CPU that cost about 30% of the attention's time).
  """
  angles = jnp.arange(length, dtype=jnp.float32)[:, None] * jnp.asarray(inv_freq, jnp.float32)
  angles = jnp.concatenate([angles, angles], axis=-1)  # [length, hd]
  return jnp.cos(angles)[positions][:, :, None], jnp.sin(angles)[positions][:, :, None]


def rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotary position embedding of ``x [b, t, heads, hd]`` with tables from :func:`rotary`."""
  return x * cos.astype(x.dtype) + rotate_half(x) * sin.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
  """Masked softmax attention, ``softmax(scale·q kᵀ, where mask) v``, softmax in float32.

  Its backward is written out (as FlashAttention's, Dao et al. 2022): ``dS = P ⊙ (dP -
  rowsum(dO ⊙ O))``, one [.., q, hd] reduction instead of autodiff's chain through the
  mask, the scale and the softmax over [.., q, s] (forward and backward of a [4, 8, 128,
  64] attention on 2 CPU cores: 4.8 ms against 5.8 ms).

  Args:
    q: [b, kv, groups, q, hd] queries, grouped by the key-value head they read.
    k: [b, kv, s, hd] keys.
    v: [b, kv, s, hd] values.
    mask: bool[b, q, s], which keys each query sees. A query that sees none attends
      uniformly (its output is meaningless but finite).
    scale: multiplies the scores (``1/sqrt(hd)``).

  Returns:
    [b, kv, groups, q, hd] in the dtype of ``v``.
  """
  return _attend_forward(q, k, v, mask, scale)[0]


def _attend_forward(q, k, v, mask, scale):
  scores = jnp.einsum("bkgqd,bksd->bkgqs", q, k, preferred_element_type=jnp.float32) * scale
  scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum("bkgqs,bksd->bkgqd", probs.astype(v.dtype), v)
  return out, (q, k, v, mask, probs, out)


def _attend_backward(scale, residuals, d_out):
  q, k, v, mask, probs, out = residuals
  f32 = jnp.float32
  d_v = jnp.einsum("bkgqs,bkgqd->bksd", probs.astype(v.dtype), d_out.astype(v.dtype))
  d_probs = jnp.einsum("bkgqd,bksd->bkgqs", d_out, v, preferred_element_type=f32)
  rowsum = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1, keepdims=True)
  # Masked scores are constants (a blind query's uniform weights get no gradient).
  d_scores = jnp.where(mask[:, None, None], probs * (d_probs - rowsum) * scale, 0.0)
  d_scores = d_scores.astype(q.dtype)
  d_q = jnp.einsum("bkgqs,bksd->bkgqd", d_scores, k)
  d_k = jnp.einsum("bkgqs,bkgqd->bksd", d_scores, q)
  return d_q, d_k.astype(k.dtype), d_v, None


attend.defvjp(_attend_forward, _attend_backward)


class Attention(nn.Module):
  """Causal grouped-query self-attention with RoPE; softmax in float32.

  Attributes:
    config: the architecture.
    use_lora: add LoRA adapters to the projections in ``config.lora_targets``.
    layer: index of this block's keys and values in a :class:`KVCache`.
  """

  config: LlamaConfig
  use_lora: bool
  layer: int = 0

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    tables: tuple[jax.Array, jax.Array],
    mask: jax.Array,
    cache: KVCache | None = None,
    queries_at: jax.Array | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """Attends from ``x`` to itself, or to everything in ``cache`` once ``x`` is written there.

    Args:
      x: [b, t, d] inputs.
      tables: the RoPE tables ``(cos, sin)`` of the t positions (:func:`rotary`).
      mask: bool[b, t, s], which keys each query sees: ``s = t`` without a cache, else
        ``s = T``, the cache's slots.
      cache: ``None``, or a cache whose slots ``[length, length + t)`` receive this
        chunk's keys and values (``length`` itself is advanced by the caller).
      queries_at: ``None`` (every position queries), or int32[b, q] indices into ``t``:
        only those positions query (keys and values still come from all ``t``), and
        the outputs are theirs, [b, q, d].

    Returns:
      ``([b, t or q, d] outputs, the cache with this layer's new keys and values)``.
    """
    c = self.config
    b, t, _ = x.shape
    kv, groups, hd = c.num_kv_heads, c.num_heads // c.num_kv_heads, c.head_dim

    def proj(name, features, bias):
      lora = self.use_lora and name in c.lora_targets
      return Projection(features, bias, lora, c, name=name)

    xq, q_tables = x, tables
    if queries_at is not None:
      xq, mask = gather_positions(x, queries_at), gather_positions(mask, queries_at)
      q_tables = tuple(gather_positions(table, queries_at) for table in tables)
    tq = xq.shape[1]
    q = proj("q_proj", c.num_heads * hd, c.attention_bias)(xq).reshape(b, tq, c.num_heads, hd)
    k = proj("k_proj", kv * hd, c.attention_bias)(x).reshape(b, t, kv, hd)
    v = proj("v_proj", kv * hd, c.attention_bias)(x).reshape(b, t, kv, hd)
    q, k = rope(q, *q_tables), rope(k, *tables)
    # head h = kv_head * groups + g, as HF repeat_kv; [b, kv, groups, tq, hd]
    q = q.reshape(b, tq, kv, groups, hd).transpose(0, 2, 3, 1, 4)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [b, kv, t, hd], the cache layout
    if cache is not None:
      # Writes only the new slots, so a decoding loop updates the cache in place.
      start, i = (0, 0, cache.length, 0), self.layer
      k = jax.lax.dynamic_update_slice(cache.keys[i], k.astype(cache.keys[i].dtype), start)
      v = jax.lax.dynamic_update_slice(cache.values[i], v.astype(cache.values[i].dtype), start)
      cache = cache.replace(
        keys=(*cache.keys[:i], k, *cache.keys[i + 1 :]),
        values=(*cache.values[:i], v, *cache.values[i + 1 :]),
      )
    out = attend(q, k, v.astype(x.dtype), mask, 1.0 / math.sqrt(hd))
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, tq, c.num_heads * hd)
    return proj("o_proj", c.hidden_size, False)(out), cache


class MLP(nn.Module):
  """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

  config: LlamaConfig
  use_lora: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``x [b, t, d]`` -> ``[b, t, d]``."""
    c = self.config

    def proj(name, features):
      return Projection(features, False, self.use_lora and name in c.lora_targets, c, name=name)

    h = nn.silu(proj("gate_proj", c.intermediate_size)(x)) * proj("up_proj", c.intermediate_size)(x)
    return proj("down_proj", c.hidden_size)(h)


class DecoderLayer(nn.Module):
  """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

  Attributes:
    config: the architecture.
    use_lora: add LoRA adapters.
    layer: index of this block in a :class:`KVCache`.
  """

  config: LlamaConfig
  use_lora: bool
  layer: int = 0

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    tables: tuple[jax.Array, jax.Array],
    mask: jax.Array,
    cache: KVCache | None = None,
    queries_at: jax.Array | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """``x [b, t, d]`` -> ``([b, t or q, d], cache)``; see :meth:`Attention.__call__`."""
    c = self.config
    norm = lambda name: RMSNorm(c.rms_norm_eps, c.compute_dtype, name=name)
    attn = Attention(c, self.use_lora, self.layer, name="self_attn")
    h, cache = attn(norm("input_layernorm")(x), tables, mask, cache, queries_at)
    x = (x if queries_at is None else gather_positions(x, queries_at)) + h
    return x + MLP(c, self.use_lora, name="mlp")(norm("post_attention_layernorm")(x)), cache


class Llama(nn.Module):
  """Decoder-only language model; ``use_lora`` adds the ``lora`` collection."""

  config: LlamaConfig
  use_lora: bool

  @nn.compact
  def __call__(
    self,
    tokens: jax.Array,
    attention_mask: jax.Array | None = None,
    cache: KVCache | None = None,
    logits_at: jax.Array | None = None,
  ) -> jax.Array | tuple[jax.Array, KVCache]:
    """Next-token logits, of the whole chunk, at some positions, or (with a cache) the last.

    Args:
      tokens: int32[b, t] token ids.
      attention_mask: bool[b, t], true on real tokens; ``None`` means all real. Padding
        may sit on either side: positions count real tokens only (cumsum of the mask),
        and padded keys are never attended to. Logits at padded positions are finite
        but meaningless.
      cache: ``None``, or a :class:`KVCache` holding the earlier tokens of each row; the
        chunk continues them (positions go on from the cache's real tokens) and is
        written to slots ``[length, length + t)``, which must fit in the cache.
      logits_at: ``None``, or int32[b, s] positions (no cache): only their logits are
        computed, [b, s, V]. The last block then attends from and runs its MLP on those
        positions only, and the head reads only them: a loss on a few answer tokens
        costs the head ``s / t`` of the full logits.

    Returns:
      Without a cache, float32[b, t, V] logits (position i scores token i + 1), or
      [b, s, V] at ``logits_at``. With a cache, ``(float32[b, V] logits of the chunk's
      last position, the updated cache)``.
    """
    c = self.config
    if attention_mask is None:
      attention_mask = jnp.ones(tokens.shape, bool)
    attention_mask = attention_mask.astype(bool)
    t = tokens.shape[1]
    if cache is not None and logits_at is not None:
      raise ValueError("logits_at applies without a cache (decoding scores the last position)")
    if cache is None:
      positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
      causal = jnp.tril(jnp.ones((t, t), bool))
      mask = causal[None] & attention_mask[:, None, :]  # [b, q, k]
    else:
      if t > cache.max_length:
        raise ValueError(f"A chunk of {t} tokens exceeds the cache's {cache.max_length} slots")
      seen = jnp.sum(cache.mask, axis=-1, dtype=jnp.int32)  # real tokens already cached
      positions = jnp.maximum(seen[:, None] + jnp.cumsum(attention_mask, axis=-1) - 1, 0)
      slots = jnp.arange(cache.max_length)
      causal = slots[None, :] <= cache.length + jnp.arange(t)[:, None]  # [q, T]
      key_mask = jax.lax.dynamic_update_slice(cache.mask, attention_mask, (0, cache.length))
      mask = causal[None] & key_mask[:, None, :]  # [b, q, T]

    embed = nn.Embed(
      c.vocab_size, c.hidden_size, embedding_init=nn.initializers.normal(0.02), name="embed_tokens"
    )
    x = self.perturb("embed_out", embed(tokens).astype(c.compute_dtype))
    length = t if cache is None else cache.max_length  # positions lie below it
    tables = rotary(positions, c.rope_inv_freq(), length)
    for i in range(c.num_layers):
      queries_at = logits_at if i == c.num_layers - 1 else None
      layer = DecoderLayer(c, self.use_lora, i, name=f"layers_{i}")
      x, cache = layer(x, tables, mask, cache, queries_at)
    if cache is not None:
      x = x[:, -1]  # Decoding needs the last position only; skips [b, t, V] logits.
    x = RMSNorm(c.rms_norm_eps, c.compute_dtype, name="norm")(x)
    self.sow("intermediates", "final_hidden", x)  # read by hidden_states(); else a no-op
    self.sow(TAPS, "head_in", x)
    if c.tie_word_embeddings:
      head = embed.embedding.T
    else:
      head = self.param(
        "lm_head", nn.initializers.normal(0.02), (c.hidden_size, c.vocab_size), jnp.float32
      )
    logits = jnp.dot(x, head.astype(c.compute_dtype), preferred_element_type=jnp.float32)
    logits = self.perturb("head_out", logits)
    if cache is None:
      return logits
    return logits, cache.replace(mask=key_mask, length=cache.length + t)


def init(config: LlamaConfig, key: jax.Array, seq_len: int = 8) -> tuple[dict, dict]:
  """Random parameters and LoRA adapters (B = 0, so the adapted model equals the base).

  Args:
    config: the architecture.
    key: PRNG key.
    seq_len: length of the dummy sequence used to trace the model.

  Returns:
    ``(params, lora)``: the ``params`` and ``lora`` collections.
  """
  variables = _init(config, seq_len, key)
  return variables["params"], variables["lora"]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init(config: LlamaConfig, seq_len: int, key: jax.Array) -> dict:
  """Compiled once per (config, seq_len): every seed of a run reuses it."""
  return Llama(config, use_lora=True).init(key, jnp.zeros((1, seq_len), jnp.int32))


def merge_lora(config: LlamaConfig, params: dict, lora: dict) -> dict:
  """``params`` with every adapter folded into its kernel: ``W + (alpha / r) A B``.

  The merged model without adapters computes the adapted one's function (up to float
  rounding) with one matmul per projection instead of three.
  """
  scale = config.lora_alpha / config.lora_rank

  def merge(params: dict, lora: dict) -> dict:
    if "lora_a" in lora:
      kernel = params["kernel"] + scale * lora["lora_a"] @ lora["lora_b"]
      return params | {"kernel": kernel}
    return params | {k: merge(params[k], v) for k, v in lora.items()}

  return merge(params, lora)


def apply(
  config: LlamaConfig,
  params: dict,
  lora: dict | None,
  tokens: jax.Array,
  attention_mask: jax.Array | None = None,
  logits_at: jax.Array | None = None,
) -> jax.Array:
  """Logits ``float32[b, t, V]`` for ``tokens int32[b, t]``; pure and jit-friendly.

  Args:
    config: the architecture (static under jit).
    params: the ``params`` collection.
    lora: the ``lora`` collection, or ``None`` for the base model without adapters.
    tokens: int32[b, t].
    attention_mask: bool[b, t] or ``None``; see :meth:`Llama.__call__`.
    logits_at: ``None``, or int32[b, s]: the logits at those positions only, [b, s, V].
  """
  variables = {"params": params} if lora is None else {"params": params, "lora": lora}
  model = Llama(config, use_lora=lora is not None)
  return model.apply(variables, tokens, attention_mask, logits_at=logits_at)


def apply_with_cache(
  config: LlamaConfig,
  params: dict,
  lora: dict | None,
  tokens: jax.Array,
  attention_mask: jax.Array | None,
  cache: KVCache,
) -> tuple[jax.Array, KVCache]:
  """Runs a chunk of tokens after those in ``cache``; pure and jit-friendly.

  Prefill with the (left-padded) prompts, then feed one token at a time: the logits
  equal those of :func:`apply` on the whole sequence so far, at its last position.

  Args:
    config: the architecture (static under jit).
    params: the ``params`` collection.
    lora: the ``lora`` collection, or ``None`` for the base model.
    tokens: int32[b, t], the chunk.
    attention_mask: bool[b, t] (true on real tokens) or ``None`` for all real.
    cache: the cache from :func:`init_cache` or an earlier call; ``cache.length + t``
      must not exceed its ``max_length`` (not checkable under jit: a chunk past the end
      would overwrite the last slots).

  Returns:
    ``(float32[b, V] logits of the chunk's last position, the cache with the chunk)``.
  """
  variables = {"params": params} if lora is None else {"params": params, "lora": lora}
  model = Llama(config, use_lora=lora is not None)
  return model.apply(variables, tokens, attention_mask, cache)


def hidden_states(
  config: LlamaConfig,
  params: dict,
  lora: dict | None,
  tokens: jax.Array,
  attention_mask: jax.Array | None = None,
) -> jax.Array:
  """The final (normalised) hidden states float32[b, t, d] that the LM head reads.

  Under ``jax.jit`` the unused logits are dropped by XLA.
  """
  variables = {"params": params} | ({"lora": lora} if lora is not None else {})
  model = Llama(config, use_lora=lora is not None)
  _, state = model.apply(variables, tokens, attention_mask, mutable=["intermediates"])
  return state["intermediates"]["final_hidden"][0].astype(jnp.float32)
