"""Entropic OT solvers ``sinkhorn`` and ``sinkhorn_unbalanced``: ott-jax's Sinkhorn.

Sinkhorn (Cuturi 2013) with ott-jax's ``Sinkhorn`` loop, on a geometry chosen for
speed (:mod:`evoselect_jax.ot.geometry`). Returns a
:class:`~evoselect_jax.ot.base.DualSolution`. Unbalanced problems (Chizat et al. 2018)
use the same updates: the marginal relaxations ``tau_a``/``tau_b`` live in the problem,
as in ott-jax. ``sinkhorn_unbalanced`` is the same solver whose default relaxations
(used where the OT config leaves ``tau_a``/``tau_b`` unset) are below 1.

Modes (option ``mode``):

- ``lse``: log-domain updates ``f_i = eps log a_i - eps logsumexp_j((g_j - C_ij)/eps)``,
  stable for any epsilon, one ``exp`` per cost entry per update.
- ``kernel``: scaling updates ``u = a / (K v)``, ``v = b / (K^T u)`` with the kernel
  ``K = exp(-C/eps)`` computed once (row-stabilised when the cost is stored,
  :class:`~evoselect_jax.ot.geometry.KernelGeometry`): two matrix-vector products per
  iteration, several times cheaper than ``lse`` on CPU. It fails (non-finite
  potentials, ``converged`` false) when kernel entries underflow, i.e. for epsilon small
  against the cost spread.
- ``auto``: ``kernel`` unless the stored kernel has a column below
  :data:`~evoselect_jax.ot.geometry.KERNEL_FLOOR`, and ``lse`` again when the kernel
  run ends non-finite or unconverged (so up to two solves; with a stored cost, both the
  cost and the kernel are held, 2 x [n, m]). The mode that produced the result is
  ``solution.kernel``.

Without ``batch_size`` (the default geometry) the [n, m] cost is computed once, in one
matrix product, and stored (``lse``) or turned into the kernel (``kernel``); with a
``batch_size`` (online geometry) ott-jax recomputes cost blocks in every update and
nothing [n, m] is stored.

Stopping: after the first iteration and then every ``inner_iterations`` iterations
(1, 11, 21, ... for 10, POT's schedule) the solver computes its error, for balanced
problems the ``norm_error``-norm of ``P^T 1 - b`` after the candidate update (POT's
``stopThr`` is the same quantity with ``norm_error=2``), for unbalanced ones ott-jax's
gradient norm of the dual objective; it stops when the error is below ``threshold``.
The first check lets a converged warm start stop after one iteration. With
``fixed_iterations`` the error is computed once, at the end.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn as ott_sinkhorn

from evoselect_jax.ot import geometry as geometry_lib
from evoselect_jax.ot.base import DualSolution
from evoselect_jax.registry import OT_SOLVERS

MODES = ("lse", "kernel", "auto")


@dataclasses.dataclass(frozen=True)
class SinkhornSolver:
  """Sinkhorn through ott-jax ``Sinkhorn``; see the module docstring.

  Attributes:
    max_iterations: iteration cap (without ``fixed_iterations`` the loop stops after
      1 + a multiple of ``inner_iterations`` iterations, at most this many).
    threshold: stop when the error falls below it (see the module docstring).
    fixed_iterations: run exactly ``max_iterations`` (min = max iterations: a
      ``lax.scan`` loop, cheaper on accelerators and vmappable); the error is checked
      once, at the end.
    inner_iterations: iterations between two error checks (each costs a pass over the
      cost or kernel).
    mode: ``lse`` | ``kernel`` | ``auto``.
    norm_error: p of the p-norm of the marginal error (1 or 2).
    default_tau_a: candidate-marginal relaxation where the OT config leaves it unset.
    default_tau_b: target-marginal relaxation where the OT config leaves it unset.
  """

  has_potentials: ClassVar[bool] = True

  max_iterations: int = 2000
  threshold: float = 1e-3
  fixed_iterations: bool = False
  inner_iterations: int = 10
  mode: str = "lse"
  norm_error: int = 1
  default_tau_a: float = 1.0
  default_tau_b: float = 1.0

  def _loop(
    self,
    problem: linear_problem.LinearProblem,
    init: tuple[jax.Array, jax.Array] | None,
    lse_mode: bool,
    max_iterations: int,
    inner: int,
  ) -> ott_sinkhorn.SinkhornOutput:
    """ott-jax's Sinkhorn loop (``sinkhorn.iterations``).

    ``Sinkhorn.__call__`` would also evaluate the regularised OT cost afterwards, one
    more pass over the cost (a full cost recomputation online), which nothing here reads.
    """
    solver = ott_sinkhorn.Sinkhorn(
      lse_mode=lse_mode,
      threshold=self.threshold,
      norm_error=self.norm_error,
      inner_iterations=inner,
      min_iterations=max_iterations if self.fixed_iterations else 0,
      max_iterations=max_iterations,
    )
    if init is None:
      init = solver.initializer(problem, lse_mode=lse_mode)
    return ott_sinkhorn.iterations(problem, solver, init)

  def _run(
    self,
    problem: linear_problem.LinearProblem,
    init: tuple[jax.Array, jax.Array] | None,
    lse_mode: bool,
  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """ott-jax's loop with checks after iteration 1, then every ``inner_iterations``.

    ``init`` and the result are potentials (``lse_mode``) or scalings (kernel mode) of
    ``problem.geom``. Returns ``(f_u, g_v, converged, iterations)``. A first, checked
    iteration on its own, then ott-jax's loop warm-started from it: the check schedule
    is POT's (1, 11, 21, ...), and a warm start that is already converged stops after
    one iteration.
    """
    if self.fixed_iterations or self.max_iterations == 1:
      out = self._loop(problem, init, lse_mode, self.max_iterations, self.inner_iterations)
      steps = self.max_iterations if self.fixed_iterations else out.n_iters
      return *_state(out, problem, lse_mode), out.converged, jnp.asarray(steps, jnp.int32)
    first = self._loop(problem, init, lse_mode, 1, 1)
    rest_max = self.max_iterations - 1
    inner = min(self.inner_iterations, rest_max)
    rest_max -= rest_max % inner

    def rest() -> tuple[jax.Array, ...]:
      out = self._loop(problem, _state(first, problem, lse_mode), lse_mode, rest_max, inner)
      return *_state(out, problem, lse_mode), out.converged, 1 + jnp.asarray(out.n_iters, jnp.int32)

    done = (*_state(first, problem, lse_mode), first.converged, jnp.asarray(1, jnp.int32))
    return jax.lax.cond(first.converged, lambda: done, rest)

  def __call__(
    self,
    problem: linear_problem.LinearProblem,
    init: tuple[jax.Array, jax.Array] | None = None,
  ) -> DualSolution:
    """Solves ``problem``, warm-started from potentials ``init = (f, g)`` when given."""
    geom = problem.geom
    if geom.is_online:
      lse = lambda: self._online(problem, init, kernel=False)  # noqa: E731
      if self.mode == "lse":
        return lse()
      kernel = self._online(problem, init, kernel=True)
      if self.mode == "kernel":
        return kernel
      return jax.lax.cond(_ok(kernel, problem), lambda: kernel, lse)

    cost = geometry_lib.dense_cost(geom)
    lse = lambda: self._dense_lse(problem, cost, init)  # noqa: E731
    if self.mode == "lse":
      return lse()
    kernel_geom = geometry_lib.KernelGeometry.from_cost(cost, geom.epsilon)
    if self.mode == "kernel":
      return self._dense_kernel(problem, kernel_geom, init)

    def kernel_then_check() -> DualSolution:
      kernel = self._dense_kernel(problem, kernel_geom, init)
      return jax.lax.cond(_ok(kernel, problem), lambda: kernel, lse)

    safe = geometry_lib.kernel_is_safe(kernel_geom, problem.b)
    return jax.lax.cond(safe, kernel_then_check, lse)

  def _online(
    self,
    problem: linear_problem.LinearProblem,
    init: tuple[jax.Array, jax.Array] | None,
    kernel: bool,
  ) -> DualSolution:
    """ott-jax on the online point cloud (plain kernel ``exp(-C/eps)`` in kernel mode)."""
    geom = problem.geom
    if kernel and init is not None:
      init = (geom.scaling_from_potential(init[0]), geom.scaling_from_potential(init[1]))
    f, g, converged, iterations = self._run(problem, init, lse_mode=not kernel)
    if kernel:
      f, g = geom.potential_from_scaling(f), geom.potential_from_scaling(g)
    return DualSolution(f, g, geom, converged, iterations, kernel=jnp.asarray(kernel))

  def _dense_lse(
    self,
    problem: linear_problem.LinearProblem,
    cost: jax.Array,
    init: tuple[jax.Array, jax.Array] | None,
  ) -> DualSolution:
    """Log-domain updates on the stored cost."""
    dense = geometry_lib.CostGeometry(cost_matrix=cost, epsilon=problem.geom.epsilon)
    prob = linear_problem.LinearProblem(
      dense, problem.a, problem.b, tau_a=problem.tau_a, tau_b=problem.tau_b
    )
    f, g, converged, iterations = self._run(prob, init, lse_mode=True)
    return DualSolution(
      f,
      g,
      problem.geom,
      converged,
      iterations,
      kernel=jnp.asarray(False),
      row_marginal=dense.marginal_from_potentials(f, g, axis=1),
      col_marginal=dense.marginal_from_potentials(f, g, axis=0),
    )

  def _dense_kernel(
    self,
    problem: linear_problem.LinearProblem,
    kernel_geom: geometry_lib.KernelGeometry,
    init: tuple[jax.Array, jax.Array] | None,
  ) -> DualSolution:
    """Scaling updates on the stored, row-stabilised kernel."""
    a = geometry_lib.shifted_weights(
      problem.a, kernel_geom.shift, kernel_geom.epsilon, problem.tau_a
    )
    prob = linear_problem.LinearProblem(
      kernel_geom, a, problem.b, tau_a=problem.tau_a, tau_b=problem.tau_b
    )
    if init is None:
      init = kernel_geom.uniform_scalings()
    else:
      init = kernel_geom.to_scalings(*init)
    u, v, converged, iterations = self._run(prob, init, lse_mode=False)
    f, g = kernel_geom.to_potentials(u, v)
    return DualSolution(
      f,
      g,
      problem.geom,
      converged,
      iterations,
      kernel=jnp.asarray(True),
      row_marginal=u * kernel_geom.apply_kernel(v, axis=1),
      col_marginal=v * kernel_geom.apply_kernel(u, axis=0),
    )


def _state(
  out: ott_sinkhorn.SinkhornOutput, problem: linear_problem.LinearProblem, lse_mode: bool
) -> tuple[jax.Array, jax.Array]:
  """ott-jax's loop variables at the end: potentials (``lse_mode``) or scalings."""
  f, g = out.potentials
  if lse_mode:
    return f, g
  return problem.geom.scaling_from_potential(f), problem.geom.scaling_from_potential(g)


