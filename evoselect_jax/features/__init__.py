"""Proxy gradient features: per-example gradients and random projections."""

from evoselect_jax.features.grads import (
  AdamPreconditioner,
  Features,
  adam_preconditioner,
  per_example_features,
  per_example_grads,
)
from evoselect_jax.features.projectors import (
  DenseProjector,
  SparseProjector,
  TreeProjector,
  make_projector,
  make_tree_projector,
)

__all__ = [
  "AdamPreconditioner",
  "DenseProjector",
  "Features",
  "SparseProjector",
  "TreeProjector",
  "adam_preconditioner",
  "make_projector",
  "make_tree_projector",
  "per_example_features",
  "per_example_grads",
]
