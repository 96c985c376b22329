"""Next-token log-likelihoods and cross-entropy losses of a causal LM."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from evoselect_jax.models import llama


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """Log-probability of each token given the tokens before it.

  Args:
    logits: [b, t, V]; position i scores token i + 1.
    tokens: int32[b, t].

  Returns:
    float32[b, t]: entry i is ``log p(tokens[i] | tokens[:i])``; entry 0 (no context) is 0.
  """
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  return jnp.pad(picked, ((0, 0), (1, 0)))


def token_losses(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy over the target tokens of each sequence.

  Args:
    logits: [b, t, V]; position i scores token i + 1.
    tokens: int32[b, t].
    loss_mask: [b, t]; true where the token is a target (its prediction, from position
      i - 1, is scored). Position 0 cannot be a target; a mask there is ignored.

  Returns:
    float32[b]; 0 for a sequence without targets.
  """
  mask = jnp.asarray(loss_mask, jnp.float32).at[:, 0].set(0.0)
  nll = -token_logprobs(logits, tokens) * mask
  return nll.sum(-1) / jnp.maximum(mask.sum(-1), 1.0)


def example_loss(
  config: llama.LlamaConfig, params: dict, lora: dict | None, example: dict[str, jax.Array]
) -> jax.Array:
  """Loss of one example without a batch axis, for ``jax.vmap(jax.grad(...))``.

  Args:
    config: the model architecture.
    params: the model's ``params`` collection.
    lora: its ``lora`` collection, or ``None``.
    example: ``tokens int32[t]``, ``loss_mask [t]``, ``attention_mask bool[t]``.

  Returns:
    The scalar mean cross-entropy over the example's target tokens.
  """
  tokens = example["tokens"][None]
  logits = llama.apply(config, params, lora, tokens, example["attention_mask"][None])
  return token_losses(logits, tokens, example["loss_mask"][None])[0]
