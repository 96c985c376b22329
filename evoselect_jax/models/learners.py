"""Where the learner comes from: a tiny model trained from scratch, or a checkpoint.

A learner factory, registered in :data:`MODELS` and chosen by ``config.model.name``,
returns a :class:`ModelSetup`: the architecture, base parameters, fresh LoRA
adapters and the tokenizer prompts are encoded with.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax

from evoselect_jax.models import llama
from evoselect_jax.models.checkpoint import load_checkpoint
from evoselect_jax.registry import MODELS


class ModelSetup(NamedTuple):
  """A learner before its first round.

  Attributes:
    config: the architecture, with the LoRA options of the experiment.
    params: the base parameters (frozen during the rounds).
    lora: freshly initialised LoRA adapters (B = 0: the model equals the base).
    tokenizer: the tokenizer behind :class:`evoselect_jax.eval.prompts.Tokenizer`.
  """

  config: llama.LlamaConfig
  params: Any
  lora: Any
  tokenizer: Any


@MODELS.register("tiny")
def tiny(*, task, key: jax.Array, **architecture: Any) -> ModelSetup:
  """A randomly initialised decoder over the task's own tokenizer (the synthetic task).

  Args:
    task: the task; its ``tokenizer`` sets the vocabulary.
    key: PRNG key of the initialisation.
    **architecture: :class:`~evoselect_jax.models.llama.LlamaConfig` fields other than
      ``vocab_size``.
  """
  config = llama.LlamaConfig(vocab_size=task.tokenizer.vocab_size, **architecture)
  params, lora = llama.init(config, key)
  return ModelSetup(config, params, lora, task.tokenizer)


@MODELS.register("checkpoint")
def checkpoint(
  path: str,
  *,
  task,
  key: jax.Array,
  lora_rank: int = 8,
  lora_alpha: float = 16.0,
  lora_targets: tuple[str, ...] = ("q_proj", "v_proj"),
  dtype: str = "float32",
  add_bos: bool = False,
) -> ModelSetup:
  """A pretrained checkpoint (HF directory, ``.gguf`` file or registered name) with LoRA.

  Args:
    path: what :func:`~evoselect_jax.models.load_checkpoint` accepts, e.g.
      ``smollm2-135m-instruct``.
    task: unused (the checkpoint brings its tokenizer).
    key: PRNG key of the LoRA initialisation.
    lora_rank: rank of every adapter.
    lora_alpha: LoRA scale numerator.
    lora_targets: projections that get adapters.
    dtype: compute dtype.
    add_bos: start prompts with the bos token (lm-eval's ``add_bos_token``).
  """
  from evoselect_jax.eval.tokenizers import HFTokenizer

  del task
  ckpt = load_checkpoint(path, dtype=dtype)
  config = dataclasses.replace(
    ckpt.config, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=tuple(lora_targets)
  )
  # Only the adapters: under jit, XLA drops the unused random base weights.
  lora = jax.jit(lambda k: llama.init(config, k)[1])(key)
  return ModelSetup(config, ckpt.params, lora, HFTokenizer(ckpt.tokenizer, add_bos=add_bos))
