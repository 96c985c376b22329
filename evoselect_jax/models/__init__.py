"""Flax decoders (Llama family) with LoRA adapters."""

from evoselect_jax.models.llama import PROJECTIONS, Llama, LlamaConfig, apply, init

__all__ = ["PROJECTIONS", "Llama", "LlamaConfig", "apply", "init"]
