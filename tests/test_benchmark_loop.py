"""The loop with a real LLM: SmolLM2-135M-Instruct as the learner on ARC-Challenge (smoke size)."""

import json
import pathlib

from configs import arc_challenge
from evoselect_jax import experiment


def test_arc_challenge_smoke_with_smollm2(tmp_path: pathlib.Path):
  config = arc_challenge.get_config("smoke")
  config.lock()
  rows = experiment.run(config, tmp_path, progress=False, log=lambda _: None)
  assert {(r["method"], r["round"]) for r in rows} == {
    (m, r) for m in ("evoselect", "random") for r in (0, 1)
  }
  final = [r for r in rows if r["round"] == 1]
  for r in final:
    assert sum(r["selected_kinds"].values()) == config.budget
    assert r["non_finite_grads"] == 0 and r["target_non_finite_grads"] == 0
  selected = tmp_path / "selections" / "seed_0" / "evoselect" / "round_01.jsonl"
  records = [json.loads(x) for x in selected.read_text().splitlines()]
  assert len(records) == config.budget and all(len(x["choices"]) >= 3 for x in records)
