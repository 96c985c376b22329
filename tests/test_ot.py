"""OT relevance against POT (exact reference solvers) on small odd shapes."""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
from scipy.special import logsumexp as scipy_lse
from scipy.stats import spearmanr

from evoselect_jax.ot import (
  DualSolution,
  make_ot_config,
  ot_relevance,
  ot_relevance_output,
  relevance,
)
from evoselect_jax.ot.geometry import logsumexp
from evoselect_jax.registry import OT_SOLVERS
from evoselect_jax.selectors import build_selector

TIGHT = dict(threshold=1e-6, max_iterations=5000)


def points(n, m, d=6, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(m, d)).astype(np.float32)


def cosine_cost(x, y):
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  y = y / np.linalg.norm(y, axis=1, keepdims=True)
  return (1.0 - x @ y.T).astype(np.float64)


def sq_cost(x, y):
  return ((x[:, None].astype(np.float64) - y[None]) ** 2).sum(-1)


def calibrate(f):
  n = len(f)
  return f - (f.sum() - f) / (n - 1)


def test_registry_and_solver_options():
  assert {"sinkhorn", "sinkhorn_unbalanced", "lowrank"} <= set(OT_SOLVERS.names())
  with pytest.raises(ValueError, match="max_iterations"):
    OT_SOLVERS.get("sinkhorn")(max_iterations=0)
  with pytest.raises(ValueError, match="mode must be one of lse, kernel, auto, got 'fast'"):
    OT_SOLVERS.get("sinkhorn")(mode="fast")
  with pytest.raises(ValueError, match="norm_error must be 1 or 2"):
    OT_SOLVERS.get("sinkhorn")(norm_error=3)
  with pytest.raises(ValueError, match="default_tau_a or default_tau_b below 1"):
    OT_SOLVERS.get("sinkhorn_unbalanced")(default_tau_a=1.0, default_tau_b=1.0)
  with pytest.raises(ValueError, match="rank must be a positive int, got 0"):
    OT_SOLVERS.get("lowrank")(rank=0)
  with pytest.raises(ValueError, match="initializer must be one of"):
    OT_SOLVERS.get("lowrank")(initializer="svd")


def test_potential_matches_pot_sinkhorn():
  x, y = points(13, 7)
  out = ot_relevance_output(x, y, epsilon=0.1, **TIGHT)
  assert bool(out.converged) and float(out.marginal_error) < 1e-5
  cost = cosine_cost(x, y)
  np.testing.assert_allclose(float(out.epsilon), 0.1 * cost.mean(), rtol=1e-5)
  reg = float(out.epsilon)
  a, b = np.full(13, 1 / 13), np.full(7, 1 / 7)
  plan, log = pot.sinkhorn(a, b, cost, reg, log=True, stopThr=1e-12, numItermax=100000)
  f = reg * np.log(log["u"])
  np.testing.assert_allclose(out.relevance, -calibrate(f), atol=2e-5)
  np.testing.assert_allclose(out.plan_rows(), plan, atol=1e-6)
  np.testing.assert_allclose(out.plan_rows(jnp.array([4, 0])), plan[[4, 0]], atol=1e-6)


