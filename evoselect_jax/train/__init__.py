"""Losses, optimizers and the jitted training loop."""

from evoselect_jax.train.losses import example_loss, token_logprobs, token_losses
from evoselect_jax.train.optim import FitOutput, batch_indices, fit, make_optimizer

__all__ = [
  "FitOutput",
  "batch_indices",
  "example_loss",
  "fit",
  "make_optimizer",
  "token_logprobs",
  "token_losses",
]
