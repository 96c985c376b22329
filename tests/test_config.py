"""Every config builds with its smoke argument; typos and unknown names fail at once."""

import pathlib
import subprocess
import sys

import pytest
from ml_collections import config_flags

from evoselect_jax import experiment
from evoselect_jax.config import parse_arg
from evoselect_jax.registry import GENERATORS, MODELS, SELECTORS, TASKS

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py") if not p.name.startswith("_"))


def _load(path, arg):
  module = config_flags.config_flags._LoadConfigModule(path.stem, str(path))  # noqa: SLF001
  return module.get_config(arg)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_with_smoke(path):
  text = path.read_text()
  assert f"--config configs/{path.name}" in text, "the docstring must hold the launch command"
  config = _load(path, "smoke")
  config.lock()
  if path.name.startswith("bench_"):  # a benchmark: stages, no experiment
    assert config.size == "smoke" and config.stages
    return
  TASKS.get(config.task.name)
  GENERATORS.get(config.generator.name)
  MODELS.get(config.model.name)
  for cfg in experiment.methods(config).values():
    SELECTORS.get(cfg["name"])


def test_parse_arg_types_and_errors():
  arg = parse_arg("smoke,seed=3", smoke=False, seed=0)
  assert arg.smoke is True and arg.seed == 3
  with pytest.raises(ValueError, match="Unknown config argument 'sed'"):
    parse_arg("sed=3", smoke=False, seed=0)


def _launch(*flags):
  return subprocess.run(
    [sys.executable, "-m", "experiments.main", "--config", "configs/quickstart.py:smoke", *flags],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_config_typo_fails_at_once(tmp_path):
  proc = _launch(f"--workdir={tmp_path}", "--config.selector.kk=3")
  assert proc.returncode != 0
  assert "kk" in proc.stderr
  assert not (tmp_path / "metrics.jsonl").exists()


def test_unknown_selector_lists_valid_names(tmp_path):
  proc = _launch(f"--workdir={tmp_path}", "--config.selector.name=evoselct")
  assert proc.returncode != 0
  assert "Unknown selector 'evoselct'; valid names:" in proc.stderr
  assert "evoselect" in proc.stderr and "random" in proc.stderr
