"""OT relevance against POT (exact reference solvers) on small odd shapes."""

import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest

from evoselect_jax.ot import ot_relevance
from evoselect_jax.registry import OT_SOLVERS

TIGHT = dict(threshold=1e-6, max_iterations=5000)


def points(n, m, d=6, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(m, d)).astype(np.float32)


def cosine_cost(x, y):
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  y = y / np.linalg.norm(y, axis=1, keepdims=True)
  return (1.0 - x @ y.T).astype(np.float64)


def calibrate(f):
  n = len(f)
  return f - (f.sum() - f) / (n - 1)


def test_registry_and_solver_options():
  assert "sinkhorn" in OT_SOLVERS.names()
  with pytest.raises(ValueError, match="max_iterations"):
    OT_SOLVERS.get("sinkhorn")(max_iterations=0)


def test_potential_matches_pot_sinkhorn():
  x, y = points(13, 7)
  out = ot_relevance(x, y, epsilon=0.1, **TIGHT)
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
  out = ot_relevance(x, y, cost="sqeuclidean", epsilon=0.2, a=a, b=b, **TIGHT)
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
  out = ot_relevance(x, y, score="plan_mass", epsilon=0.1, tau_a=tau, **TIGHT)
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
  out = ot_relevance(x, y, score="expected_cost", epsilon=0.1, **TIGHT)
  plan = np.asarray(out.plan_rows())
  want = -(plan * cosine_cost(x, y)).sum(1) / plan.sum(1)
  np.testing.assert_allclose(out.relevance, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    out.plan_rows(normalize=True), plan / plan.sum(1, keepdims=True), atol=1e-6
  )


def test_small_epsilon_recovers_exact_assignment():
  x, y = points(7, 7, seed=4)
  out = ot_relevance(x, y, epsilon=2e-3, threshold=1e-4, max_iterations=20000)
  assert bool(out.converged)
  exact = pot.emd(np.full(7, 1 / 7), np.full(7, 1 / 7), cosine_cost(x, y))
  np.testing.assert_allclose(out.plan_rows(), exact, atol=1e-3)


@pytest.mark.parametrize(
  ("score", "tau_a"), [("potential", 1.0), ("plan_mass", 0.6), ("expected_cost", 1.0)]
)
def test_online_equals_dense(score, tau_a):
  x, y = points(13, 7, seed=5)
  kw = dict(score=score, tau_a=tau_a, epsilon=0.1, **TIGHT)
  dense = ot_relevance(x, y, **kw)
  online = ot_relevance(x, y, batch_size=4, **kw)
  np.testing.assert_allclose(online.relevance, dense.relevance, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(online.plan_rows(), dense.plan_rows(), rtol=1e-4, atol=1e-7)


def test_padded_candidates_get_minus_inf_and_do_not_change_the_rest():
  x, y = points(9, 5, seed=6)
  pad = np.concatenate([x, np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)])
  a = np.r_[np.ones(9), np.zeros(4)]
  padded = ot_relevance(pad, y, a=a, epsilon=0.1, **TIGHT)
  plain = ot_relevance(x, y, epsilon=0.1, **TIGHT)
  assert np.all(np.isneginf(np.asarray(padded.relevance[9:])))
  np.testing.assert_allclose(padded.relevance[:9], plain.relevance, atol=1e-5)
  np.testing.assert_allclose(float(padded.epsilon), float(plain.epsilon), rtol=1e-6)
  np.testing.assert_array_equal(padded.plan_rows()[9:], 0.0)


def test_fixed_iterations_and_warm_start():
  x, y = points(12, 5, seed=7)
  fixed = ot_relevance(x, y, epsilon=0.1, max_iterations=30, fixed_iterations=True)
  assert int(fixed.iterations) == 30
  cold = ot_relevance(x, y, epsilon=0.1, threshold=1e-5)
  warm = ot_relevance(x, y, epsilon=0.1, threshold=1e-5, init=(cold.f, cold.g))
  assert bool(warm.converged) and int(warm.iterations) < int(cold.iterations)
  np.testing.assert_allclose(warm.relevance, cold.relevance, atol=1e-4)


def test_bad_options_fail_loudly():
  x, y = points(5, 3)
  with pytest.raises(ValueError, match="tau_a < 1"):
    ot_relevance(x, y, score="plan_mass", tau_b=0.5)
  with pytest.raises(ValueError, match="Unknown OT score"):
    ot_relevance(x, y, score="distance")
  with pytest.raises(ValueError, match="weights a"):
    ot_relevance(x, y, a=np.zeros(5))
  with pytest.raises(ValueError, match="Unknown OT solver"):
    ot_relevance(x, y, solver="emd")
  with pytest.raises(ValueError, match=r"candidates \[n, d\]"):
    ot_relevance(x, y[:, :2])
