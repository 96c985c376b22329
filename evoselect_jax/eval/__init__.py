"""MCQA evaluation by log-likelihood: prompts, encoding and scoring."""

from evoselect_jax.eval.mcqa import MCQAOutput, mcqa_accuracy
from evoselect_jax.eval.packed import bucket_lengths, encode_packed, packed_mcqa_accuracy
from evoselect_jax.eval.prompts import (
  FEWSHOT_DELIMITER,
  Tokenizer,
  encode_for_scoring,
  encode_for_training,
  format_continuation,
  format_exemplar,
  format_prompt,
  sample_exemplars,
)
from evoselect_jax.eval.tokenizers import HFTokenizer

__all__ = [
  "FEWSHOT_DELIMITER",
  "HFTokenizer",
  "MCQAOutput",
  "Tokenizer",
  "bucket_lengths",
  "encode_for_scoring",
  "encode_for_training",
  "encode_packed",
  "format_continuation",
  "format_exemplar",
  "format_prompt",
  "mcqa_accuracy",
  "packed_mcqa_accuracy",
  "sample_exemplars",
]
