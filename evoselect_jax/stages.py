"""The stages of an experiment run, each loaded from its workdir or run and saved.

:func:`evoselect_jax.experiment.run` builds a :class:`Walk` and runs it; the order of
the stages, the resume rule and the bad-input policies are in that module's docstring.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Any

import jax
import numpy as np

from evoselect_jax import atomic_io, loop, report
from evoselect_jax.eval import packed, prompts
from evoselect_jax.features import make_tree_projector
from evoselect_jax.generators.jsonl import JsonlGenerator
from evoselect_jax.registry import MODELS
from evoselect_jax.train import losses, optim
from evoselect_jax.types import MCQExample
from evoselect_jax.workdir import Workdir


class OTNotConvergedError(RuntimeError):
  """An OT selector's solve did not converge and ``ot_on_nonconvergence='fail'``."""


class _Stages:
  """Marks each stage as it starts (``progress.log``); logs where a resumed run continues."""

  def __init__(self, workdir: Workdir, log, resumed: bool):
    self.workdir = workdir
    self.log = log
    self.resumed = resumed
    self.loaded = 0
    self.begun = 0
    self.current: str | None = None  # the stage running, None while loading saved ones

  def load(self) -> None:
    """Counts a stage whose output was loaded from the workdir."""
    self.loaded += 1
    self.current = None

  def begin(self, stage: str, where: str) -> None:
    """Marks the start of ``stage`` at ``where`` (e.g. ``seed 0 round 2 evoselect``)."""
    if not self.begun and self.resumed:
      done = (
        f"{self.loaded} finished stage(s) loaded from {self.workdir.state}"
        if self.loaded
        else "no stage had finished"
      )
      self.log(f"Resuming {self.workdir.root}: {done}; continuing at {stage} ({where})")
    self.begun += 1
    self.current = f"{stage} ({where})"
    self.workdir.mark(f"{stage}: {where}")

  def stopped(self) -> str:
    """A note for an error: where the run stopped and that it can resume."""
    at = f"during {self.current}" if self.current else "while loading the saved stages"
    return (
      f"The run stopped {at}. Every stage finished before is saved in {self.workdir.root} "
      "(state/, metrics.jsonl, selections/): rerun the same command to resume from there."
    )


def _where(seed: int, rnd: int | None = None, method: str | None = None) -> str:
  parts = [f"seed {seed}"] + ([f"round {rnd}"] if rnd is not None else [])
  return " ".join(parts + ([method] if method else []))


@dataclasses.dataclass
class _Seed:
  """What the rounds of one seed share."""

  seed: int
  tokenizer: Any
  test: Any
  target: Any
  base: loop.Learner
  projector: Any
  key_rounds: jax.Array
  learners: dict[str, loop.Learner | None]  # None: in the checkpoint of the last round
  replay: dict[str, list]
  # Every method featurises round 1's pool with the base learner: computed (or saved by
  # a method) once, its features serve the others.
  round1_features: loop.RoundFeatures | None = None


