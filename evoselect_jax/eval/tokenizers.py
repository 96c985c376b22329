"""A transformers tokenizer behind the :class:`~evoselect_jax.eval.prompts.Tokenizer` protocol.

Follows lm-eval-harness's ``HFLM`` for causal models: text is encoded without special
tokens, and a bos token is put first only when asked (``add_bos``, lm-eval's
``add_bos_token``, off by default). SmolLM2's tokenizer has a bos token (``<|im_start|>``,
id 1) but its ``add_bos_token`` is false, so lm-eval scores SmolLM2 without bos and so
does ``HFTokenizer(tokenizer)``.
"""

from __future__ import annotations

from typing import Any


class HFTokenizer:
  """Adapts a transformers tokenizer for :mod:`evoselect_jax.eval.prompts`.

  Attributes:
    tokenizer: the wrapped transformers tokenizer.
    pad_id: the tokenizer's pad id, else its eos id (padding is masked out, so its value
      never changes a score).
    bos_id: the tokenizer's bos id when ``add_bos``, else ``None``.
  """

  def __init__(self, tokenizer: Any, *, add_bos: bool = False):
    """Wraps ``tokenizer``.

    Args:
      tokenizer: a transformers tokenizer (``encode``, ``pad_token_id``,
        ``eos_token_id``, ``bos_token_id``).
      add_bos: start every prompt with the bos token, as lm-eval's ``add_bos_token``.
    """
    self.tokenizer = tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
      raise ValueError(f"{type(tokenizer).__name__} has neither a pad nor an eos token")
    self.pad_id = int(pad)
    if add_bos and tokenizer.bos_token_id is None:
      raise ValueError(f"add_bos=True but {type(tokenizer).__name__} has no bos token")
    self.bos_id = int(tokenizer.bos_token_id) if add_bos else None

  def encode(self, text: str) -> list[int]:
    """Token ids of ``text``, without special tokens."""
    return list(self.tokenizer.encode(text, add_special_tokens=False))
