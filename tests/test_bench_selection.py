"""experiments/bench_selection.py at smoke size: the OT, diversity, end-to-end stages, driver.

Each stage runs its own comparison against its peer; these tests check that ours and
the peer's results agree (not their speed).
"""

import json

import numpy as np
import pytest

from configs.bench_selection import get_config
from experiments import bench_selection
from experiments.selection_bench import diversity as diversity_stage
from experiments.selection_bench import end_to_end as end_to_end_stage
from experiments.selection_bench import ot as ot_stage
from experiments.selection_bench import timing


@pytest.fixture(scope="module")
def smoke():
  return get_config("size=smoke")


def test_ot_stage_matches_pot(smoke):
  with timing.matmul_precision("tensorfloat32"):  # float32 arithmetic on a CPU all the same
    result = ot_stage.run(smoke.ot, {}, seed=0, repeats=1)
  (row,) = result["rows"]
  assert row["pot_sinkhorn"]["converged"] and row["pot_sinkhorn_log"]["converged"]
  for mode in smoke.ot.modes:
    ours = row[f"ours_{mode}"]
    assert ours["converged"] and ours["mode_ran"] == mode
    # same stopping rule and check schedule as POT (tests/test_ot.py checks the exact
    # count away from the float32 floor; here stopThr is near it: one check apart at most)
    assert abs(ours["iterations"] - row["pot_sinkhorn"]["iterations"]) <= 10
    assert ours["marginal_error_l2"] < smoke.ot.threshold
    for peer in ("pot_sinkhorn", "pot_sinkhorn_log"):
      assert ours[f"relevance_diff_vs_{peer}_over_eps"] < 1e-4  # measured ~4e-6
  online = result["online"]
  assert online["completed"] and online["converged"] and online["relevance_finite"]
  assert online["marginal_error_l2"] < smoke.ot.threshold
  assert 0 < online["peak_host_gib"] < 8
  assert online["matmul_precision"] == "tensorfloat32"  # the child runs at the parent's
  series = {"ours (kernel)", "ours (lse)", "POT sinkhorn", "POT sinkhorn_log"}
  assert set(result["plot"]["series"]) == series


def test_ot_stage_pot_on_torch_gives_what_pot_on_numpy_gives(smoke):
  """The torch backend (POT on a GPU in the gpu config; here on the CPU) is the same peer."""
  rows = {}
  for backend in ("numpy", "torch"):
    cfg = smoke.ot.copy_and_resolve_references()
    cfg.pot_backend, cfg.online = backend, ()
    (rows[backend],) = ot_stage.run(cfg, {}, seed=0, repeats=0)["rows"]
  for peer in ("pot_sinkhorn", "pot_sinkhorn_log"):
    numpy_row, torch_row = rows["numpy"][peer], rows["torch"][peer]
    assert torch_row["converged"] and torch_row["marginal_error_l2"] < smoke.ot.threshold
    assert abs(torch_row["iterations"] - numpy_row["iterations"]) <= 10  # one check apart
    for mode in smoke.ot.modes:
      assert rows["torch"][f"ours_{mode}"][f"relevance_diff_vs_{peer}_over_eps"] < 1e-4


def test_online_child_equals_dense_solve(smoke):
  """The child's online solve (row blocks and a remainder) gives the dense relevance."""
  cfg = smoke.ot
  n, m, d = cfg.online
  args = dict(
    n=n,
    m=m,
    d=d,
    seed=3,
    clusters=cfg.clusters,
    noise=cfg.noise,
    cost=cfg.cost,
    epsilon=cfg.epsilon,
    batch_size=cfg.online_batch_size,
    mode="kernel",
    threshold=1e-6,  # above the float32 floor of the dense kernel's 2001-row sums
    max_iterations=cfg.max_iterations,
    return_relevance=True,
  )
  assert n % cfg.online_batch_size  # a remainder block
  online = ot_stage.online_child(args)
  dense = ot_stage.online_child({**args, "batch_size": None})
  assert online["converged"] and dense["converged"]
  assert online["iterations"] == dense["iterations"]
  eps = 0.05  # relative; the absolute value is about the same (mean cosine cost ~1)
  np.testing.assert_allclose(online["relevance"], dense["relevance"], atol=1e-4 * eps)


