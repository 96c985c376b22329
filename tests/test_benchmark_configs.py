"""The benchmark configs' arguments: sizes, and the weak generator's record format."""

import inspect

import pytest
from ml_collections.config_flags import config_path

from configs import _benchmark, arc_challenge, logiqa
from evoselect_jax.data.clean import clean
from evoselect_jax.generators.local import LocalGenerator


def test_sizes_shrink_in_order():
  full, cpu, smoke = (arc_challenge.get_config(f"size={s}") for s in _benchmark.SIZES)
  assert smoke == arc_challenge.get_config("smoke")
  for key in ("rounds", "pool_size", "budget"):
    assert full[key] > cpu[key] > smoke[key], key
  assert (cpu.rounds, cpu.pool_size, cpu.task.num_test, cpu.baselines) == (2, 48, 50, ("random",))
  assert logiqa.get_config("size=cpu").max_len <= 192


@pytest.mark.parametrize(
  ("arg", "match"),
  [("size=tiny", "size must be one of"), ("smoke,size=cpu", "contradict"), ("gen=mid", "gen")],
)
def test_bad_arguments_fail(arg, match):
  with pytest.raises(ValueError, match=match):
    arc_challenge.get_config(arg)


def test_weak_generator_options_are_the_local_generators_and_formats_move_together():
  config = arc_challenge.get_config("gen=weak")
  config.lock()
  options = set(config.generator) - {"name"}
  assert options <= set(inspect.signature(LocalGenerator).parameters)
  assert set(config.clean) <= set(inspect.signature(clean).parameters)
  assert config.generator.format == config.clean.format == "text"
  config_path.set_value("generator.format", config, "json")  # as --config.generator.format
  assert config.clean.format == "json"
  assert "format" not in arc_challenge.get_config("gen=strong").clean
