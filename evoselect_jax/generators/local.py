"""The ``local`` generator: few-shot prompts to a local checkpoint, decoded in JAX.

For each record it shows the model ``num_shots`` target exemplars (drawn by the seed)
and samples a continuation with
:func:`~evoselect_jax.models.generate.generate_completions`, in one of two formats (the
clean step must be given the same one; see :mod:`evoselect_jax.generators.prompting`):

- ``json``: chat messages (:func:`~.prompting.generation_messages`) through the
  checkpoint's chat template; the record is the reply's first JSON object
  (:func:`~.prompting.extract_json_object`), or the whole reply if it has none.
- ``text``: a plain completion prompt in the multiple-choice layout
  (:func:`~.prompting.generation_text`), no chat template; decoding stops at the blank
  line that ends an item, and the record is :func:`~.prompting.item_start` plus the
  continuation plus that blank line. A continuation cut by ``max_new_tokens`` gets no
  blank line, so the clean step rejects it as ``truncated``; one ended by an EOS token
  counts as ended.

Whether a record is a valid item is the clean step's call, which counts each rejection.

A long generation can be resumed: ``generate`` reports the records after each decoded
batch (``on_records``) and continues from the ones a stopped call had made (``done``),
with the same records as one uninterrupted call (the experiment keeps them in the
round's ``raw.partial.jsonl``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from evoselect_jax.data.clean import FORMATS, ITEM_END
from evoselect_jax.generators.prompting import (
  extract_json_object,
  generation_messages,
  generation_text,
  item_start,
)
from evoselect_jax.models.checkpoint import Checkpoint, load_checkpoint
from evoselect_jax.models.generate import chat_prompt, generate_completions
from evoselect_jax.registry import GENERATORS
from evoselect_jax.types import MCQExample

# Random stream of the exemplar draws, apart from the sampler's (which uses the seed).
_SHOTS_STREAM = 3


@GENERATORS.register("local")
class LocalGenerator:
  """Samples raw records (JSON objects or ``text`` items) from a local Llama-family model."""

  resumable = True  # generate takes done= and on_records= (the experiment's stage uses them)

  def __init__(
    self,
    task: Any = None,
    *,
    model: str | os.PathLike | Checkpoint,
    format: str = "json",
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
      format: ``"json"`` (chat messages, JSON records; needs a chat template) or
        ``"text"`` (completion prompt, multiple-choice text records); the clean step's
        ``format`` must match.
      max_new_tokens: most tokens per reply.
      temperature: sampling temperature; ``0`` is greedy (every record of one prompt
        alike).
      top_p: nucleus mass in ``(0, 1]``.
      top_k: top-k cut, ``0`` for none.
      num_shots: exemplars shown per prompt, drawn without replacement.
      batch_size: prompts decoded together.
      dtype: compute dtype of a checkpoint loaded here, ``"float32"`` or ``"bfloat16"``.

    Raises:
      ValueError: for a bad option, or the ``json`` format with a checkpoint without a
        chat template.
    """
    del task
    if format not in FORMATS:
      raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if isinstance(num_shots, bool) or not isinstance(num_shots, int) or num_shots < 1:
      raise ValueError(f"num_shots must be an int >= 1, got {num_shots!r}")
    self.checkpoint = (
      model if isinstance(model, Checkpoint) else load_checkpoint(model, dtype=dtype)
    )
    if format == "json" and not self.checkpoint.has_chat_template:
      raise ValueError(
        f"The local generator's json format needs a chat model; {self.checkpoint.source}'s "
        "tokenizer has no chat template (format='text' needs none)"
      )
    self.format = format
    self.num_shots = num_shots
    self.options = dict(
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      top_p=top_p,
      top_k=top_k,
      batch_size=batch_size,
      stop=(ITEM_END,) if format == "text" else (),
    )

  def generate(
    self,
    exemplars: Sequence[MCQExample],
    n: int,
    seed: int,
    *,
    done: Sequence[str] = (),
    on_records: Callable[[list[str]], None] | None = None,
  ) -> list[str]:
    """``n`` raw records in this generator's format, one per prompt.

    Args:
      exemplars: target examples, at least ``num_shots``.
      n: number of records.
      seed: the same seed, exemplars and options give the same records.
      done: the records a stopped call with the same arguments had reported through
        ``on_records``; generation continues after them.
      on_records: called with every record so far after each decoded batch.

    Returns:
      All ``n`` records, ``done`` first.
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
    shots = [
      [exemplars[i] for i in rng.choice(len(exemplars), self.num_shots, replace=False)]
      for _ in range(n)
    ]
    if self.format == "json":
      prompts = [chat_prompt(self.checkpoint, generation_messages(s)) for s in shots]
    else:
      prompts = [generation_text(s) for s in shots]
    if len(done) > n:
      raise ValueError(f"{len(done)} records done, more than the n={n} asked for")
    records = list(done)

    def add(completions):
      start = len(records)
      records.extend(self._record(shots[start + i], c) for i, c in enumerate(completions))
      if on_records is not None:
        on_records(list(records))

    generate_completions(
      self.checkpoint, prompts, seed=seed, first=len(records), on_batch=add, **self.options
    )
    return records

  def _record(self, shots: list[MCQExample], reply) -> str:
    """The raw record of one prompt's completion ``reply``."""
    if self.format == "json":
      return extract_json_object(reply.text)
    return item_start(shots) + reply.text + (ITEM_END if reply.finish != "length" else "")
