"""Runs a config: for each seed, warm up the learner, run R rounds for every method; report.

Every method sees the same generated pool in a round (the generator does not
depend on the learner), the same budget and the same training; only the selector
differs. Seeds vary the model's initialisation, the generated pools and every key;
the task (target and test split) is fixed by ``config.task``.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np

from evoselect_jax import loop, report
from evoselect_jax.eval import prompts
from evoselect_jax.features import make_tree_projector
from evoselect_jax.models import llama
from evoselect_jax.registry import GENERATORS, MODELS, TASKS
from evoselect_jax.selectors import build_selector
from evoselect_jax.train import losses, optim


def methods(config) -> dict[str, Any]:
  """Selector configs by method name: the main selector, then each baseline."""
  out = {config.selector.name: config.selector}
  for name in config.baselines:
    out.setdefault(name, {"name": name})
  return out


def run(
  config, workdir: str | pathlib.Path, *, progress: bool = True, log=print
) -> list[dict[str, Any]]:
  """Runs ``config`` for every seed in ``config.seeds``; returns the metric rows.

  Writes under ``workdir``: ``config.json`` (resolved config), ``metrics.jsonl`` (one
  object per seed, round and method), ``tensorboard/<method>/``,
  ``selections/seed_<s>/<method>/round_XX.jsonl``, ``accuracy.png`` (mean over
  seeds per round) and ``results.md`` (final accuracy per method, mean ± std).
  """
  workdir = pathlib.Path(workdir)
  # Components by name: a bad name fails here, before any work.
  task = TASKS.build(config.task)
  generator = GENERATORS.build(config.generator, task=task)
  selectors = {name: build_selector(cfg) for name, cfg in methods(config).items()}
  MODELS.get(config.model.name)
  loop.check_features_config(config.features)
  names = list(selectors)

  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
  (workdir / "metrics.jsonl").unlink(missing_ok=True)
  log(task.describe())

  writer = report.MetricsWriter(workdir)
  rows: list[dict[str, Any]] = []
  for seed in config.seeds:
    key_init, key_warmup, key_proj, key_rounds = jax.random.split(jax.random.key(seed), 4)
    model = MODELS.build(config.model, task=task, key=key_init)
    tokenizer = model.tokenizer
    test = prompts.encode_for_scoring(tokenizer, task.test, config.max_len, config.max_choices)
    target = prompts.encode_for_training(tokenizer, task.target, config.max_len)
    params = model.params
    if config.warmup.steps:
      params = _warmup(model.config, params, task, tokenizer, config, seed, key_warmup, progress)
    base = loop.Learner(model.config, params, model.lora)
    diff = loop.feature_params(base, config.features.params, config.features.last_k)
    projector = make_tree_projector(
      config.features.projector.name, diff, config.features.projector.out_dim, key_proj
    )
    acc0 = loop.evaluate(base, test, batch_size=config.eval.batch_size)
    log(
      f"seed {seed}, before round 1: test acc {acc0['acc']:.3f} (acc_norm {acc0['acc_norm']:.3f})"
    )
    for name in names:
      rows.append({"seed": seed, "method": name, "round": 0, **acc0})
      writer.write(rows[-1])

    learners = {name: base for name in names}
    replay: dict[str, list] = {name: [] for name in names}
    rng = np.random.default_rng(seed)
    for rnd in range(1, config.rounds + 1):
      picks = rng.choice(len(task.target), config.num_exemplars, replace=False)
      raw = generator.generate(
        [task.target[i] for i in picks], config.pool_size, seed=seed * 1_000_003 + rnd
      )
      pool = loop.make_pool(
        raw,
        test=task.test,
        tokenizer=tokenizer,
        size=config.pool_size,
        max_len=config.max_len,
        round_idx=rnd,
        clean_cfg=config.clean,
      )
      rejected = dict(pool.rejected)
      kept = f"kept {len(pool.examples)} of {len(raw)} generated"
      log(f"seed {seed} round {rnd}: {kept}; rejected {rejected}")
      for i, name in enumerate(names):
        out = loop.run_round(
          learners[name],
          selectors[name],
          pool,
          target,
          test,
          replay[name],
          config,
          projector=projector,
          key=jax.random.fold_in(key_rounds, rnd * len(names) + i),
          progress=progress,
          desc=f"seed {seed} round {rnd} {name}",
        )
        learners[name] = out.learner
        replay[name].append(out.encoded)
        rows.append({"seed": seed, "method": name, "round": rnd, **out.metrics})
        writer.write(rows[-1])
        _write_jsonl(
          workdir / "selections" / f"seed_{seed}" / name / f"round_{rnd:02d}.jsonl", out.chosen
        )
      log(report.format_table([r for r in rows if r["seed"] == seed], names))
  writer.close()
  report.plot_accuracy(
    rows, names, workdir / "accuracy.png", title=f"{config.task.name}: target-task accuracy"
  )
  summary = report.results_table(rows, names)
  (workdir / "results.md").write_text(summary + "\n")
  log(summary)
  log(f"outputs in {workdir}: results.md, metrics.jsonl, accuracy.png, selections/, tensorboard/")
  return rows


def _warmup(model_config, params, task, tokenizer, config, seed, key, progress):
  """Full-parameter training on the task's warm-up mix (no LoRA), e.g. the synthetic family."""
  examples = task.pretrain(config.warmup.examples, seed=seed)
  data = prompts.encode_for_training(tokenizer, examples, config.max_len)

  def loss_fn(p, batch):
    logits = llama.apply(model_config, p, None, batch["tokens"], batch["attention_mask"])
    return losses.token_losses(logits, batch["tokens"], batch["loss_mask"]).mean()

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


def _write_jsonl(path: pathlib.Path, examples) -> None:
  """Writes one example per line, atomically (a temporary file, then a rename)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_text("".join(json.dumps(ex.to_json()) + "\n" for ex in examples))
  tmp.replace(path)
