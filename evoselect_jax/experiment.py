"""Runs a config: for each seed, warm up the learner, run R rounds for every method; report.

Every method sees the same generated pool in a round (the generator does not
depend on the learner), the same budget and the same training; only the selector
differs. Seeds vary the model's initialisation, the generated pools and every key;
the task (target and test split) is fixed by ``config.task``.

Resume. The run walks its stages in a fixed order: per seed, ``warmup``, ``evaluate``
(round 0), then per round ``generate``, ``clean`` and, per method, ``featurize``,
``select``, ``finetune``, ``evaluate``; then ``report``. Each stage's output is saved
in the workdir (:mod:`evoselect_jax.workdir`) before the next stage starts, and a
stage whose output is there is loaded instead of run, so rerunning the same command
on a workdir continues at the first unfinished stage and ends with the outputs of an
uninterrupted run (the ``seconds`` of each stage aside). Keys come from the seed,
round and method alone (``fold_in``), and the exemplar picks from a numpy generator
that is stepped through every round, loaded or not, so a resumed run draws exactly
the keys and picks of an uninterrupted one. A workdir written by another config is
refused with the list of differing fields. ``progress.log`` gets a line as each stage
starts.

Bad input is a counted rejection (malformed generator records, by reason, in every
metrics row; NaN/inf gradients, excluded from selection and from the target set) or an
error that names it, raised with everything finished so far on disk. Two policies are
config fields (top level, optional):

- ``on_small_pool``: fewer valid candidates than the budget: ``select_all`` (default:
  select every valid one, logged, ``selected`` in the metrics) or ``fail``.
- ``ot_on_nonconvergence``: the OT problem of an OT selector did not converge (its
  ``ot`` metrics give the target-marginal error): ``warn`` (default: logged) or
  ``fail``.
"""

from __future__ import annotations

import json
from typing import Any

import jax

from evoselect_jax import loop, sharding, stages
from evoselect_jax.registry import GENERATORS, MODELS, TASKS
from evoselect_jax.selectors import build_selector
from evoselect_jax.workdir import Workdir

OTNotConvergedError = stages.OTNotConvergedError

# Optional top-level config fields: name -> (default, valid values).
POLICIES = {
  "on_small_pool": ("select_all", loop.SMALL_POOL_POLICIES),
  "ot_on_nonconvergence": ("warn", ("warn", "fail")),
}


def methods(config) -> dict[str, Any]:
  """Selector configs by method name: the main selector, then each baseline."""
  out = {config.selector.name: config.selector}
  for name in config.baselines:
    out.setdefault(name, {"name": name})
  return out


def policies(config) -> dict[str, str]:
  """The config's bad-input policies (see the module docstring); an unknown value fails."""
  out = {}
  for name, (default, valid) in POLICIES.items():
    value = config.get(name, default)
    if value not in valid:
      raise ValueError(f"Unknown {name} {value!r}; valid: {', '.join(valid)}")
    out[name] = value
  return out


def make_layout(config) -> sharding.Layout | None:
  """The device layout of ``config.mesh`` over this process's devices; None without one.

  Per-example features split the pool over the mesh's ``data`` axis, OT and the greedy
  run on candidate rows split the same way, and fine-tuning is data parallel.
  Experiments run in one process (all its devices); several processes share a mesh
  at the level of a selection round (:mod:`evoselect_jax.distributed`,
  tests/test_multihost.py).
  """
  if jax.process_count() > 1:
    raise ValueError(
      f"experiments.main runs in one process, found {jax.process_count()} "
      "(jax.distributed is initialised); launch it once per machine without it"
    )
  mesh = config.get("mesh")
  if mesh is None:
    return None
  layout = sharding.make_layout(mesh, config.get("sharding_rules", sharding.DEFAULT_RULES))
  if layout.mesh.devices.size == 1:
    return None  # nothing to split
  sizes = {"pool_size": config.pool_size, "finetune.batch_size": config.finetune.batch_size}
  bad = {name: size for name, size in sizes.items() if size % layout.data_size}
  if bad:
    raise ValueError(
      f"{bad} must be multiples of the mesh's data axis ({layout.data_size} devices); "
      "change them or set mesh.data"
    )
  return layout


def run(config, workdir, *, progress: bool = True, log=print) -> list[dict[str, Any]]:
  """Runs ``config`` for every seed in ``config.seeds``, resuming what ``workdir`` holds.

  Writes under ``workdir``: ``config.json`` (resolved config), ``metrics.jsonl`` (one
  object per seed, round and method), ``tensorboard/<method>/``,
  ``selections/seed_<s>/<method>/round_XX.jsonl``, ``accuracy.png`` (mean over
  seeds per round), ``results.md`` (final accuracy per method, mean ± std), and the
  saved stages under ``state/`` (:mod:`evoselect_jax.workdir`).

  Returns:
    The metric rows, in the order of ``metrics.jsonl``.

  Raises:
    ConfigMismatchError: ``workdir`` holds a run of another config.
    ValueError: unknown component names or options (before any work), or bad input
      (e.g. a round with no valid candidate).
  """
  # Components by name: a bad name fails here, before any work.
  task = TASKS.build(config.task)
  generator = GENERATORS.build(config.generator, task=task)
  selectors = {name: build_selector(cfg) for name, cfg in methods(config).items()}
  MODELS.get(config.model.name)
  loop.check_features_config(config.features)
  policy = policies(config)
  layout = make_layout(config)

  workdir = Workdir(workdir)
  with workdir.lock():
    # The optional policy fields are written with their values, set or default.
    resolved = json.loads(config.to_json_best_effort()) | policy
    resumed = workdir.start(json.dumps(resolved, indent=2))
    log(task.describe())
    walk = stages.Walk(
      config, workdir, task, generator, selectors, policy, layout, progress, log, resumed
    )
    try:
      return walk.run()
    except BaseException as e:
      e.add_note(walk.stages.stopped())
      raise
    finally:
      walk.close()
