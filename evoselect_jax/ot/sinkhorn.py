"""Entropic OT solver ``sinkhorn``: ott-jax's log-domain Sinkhorn (Cuturi 2013).

Follows the protocol of :mod:`evoselect_jax.ot.base` and returns a
:class:`~evoselect_jax.ot.base.DualSolution`. Unbalanced problems (Chizat et al. 2018)
need no solver of their own: the marginal relaxations ``tau_a``/``tau_b`` live in the
problem, as in ott-jax, and the same Sinkhorn runs the unbalanced updates.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn as ott_sinkhorn

from evoselect_jax.ot.base import DualSolution
from evoselect_jax.registry import OT_SOLVERS


@dataclasses.dataclass(frozen=True)
class SinkhornSolver:
  """Log-domain Sinkhorn (ott-jax ``Sinkhorn(lse_mode=True)``).

  Attributes:
    max_iterations: iteration cap.
    threshold: stop when the solver's error falls below it (balanced: L1 deviation of
      the plan's marginal from its target; unbalanced: relative change of the
      potentials between checks, ott-jax's convention).
    fixed_iterations: run exactly ``max_iterations`` (min = max iterations: a
      ``lax.scan`` loop, cheaper on accelerators and vmappable); the error is checked
      once, at the end.
    inner_iterations: iterations between two error checks.
  """

  has_potentials: ClassVar[bool] = True

  max_iterations: int = 2000
  threshold: float = 1e-3
  fixed_iterations: bool = False
  inner_iterations: int = 10

  def __call__(
    self,
    problem: linear_problem.LinearProblem,
    init: tuple[jax.Array, jax.Array] | None = None,
  ) -> DualSolution:
    """Solves ``problem``, warm-started from ``init = (f, g)`` when given."""
    solver = ott_sinkhorn.Sinkhorn(
      lse_mode=True,
      threshold=self.threshold,
      inner_iterations=self.inner_iterations,
      min_iterations=self.max_iterations if self.fixed_iterations else 0,
      max_iterations=self.max_iterations,
    )
    out = solver(problem, init=init)
    if self.fixed_iterations:
      iterations = jnp.asarray(self.max_iterations, jnp.int32)
    else:
      iterations = jnp.asarray(out.n_iters, jnp.int32)
    return DualSolution(out.f, out.g, problem.geom, out.converged, iterations)


@OT_SOLVERS.register("sinkhorn")
def sinkhorn(
  max_iterations: int = 2000,
  threshold: float = 1e-3,
  fixed_iterations: bool = False,
  inner_iterations: int = 10,
) -> SinkhornSolver:
  """Builds a :class:`SinkhornSolver`; see its attributes for the options."""
  if not isinstance(max_iterations, int) or max_iterations < 1:
    raise ValueError(f"sinkhorn max_iterations must be a positive int, got {max_iterations!r}")
  if not isinstance(inner_iterations, int) or not 1 <= inner_iterations <= max_iterations:
    raise ValueError(
      f"sinkhorn inner_iterations must be an int in [1, max_iterations={max_iterations}], "
      f"got {inner_iterations!r}"
    )
  if fixed_iterations and max_iterations % inner_iterations:
    raise ValueError(
      f"sinkhorn fixed_iterations needs max_iterations={max_iterations} to be a multiple "
      f"of inner_iterations={inner_iterations}"
    )
  if not threshold > 0:
    raise ValueError(f"sinkhorn threshold must be positive, got {threshold!r}")
  return SinkhornSolver(max_iterations, float(threshold), bool(fixed_iterations), inner_iterations)
