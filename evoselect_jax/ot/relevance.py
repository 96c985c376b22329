"""Relevance of candidates to a target set, read off an entropic OT problem.

Entropic OT between candidates ``x`` [n, d] (weights ``a``) and targets ``y`` [m, d]
(weights ``b``) with ott-jax (``PointCloud`` -> ``LinearProblem`` -> a solver of
``OT_SOLVERS``, :mod:`evoselect_jax.ot.base`). The relevance of candidate i (higher =
more aligned) is one of:

- ``potential`` (GOT-D, Just et al. 2023; LAVA, Just et al. 2023): the calibrated dual
  potential ``s_i = f_i - mean_{j != i} f_j`` (mean over valid candidates), the gradient
  of the OT distance with respect to the mass at i up to a shared constant; a low
  ``s_i`` means moving mass to i lowers the distance to the target most.
  Relevance ``-s_i``.
- ``plan_mass``: unbalanced OT with a hard target marginal and a loose candidate
  marginal (``tau_a < 1``); relevance = mass the plan moves from candidate i,
  ``sum_j P_ij`` (Chizat et al. 2018).
- ``expected_cost``: ``-sum_j P_ij C_ij / sum_j P_ij``, minus the soft nearest-target
  cost of i under the plan.

``potential`` needs a solver with dual potentials (``sinkhorn``); ``plan_mass`` and
``expected_cost`` work with any solver (``lowrank`` too).

``epsilon`` is relative to the cost scale: the solver uses ``epsilon * mean_ij C_ij``
with the mean taken under ``a ⊗ b`` (so padded rows, ``a_i = 0``, do not change it),
computed in closed form in O((n + m) d) for both costs. The absolute value is returned.
The ``a``/``b`` weights are normalised to probability vectors; ``tau_a``/``tau_b`` are
ott-jax's marginal relaxations (``tau = rho / (rho + epsilon)`` for a KL marginal
penalty ``rho``; 1 is a hard marginal), ``a`` for candidates and ``b`` for targets;
left unset (``None``) they are the solver's defaults (1 for ``sinkhorn`` and
``lowrank``, below 1 for ``sinkhorn_unbalanced``).

Candidates enter the geometry as given (no normalised copy of the [n, d] features: the
cosine cost normalises inside its matrix product), so the online geometry's memory is
the features plus one block of cost rows.

:func:`ot_relevance` is the eager entry point (it validates values); :func:`solve` is the
traceable one, for use inside other jitted code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from ott.geometry import costs, pointcloud
from ott.problems.linear import linear_problem

from evoselect_jax.ot.base import DualSolution, cost_row
from evoselect_jax.ot.geometry import RowBlockPointCloud, ZeroSafeCosine, inv_norm
from evoselect_jax.registry import OT_SOLVERS

SCORES = ("potential", "plan_mass", "expected_cost")
_COST_FNS: dict[str, Callable[[], costs.CostFn]] = {
  "cosine": ZeroSafeCosine,
  "sqeuclidean": costs.SqEuclidean,
}
DEFAULT_EPSILON = 0.05  # relative to the mean cost; ott-jax's default factor (0.05 x a scale)


@dataclasses.dataclass(frozen=True)
class OTConfig:
  """Static options of one relevance computation; hashable, so a ``jit`` static arg.

  Attributes:
    score: ``potential`` | ``plan_mass`` | ``expected_cost``.
    cost: ``cosine`` (1 - cos) | ``sqeuclidean``.
    epsilon: entropic regularisation relative to the mean cost.
    tau_a: candidate-marginal relaxation in (0, 1].
    tau_b: target-marginal relaxation in (0, 1].
    solver: a built OT solver (the protocol of :mod:`evoselect_jax.ot.base`).
    batch_size: ``None`` to store the [n, m] cost, else rows per block of the online
      geometry (the cost is never materialised).
  """

  score: str
  cost: str
  epsilon: float
  tau_a: float
  tau_b: float
  solver: Any
  batch_size: int | None


def make_ot_config(
  *,
  score: str = "potential",
  cost: str = "cosine",
  epsilon: float | None = None,
  tau_a: float | None = None,
  tau_b: float | None = None,
  solver: str = "sinkhorn",
  batch_size: int | None = None,
  **solver_options: Any,
) -> OTConfig:
  """Validates options and builds an :class:`OTConfig`.

  ``epsilon=None`` is 0.05; ``tau_a``/``tau_b`` ``None`` are the solver's defaults
  (its ``default_tau_a``/``default_tau_b``, else 1).
  """
  if score not in SCORES:
    raise ValueError(f"Unknown OT score {score!r}; valid: {', '.join(SCORES)}")
  if cost not in _COST_FNS:
    raise ValueError(f"Unknown OT cost {cost!r}; valid: {', '.join(_COST_FNS)}")
  epsilon = DEFAULT_EPSILON if epsilon is None else epsilon
  if not epsilon > 0:
    raise ValueError(f"OT epsilon (relative to the mean cost) must be positive, got {epsilon!r}")
  if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
    raise ValueError(f"OT batch_size must be None or a positive int, got {batch_size!r}")
  built = OT_SOLVERS.get(solver)(**solver_options)
  default_a = getattr(built, "default_tau_a", 1.0)
  default_b = getattr(built, "default_tau_b", 1.0)
  tau_a = default_a if tau_a is None else tau_a
  tau_b = default_b if tau_b is None else tau_b
  for name, tau in (("tau_a", tau_a), ("tau_b", tau_b)):
    if not 0 < tau <= 1:
      raise ValueError(f"OT {name} must be in (0, 1], got {tau!r}")
  if score == "plan_mass" and tau_a == 1:
    raise ValueError(
      "OT score 'plan_mass' needs a loose candidate marginal, tau_a < 1 (with tau_a = 1 "
      "every candidate's mass is a_i); tau_b relaxes the target marginal"
    )
  if (default_a < 1 or default_b < 1) and tau_a == tau_b == 1:
    raise ValueError(
      f"OT solver {solver!r} is unbalanced, but tau_a = tau_b = 1 makes the problem "
      "balanced; set a tau below 1 or use solver 'sinkhorn'"
    )
  if score == "potential" and not built.has_potentials:
    raise ValueError(
      f"OT score 'potential' reads dual potentials, which OT solver {solver!r} does not "
      "return; use score 'plan_mass' or 'expected_cost' with it"
    )
  return OTConfig(score, cost, float(epsilon), float(tau_a), float(tau_b), built, batch_size)


def _map_rows(fn: Callable[..., jax.Array], xs: Any, batch_size: int | None) -> jax.Array:
  """``vmap(fn)`` over rows, in blocks of ``batch_size`` rows when it is set."""
  if batch_size is None:
    return jax.vmap(fn)(*xs)
  return jax.lax.map(lambda row: fn(*row), xs, batch_size=batch_size)


@struct.dataclass
class OTReport:
  """How an OT solve went, for the round's metrics (``ot`` in ``metrics.jsonl``).

  Attributes:
    converged: bool scalar, the solver reached its threshold.
    iterations: int scalar, solver iterations run.
    marginal_error: ``||P^T 1 - b||_1``, the target-marginal error of the plan.
  """

  converged: jax.Array
  iterations: jax.Array
  marginal_error: jax.Array

  def to_dict(self) -> dict[str, bool | int | float]:
    """The report as plain Python values (on the host)."""
    return {
      "converged": bool(self.converged),
      "iterations": int(self.iterations),
      "marginal_error": float(self.marginal_error),
    }


@struct.dataclass
class OTRelevance:
  """Relevance per candidate and the OT solution it was read from.

  Attributes:
    relevance: [n], higher = more aligned; ``-inf`` where ``a_i = 0``.
    solution: the solver's output (:class:`~evoselect_jax.ot.base.OTSolution`).
    epsilon: the absolute entropic regularisation of the problem.
    marginal_error: ``||P^T 1 - b||_1``, the target-marginal error of the plan.
    batch_size: rows per block when recomputing plan or cost rows.
  """

  relevance: jax.Array
  solution: Any
  epsilon: jax.Array
  marginal_error: jax.Array
  batch_size: int | None = struct.field(pytree_node=False)

  @property
  def f(self) -> jax.Array:
    """[n] candidate potential (``-inf`` where ``a_i = 0``); solvers with potentials only."""
    return self.solution.potentials()[0]

  @property
  def g(self) -> jax.Array:
    """[m] target potential (``-inf`` where ``b_j = 0``); solvers with potentials only."""
    return self.solution.potentials()[1]

  @property
  def converged(self) -> jax.Array:
    """Bool scalar, the solver reached its threshold."""
    return self.solution.converged

  @property
  def iterations(self) -> jax.Array:
    """Int scalar, solver iterations run."""
    return self.solution.iterations

  def report(self) -> OTReport:
    """The :class:`OTReport` of this solve."""
    return OTReport(
      jnp.asarray(self.converged, bool),
      jnp.asarray(self.iterations, jnp.int32),
      jnp.asarray(self.marginal_error, jnp.float32),
    )

  @property
  def kernel(self) -> jax.Array:
    """Bool scalar, the solve ran in kernel mode (``False`` for solvers without one)."""
    return jnp.asarray(getattr(self.solution, "kernel", False))

  def plan_rows(self, rows: jax.Array | None = None, *, normalize: bool = False) -> jax.Array:
    """Rows of the plan, [r, m].

    Args:
      rows: int [r] candidate indices; ``None`` for all n rows.
      normalize: divide each row by its sum: where candidate i's unit of mass goes
        (for dual solutions ``softmax_j((g_j - C_ij) / epsilon)``, defined even where
        ``a_i = 0``).

    Returns:
      [r, m] plan rows, computed ``batch_size`` rows at a time.
    """
    if rows is None:
      rows = jnp.arange(self.relevance.shape[0])
    return _map_rows(lambda i: self.solution.plan_row(i, normalize), (rows,), self.batch_size)


def _mean_cost(x: jax.Array, y: jax.Array, a: jax.Array, b: jax.Array, cost: str) -> jax.Array:
  """``sum_ij a_i b_j C_ij`` in closed form (``a``, ``b`` sum to 1), O((n + m) d)."""
  if cost == "cosine":
    return 1.0 - ((a * inv_norm(x)) @ x) @ ((b * inv_norm(y)) @ y)
  xa, yb = a @ x, b @ y
  return a @ jnp.sum(x * x, axis=1) + b @ jnp.sum(y * y, axis=1) - 2.0 * xa @ yb


def _score(config: OTConfig, solution: Any, a: jax.Array, geom: pointcloud.PointCloud) -> jax.Array:
  """Relevance [n] of ``config.score``; ``-inf`` where ``a_i = 0``."""
  valid = a > 0
  if config.score == "potential":
    f, _ = solution.potentials()
    f_valid = jnp.where(valid, f, 0.0)
    others = jnp.maximum(jnp.sum(valid) - 1, 1)
    relevance = -(f - (jnp.sum(f_valid) - f_valid) / others)
  elif config.score == "plan_mass":
    relevance = solution.marginals()[0]
  else:

    def expected(i: jax.Array) -> jax.Array:
      return solution.plan_row(i, True) @ cost_row(geom, i)

    relevance = -_map_rows(expected, (jnp.arange(a.shape[0]),), config.batch_size)
  return jnp.where(valid, relevance, -jnp.inf)


def solve(
  config: OTConfig,
  x: jax.Array,
  y: jax.Array,
  a: jax.Array,
  b: jax.Array,
  init: tuple[jax.Array, jax.Array] | None = None,
) -> OTRelevance:
  """Traceable core of :func:`ot_relevance` (no value checks).

  Args:
    config: static options.
    x: [n, d] candidates.
    y: [m, d] targets.
    a: [n] nonnegative candidate weights, positive sum (zeros = padded rows).
    b: [m] nonnegative target weights, positive sum.
    init: ``None`` or warm-start potentials ``(f [n], g [m])``.

  Returns:
    The :class:`OTRelevance`.
  """
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  a = a.astype(jnp.float32) / jnp.sum(a)
  b = b.astype(jnp.float32) / jnp.sum(b)
  scale = _mean_cost(x, y, a, b, config.cost)
  epsilon = config.epsilon * jnp.where(scale > 0, scale, 1.0)  # 1 when every cost is 0
  geom = RowBlockPointCloud(
    x, y, cost_fn=_COST_FNS[config.cost](), epsilon=epsilon, batch_size=config.batch_size
  )
  problem = linear_problem.LinearProblem(geom, a, b, tau_a=config.tau_a, tau_b=config.tau_b)
  solution = config.solver(problem, init)
  return OTRelevance(
    relevance=_score(config, solution, a, geom),
    solution=solution,
    epsilon=epsilon,
    marginal_error=jnp.sum(jnp.abs(solution.marginals()[1] - b)),
    batch_size=config.batch_size,
  )


def _solve_detached(config: OTConfig, *args: Any) -> OTRelevance:
  """:func:`solve` without the features in its output.

  A jitted function that returns its input returns a copy of it ([n, d] more memory);
  :func:`ot_relevance_output` puts the caller's arrays back.
  """
  out = solve(config, *args)
  if isinstance(out.solution, DualSolution):
    out = out.replace(solution=out.solution.replace(geom=None))
  return out


_solve_jit = jax.jit(_solve_detached, static_argnums=0)


def _weights(w: jax.Array | None, size: int, name: str) -> jax.Array:
  if w is None:
    return jnp.ones((size,), jnp.float32)
  values = np.asarray(w)
  if values.shape != (size,):
    raise ValueError(f"OT weights {name} must have shape [{size}], got {values.shape}")
  if not np.all(np.isfinite(values)) or np.any(values < 0) or not values.sum() > 0:
    raise ValueError(f"OT weights {name} must be finite, nonnegative, with a positive sum")
  return jnp.asarray(w, jnp.float32)


def ot_relevance_output(
  candidates: jax.Array,
  targets: jax.Array,
  *,
  score: str = "potential",
  cost: str = "cosine",
  epsilon: float | None = None,
  tau_b: float | None = None,
  a: jax.Array | None = None,
  b: jax.Array | None = None,
  solver: str = "sinkhorn",
  tau_a: float | None = None,
  batch_size: int | None = None,
  init: tuple[jax.Array, jax.Array] | None = None,
  **solver_options: Any,
) -> OTRelevance:
  """Relevance of each candidate to the targets by entropic OT (see the module doc).

  Args:
    candidates: [n, d] candidate features.
    targets: [m, d] target features.
    score: ``potential`` (GOT-D) | ``plan_mass`` (needs ``tau_a < 1``) |
      ``expected_cost``.
    cost: ``cosine`` | ``sqeuclidean``.
    epsilon: entropic regularisation relative to the mean cost (``None``: 0.05).
    tau_b: target-marginal relaxation (1 = hard; ``None``: the solver's default, 1
      except for ``sinkhorn_unbalanced``).
    a: [n] candidate weights, zeros for padded rows (relevance ``-inf``); default uniform.
    b: [m] target weights; default uniform.
    solver: a name in ``OT_SOLVERS``.
    tau_a: candidate-marginal relaxation (1 = hard; ``None``: the solver's default).
    batch_size: online geometry block size; ``None`` stores the [n, m] cost.
    init: warm-start potentials ``(f [n], g [m])``, e.g. from a previous result.
    **solver_options: the solver's options (``sinkhorn``: ``max_iterations``,
      ``threshold``, ``fixed_iterations``, ``inner_iterations``, ``mode``,
      ``norm_error``; ``sinkhorn_unbalanced``: those and ``default_tau_a``,
      ``default_tau_b``; ``lowrank``: ``rank``,
      ``initializer``, ``gamma``, ``max_iterations``, ``threshold``,
      ``inner_iterations``).

  Returns:
    :class:`OTRelevance` with ``relevance`` [n] and the solution it came from.
  """
  config = make_ot_config(
    score=score,
    cost=cost,
    epsilon=epsilon,
    tau_a=tau_a,
    tau_b=tau_b,
    solver=solver,
    batch_size=batch_size,
    **solver_options,
  )
  if candidates.ndim != 2 or targets.ndim != 2 or candidates.shape[1] != targets.shape[1]:
    raise ValueError(
      f"ot_relevance needs candidates [n, d] and targets [m, d]; got {candidates.shape} "
      f"and {targets.shape}"
    )
  (n, _), (m, _) = candidates.shape, targets.shape
  a, b = _weights(a, n, "a"), _weights(b, m, "b")
  if init is not None and (jnp.shape(init[0]) != (n,) or jnp.shape(init[1]) != (m,)):
    raise ValueError(f"init must be potentials (f [{n}], g [{m}])")
  x, y = jnp.asarray(candidates, jnp.float32), jnp.asarray(targets, jnp.float32)
  out = _solve_jit(config, x, y, a, b, init)
  if isinstance(out.solution, DualSolution):
    geom = RowBlockPointCloud(
      x, y, cost_fn=_COST_FNS[cost](), epsilon=out.epsilon, batch_size=batch_size
    )
    out = out.replace(solution=out.solution.replace(geom=geom))
  return out


def ot_relevance(
  candidates: jax.Array,
  targets: jax.Array,
  *,
  score: str = "potential",
  cost: str = "cosine",
  epsilon: float | None = None,
  tau_b: float | None = None,
  **options: Any,
) -> jax.Array:
  """Relevance [n] of each candidate to the targets (higher = more aligned).

  The same arguments as :func:`ot_relevance_output`, which also returns the
  potentials, convergence flag, iterations and marginal error.
  """
  return ot_relevance_output(
    candidates, targets, score=score, cost=cost, epsilon=epsilon, tau_b=tau_b, **options
  ).relevance
