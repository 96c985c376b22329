"""Optimal transport: solvers behind one protocol (OT_SOLVERS) and relevance readouts."""

from evoselect_jax.ot import sinkhorn
from evoselect_jax.ot.relevance import (
  SCORES,
  OTConfig,
  OTRelevance,
  make_ot_config,
  ot_relevance,
  solve,
)
from evoselect_jax.ot.sinkhorn import DualSolution, SinkhornSolver

__all__ = [
  "SCORES",
  "DualSolution",
  "OTConfig",
  "OTRelevance",
  "SinkhornSolver",
  "make_ot_config",
  "ot_relevance",
  "sinkhorn",
  "solve",
]
