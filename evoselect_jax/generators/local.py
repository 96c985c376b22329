"""The ``local`` generator: few-shot prompts to a local checkpoint, decoded in JAX.

For each record it shows the model ``num_shots`` target exemplars (drawn by the seed)
through :func:`~evoselect_jax.generators.prompting.generation_messages` and the
checkpoint's chat template, samples a reply with
:func:`~evoselect_jax.models.generate.generate`, and keeps the first JSON object of
the reply (:func:`~evoselect_jax.generators.prompting.extract_json_object`). Whether
that object is a valid item is the clean step's call, which counts each rejection.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from evoselect_jax.generators.prompting import extract_json_object, generation_messages
from evoselect_jax.models.checkpoint import Checkpoint, load_checkpoint
from evoselect_jax.models.generate import chat_prompt, generate
from evoselect_jax.registry import GENERATORS
from evoselect_jax.types import MCQExample

# Random stream of the exemplar draws, apart from the sampler's (which uses the seed).
_SHOTS_STREAM = 3


@GENERATORS.register("local")
class LocalGenerator:
  """Samples raw JSON records from a local Llama-family checkpoint."""

  def __init__(
    self,
    task: Any = None,
    *,
    model: str | os.PathLike | Checkpoint,
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    top_p: float = 0.95,
    top_k: int = 0,
    num_shots: int = 3,
    batch_size: int = 8,
    dtype: str = "float32",
  ):
    """Loads the checkpoint once.

    Args:
      task: passed by the experiment builder; unused (the exemplars set the target).
      model: a checkpoint path (Hugging Face directory or ``.gguf``), a registered name
        (see :data:`evoselect_jax.models.REGISTERED`), or a loaded :class:`Checkpoint`.
      max_new_tokens: most tokens per reply.
      temperature: sampling temperature; ``0`` is greedy (every record of one prompt
        alike).
      top_p: nucleus mass in ``(0, 1]``.
      top_k: top-k cut, ``0`` for none.
      num_shots: exemplars shown per prompt, drawn without replacement.
      batch_size: prompts decoded together.
      dtype: compute dtype of a checkpoint loaded here, ``"float32"`` or ``"bfloat16"``.

    Raises:
      ValueError: for a bad option or a checkpoint without a chat template.
    """
    del task
    if isinstance(num_shots, bool) or not isinstance(num_shots, int) or num_shots < 1:
      raise ValueError(f"num_shots must be an int >= 1, got {num_shots!r}")
    self.checkpoint = (
      model if isinstance(model, Checkpoint) else load_checkpoint(model, dtype=dtype)
    )
    if not self.checkpoint.has_chat_template:
      raise ValueError(
        f"The local generator needs a chat model; {self.checkpoint.source}'s tokenizer has "
        "no chat template"
      )
    self.num_shots = num_shots
    self.options = dict(
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      top_p=top_p,
      top_k=top_k,
      batch_size=batch_size,
    )

  def generate(self, exemplars: Sequence[MCQExample], n: int, seed: int) -> list[str]:
    """``n`` raw records, each the first JSON object of one reply (or the whole reply).

    Args:
      exemplars: target examples, at least ``num_shots``.
      n: number of records.
      seed: the same seed, exemplars and options give the same records.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
      raise ValueError(f"n must be an int >= 0, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
      raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if len(exemplars) < self.num_shots:
      raise ValueError(
        f"num_shots={self.num_shots} exemplars per prompt, but only {len(exemplars)} given"
      )
    rng = np.random.default_rng([seed, _SHOTS_STREAM])
    prompts = []
    for _ in range(n):
      shots = rng.choice(len(exemplars), self.num_shots, replace=False)
      messages = generation_messages([exemplars[i] for i in shots])
      prompts.append(chat_prompt(self.checkpoint, messages))
    replies = generate(self.checkpoint, prompts, seed=seed, **self.options)
    return [extract_json_object(reply) for reply in replies]
