"""Flax decoders (Llama family) with LoRA adapters, checkpoint import (HF, GGUF), decoding."""

from evoselect_jax.models.checkpoint import REGISTERED, Checkpoint, load_checkpoint
from evoselect_jax.models.convert import config_from_hf, params_from_hf, params_to_hf
from evoselect_jax.models.generate import chat_prompt, generate, generate_ids, sample_tokens
from evoselect_jax.models.llama import (
  PROJECTIONS,
  KVCache,
  Llama,
  Llama3RopeScaling,
  LlamaConfig,
  apply,
  apply_with_cache,
  init,
  init_cache,
)

__all__ = [
  "PROJECTIONS",
  "REGISTERED",
  "Checkpoint",
  "KVCache",
  "Llama",
  "Llama3RopeScaling",
  "LlamaConfig",
  "apply",
  "apply_with_cache",
  "chat_prompt",
  "config_from_hf",
  "generate",
  "generate_ids",
  "init",
  "init_cache",
  "load_checkpoint",
  "params_from_hf",
  "params_to_hf",
  "sample_tokens",
]
