"""One selection round (features → OT relevance → selection) under a sharding layout.

Shared by tests/test_sharding.py (8 devices, one process) and tests/test_multihost.py,
which runs this file as a script in each of several processes:

  python tests/sharded_round.py PROCESS_ID NUM_PROCESSES PORT OUT_JSON
"""

import json
import os
import sys

if __name__ == "__main__":
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from evoselect_jax import distributed, loop, sharding
from evoselect_jax.data.synthetic import SyntheticTask
from evoselect_jax.eval import prompts
from evoselect_jax.features import make_tree_projector
from evoselect_jax.models import llama
from evoselect_jax.ot import ot_relevance
from evoselect_jax.selectors import build_selector

MODEL = dict(
  hidden_size=32,
  intermediate_size=48,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  lora_rank=2,
  lora_targets=("q_proj", "v_proj"),
)
SELECTORS = ("evoselect", "less")  # OT-based with diversity; plain cosine


def round_inputs():
  """A tiny decoder, a pool of 37 examples padded to 40 (two masked), 6 targets."""
  task = SyntheticTask(num_target=6, num_test=40)
  config = llama.LlamaConfig(vocab_size=task.tokenizer.vocab_size, **MODEL)
  params, lora = llama.init(config, jax.random.key(0))
  lora = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), lora)
  learner = loop.Learner(config, params, lora)
  # Pools are padded to a multiple of the data axis (as the loop pads them); targets
  # are padded for featurising and sliced back.
  pool, n = sharding.pad_rows(
    prompts.encode_for_training(task.tokenizer, task.test[:37], 40), multiple=8
  )
  target = prompts.encode_for_training(task.tokenizer, task.target, 40)
  projector = make_tree_projector("rademacher", lora, 64, jax.random.key(2))
  mask = np.arange(40) < n
  mask[[3, 20]] = False
  return learner, pool, target, projector, mask


def run_round(learner, pool, target, projector, mask, layout):
  """Features, relevance and picks (host arrays) under ``layout`` (None: one device)."""
  params, lora = learner.params, learner.lora
  m = len(target["tokens"])
  if layout is not None:
    params = sharding.put(params, sharding.param_shardings(params, layout))
    lora = sharding.put(lora, layout.replicated)
    projector = sharding.put(projector, layout.replicated)
    pool = sharding.put(pool, layout.sharding("rows", None))
    target = sharding.pad_rows(target, layout.data_size)[0]
    target = sharding.put(target, layout.sharding("rows", None))

  def feats(encoded):
    return loop.featurize(
      learner.config, params, lora, lora, encoded, projector, None,
      which="lora", micro_batch=4, layout=layout,
    ).features  # fmt: skip

  cand, targ = feats(pool), feats(target)
  out = {}
  if layout is not None:
    assert cand.sharding.spec == layout.spec("rows")  # the rows stay where they were made
    targ = jax.jit(lambda t: t[:m], out_shardings=layout.sharding("targets", None))(targ)
    out["candidates"] = jax.jit(lambda c: c, out_shardings=layout.replicated)(cand)
  else:
    out["candidates"] = cand
  out["targets"] = targ
  relevance = ot_relevance(cand, targ, a=jnp.asarray(mask, jnp.float32))
  if layout is not None:
    relevance = jax.jit(lambda r: r, out_shardings=layout.replicated)(relevance)
  out["relevance"] = relevance
  for name in SELECTORS:
    out[name] = build_selector({"name": name})(cand, targ, 9, jax.random.key(3), mask=mask)
  return {name: distributed.host_array(x) for name, x in out.items()}


def main(pid: int, num: int, port: int, path: str) -> None:
  """Runs the round as process ``pid`` of ``num``; process 0 writes the JSON."""
  distributed.initialize(
    {"coordinator_address": f"localhost:{port}", "num_processes": num, "process_id": pid}
  )
  layout = sharding.make_layout({"data": -1, "model": 1}) if num > 1 else None
  out = run_round(*round_inputs(), layout=layout)
  for name in SELECTORS:
    distributed.check_agree(f"{name} picks", out[name])
  if distributed.is_writer():
    info = {"process_count": jax.process_count(), "device_count": jax.device_count()}
    record = {name: x.tolist() for name, x in out.items()} | info
    with open(path, "w") as f:
      json.dump(record, f)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
