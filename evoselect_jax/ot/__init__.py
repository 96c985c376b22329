"""Optimal transport: solvers behind one protocol (OT_SOLVERS) and relevance readouts.

Solvers: ``sinkhorn`` (entropic, balanced or unbalanced through ``tau_a``/``tau_b``;
``mode`` ``lse`` | ``kernel`` | ``auto``), ``sinkhorn_unbalanced`` (the same, with
relaxed marginals by default) and ``lowrank`` (rank-constrained plans).
:func:`ot_relevance` / :func:`solve` read a relevance per candidate off any of them.
:mod:`evoselect_jax.ot.geometry` holds the geometries that make Sinkhorn fast on CPU
(the cost computed once, a row-stabilised kernel, online products by row blocks).

Adding a solver is one module:

1. Write ``evoselect_jax/ot/<name>.py`` with a frozen dataclass solver following
   :mod:`evoselect_jax.ot.base` (``has_potentials``; ``__call__(problem, init)``
   returning a solution with ``converged``, ``iterations``, ``potentials()``,
   ``plan_row(i, normalize)`` and ``marginals()``; a dual solver can return
   :class:`~evoselect_jax.ot.base.DualSolution`), and a factory decorated with
   ``@OT_SOLVERS.register("<name>")`` that validates the options.
2. Import the module below, so the registry knows the name.
3. Select it in a config: ``ot=dict(solver="<name>", **its_options)``; relevance and
   every OT selector then use it unchanged.
"""

from evoselect_jax.ot import geometry, lowrank, sinkhorn
from evoselect_jax.ot.base import DualSolution, OTSolution, OTSolver
from evoselect_jax.ot.lowrank import LowRankSolution, LowRankSolver
from evoselect_jax.ot.relevance import (
  SCORES,
  OTConfig,
  OTRelevance,
  OTReport,
  make_ot_config,
  ot_relevance,
  ot_relevance_output,
  solve,
)
from evoselect_jax.ot.sinkhorn import SinkhornSolver

__all__ = [
  "SCORES",
  "DualSolution",
  "LowRankSolution",
  "LowRankSolver",
  "OTConfig",
  "OTRelevance",
  "OTReport",
  "OTSolution",
  "OTSolver",
  "SinkhornSolver",
  "geometry",
  "lowrank",
  "make_ot_config",
  "ot_relevance",
  "ot_relevance_output",
  "sinkhorn",
  "solve",
]