class Walk:
  """The stages of a run, each loaded from the workdir or run and saved."""

  def __init__(
    self, config, workdir, task, generator, selectors, policy, layout, progress, log, resumed
  ):
    self.config = config
    self.layout = layout
    self.workdir = workdir
    self.task = task
    self.generator = generator
    self.selectors = selectors
    self.names = list(selectors)
    self.policy = policy
    self.progress = progress
    self.log = log
    self.stages = _Stages(workdir, log, resumed)
    self.writer = report.MetricsWriter(workdir.root)
    self.checkpoints = {}

  def close(self) -> None:
    """Closes the metrics writer and the checkpoint managers."""
    self.writer.close()
    for ckpt in self.checkpoints.values():
      ckpt.close()

  def _checkpoints(self, seed: int, name: str):
    if (seed, name) not in self.checkpoints:
      self.checkpoints[seed, name] = self.workdir.checkpoints(seed, name)
    return self.checkpoints[seed, name]

  def run(self) -> list[dict[str, Any]]:
    """Walks every seed's stages and the report; returns the metric rows."""
    config = self.config
    for seed in config.seeds:
      s = self._start_seed(seed)
      rng = np.random.default_rng(seed)
      for rnd in range(1, config.rounds + 1):
        # Drawn in every round, loaded or not, so later rounds draw what they would have.
        picks = rng.choice(len(self.task.target), config.num_exemplars, replace=False)
        pool = self._pool(s, rnd, picks)
        for i, name in enumerate(self.names):
          key = jax.random.fold_in(s.key_rounds, rnd * len(self.names) + i)
          self._method_round(s, rnd, name, pool, key)
      self.log(report.format_table([r for r in self.writer.rows if r["seed"] == seed], self.names))
    self.stages.begin("report", f"seeds {list(config.seeds)}")
    self.writer.flush()
    rows = self.writer.rows
    report.plot_accuracy(
      rows,
      self.names,
      self.workdir.root / "accuracy.png",
      title=f"{config.task.name}: target-task accuracy",
    )
    summary = report.results_table(rows, self.names)
    atomic_io.write_text(self.workdir.root / "results.md", summary + "\n")
    self.log(summary)
    self.log(
      f"outputs in {self.workdir.root}: results.md, metrics.jsonl, accuracy.png, selections/, "
      "tensorboard/"
    )
    return rows

  def _start_seed(self, seed: int) -> _Seed:
    """Model, encodings, warm-up and round-0 accuracy of one seed."""
    config = self.config
    key_init, key_warmup, key_proj, key_rounds = jax.random.split(jax.random.key(seed), 4)
    model = MODELS.build(config.model, task=self.task, key=key_init)
    tokenizer = model.tokenizer
    test = packed.encode_packed(tokenizer, self.task.test, config.max_len, config.max_choices)
    target = prompts.encode_for_training(tokenizer, self.task.target, config.max_len)
    params = model.params
    if config.warmup.steps:
      ckpt = self._checkpoints(seed, "warmup")
      if ckpt.has(0):
        params, _ = ckpt.restore(0, model.params)
        self.stages.load()
      else:
        self.stages.begin("warmup", _where(seed))
        params = _warmup(
          model.config, params, self.task, tokenizer, config, seed, key_warmup, self.progress
        )
        ckpt.save(0, params, {"steps": config.warmup.steps})
    base = loop.Learner(model.config, params, model.lora)
    diff = loop.feature_params(base, config.features.params, config.features.last_k)
    projector = make_tree_projector(
      config.features.projector.name, diff, config.features.projector.out_dim, key_proj
    )
    path = self.workdir.round_dir(seed, 0) / "row.json"
    loaded = path.exists()
    if loaded:
      acc0 = atomic_io.read_json(path)
      self.stages.load()
    else:
      self.stages.begin("evaluate", _where(seed, 0))
      acc0 = loop.evaluate(base, test, **config.eval)
      atomic_io.write_json(path, acc0)
    log_acc = f"test acc {acc0['acc']:.3f} (acc_norm {acc0['acc_norm']:.3f})"
    self.log(f"seed {seed}, before round 1: {log_acc}")
    for name in self.names:
      self.writer.add({"seed": seed, "method": name, "round": 0, **acc0}, new=not loaded)
    return _Seed(
      seed,
      tokenizer,
      test,
      target,
      base,
      projector,
      key_rounds,
      learners={name: base for name in self.names},
      replay={name: [] for name in self.names},
    )

  def _generate(self, rdir, exemplars: list[MCQExample], seed: int) -> list[str]:
    """The round's raw records; ``raw.partial.jsonl`` keeps the first ones made so far.

    A resumable generator (``local``, ``openai``) reports its records as it makes them,
    and a rerun continues after the saved ones (a dead server or a kill loses at most
    the records in flight); the others make a round at once.
    """
    n = self.config.pool_size
    if not getattr(self.generator, "resumable", False):
      return self.generator.generate(exemplars, n, seed=seed)
    partial = rdir / "raw.partial.jsonl"
    done = atomic_io.read_jsonl(partial) if partial.exists() else []
    if done:
      self.log(f"{partial}: continuing after {len(done)} of {n} records")
    save = lambda records: atomic_io.write_jsonl(partial, records)
    return self.generator.generate(exemplars, n, seed=seed, done=done, on_records=save)

  def _pool(self, s: _Seed, rnd: int, picks: np.ndarray) -> loop.Pool:
    """The round's cleaned pool: loaded, or generated (or loaded raw) and cleaned."""
    config = self.config
    rdir = self.workdir.round_dir(s.seed, rnd)
    pool_path = rdir / "pool.json"
    if pool_path.exists():
      saved = atomic_io.read_json(pool_path)
      if saved["picks"] != picks.tolist():
        raise ValueError(
          f"{pool_path} was saved with exemplar picks {saved['picks']}, but this run draws "
          f"{picks.tolist()}: the workdir was written by another version of the code; use "
          "another --workdir"
        )
      self.stages.load()
      _skip_records(self.generator, saved["generated"])
      examples = [MCQExample.from_json(x) for x in saved["examples"]]
      rejected = collections.Counter(saved["rejected"])
      generated = saved["generated"]
    else:
      raw_path = rdir / "raw.jsonl"
      if raw_path.exists():
        raw = atomic_io.read_jsonl(raw_path)
        self.stages.load()
        _skip_records(self.generator, len(raw))
      else:
        self.stages.begin("generate", _where(s.seed, rnd))
        raw = self._generate(rdir, [self.task.target[i] for i in picks], s.seed * 1_000_003 + rnd)
        atomic_io.write_jsonl(raw_path, raw)
        (rdir / "raw.partial.jsonl").unlink(missing_ok=True)
      self.stages.begin("clean", _where(s.seed, rnd))
      cleaned = loop.clean_pool(raw, test=self.task.test, round_idx=rnd, clean_cfg=config.clean)
      examples, rejected, generated = cleaned.examples, cleaned.rejected, len(raw)
      atomic_io.write_json(
        pool_path,
        {
          "generated": generated,
          "picks": picks.tolist(),
          "rejected": dict(sorted(rejected.items())),
          "examples": [ex.to_json() for ex in examples],
        },
      )
    pool = loop.encode_pool(
      examples,
      rejected,
      tokenizer=s.tokenizer,
      size=config.pool_size,
      max_len=config.max_len,
      round_idx=rnd,
    )
    kept = f"kept {len(examples)} of {generated} generated"
    self.log(f"seed {s.seed} round {rnd}: {kept}; rejected {dict(sorted(rejected.items()))}")
    return pool

  def _learner(self, s: _Seed, name: str, rnd: int) -> loop.Learner:
    """The method's learner after round ``rnd`` (restored from its checkpoint if needed)."""
    if s.learners[name] is None:
      s.learners[name] = self._restore_learner(s, name, rnd)[0]
    return s.learners[name]

  def _restore_learner(self, s: _Seed, name: str, rnd: int) -> tuple[loop.Learner, dict]:
    """The learner saved after round ``rnd``, and the checkpoint's metadata."""
    template = {
      "lora": s.base.lora,
      "opt_state": loop.finetune_optimizer(self.config.finetune).init(s.base.lora),
    }
    state, meta = self._checkpoints(s.seed, f"learner_{name}").restore(rnd, template)
    learner = dataclasses.replace(s.base, lora=state["lora"], opt_state=state["opt_state"])
    return learner, meta

  def _method_round(self, s: _Seed, rnd: int, name: str, pool: loop.Pool, key) -> None:
    """Featurize → select → finetune → evaluate of one method, each loaded or run and saved."""
    config = self.config
    mdir = self.workdir.method_dir(s.seed, rnd, name)
    row_path, sel_path, feat_path = (
      mdir / "row.json",
      mdir / "selection.json",
      mdir / "features.npz",
    )
    where = _where(s.seed, rnd, name)
    if row_path.exists():  # The method's round is finished.
      row = atomic_io.read_json(row_path)
      selection = _load_selection(sel_path)
      self.stages.load()
      s.learners[name] = None
      s.replay[name].append(loop.selected_data(pool, selection.indices))
      self._write_selection(s.seed, name, rnd, pool, selection, only_if_missing=True)
      self.writer.add(row, new=False)
      return

    selector = self.selectors[name]
    key_sel, key_ft = jax.random.split(key)
    seconds: dict[str, float] = {}
    if feat_path.exists():
      feats, seconds["featurize"] = _load_features(feat_path)
      self.stages.load()
    else:
      self.stages.begin("featurize", where)
      t0 = time.perf_counter()
      feats = loop.featurize_round(
        self._learner(s, name, rnd - 1),
        selector,
        pool,
        s.target,
        config,
        projector=s.projector,
        layout=self.layout,
        shared=self._round1_features(s) if rnd == 1 else None,
      )
      if rnd == 1:
        s.round1_features = feats
      seconds["featurize"] = time.perf_counter() - t0
      _save_features(feat_path, feats, seconds["featurize"])

    if sel_path.exists():
      selection = _load_selection(sel_path)
      seconds["select"] = atomic_io.read_json(sel_path)["seconds"]
      self.stages.load()
    else:
      self.stages.begin("select", where)
      t0 = time.perf_counter()
      selection = loop.select_round(
        selector,
        feats,
        pool,
        config,
        key=key_sel,
        small_pool=self.policy["on_small_pool"],
        layout=self.layout,
      )
      seconds["select"] = time.perf_counter() - t0
      self._check_selection(selection, where)
      self._write_selection(s.seed, name, rnd, pool, selection)
      atomic_io.write_json(
        sel_path,
        {
          "indices": selection.indices.tolist(),
          "budget": selection.budget,
          "valid": selection.valid,
          "ot": selection.ot,
          "seconds": seconds["select"],
        },
      )

    chosen = [pool.examples[i] for i in selection.indices]
    selected = loop.selected_data(pool, selection.indices)
    ckpt = self._checkpoints(s.seed, f"learner_{name}")
    if ckpt.has(rnd):
      learner, meta = self._restore_learner(s, name, rnd)
      seconds["finetune"] = meta["seconds"]
      self.stages.load()
    else:
      self.stages.begin("finetune", where)
      t0 = time.perf_counter()
      learner = loop.finetune(
        self._learner(s, name, rnd - 1),
        loop.training_data(selected, s.replay[name], config),
        key=key_ft,
        cfg=config.finetune,
        progress=self.progress,
        desc=f"seed {s.seed} round {rnd} {name}",
        layout=self.layout,
      )
      seconds["finetune"] = time.perf_counter() - t0
      state = {"lora": learner.lora, "opt_state": learner.opt_state}
      ckpt.save(rnd, state, {"seconds": seconds["finetune"]})

    self.stages.begin("evaluate", where)
    t0 = time.perf_counter()
    evaluated = loop.evaluate(learner, s.test, **config.eval)
    seconds["evaluate"] = time.perf_counter() - t0
    metrics = loop.round_metrics(evaluated, pool, feats, selection, chosen, seconds)
    row = {"seed": s.seed, "method": name, "round": rnd, **metrics}
    atomic_io.write_json(row_path, row)
    s.learners[name] = learner
    s.replay[name].append(selected)
    self.writer.add(row, new=True)

  def _round1_features(self, s: _Seed) -> loop.RoundFeatures | None:
    """Round 1's features of the base learner: this run's, or a method's saved ones."""
    if s.round1_features is None:
      for name in self.names:
        path = self.workdir.method_dir(s.seed, 1, name) / "features.npz"
        if path.exists():
          s.round1_features = _load_features(path)[0]
          break
    return s.round1_features

  def _check_selection(self, selection: loop.Selection, where: str) -> None:
    """Logs a short selection; applies ``ot_on_nonconvergence``."""
    if selection.budget < self.config.budget:
      self.log(
        f"{where}: only {selection.valid} valid candidates for a budget of "
        f"{self.config.budget}; selected all of them (on_small_pool='select_all')"
      )
    ot = selection.ot
    if ot is not None and not ot["converged"]:
      message = (
        f"{where}: the selector's OT solve did not converge in {ot['iterations']} iterations "
        f"(target-marginal error {ot['marginal_error']:.3g})"
      )
      if self.policy["ot_on_nonconvergence"] == "fail":
        raise OTNotConvergedError(
          f"{message}; raise the selector's ot.max_iterations or ot.epsilon, or set "
          "ot_on_nonconvergence='warn' to go on and report it"
        )
      self.log(f"warning: {message}; selected anyway (ot_on_nonconvergence='warn')")

  def _write_selection(self, seed, name, rnd, pool, selection, *, only_if_missing=False):
    path = self.workdir.selection_output(seed, name, rnd)
    if not (only_if_missing and path.exists()):
      atomic_io.write_jsonl(path, (pool.examples[i].to_json() for i in selection.indices))


