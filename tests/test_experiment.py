"""The whole loop on the shrunk quickstart config, what it leaves in the workdir, a rerun."""

import json
import pathlib

import numpy as np

from configs import quickstart
from evoselect_jax import experiment, loop
from evoselect_jax.workdir import Workdir


def test_quickstart_smoke_end_to_end(tmp_path: pathlib.Path, monkeypatch):
  config = quickstart.get_config("smoke")
  config.lock()
  logs = []
  featurized = []  # candidates=True/False of each gradient featurisation
  features = loop._features
  monkeypatch.setattr(
    loop, "_features", lambda *a, **k: featurized.append(k["candidates"]) or features(*a, **k)
  )
  rows = experiment.run(config, tmp_path, progress=False, log=logs.append)

  methods = list(experiment.methods(config))
  assert methods == ["evoselect", "random"]
  # Round 1's methods share the base learner's features; later rounds' learners differ.
  assert featurized == [True, False] * (1 + len(methods) * (config.rounds - 1))
  saved = [np.load(Workdir(tmp_path).method_dir(0, 1, m) / "features.npz") for m in methods]
  for name in ("candidates", "candidate_finite", "targets", "target_finite"):
    np.testing.assert_array_equal(saved[0][name], saved[1][name])
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines == rows
  assert {(r["seed"], r["method"], r["round"]) for r in rows} == {
    (0, m, r) for m in methods for r in range(config.rounds + 1)
  }
  for r in rows:
    assert 0.0 <= r["acc"] <= 1.0 and 0.0 <= r["acc_norm"] <= 1.0
  for m in methods:
    last = [r for r in rows if r["method"] == m and r["round"] == config.rounds][0]
    assert sum(last["selected_kinds"].values()) == config.budget
    sel = tmp_path / "selections" / "seed_0" / m / f"round_{config.rounds:02d}.jsonl"
    sel = sel.read_text().splitlines()
    assert len(sel) == config.budget
    assert len({json.loads(x)["id"] for x in sel}) == config.budget
  assert (tmp_path / "accuracy.png").stat().st_size > 0
  assert json.loads((tmp_path / "config.json").read_text())["budget"] == config.budget
  assert list((tmp_path / "tensorboard" / "evoselect").glob("events.out.tfevents.*"))
  assert any("round 1" in line for line in logs)
  results = (tmp_path / "results.md").read_text()
  assert all(f"| {m} |" in results for m in methods)
  for r in rows[len(methods) :]:
    assert r["pool_kept"] == r["valid"] == config.pool_size - sum(r["rejected"].values())
    assert r["selected"] == config.budget
  assert "ot" in rows[-2] and rows[-2]["ot"]["converged"]  # evoselect solves OT; random none
  assert "ot" not in rows[-1]
  stages = [line.split()[2] for line in (tmp_path / "progress.log").read_text().splitlines()]
  assert stages[:4] == ["warmup:", "evaluate:", "generate:", "clean:"] and stages[-1] == "report:"

  # The same run again: every stage is loaded, the outputs are rewritten unchanged.
  before = {p: (tmp_path / p).read_bytes() for p in ("metrics.jsonl", "results.md")}
  logs = []
  again = experiment.run(config, tmp_path, progress=False, log=logs.append)
  assert again == rows
  assert any("Resuming" in x and "continuing at report" in x for x in logs)
  assert {p: (tmp_path / p).read_bytes() for p in before} == before

  # Random's round 1 from its featurize stage on: it takes evoselect's saved features.
  mdir = Workdir(tmp_path).method_dir(0, 1, "random")
  for name in ("row.json", "selection.json", "features.npz"):
    (mdir / name).unlink()
  featurized.clear()
  third = experiment.run(config, tmp_path, progress=False, log=logs.append)
  assert featurized == []
  again_saved = np.load(mdir / "features.npz")
  np.testing.assert_array_equal(again_saved["candidates"], saved[0]["candidates"])
  no_seconds = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
  assert no_seconds(third) == no_seconds(rows)
