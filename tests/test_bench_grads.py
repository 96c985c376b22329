"""Stages grads and projection of the selection benchmark, at smoke size: ours equals the peers.

Speed is not checked (it is what the benchmark reports); the results are: our
per-example gradient features against PyTorch's (the LESS loop and torch.func.vmap(grad),
the same weights, projected with the same matrices), and every projector against numpy
with its explicit dense matrix.
"""

import ml_collections
import pytest

from configs import bench_selection
from experiments.selection_bench import grads, projection

HW = {"copy_gbps": 10.0, "matmul_gflops": 100.0}  # fixed machine numbers: ratios only


@pytest.fixture(scope="module")
def config():
  return bench_selection.get_config("size=smoke,stages=grads+projection")


def test_grads_stage_features_equal_the_peers(config):
  out = grads.run(config.grads, HW, seed=0, repeats=0)
  rows = {(r["case"], r["method"]): r for r in out["rows"]}
  assert set(rows) == {
    ("lora/tiny", "ours_vmap"),
    ("lora/tiny", "ours_factored"),
    ("lora/tiny", "less"),
    ("lora/tiny", "torch_vmap"),
    ("whole/tiny", "ours_factored"),
    ("whole/tiny", "ours_gtp_kronecker_mb2"),
    ("whole/tiny", "ours_gtp_sjlt_mb1"),
    ("whole/tiny", "less"),
  }
  for method in ("ours_vmap", "ours_factored"):
    row = rows[("lora/tiny", method)]
    assert row["unit_rows"] == 1.0  # nonzero features, so equality below is not vacuous
    assert row["max_abs_diff_vs_less"] < 1e-5
    assert row["max_abs_diff_vs_torch_vmap"] < 1e-5
  for method in ("ours_factored", "ours_gtp_kronecker_mb2"):
    row = rows[("whole/tiny", method)]
    assert row["unit_rows"] == 1.0 and row["max_abs_diff_vs_less"] < 1e-5
  assert "max_abs_diff_vs_less" not in rows[("whole/tiny", "ours_gtp_sjlt_mb1")]  # another map
  summary = out["summary"]
  assert summary["max_abs_diff_vs_peers"] < 1e-5
  for key in (
    "lora_vs_less",
    "lora_vs_torch_vmap",
    "whole_model_vs_less",
    "factored_vs_grad_then_project",
    "factored_vs_grad_then_project_sjlt",
    "factored_xla_gflop",
    "grad_then_project_xla_gflop",
    "factored_fraction_of_matmul_peak",
    "factored_vs_grad_then_project_at_matmul_peak",
  ):
    assert summary[key] > 0
  assert out["plot"]["labels"] == ["lora/tiny", "whole/tiny"]
  assert set(out["phases_s"]) == {"lora/tiny", "whole/tiny"}
  for phases in out["phases_s"].values():
    assert set(phases) == {"setup_s", "compile_s", "timed_s"} and min(phases.values()) > 0


def test_projection_stage_equals_dense_numpy(config):
  out = projection.run(config.projection, HW, seed=0, repeats=0)
  assert [r["case"] for r in out["rows"]] == [
    "gaussian",
    "sjlt s=4",
    "kronecker 4x4",
    "kronecker 8x2",
  ]
  for row in out["rows"]:
    assert row["reference"] == "dense matrix"  # x @ P with P of the identity's projection
    assert row["max_rel_diff"] < 1e-5
    assert row["ours_gbps"] > 0
  assert out["rows"][0]["numpy_gbps"] > 0 and out["rows"][2]["numpy_gbps"] > 0
  summary = out["summary"]
  assert summary["best_projector"] in ("sjlt s=4", "kronecker 4x4", "kronecker 8x2")
  assert summary["best_projector_fraction_of_copy"] == pytest.approx(
    summary["best_projector_gbps"] / HW["copy_gbps"]
  )


def test_peer_thread_counts_resolve_every_core_and_keep_the_fastest(monkeypatch):
  import torch

  monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # "every core" on this machine
  assert grads.thread_counts(ml_collections.ConfigDict({"torch_threads": (1, None, 2)})) == [1, 2]
  gpu = bench_selection.get_config("size=gpu").grads
  assert gpu.torch_device == "cuda" and grads.thread_counts(gpu) == [2]
  times = {
    "ours_vmap": {"median_s": 1.0},
    "less@1": {"median_s": 3.0, "result": "one"},
    "less@2": {"median_s": 2.0, "result": "two"},
  }
  out = grads.fastest_peers(times)
  assert out["ours_vmap"] == {"median_s": 1.0} and set(out) == {"ours_vmap", "less"}
  assert out["less"]["result"] == "two" and out["less"]["torch_threads"] == 2
  assert out["less"]["median_s_by_threads"] == {"1": 3.0, "2": 2.0}
