"""The OT solver protocol, and the solution type of solvers that return dual potentials.

A solver (registered in :data:`~evoselect_jax.registry.OT_SOLVERS`) is built by its
factory from its options into a frozen, hashable object (so it can be a static argument
of ``jax.jit``) with

- ``has_potentials``: a class attribute, whether its solutions carry dual potentials
  (the ``potential`` score needs them; :func:`~evoselect_jax.ot.make_ot_config` checks);
- ``__call__(problem, init) -> solution``: ``problem`` is an
  ``ott.problems.linear.linear_problem.LinearProblem`` over an ``ott`` ``PointCloud``
  ``geom`` (candidates ``geom.x`` [n, d], targets ``geom.y`` [m, d]); ``init`` is
  ``None`` or warm-start potentials ``(f [n], g [m])``, which only a solver with
  ``has_potentials`` accepts.

A solution is a pytree with

- ``converged`` (bool scalar) and ``iterations`` (int scalar);
- ``potentials() -> (f [n], g [m])``, raising a ``ValueError`` naming the solver when
  it has none;
- ``plan_row(i, normalize) -> [m]``: row i of the plan; traceable, so callers can
  ``vmap``/``lax.map`` it over rows and never hold the [n, m] plan;
- ``marginals() -> (P 1 [n], P^T 1 [m])``.

A solver may run on another geometry than the problem's (the sinkhorn solver computes
the cost once, or a stabilised kernel, :mod:`evoselect_jax.ot.geometry`); its solution
still reads plan rows off the problem's point cloud, and carries the marginals it
computed on its own geometry, since recomputing them from the point cloud costs a full
pass over the [n, m] cost.

Marginal relaxations (unbalanced OT) are properties of the problem (``tau_a``,
``tau_b``), as in ott-jax, so every solver handles balanced and unbalanced problems.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import jax
import jax.numpy as jnp
from flax import struct
from ott.geometry import pointcloud
from ott.problems.linear import linear_problem


class OTSolution(Protocol):
  """What :mod:`evoselect_jax.ot.relevance` reads off a solver's output."""

  converged: jax.Array
  iterations: jax.Array

  def potentials(self) -> tuple[jax.Array, jax.Array]:
    """Dual potentials ``(f [n], g [m])``; a ``ValueError`` if the solver has none."""
    ...

  def plan_row(self, i: jax.Array, normalize: bool) -> jax.Array:
    """Row ``i`` of the plan, [m]; ``normalize`` divides it by its sum."""
    ...

  def marginals(self) -> tuple[jax.Array, jax.Array]:
    """``(P 1 [n], P^T 1 [m])``."""
    ...


class OTSolver(Protocol):
  """A built solver: frozen, hashable, ``(problem, init) -> OTSolution``."""

  has_potentials: ClassVar[bool]

  def __call__(
    self,
    problem: linear_problem.LinearProblem,
    init: tuple[jax.Array, jax.Array] | None = None,
  ) -> OTSolution:
    """Solves ``problem``, warm-started from potentials ``init`` when given."""
    ...


def cost_row(geom: pointcloud.PointCloud, i: jax.Array) -> jax.Array:
  """Costs ``C_ij`` from candidate ``i`` to every target, [m]."""
  return geom.cost_fn.all_pairs(geom.x[i][None], geom.y)[0]


@struct.dataclass
class DualSolution:
  """An entropic plan given by dual potentials: ``P_ij = exp((f_i + g_j - C_ij) / eps)``.

  Attributes:
    f: [n] candidate potential, ``-inf`` where ``a_i = 0``.
    g: [m] target potential, ``-inf`` where ``b_j = 0``.
    geom: the problem's ``PointCloud`` (its cost and ``epsilon``).
    converged: bool scalar, the solver's last error was below its threshold.
    iterations: int scalar, iterations run.
    kernel: bool scalar, the solve ran in kernel mode (scalings and kernel-vector
      products) rather than in the log domain.
    row_marginal: [n] ``P 1`` as the solver computed it, or ``None`` (from ``geom``).
    col_marginal: [m] ``P^T 1`` as the solver computed it, or ``None`` (from ``geom``).
  """

  f: jax.Array
  g: jax.Array
  geom: pointcloud.PointCloud
  converged: jax.Array
  iterations: jax.Array
  kernel: jax.Array | bool = False
  row_marginal: jax.Array | None = None
  col_marginal: jax.Array | None = None

  def potentials(self) -> tuple[jax.Array, jax.Array]:
    """``(f [n], g [m])``."""
    return self.f, self.g

  def plan_row(self, i: jax.Array, normalize: bool) -> jax.Array:
    """Row ``i`` of the plan, [m].

    With ``normalize`` it is ``softmax_j((g_j - C_ij) / eps)``, where candidate i's unit
    of mass goes; defined even where ``a_i = 0``.
    """
    logits = (self.g - cost_row(self.geom, i)) / self.geom.epsilon
    if normalize:
      return jax.nn.softmax(logits)
    return jnp.exp(logits + self.f[i] / self.geom.epsilon)

  def marginals(self) -> tuple[jax.Array, jax.Array]:
    """``(P 1 [n], P^T 1 [m])``: the solver's, else from the potentials, never forming P."""
    rows, cols = self.row_marginal, self.col_marginal
    if rows is None:
      rows = self.geom.marginal_from_potentials(self.f, self.g, axis=1)
    if cols is None:
      cols = self.geom.marginal_from_potentials(self.f, self.g, axis=0)
    return rows, cols
