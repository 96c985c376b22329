"""MCQA evaluation by log-likelihood: prompts, encoding and scoring."""

from evoselect_jax.eval.mcqa import MCQAOutput, mcqa_accuracy
from evoselect_jax.eval.prompts import (
  Tokenizer,
  encode_for_scoring,
  encode_for_training,
  format_continuation,
  format_prompt,
)

__all__ = [
  "MCQAOutput",
  "Tokenizer",
  "encode_for_scoring",
  "encode_for_training",
  "format_continuation",
  "format_prompt",
  "mcqa_accuracy",
]
