"""The loop with a real LLM: SmolLM2-135M-Instruct as the learner on ARC-Challenge (smoke size)."""

import json
import pathlib

from configs import arc_challenge
from evoselect_jax import experiment
from evoselect_jax.data.clean import DEDUP_REASONS, TEXT_REASONS


def test_arc_challenge_smoke_with_smollm2_as_learner_and_weak_generator(tmp_path: pathlib.Path):
  """SmolLM2 writes the pool; each method selects from the cleaned pool and trains SmolLM2.

  One run covers both the generator (text-format few-shot items) and the methods: each
  load and compile of the 135M model costs about a minute on two CPU cores.
  """
  config = arc_challenge.get_config("smoke,gen=weak")
  config.lock()
  assert (config.generator.format, config.clean.format) == ("text", "text")
  rows = experiment.run(config, tmp_path, progress=False, log=lambda _: None)
  methods = ("evoselect", *config.baselines)
  assert methods == ("evoselect", "random")
  assert {(r["method"], r["round"]) for r in rows} == {(m, r) for m in methods for r in (0, 1)}
  raw = (tmp_path / "state" / "seed_0" / "round_01" / "raw.jsonl").read_text().splitlines()
  assert len(raw) == config.pool_size and all(json.loads(r).startswith("Question: ") for r in raw)
  for final in (r for r in rows if r["round"] == 1):
    kept, rejected = final["pool_kept"], final["rejected"]
    print(f"weak generator, smoke pool: kept {kept} of {config.pool_size}; rejected {rejected}")
    assert kept >= 1 and kept + sum(rejected.values()) == config.pool_size
    assert set(rejected) <= set(TEXT_REASONS + DEDUP_REASONS)
    assert final["selected"] == min(config.budget, kept) == sum(final["selected_kinds"].values())
    assert final["non_finite_grads"] == 0 and final["target_non_finite_grads"] == 0
    selected = tmp_path / "selections" / "seed_0" / final["method"] / "round_01.jsonl"
    records = [json.loads(x) for x in selected.read_text().splitlines()]
    assert len(records) == final["selected"]
    for r in records:
      assert r["id"].startswith("r1-") and 3 <= len(r["choices"]) <= 5
      assert 0 <= r["answer"] < len(r["choices"]) and r["question"]
