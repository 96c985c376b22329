r"""Quickstart: EvoSelect vs random selection on the embedded synthetic task (CPU, minutes).

The learner is a tiny Llama-style decoder, warmed up on part of a procedurally
generated multiple-choice task family, then evolved toward one target
(skill, format) with data from a simulated generator whose pool mixes aligned,
mislabelled, off-task and near-duplicate items.

Launch:
  python -m experiments.main --config configs/quickstart.py --workdir /tmp/evoselect_quickstart
Smoke (seconds; what the tests run):
  python -m experiments.main --config configs/quickstart.py:smoke --workdir /tmp/evoselect_smoke
"""

import ml_collections

from evoselect_jax.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False, seed=0)
  c = ml_collections.ConfigDict()
  c.seeds = (arg.seed,)  # model init, pools and keys; the task is fixed by c.task
  c.rounds = 3
  c.pool_size = 1024  # raw generated records per round; the cleaned pool is padded to this
  c.budget = 96  # examples selected per round, every method
  c.num_exemplars = 8  # few-shot target exemplars shown to the generator
  c.max_len = 32  # tokens per (prompt + answer)
  c.max_choices = 4

  # Target: the `max` skill in the `cards` format; warm-up sees the other 23 pairs.
  c.task = dict(
    name="synthetic",
    seed=0,
    target_skill="max",
    target_format="cards",
    num_target=64,
    num_test=500,
  )
  # Pool mix: the rest (40%) is aligned and correct.
  c.generator = dict(name="simulated", noise=0.15, off_task=0.3, near_dup=0.1, malformed=0.05)
  # Clean drops near-verbatim copies only; paraphrase-level duplicates are the
  # selector's job (one filler word makes a `cards` question ~0.9 trigram Jaccard).
  c.clean = dict(near_dup_jaccard=0.95)

  c.model = dict(
    name="tiny",  # a decoder trained from scratch on the task's word vocabulary
    hidden_size=64,
    intermediate_size=176,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    lora_rank=8,
    lora_alpha=16.0,
    lora_targets=("q_proj", "v_proj", "up_proj", "down_proj"),
  )
  c.warmup = dict(examples=4096, steps=1500, batch_size=64, learning_rate=3e-3)
  c.features = dict(
    params="lora",  # lora | last_k_layers | all
    last_k=1,  # blocks for last_k_layers
    preconditioner="sgd",  # sgd | adam (LESS; candidates only, from round 2 on)
    micro_batch=64,
    min_length=64,  # rows cropped as finetune.min_length, in chunks of similar length
    projector=dict(name="rademacher", out_dim=256),
  )

  c.selector = dict(name="evoselect")
  c.baselines = ("random",)
  # min_length: batches cut to their longest row rounded up to a power of two, at least this
  c.finetune = dict(steps=150, batch_size=32, learning_rate=3e-3, replay=True, min_length=64)
  c.eval = dict(batch_tokens=8192, min_length=16)  # packed scoring (loop.evaluate)
  c.mesh = dict(data=-1, model=1)  # devices: -1 = all (pool and batches split over data)
  c.on_small_pool = "select_all"  # fewer valid candidates than the budget: select_all | fail
  c.ot_on_nonconvergence = "warn"  # an OT selector's solve did not converge: warn | fail

  if arg.smoke:
    c.rounds = 1
    c.task.update(num_target=16, num_test=32)
    c.pool_size = 96
    c.budget = 16
    c.num_exemplars = 4
    c.model.update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1)
    c.warmup.update(examples=128, steps=10, batch_size=16)
    c.features.update(micro_batch=32, projector=dict(name="rademacher", out_dim=32))
    c.finetune.update(steps=5, batch_size=8)
    c.eval.batch_tokens = 2048
    c.mesh = dict(data=1, model=1)  # one device (tests/test_sharding.py checks data=8)
  return c