def _skip_records(generator, n: int) -> None:
  """Moves a generator that reads its records in order past ``n`` already used ones."""
  if isinstance(generator, JsonlGenerator):
    generator.position += n


def _save_features(path, feats: loop.RoundFeatures, seconds: float) -> None:
  arrays = {
    "candidates": feats.candidates,
    "candidate_finite": feats.candidate_finite,
    "targets": feats.targets,
    "target_finite": feats.target_finite,
    "preconditioner": np.asarray(feats.preconditioner),
    "seconds": np.asarray(seconds),
  }
  atomic_io.write_npz(path, arrays | {f"extra.{k}": v for k, v in feats.extras.items()})


def _load_features(path) -> tuple[loop.RoundFeatures, float]:
  data = atomic_io.read_npz(path)
  extras = {k.removeprefix("extra."): v for k, v in data.items() if k.startswith("extra.")}
  feats = loop.RoundFeatures(
    data["candidates"],
    data["candidate_finite"],
    data["targets"],
    data["target_finite"],
    extras,
    str(data["preconditioner"]),
  )
  return feats, float(data["seconds"])


def _load_selection(path) -> loop.Selection:
  saved = atomic_io.read_json(path)
  return loop.Selection(
    np.asarray(saved["indices"], np.int32), saved["budget"], saved["valid"], saved["ot"]
  )


def _warmup(model_config, params, task, tokenizer, config, seed, key, progress):
  """Full-parameter training on the task's warm-up mix (no LoRA), e.g. the synthetic family."""
  examples = task.pretrain(config.warmup.examples, seed=seed)
  data = prompts.encode_for_training(tokenizer, examples, config.max_len)
  # A partial of a module-level function: runs in one process share its compiled step.
  loss_fn = functools.partial(_warmup_loss, model_config, losses.num_scored(data["loss_mask"]))
  optimizer = optim.make_optimizer(
    "adamw",
    learning_rate=config.warmup.learning_rate,
    total_steps=config.warmup.steps,
    warmup_steps=config.warmup.steps // 10,
  )
  out = optim.fit(
    loss_fn,
    params,
    data,
    steps=config.warmup.steps,
    batch_size=config.warmup.batch_size,
    optimizer=optimizer,
    key=key,
    desc=f"seed {seed} warm-up",
    progress=progress,
  )
  return out.trainable


def _warmup_loss(model_config, num_scored, params, batch):
  """Mean token cross-entropy of the base model (no LoRA) on a batch."""
  return losses.batch_losses(model_config, params, None, batch, num_scored).mean()