def _ok(solution: DualSolution, problem: linear_problem.LinearProblem) -> jax.Array:
  """Bool scalar: converged, with finite potentials wherever there is mass."""
  finite = jnp.all(jnp.isfinite(solution.f) | (problem.a == 0))
  finite &= jnp.all(jnp.isfinite(solution.g) | (problem.b == 0))
  return solution.converged & finite


def _build(
  name: str,
  max_iterations: int,
  threshold: float,
  fixed_iterations: bool,
  inner_iterations: int,
  mode: str,
  norm_error: int,
  tau_a: float,
  tau_b: float,
) -> SinkhornSolver:
  if not isinstance(max_iterations, int) or max_iterations < 1:
    raise ValueError(f"{name} max_iterations must be a positive int, got {max_iterations!r}")
  if not isinstance(inner_iterations, int) or not 1 <= inner_iterations <= max_iterations:
    raise ValueError(
      f"{name} inner_iterations must be an int in [1, max_iterations={max_iterations}], "
      f"got {inner_iterations!r}"
    )
  if fixed_iterations and max_iterations % inner_iterations:
    raise ValueError(
      f"{name} fixed_iterations needs max_iterations={max_iterations} to be a multiple "
      f"of inner_iterations={inner_iterations}"
    )
  if not threshold > 0:
    raise ValueError(f"{name} threshold must be positive, got {threshold!r}")
  if mode not in MODES:
    raise ValueError(f"{name} mode must be one of {', '.join(MODES)}, got {mode!r}")
  if norm_error not in (1, 2):
    raise ValueError(f"{name} norm_error must be 1 or 2, got {norm_error!r}")
  for option, tau in (("tau_a", tau_a), ("tau_b", tau_b)):
    if not 0 < tau <= 1:
      raise ValueError(f"{name} {option} must be in (0, 1], got {tau!r}")
  return SinkhornSolver(
    max_iterations,
    float(threshold),
    bool(fixed_iterations),
    inner_iterations,
    mode,
    norm_error,
    float(tau_a),
    float(tau_b),
  )


