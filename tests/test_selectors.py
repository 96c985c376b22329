"""Selectors: brute-force oracles for the greedy primitives, a planted pool, contracts."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evoselect_jax.registry import SELECTORS
from evoselect_jax.selectors import build_selector, diversity, evoselect, gotd, less
from evoselect_jax.selectors import random as random_selector

K = 20


def unit(z):
  z = np.asarray(z, np.float64)
  return z / np.linalg.norm(z, axis=1, keepdims=True)


def brute_mmr(rel, feats, k, lam, mask):
  u = unit(feats)
  picked = []
  for _ in range(k):
    pen = (u @ u[picked].T).max(1) if picked else np.zeros(len(rel))
    score = np.where(mask, lam * rel - (1 - lam) * pen, -np.inf)
    score[picked] = -np.inf
    picked.append(int(np.argmax(score)))
  return picked


def coverage(sim, subset):
  return np.maximum(sim[list(subset)].max(0), 0).sum() if subset else 0.0


def brute_facility(sim, k, mask):
  picked = []
  for _ in range(k):
    gains = [
      coverage(sim, [*picked, i]) if mask[i] and i not in picked else -np.inf
      for i in range(len(sim))
    ]
    picked.append(int(np.argmax(gains)))
  return picked


@pytest.mark.parametrize(
  ("n", "k", "lam", "seed"), [(5, 3, 0.5, 0), (7, 4, 0.2, 1), (8, 5, 0.9, 2)]
)
def test_mmr_equals_brute_force_greedy(n, k, lam, seed):
  rng = np.random.default_rng(seed)
  rel, feats = rng.normal(size=n), rng.normal(size=(n, 3))
  mask = rng.uniform(size=n) < 0.85
  mask[: k + 1] = True
  got = diversity.mmr(jnp.asarray(rel, jnp.float32), jnp.asarray(feats), k, lam, jnp.asarray(mask))
  assert list(np.asarray(got)) == brute_mmr(rel, feats, k, lam, mask)


@pytest.mark.parametrize(("n", "m", "k", "seed"), [(6, 5, 2, 0), (7, 3, 3, 1), (8, 6, 4, 2)])
def test_facility_location_equals_brute_force_greedy(n, m, k, seed):
  rng = np.random.default_rng(seed)
  cand, targets = rng.normal(size=(n, 4)), rng.normal(size=(m, 4))
  mask = np.ones(n, bool)
  mask[rng.integers(n)] = False
  got = diversity.facility_location(jnp.asarray(cand), jnp.asarray(targets), k, jnp.asarray(mask))
  sim = unit(cand) @ unit(targets).T
  assert list(np.asarray(got)) == brute_facility(sim, k, mask)
  valid = np.flatnonzero(mask)
  best = max(coverage(sim, s) for s in itertools.combinations(valid, k))
  assert coverage(sim, list(np.asarray(got))) >= (1 - 1 / np.e) * best - 1e-9


def test_greedy_primitives_write_minus_one_when_nothing_is_left():
  mask = jnp.array([True, False, True])
  feats = jnp.eye(3)
  np.testing.assert_array_equal(diversity.mmr(jnp.ones(3), feats, 3, 0.5, mask)[2], -1)
  np.testing.assert_array_equal(diversity.facility_location(feats, feats, 3, mask)[2], -1)


def planted_pool(seed=0, sigma=0.16):
  """Target: two equal clusters (axes 0 and 1, spread sigma in 30 other dims).

  Pool: 60 points near cluster 1, 50 near-duplicates of cluster 1's centre, 25 points
  near cluster 2, 60 off-target points (random directions in the other dims).
  """
  rng = np.random.default_rng(seed)
  d = 32

  def around(axis, n, spread):
    z = np.zeros((n, d))
    z[:, axis] = 1.0
    z[:, 2:] = spread * rng.normal(size=(n, d - 2))
    return z

  off = np.zeros((60, d))
  off[:, 2:] = rng.normal(size=(60, d - 2))
  off[:, :2] = 0.1 * rng.normal(size=(60, 2))
  dups = around(0, 1, 0.02) + 0.003 * rng.normal(size=(50, d))
  targets = np.concatenate([around(0, 10, sigma), around(1, 10, sigma)])
  pool = np.concatenate([around(0, 60, sigma), dups, around(1, 25, sigma), off])
  labels = np.array(["c1"] * 60 + ["dup"] * 50 + ["c2"] * 25 + ["off"] * 60)
  perm = rng.permutation(len(pool))
  return jnp.asarray(pool[perm], jnp.float32), jnp.asarray(targets, jnp.float32), labels[perm]


@pytest.fixture(scope="module")
def planted_counts():
  x, y, labels = planted_pool()
  out = {}
  for name in SELECTORS.names():
    idx = np.asarray(build_selector({"name": name})(x, y, K, jax.random.key(0)))
    assert len(set(idx.tolist())) == K
    out[name] = {c: int((labels[idx] == c).sum()) for c in ("c1", "dup", "c2", "off")}
  print(out)
  return out


def test_planted_evoselect_aligns_and_diversifies(planted_counts):
  for name in ("evoselect", "evoselect_cosine"):
    c = planted_counts[name]
    assert c["off"] == 0, (name, c)
    assert c["dup"] <= 2, (name, c)
    assert 8 <= c["c1"] + c["dup"] <= 12 and 8 <= c["c2"] <= 12, (name, c)


def test_planted_baselines_fail_as_expected(planted_counts):
  assert planted_counts["less"]["dup"] >= 15  # top cosine: the duplicated centre
  assert planted_counts["gotd"]["c2"] >= 18  # top potential: the scarcer cluster only
  assert planted_counts["random"]["off"] >= 3  # 60 of the 195 are off-target
  assert planted_counts["evoselect_no_diversity"]["dup"] >= 3  # no redundancy penalty
  assert planted_counts["diversity_only"]["off"] == 0


@pytest.mark.parametrize("name", SELECTORS.names())
def test_k_larger_than_valid_candidates_fails(name):
  x, y = jax.random.normal(jax.random.key(0), (9, 4)), jnp.ones((3, 4))
  mask = jnp.arange(9) < 5
  with pytest.raises(
    ValueError, match=r"k=6 is larger than the number of valid candidates \(5 of 9\)"
  ):
    build_selector({"name": name})(x, y, 6, jax.random.key(0), mask=mask)


@pytest.mark.parametrize("name", SELECTORS.names())
def test_masked_candidates_are_never_selected(name):
  x, y, _ = planted_pool(seed=1)
  mask = np.asarray(jax.random.bernoulli(jax.random.key(1), 0.4, (x.shape[0],)))
  idx = np.asarray(
    build_selector({"name": name})(x, y, K, jax.random.key(2), mask=jnp.asarray(mask))
  )
  assert idx.dtype == np.int32 and len(set(idx.tolist())) == K
  assert mask[idx].all()


def test_evoselect_without_demand_and_redundancy_is_gotd():
  x, y, _ = planted_pool(seed=2)
  reduced = build_selector(dict(name="evoselect", sub_rounds=1, demand_weight=0.0, redundancy=0.0))
  got = np.asarray(reduced(x, y, K, jax.random.key(0)))
  want = np.asarray(build_selector({"name": "gotd"})(x, y, K, jax.random.key(0)))
  assert set(got.tolist()) == set(want.tolist())


def test_bad_options_fail_loudly():
  with pytest.raises(ValueError, match="sub_rounds"):
    build_selector(dict(name="evoselect", sub_rounds=0))
  with pytest.raises(ValueError, match="bandwidth"):
    build_selector(dict(name="evoselect", bandwidth=0.0))
  with pytest.raises(ValueError, match="potential"):
    build_selector(dict(name="gotd", ot=dict(score="expected_cost")))
  with pytest.raises(TypeError, match="Bad options for selector 'less'"):
    build_selector(dict(name="less", lam=0.5))


@pytest.mark.parametrize(
  ("name", "core"),
  [
    ("evoselect", evoselect._evoselect),
    ("evoselect_cosine", evoselect._evoselect),
    ("gotd", gotd._gotd),
    ("less", less._less),
    ("random", random_selector._random),
    ("diversity_only", diversity.facility_location),
  ],
)
def test_no_retracing_for_same_shapes(name, core):
  select = build_selector({"name": name})
  x, y, _ = planted_pool(seed=3)
  select(x, y, 7, jax.random.key(0))
  before = core._cache_size()
  x2, y2, _ = planted_pool(seed=4)
  select(x2, y2, 7, jax.random.key(1), mask=jnp.arange(x.shape[0]) % 3 > 0)
  assert core._cache_size() == before


def test_evoselect_takes_every_valid_candidate_when_k_equals_valid():
  x, y, _ = planted_pool(seed=5)
  mask = jnp.arange(x.shape[0]) < 6
  idx = build_selector(dict(name="evoselect", sub_rounds=8))(x, y, 6, jax.random.key(0), mask=mask)
  assert sorted(np.asarray(idx).tolist()) == list(range(6))
