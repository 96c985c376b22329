"""Proxy gradient features: per-example gradients and random projections."""

from evoselect_jax.features.factored import (
  check_factored_projector,
  decoder_factors,
  factored_features,
)
from evoselect_jax.features.grads import (
  AdamPreconditioner,
  Features,
  adam_preconditioner,
  per_example_features,
  per_example_grads,
)
from evoselect_jax.features.projectors import (
  DenseProjector,
  KroneckerProjector,
  SparseProjector,
  TreeProjector,
  make_projector,
  make_tree_projector,
)

__all__ = [
  "AdamPreconditioner",
  "DenseProjector",
  "Features",
  "KroneckerProjector",
  "SparseProjector",
  "TreeProjector",
  "adam_preconditioner",
  "check_factored_projector",
  "decoder_factors",
  "factored_features",
  "make_projector",
  "make_tree_projector",
  "per_example_features",
  "per_example_grads",
]