@OT_SOLVERS.register("sinkhorn")
def sinkhorn(
  max_iterations: int = 2000,
  threshold: float = 1e-3,
  fixed_iterations: bool = False,
  inner_iterations: int = 10,
  mode: str = "lse",
  norm_error: int = 1,
) -> SinkhornSolver:
  """Builds a balanced-by-default :class:`SinkhornSolver`; see its attributes."""
  return _build(
    "sinkhorn",
    max_iterations,
    threshold,
    fixed_iterations,
    inner_iterations,
    mode,
    norm_error,
    1.0,
    1.0,
  )


@OT_SOLVERS.register("sinkhorn_unbalanced")
def sinkhorn_unbalanced(
  max_iterations: int = 2000,
  threshold: float = 1e-3,
  fixed_iterations: bool = False,
  inner_iterations: int = 10,
  mode: str = "lse",
  norm_error: int = 1,
  default_tau_a: float = 0.9,
  default_tau_b: float = 0.9,
) -> SinkhornSolver:
  """Builds an unbalanced :class:`SinkhornSolver` (Chizat et al. 2018).

  The OT config's ``tau_a``/``tau_b``, where set, take precedence over the defaults
  here. ``tau = rho / (rho + eps)`` for a KL marginal penalty ``rho`` (0.9: ``rho = 9
  eps``); at least one of the two must end up below 1.
  """
  if not (default_tau_a < 1 or default_tau_b < 1):
    raise ValueError(
      "sinkhorn_unbalanced needs default_tau_a or default_tau_b below 1, got "
      f"{default_tau_a!r} and {default_tau_b!r}; for balanced OT use solver 'sinkhorn'"
    )
  return _build(
    "sinkhorn_unbalanced",
    max_iterations,
    threshold,
    fixed_iterations,
    inner_iterations,
    mode,
    norm_error,
    default_tau_a,
    default_tau_b,
  )