def test_diversity_stage_picks_what_numpy_picks(smoke):
  cfg = smoke.diversity
  result = diversity_stage.run(cfg, {}, seed=0, repeats=1)
  rows = result["rows"]
  assert len(rows) == len(cfg.algos) * len(cfg.ns) * len(cfg.ks)
  for row in rows:
    assert row["same_picks"], row
    assert row["ours"]["compile_s"] > 0
    if row["algo"] == "mmr":  # beyond its inputs, MMR holds O(n): no [n, d] copy, no [n, n]
      assert row["xla_temp_bytes"] < 4 * row["n"] * row["d"]
  assert result["summary"]["same_picks_all"]


def test_numpy_greedies_match_the_brute_force_definition():
  """The peers themselves, against a literal reading of their objectives on tiny n."""
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(23, 5)).astype(np.float32)
  targets = rng.normal(size=(6, 5)).astype(np.float32)
  rel = rng.uniform(size=23).astype(np.float32)
  mask = np.ones(23, bool)
  mask[[3, 7]] = False
  unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
  vt = targets / np.linalg.norm(targets, axis=1, keepdims=True)
  chosen = []
  for _ in range(6):
    best = max(
      (i for i in range(23) if mask[i] and i not in chosen),
      key=lambda i: 0.5 * rel[i] - 0.5 * max((unit[i] @ unit[s] for s in chosen), default=0.0),
    )
    chosen.append(best)
  assert diversity_stage.numpy_mmr(rel, feats, 6, 0.5, mask).tolist() == chosen
  chosen = []
  for _ in range(6):

    def coverage(extra):
      return sum(max([0.0] + [vt[j] @ unit[s] for s in [*chosen, extra]]) for j in range(6))

    candidates = [i for i in range(23) if mask[i] and i not in chosen]
    chosen.append(max(candidates, key=coverage))
  assert diversity_stage.numpy_facility_location(feats, targets, 6, mask).tolist() == chosen


def test_end_to_end_stage_selects_the_budget_deterministically(smoke):
  # The stage itself raises unless a second call repeats the picks, all distinct.
  out = end_to_end_stage.run(smoke.end_to_end, {}, seed=0, repeats=0)
  (row,) = out["rows"]
  assert (row["n"], row["m"], row["k"]) == (61, 7, 8)
  assert row["total_s"] > 0 and out["summary"]["end_to_end_s_61"] == row["total_s"]


def test_the_driver_writes_the_report_with_both_machine_peaks(tmp_path):
  """bench_selection.run: the machine's peaks (numpy's and JAX's device's), JSON, plot."""
  report = bench_selection.run(get_config("size=smoke,stages=projection"), tmp_path)
  machine = report["machine"]
  for peak in ("copy_gbps", "matmul_gflops"):
    both = [machine[f"{peak}_{side}"] for side in ("numpy", "jax")]
    assert all(np.isfinite(both)) and min(both) > 0
    assert machine[peak] == max(both)  # on an accelerator the device's, here the host's
  assert json.loads((tmp_path / "bench_selection.json").read_text()) == report
  assert (tmp_path / "bench_selection.png").stat().st_size > 0


def test_matmul_precision_is_set_for_jax_and_torch_and_restored():
  """Both sides of a comparison compute float32 matmuls alike (GPU defaults differ)."""
  import jax
  import torch

  before = (jax.config.jax_default_matmul_precision, torch.get_float32_matmul_precision())
  for name, torch_name in timing.MATMUL_PRECISIONS.items():
    with timing.matmul_precision(name):
      assert jax.config.jax_default_matmul_precision == name
      assert torch.get_float32_matmul_precision() == torch_name
    assert (jax.config.jax_default_matmul_precision, torch.get_float32_matmul_precision()) == before
  with pytest.raises(ValueError, match="matmul_precision must be one of"):
    with timing.matmul_precision("fp16"):
      pass
  assert get_config("precision=tensorfloat32").matmul_precision == "tensorfloat32"
  with pytest.raises(ValueError, match="precision must be one of"):
    get_config("precision=highest")
