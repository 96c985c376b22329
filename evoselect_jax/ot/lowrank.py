"""OT solver ``lowrank``: ott-jax's low-rank Sinkhorn (Scetbon, Cuturi & Peyré 2021).

The plan is constrained to rank ``r``, ``P = Q diag(1/g) R^T`` with ``Q`` [n, r],
``R`` [m, r] and ``g`` [r], found by mirror descent with Dykstra projections onto the
marginal constraints (ott-jax ``LRSinkhorn``); unbalanced problems (``tau_a``/``tau_b``
< 1) use the unbalanced projections of Scetbon et al. 2023. Memory O((n + m) r) for the
plan; with a squared-Euclidean cost ott-jax also factorises the cost, so nothing [n, m]
is stored, and for other costs ``batch_size`` keeps the cost online.

The factored plan has no dual potentials, so the ``potential`` score is unavailable
(:func:`~evoselect_jax.ot.make_ot_config` raises) and there is no warm start from
potentials; ``plan_mass`` and ``expected_cost`` read the plan. The problem's
``epsilon`` does not enter the low-rank objective. The problem is not convex: the
result depends on the ``initializer`` (all three are deterministic here).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct
from ott.initializers.linear import initializers_lr
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn_lr

from evoselect_jax.registry import OT_SOLVERS

INITIALIZERS = {
  "rank2": initializers_lr.Rank2Initializer,
  "random": initializers_lr.RandomInitializer,
  "kmeans": initializers_lr.KMeansInitializer,
}


@struct.dataclass
class LowRankSolution:
  """A factored plan ``P = Q diag(1/g) R^T``.

  Attributes:
    q: [n, r] candidate factor.
    r: [m, r] target factor.
    g: [r] inner marginal.
    converged: bool scalar.
    iterations: int scalar, mirror-descent iterations run.
  """

  q: jax.Array
  r: jax.Array
  g: jax.Array
  converged: jax.Array
  iterations: jax.Array

  def potentials(self) -> tuple[jax.Array, jax.Array]:
    """Always raises: a low-rank plan has no dual potentials."""
    raise ValueError(
      "OT solver 'lowrank' returns a factored plan without dual potentials; use the "
      "'plan_mass' or 'expected_cost' score, or solver 'sinkhorn'"
    )

  def plan_row(self, i: jax.Array, normalize: bool) -> jax.Array:
    """Row ``i`` of the plan, [m]; normalised rows of candidates with no mass are 0."""
    row = (self.q[i] / self.g) @ self.r.T
    if not normalize:
      return row
    total = jnp.sum(row)
    return jnp.where(total > 0, row / jnp.where(total > 0, total, 1.0), 0.0)

  def marginals(self) -> tuple[jax.Array, jax.Array]:
    """``(P 1 [n], P^T 1 [m])`` from the factors."""
    return self.q @ (jnp.sum(self.r, axis=0) / self.g), self.r @ (jnp.sum(self.q, axis=0) / self.g)


@dataclasses.dataclass(frozen=True)
class LowRankSolver:
  """Low-rank Sinkhorn; see the module docstring.

  Attributes:
    rank: rank ``r`` of the plan.
    initializer: ``rank2`` | ``random`` (fixed key) | ``kmeans`` (needs a point cloud).
    gamma: inverse mirror-descent step size (rescaled each iteration, ott-jax's default).
    max_iterations: iteration cap.
    threshold: stop when the relative change of the objective falls below it.
    inner_iterations: iterations between two convergence checks.
  """

  has_potentials: ClassVar[bool] = False

  rank: int
  initializer: str
  gamma: float
  max_iterations: int
  threshold: float
  inner_iterations: int

  def __call__(
    self,
    problem: linear_problem.LinearProblem,
    init: tuple[jax.Array, jax.Array] | None = None,
  ) -> LowRankSolution:
    """Solves ``problem``; ``init`` must be ``None`` (no potentials to warm-start)."""
    if init is not None:
      raise ValueError("OT solver 'lowrank' has no dual potentials to warm-start; pass init=None")
    n, m = problem.geom.shape
    if self.rank > min(n, m):
      raise ValueError(f"lowrank rank={self.rank} exceeds min(n, m) = min({n}, {m})")
    solver = sinkhorn_lr.LRSinkhorn(
      rank=self.rank,
      gamma=self.gamma,
      initializer=INITIALIZERS[self.initializer](self.rank),
      threshold=self.threshold,
      inner_iterations=self.inner_iterations,
      max_iterations=self.max_iterations,
    )
    out = solver(problem)
    return LowRankSolution(
      out.q, out.r, out.g, jnp.asarray(out.converged), jnp.asarray(out.n_iters, jnp.int32)
    )


@OT_SOLVERS.register("lowrank")
def lowrank(
  rank: int = 8,
  initializer: str = "rank2",
  gamma: float = 10.0,
  max_iterations: int = 2000,
  threshold: float = 1e-3,
  inner_iterations: int = 10,
) -> LowRankSolver:
  """Builds a :class:`LowRankSolver`; see its attributes for the options."""
  if not isinstance(rank, int) or rank < 1:
    raise ValueError(f"lowrank rank must be a positive int, got {rank!r}")
  if initializer not in INITIALIZERS:
    raise ValueError(
      f"lowrank initializer must be one of {', '.join(INITIALIZERS)}, got {initializer!r}"
    )
  if not gamma > 0:
    raise ValueError(f"lowrank gamma must be positive, got {gamma!r}")
  if not isinstance(max_iterations, int) or max_iterations < 1:
    raise ValueError(f"lowrank max_iterations must be a positive int, got {max_iterations!r}")
  if not isinstance(inner_iterations, int) or not 1 <= inner_iterations <= max_iterations:
    raise ValueError(
      f"lowrank inner_iterations must be an int in [1, max_iterations={max_iterations}], "
      f"got {inner_iterations!r}"
    )
  if not threshold > 0:
    raise ValueError(f"lowrank threshold must be positive, got {threshold!r}")
  return LowRankSolver(
    rank, initializer, float(gamma), max_iterations, float(threshold), inner_iterations
  )