def test_weighted_sqeuclidean_matches_pot():
  x, y = points(9, 5, seed=1)
  rng = np.random.default_rng(1)
  a, b = rng.uniform(0.5, 1.5, 9), rng.uniform(0.5, 1.5, 5)
  out = ot_relevance_output(x, y, cost="sqeuclidean", epsilon=0.2, a=a, b=b, **TIGHT)
  cost = ((x[:, None] - y[None]) ** 2).sum(-1).astype(np.float64)
  a, b = a / a.sum(), b / b.sum()
  np.testing.assert_allclose(float(out.epsilon), 0.2 * a @ cost @ b, rtol=1e-5)
  plan, log = pot.sinkhorn(a, b, cost, float(out.epsilon), log=True, stopThr=1e-12)
  f = float(out.epsilon) * np.log(log["u"])
  np.testing.assert_allclose(out.relevance, -calibrate(f), rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(out.plan_rows(), plan, atol=1e-6)


@pytest.mark.filterwarnings("ignore:If reg_type = entropy")
def test_plan_mass_matches_pot_unbalanced():
  x, y = points(11, 6, seed=2)
  tau = 0.7
  out = ot_relevance_output(x, y, score="plan_mass", epsilon=0.1, tau_a=tau, **TIGHT)
  reg = float(out.epsilon)
  rho = reg * tau / (1 - tau)  # ott's tau = rho / (rho + eps)
  a, b = np.full(11, 1 / 11), np.full(6, 1 / 6)
  plan = pot.unbalanced.sinkhorn_unbalanced(
    a, b, cosine_cost(x, y), reg, (rho, float("inf")), reg_type="entropy", stopThr=1e-12
  )
  np.testing.assert_allclose(out.relevance, plan.sum(axis=1), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(plan.sum(axis=0), b, rtol=1e-5)  # the target marginal is hard
  assert float(out.marginal_error) < 1e-4
  assert not np.allclose(plan.sum(axis=1), a, rtol=1e-2)  # the candidate marginal is not


def test_expected_cost_is_plan_weighted_cost():
  x, y = points(10, 4, seed=3)
  out = ot_relevance_output(x, y, score="expected_cost", epsilon=0.1, **TIGHT)
  plan = np.asarray(out.plan_rows())
  want = -(plan * cosine_cost(x, y)).sum(1) / plan.sum(1)
  np.testing.assert_allclose(out.relevance, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    out.plan_rows(normalize=True), plan / plan.sum(1, keepdims=True), atol=1e-6
  )


def test_small_epsilon_recovers_exact_assignment():
  x, y = points(7, 7, seed=4)
  out = ot_relevance_output(x, y, epsilon=2e-3, threshold=1e-4, max_iterations=20000)
  assert bool(out.converged)
  exact = pot.emd(np.full(7, 1 / 7), np.full(7, 1 / 7), cosine_cost(x, y))
  np.testing.assert_allclose(out.plan_rows(), exact, atol=1e-3)


@pytest.mark.parametrize(
  ("score", "tau_a", "mode"),
  [
    ("potential", 1.0, "lse"),
    ("potential", 1.0, "kernel"),
    ("plan_mass", 0.6, "lse"),
    ("plan_mass", 0.6, "kernel"),
    ("expected_cost", 1.0, "lse"),
  ],
)
def test_online_equals_dense(score, tau_a, mode):
  x, y = points(13, 7, seed=5)
  kw = dict(score=score, tau_a=tau_a, epsilon=0.1, mode=mode, **TIGHT)
  dense = ot_relevance_output(x, y, **kw)
  online = ot_relevance_output(x, y, batch_size=4, **kw)
  np.testing.assert_allclose(online.relevance, dense.relevance, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(online.plan_rows(), dense.plan_rows(), rtol=1e-4, atol=1e-7)


def test_padded_candidates_get_minus_inf_and_do_not_change_the_rest():
  x, y = points(9, 5, seed=6)
  pad = np.concatenate([x, np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)])
  a = np.r_[np.ones(9), np.zeros(4)]
  padded = ot_relevance_output(pad, y, a=a, epsilon=0.1, **TIGHT)
  plain = ot_relevance_output(x, y, epsilon=0.1, **TIGHT)
  assert np.all(np.isneginf(np.asarray(padded.relevance[9:])))
  np.testing.assert_allclose(padded.relevance[:9], plain.relevance, atol=1e-5)
  np.testing.assert_allclose(float(padded.epsilon), float(plain.epsilon), rtol=1e-6)
  np.testing.assert_array_equal(padded.plan_rows()[9:], 0.0)


def test_fixed_iterations_and_warm_start():
  x, y = points(12, 5, seed=7)
  fixed = ot_relevance_output(x, y, epsilon=0.1, max_iterations=30, fixed_iterations=True)
  assert int(fixed.iterations) == 30
  cold = ot_relevance_output(x, y, epsilon=0.1, threshold=1e-5)
  warm = ot_relevance_output(x, y, epsilon=0.1, threshold=1e-5, init=(cold.f, cold.g))
  assert bool(warm.converged) and int(warm.iterations) < int(cold.iterations)
  np.testing.assert_allclose(warm.relevance, cold.relevance, atol=1e-4)


def test_bad_options_fail_loudly():
  x, y = points(5, 3)
  with pytest.raises(ValueError, match="tau_a < 1"):
    ot_relevance_output(x, y, score="plan_mass", tau_b=0.5)
  with pytest.raises(ValueError, match="Unknown OT score"):
    ot_relevance_output(x, y, score="distance")
  with pytest.raises(ValueError, match="weights a"):
    ot_relevance_output(x, y, a=np.zeros(5))
  with pytest.raises(ValueError, match="Unknown OT solver"):
    ot_relevance_output(x, y, solver="emd")
  with pytest.raises(ValueError, match=r"candidates \[n, d\]"):
    ot_relevance_output(x, y[:, :2])


def clustered(seed=0):
  """Targets: 2 clusters of 5. Candidates: 12 and 6 near them, 9 near a third centre."""
  rng = np.random.default_rng(seed)
  centres = 3.0 * rng.normal(size=(3, 8))
  y = np.concatenate([c + 0.3 * rng.normal(size=(5, 8)) for c in centres[:2]])
  sizes = (12, 6, 9)
  x = np.concatenate(
    [c + 0.5 * rng.normal(size=(s, 8)) for c, s in zip(centres, sizes, strict=True)]
  )
  return x.astype(np.float32), y.astype(np.float32)


def test_lowrank_plan_marginals_and_relevance_track_dense_sinkhorn():
  x, y = clustered()
  lowrank = ot_relevance_output(x, y, score="expected_cost", solver="lowrank", rank=3)
  dense = ot_relevance_output(x, y, score="expected_cost", epsilon=0.05, **TIGHT)
  assert bool(lowrank.converged)
  rows, cols = lowrank.solution.marginals()
  np.testing.assert_allclose(rows, np.full(27, 1 / 27), rtol=2e-3)  # Dykstra, not exact
  np.testing.assert_allclose(cols, np.full(10, 1 / 10), rtol=2e-3)
  plan = np.asarray(lowrank.plan_rows())
  assert plan.shape == (27, 10) and (plan >= 0).all()
  np.testing.assert_allclose(plan.sum(1), rows, rtol=1e-5)
  np.testing.assert_allclose(lowrank.plan_rows(normalize=True).sum(1), 1.0, rtol=1e-5)
  want = -(plan * cosine_cost(x, y)).sum(1) / plan.sum(1)
  np.testing.assert_allclose(lowrank.relevance, want, rtol=1e-4, atol=1e-5)
  assert spearmanr(lowrank.relevance, dense.relevance)[0] > 0.95  # measured 0.997
  # the off-target third cluster is the least relevant under both
  assert np.asarray(lowrank.relevance)[18:].max() < np.asarray(lowrank.relevance)[:18].min()


@pytest.mark.filterwarnings("ignore:If reg_type = entropy")
def test_lowrank_unbalanced_plan_mass_tracks_dense_sinkhorn():
  x, y = clustered(1)
  kw = dict(score="plan_mass", tau_a=0.7)
  lowrank = ot_relevance_output(x, y, solver="lowrank", rank=3, **kw)
  dense = ot_relevance_output(x, y, epsilon=0.05, **kw, **TIGHT)
  assert float(lowrank.marginal_error) < 1e-2  # the target marginal stays (nearly) hard
  assert spearmanr(lowrank.relevance, dense.relevance)[0] > 0.9  # measured 0.996


def test_lowrank_padded_candidates_get_no_mass():
  x, y = clustered(2)
  a = np.r_[np.ones(20), np.zeros(7)]
  out = ot_relevance_output(x, y, a=a, score="expected_cost", solver="lowrank", rank=3)
  assert np.isneginf(np.asarray(out.relevance[20:])).all()
  assert np.isfinite(np.asarray(out.relevance[:20])).all()
  np.testing.assert_allclose(out.solution.marginals()[0][20:], 0.0, atol=1e-7)


def test_lowrank_has_no_potentials():
  x, y = clustered()
  with pytest.raises(ValueError, match="'potential' reads dual potentials.*'lowrank'"):
    make_ot_config(score="potential", solver="lowrank")
  with pytest.raises(ValueError, match="'potential' reads dual potentials"):
    build_selector(dict(name="gotd", ot=dict(solver="lowrank")))
  out = ot_relevance_output(x, y, score="expected_cost", solver="lowrank", rank=2)
  with pytest.raises(ValueError, match="'lowrank' returns a factored plan"):
    _ = out.f
  with pytest.raises(ValueError, match="no dual potentials to warm-start"):
    ot_relevance_output(
      x, y, score="expected_cost", solver="lowrank", init=(np.zeros(27), np.zeros(10))
    )
  with pytest.raises(ValueError, match=r"rank=11 exceeds min\(n, m\)"):
    ot_relevance_output(x, y, score="expected_cost", solver="lowrank", rank=11)


@pytest.mark.parametrize(
  "kw",
  [
    dict(score="potential"),
    dict(score="plan_mass", tau_a=0.6),
    dict(score="expected_cost", solver="lowrank", rank=2),
  ],
)
def test_ot_solve_compiles_once_per_shape(kw):
  x, y = points(13, 7, seed=8)
  ot_relevance_output(x, y, **kw)
  before = relevance._solve_jit._cache_size()
  x2, y2 = points(13, 7, seed=9)
  a = np.r_[np.ones(10), np.zeros(3)]
  ot_relevance_output(x2, y2, a=a, b=np.arange(1, 8), **kw)
  assert relevance._solve_jit._cache_size() == before


@dataclasses.dataclass(frozen=True)
class PlainSinkhorn:
  """A solver written against the protocol alone: balanced log-domain Sinkhorn in jnp."""

  has_potentials: ClassVar[bool] = True
  iterations: int

  def __call__(self, problem, init=None):
    geom, eps = problem.geom, problem.geom.epsilon
    cost = geom.cost_matrix
    log_a, log_b = jnp.log(problem.a), jnp.log(problem.b)
    f, g = (jnp.zeros_like(problem.a), jnp.zeros_like(problem.b)) if init is None else init

    def step(_, fg):
      f, g = fg
      f = eps * (log_a - jax.nn.logsumexp((g[None] - cost) / eps, axis=1))
      g = eps * (log_b - jax.nn.logsumexp((f[:, None] - cost) / eps, axis=0))
      return f, g

    f, g = jax.lax.fori_loop(0, self.iterations, step, (f, g))
    return DualSolution(f, g, geom, jnp.asarray(True), jnp.asarray(self.iterations))


@OT_SOLVERS.register("test_plain_sinkhorn")
def plain_sinkhorn(iterations: int = 500):
  return PlainSinkhorn(iterations)


def test_a_solver_is_one_module():
  x, y = points(11, 5, seed=10)
  plain = ot_relevance_output(x, y, epsilon=0.1, solver="test_plain_sinkhorn")
  ott = ot_relevance_output(x, y, epsilon=0.1, **TIGHT)
  np.testing.assert_allclose(plain.relevance, ott.relevance, atol=1e-4)
  np.testing.assert_allclose(plain.plan_rows(), ott.plan_rows(), atol=1e-6)
  select = build_selector(dict(name="gotd", ot=dict(solver="test_plain_sinkhorn", epsilon=0.1)))
  want = build_selector(dict(name="gotd", ot=dict(epsilon=0.1, **TIGHT)))
  key = jax.random.key(0)
  assert set(np.asarray(select(x, y, 4, key)).tolist()) == set(
    np.asarray(want(x, y, 4, key)).tolist()
  )


def test_ot_relevance_is_the_relevance_array():
  x = jax.random.normal(jax.random.key(0), (13, 5))
  y = jax.random.normal(jax.random.key(1), (6, 5))
  got = ot_relevance(x, y, score="expected_cost", epsilon=0.1)
  assert got.shape == (13,)
  want = ot_relevance_output(x, y, score="expected_cost", epsilon=0.1).relevance
  np.testing.assert_array_equal(got, want)


def pot_log_potential(cost, reg, a=None, b=None):
  """POT's log-domain Sinkhorn to machine precision: (f, plan)."""
  n, m = cost.shape
  a = np.full(n, 1 / n) if a is None else a
  b = np.full(m, 1 / m) if b is None else b
  plan, log = pot.bregman.sinkhorn_log(a, b, cost, reg, log=True, stopThr=1e-12, numItermax=10**5)
  assert log["niter"] < 10**5 - 1, "the POT oracle did not converge"
  return reg * log["log_u"], plan


@pytest.mark.parametrize("mode", ["lse", "kernel", "auto"])
@pytest.mark.parametrize("cost", ["cosine", "sqeuclidean"])
def test_modes_match_pot(mode, cost):
  x, y = points(15, 8, seed=11)
  out = ot_relevance_output(x, y, cost=cost, epsilon=0.07, mode=mode, **TIGHT)
  assert bool(out.converged)
  assert bool(out.kernel) == (mode != "lse")  # auto runs the kernel when it is safe
  if cost == "cosine":
    c = cosine_cost(x, y)
  else:
    c = sq_cost(x, y)
  f, plan = pot_log_potential(c, float(out.epsilon))
  np.testing.assert_allclose(out.relevance, -calibrate(f), atol=1e-4 * float(out.epsilon) * 10)
  np.testing.assert_allclose(out.plan_rows(), plan, atol=1e-6)
  rows, cols = out.solution.marginals()
  np.testing.assert_allclose(rows, np.full(15, 1 / 15), atol=1e-6)
  np.testing.assert_allclose(cols, np.full(8, 1 / 8), atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1])
def test_logsumexp_matches_scipy_with_inf_slices_and_large_values(axis):
  x = 300.0 * np.random.default_rng(axis).normal(size=(37, 53))  # exp overflows float32
  x[3, :] = x[:, 5] = -np.inf  # a row and a column that are all -inf
  x[7, 9] = np.inf
  out = np.asarray(logsumexp(jnp.asarray(x, jnp.float32), axis))
  want = scipy_lse(x.astype(np.float32).astype(np.float64), axis=axis)
  np.testing.assert_array_equal(np.isinf(out), np.isinf(want))
  np.testing.assert_array_equal(out[np.isinf(out)], want[np.isinf(want)])
  finite = np.isfinite(want)
  np.testing.assert_allclose(out[finite], want[finite], rtol=1e-6, atol=1e-4)


def test_kernel_mode_is_stabilised_where_the_plain_kernel_underflows():
  rng = np.random.default_rng(0)
  y = rng.normal(size=(7, 4))
  near = y[rng.integers(0, 7, 11)] + 0.3 * rng.normal(size=(11, 4))
  x = np.concatenate([near, 8.0 + rng.normal(size=(2, 4))]).astype(np.float32)  # 2 far rows
  y = y.astype(np.float32)
  out = ot_relevance_output(x, y, cost="sqeuclidean", epsilon=0.05, mode="kernel", **TIGHT)
  reg, c = float(out.epsilon), sq_cost(x, y)
  assert (np.exp(-c / reg).astype(np.float32).max(axis=1) == 0).any()  # a row underflows
  assert bool(out.converged) and bool(out.kernel)
  f, plan = pot_log_potential(c, reg)
  np.testing.assert_allclose(out.relevance, -calibrate(f), atol=1e-4 * reg)
  np.testing.assert_allclose(out.plan_rows(), plan, atol=1e-6)


def test_auto_falls_back_to_lse_and_kernel_fails_loudly():
  rng = np.random.default_rng(1)
  y = rng.normal(size=(6, 4))
  x = (y[rng.integers(0, 6, 12)] + 0.3 * rng.normal(size=(12, 4))).astype(np.float32)
  y = np.concatenate([y, 8.0 + rng.normal(size=(1, 4))]).astype(np.float32)  # a far target
  kw = dict(cost="sqeuclidean", epsilon=0.05, threshold=1e-6, max_iterations=3000)
  kernel = ot_relevance_output(x, y, mode="kernel", **kw)  # its column underflows
  assert bool(kernel.kernel) and not bool(kernel.converged)  # reported, never silent
  auto = ot_relevance_output(x, y, mode="auto", **kw)
  lse = ot_relevance_output(x, y, mode="lse", **kw)
  assert not bool(auto.kernel) and bool(auto.converged)
  np.testing.assert_array_equal(auto.relevance, lse.relevance)
  f, _ = pot_log_potential(sq_cost(x, y), float(auto.epsilon))
  np.testing.assert_allclose(auto.relevance, -calibrate(f), atol=1e-4 * float(auto.epsilon))


@pytest.mark.filterwarnings("ignore:If reg_type = entropy")
@pytest.mark.parametrize("mode", ["lse", "kernel"])
def test_sinkhorn_unbalanced_matches_pot(mode):
  x, y = points(11, 6, seed=14)
  out = ot_relevance_output(
    x, y, score="plan_mass", solver="sinkhorn_unbalanced", epsilon=0.1, mode=mode, **TIGHT
  )
  reg = float(out.epsilon)
  rho = reg * 0.9 / (1 - 0.9)  # the default tau_a = tau_b = 0.9
  plan = pot.unbalanced.sinkhorn_unbalanced(
    np.full(11, 1 / 11),
    np.full(6, 1 / 6),
    cosine_cost(x, y),
    reg,
    (rho, rho),
    reg_type="entropy",
    stopThr=1e-13,
    numItermax=100000,
  )
  np.testing.assert_allclose(out.plan_rows(), plan, atol=1e-6)
  np.testing.assert_allclose(out.relevance, plan.sum(axis=1), atol=1e-6)
  assert not np.allclose(plan.sum(axis=0), 1 / 6, rtol=1e-2)  # neither marginal is hard
  # the config's taus take precedence over the solver's defaults; balanced is refused
  config = make_ot_config(score="plan_mass", solver="sinkhorn_unbalanced", tau_b=1.0)
  assert (config.tau_a, config.tau_b) == (0.9, 1.0)
  with pytest.raises(ValueError, match="is unbalanced, but tau_a = tau_b = 1"):
    make_ot_config(solver="sinkhorn_unbalanced", tau_a=1.0, tau_b=1.0)


@pytest.mark.parametrize("mode", ["lse", "kernel"])
def test_stopping_rule_is_pots(mode):
  """norm_error=2 and threshold = POT's stopThr: same iteration count, same error."""
  x, y = points(40, 17, seed=15)
  thr = 1e-4
  out = ot_relevance_output(x, y, epsilon=0.03, mode=mode, threshold=thr, norm_error=2)
  a, b = np.full(40, 1 / 40), np.full(17, 1 / 17)
  plan, log = pot.sinkhorn(a, b, cosine_cost(x, y), float(out.epsilon), stopThr=thr, log=True)
  assert int(out.iterations) == log["niter"] + 1 > 11  # checks after 1, 11, 21, ...
  cols = np.asarray(out.solution.marginals()[1])
  assert np.linalg.norm(cols - b) < thr
  np.testing.assert_allclose(np.linalg.norm(cols - b), np.linalg.norm(plan.sum(0) - b), rtol=0.05)


@pytest.mark.parametrize("mode", ["lse", "kernel"])
def test_converged_warm_start_stops_after_one_iteration(mode):
  x, y = points(14, 6, seed=16)
  cold = ot_relevance_output(x, y, epsilon=0.1, mode=mode, threshold=1e-5)
  warm = ot_relevance_output(x, y, epsilon=0.1, mode=mode, threshold=1e-5, init=(cold.f, cold.g))
  assert int(cold.iterations) > 1 and int(warm.iterations) == 1 and bool(warm.converged)


def test_output_shares_the_callers_features():
  x, y = (jnp.asarray(z) for z in points(9, 4, seed=17))
  out = ot_relevance_output(x, y, epsilon=0.1, mode="kernel")
  assert out.solution.geom.x is x and out.solution.geom.y is y  # no [n, d] copy
