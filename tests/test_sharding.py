"""Meshes and logical sharding: a round's features, relevance and selection on 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sharded_round  # tests/sharded_round.py

from evoselect_jax import sharding
from evoselect_jax.models import llama


def test_make_layout_fills_minus_one_and_rejects_bad_meshes():
  assert jax.device_count() == 8  # tests/conftest.py
  layout = sharding.make_layout({"data": -1, "model": 2})
  assert dict(layout.mesh.shape) == {"data": 4, "model": 2}
  assert layout.spec("rows", "features") == jax.sharding.PartitionSpec("data", None)
  assert layout.spec("embed", "heads") == jax.sharding.PartitionSpec(None, "model")
  with pytest.raises(ValueError, match=r"mesh needs exactly the axes \('data', 'model'\)"):
    sharding.make_layout({"data": 8})
  with pytest.raises(ValueError, match="needs 16 devices, have 8"):
    sharding.make_layout({"data": 8, "model": 2})
  assert sharding.make_layout({"data": 3, "model": 1}).mesh.devices.size == 3
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.make_layout({"data": -1, "model": -1})
  with pytest.raises(ValueError, match="must be \\(logical_name, one of"):
    sharding.make_layout({"data": -1, "model": 1}, rules=(("rows", "batch"),))
  with pytest.raises(ValueError, match=r"No sharding rule for logical axes \['tokens'\]"):
    layout.spec("tokens")


def test_param_shardings_split_heads_and_mlp_over_model_only_where_they_divide():
  config = llama.LlamaConfig(vocab_size=30, **sharded_round.MODEL)
  params, lora = llama.init(config, jax.random.key(0))
  layout = sharding.make_layout({"data": 2, "model": 4})
  specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(params, layout))
  attn, mlp = specs["layers_0"]["self_attn"], specs["layers_0"]["mlp"]
  assert attn["q_proj"]["kernel"] == jax.sharding.PartitionSpec(None, "model")  # [32, 32]
  assert attn["o_proj"]["kernel"] == jax.sharding.PartitionSpec("model", None)
  assert mlp["down_proj"]["kernel"] == jax.sharding.PartitionSpec("model", None)  # [48, 32]
  # vocab 30 does not divide by 4: replicated rather than uneven
  assert specs["embed_tokens"]["embedding"] == jax.sharding.PartitionSpec(None, None)
  assert specs["norm"]["scale"] == jax.sharding.PartitionSpec()
  lora_specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(lora, layout))
  assert all(s == jax.sharding.PartitionSpec() for s in jax.tree.leaves(lora_specs))


@pytest.fixture(scope="module")
def inputs():
  return sharded_round.round_inputs()


@pytest.mark.parametrize("mesh", [{"data": 8, "model": 1}, {"data": 4, "model": 2}])
def test_round_on_8_devices_equals_one_device(inputs, mesh):
  ref = sharded_round.run_round(*inputs, layout=None)
  got = sharded_round.run_round(*inputs, layout=sharding.make_layout(mesh))
  np.testing.assert_allclose(got["candidates"], ref["candidates"], atol=2e-5)
  np.testing.assert_allclose(got["targets"], ref["targets"], atol=2e-5)
  np.testing.assert_allclose(got["relevance"], ref["relevance"], rtol=1e-4, atol=1e-5)
  for name in sharded_round.SELECTORS:
    np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
  assert not set(ref["evoselect"].tolist()) & {3, 20, 37, 38, 39}  # masked rows


def test_map_rows_pads_to_the_data_size_and_keeps_rows_apart():
  layout = sharding.make_layout({"data": 8, "model": 1})
  rows = jnp.arange(13.0)[:, None] * jnp.ones((13, 3))
  out = jax.jit(lambda w, r: sharding.map_rows(lambda w, r: r * w, layout, w, r))(2.0, rows)
  np.testing.assert_array_equal(out, 2.0 * rows)


def test_quickstart_smoke_on_8_devices_matches_one_device(tmp_path):
  """The experiment driver with mesh data=8: same selections and accuracies as data=1."""
  from configs import quickstart
  from evoselect_jax import experiment

  out = {}
  for data in (1, 8):
    config = quickstart.get_config("smoke")
    config.mesh = dict(data=data, model=1)
    config.lock()
    rows = experiment.run(config, tmp_path / f"data{data}", progress=False, log=lambda _: None)
    picks = sorted((tmp_path / f"data{data}" / "selections").rglob("*.jsonl"))
    texts = [(p.relative_to(tmp_path / f"data{data}"), p.read_text()) for p in picks]
    out[data] = ([(r["method"], r["round"], r["acc"], r["acc_norm"]) for r in rows], texts)
  for (method, rnd, acc1, norm1), (_, _, acc8, norm8) in zip(out[1][0], out[8][0], strict=True):
    assert abs(acc1 - acc8) <= 1 / 32 and abs(norm1 - norm8) <= 1 / 32, (method, rnd)
  assert out[1][1] == out[8][1]  # the same examples selected, in the same order
  config = quickstart.get_config("smoke")
  config.mesh = dict(data=8, model=1)
  config.finetune.batch_size = 4
  with pytest.raises(ValueError, match=r"'finetune.batch_size': 4\} must be multiples of"):
    experiment.make_layout(config)
