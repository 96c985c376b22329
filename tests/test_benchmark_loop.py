"""The loop with a real LLM: SmolLM2-135M-Instruct as the learner on ARC-Challenge (smoke size)."""

import json
import pathlib

from configs import arc_challenge
from evoselect_jax import experiment
from evoselect_jax.data.clean import DEDUP_REASONS, TEXT_REASONS


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


def test_arc_challenge_smoke_with_smollm2_as_weak_generator(tmp_path: pathlib.Path):
  """SmolLM2 also writes the pool: text-format few-shot items, cleaned, selected, trained on."""
  config = arc_challenge.get_config("smoke,gen=weak")
  config.baselines = ()  # The generator is under test here; the test above runs the methods.
  config.lock()
  assert (config.generator.format, config.clean.format) == ("text", "text")
  rows = experiment.run(config, tmp_path, progress=False, log=lambda _: None)
  [final] = [r for r in rows if r["round"] == 1]
  kept, rejected = final["pool_kept"], final["rejected"]
  print(f"weak generator, smoke pool: kept {kept} of {config.pool_size}; rejected {rejected}")
  assert kept >= 1 and kept + sum(rejected.values()) == config.pool_size
  assert set(rejected) <= set(TEXT_REASONS + DEDUP_REASONS)
  raw = (tmp_path / "state" / "seed_0" / "round_01" / "raw.jsonl").read_text().splitlines()
  assert len(raw) == config.pool_size and all(json.loads(r).startswith("Question: ") for r in raw)
  selected = tmp_path / "selections" / "seed_0" / "evoselect" / "round_01.jsonl"
  records = [json.loads(x) for x in selected.read_text().splitlines()]
  assert len(records) == min(config.budget, kept) == final["selected"]
  for r in records:
    assert r["id"].startswith("r1-") and 3 <= len(r["choices"]) <= 5
    assert 0 <= r["answer"] < len(r["choices"]) and r["question"]
