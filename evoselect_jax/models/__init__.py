"""Flax decoders (Llama family) with LoRA adapters, and checkpoint import (HF, GGUF)."""

from evoselect_jax.models.checkpoint import REGISTERED, Checkpoint, load_checkpoint
from evoselect_jax.models.convert import config_from_hf, params_from_hf, params_to_hf
from evoselect_jax.models.llama import (
  PROJECTIONS,
  Llama,
  Llama3RopeScaling,
  LlamaConfig,
  apply,
  init,
)

__all__ = [
  "PROJECTIONS",
  "REGISTERED",
  "Checkpoint",
  "Llama",
  "Llama3RopeScaling",
  "LlamaConfig",
  "apply",
  "config_from_hf",
  "init",
  "load_checkpoint",
  "params_from_hf",
  "params_to_hf",
]
