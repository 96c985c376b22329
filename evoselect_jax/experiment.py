"""Runs a config: warm up the learner, then R rounds for every method, and report.

Every method sees the same generated pool in a round (the generator does not
depend on the learner), the same budget and the same training; only the selector
differs.
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
from evoselect_jax.registry import GENERATORS, TASKS
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
  """Runs ``config`` and writes its outputs under ``workdir``; returns the metric rows.

  Writes ``config.json`` (resolved config), ``metrics.jsonl`` (one object per round
  and method), ``tensorboard/<method>/``, ``selections/<method>/round_XX.jsonl`` and
  ``accuracy.png``.
  """
  workdir = pathlib.Path(workdir)
  # Components by name: a bad name fails here, before any work.
  task = TASKS.build(config.task)
  generator = GENERATORS.build(config.generator, task=task)
  selectors = {name: build_selector(cfg) for name, cfg in methods(config).items()}
  names = list(selectors)

  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
  (workdir / "metrics.jsonl").unlink(missing_ok=True)
  key_init, key_warmup, key_proj, key_rounds = jax.random.split(jax.random.key(config.seed), 4)
  tokenizer = task.tokenizer
  log(task.describe())

  model_config = llama.LlamaConfig(vocab_size=tokenizer.vocab_size, **config.model)
  params, lora = llama.init(model_config, key_init)
  params = _warmup(model_config, params, task, config, key_warmup, progress)
  base = loop.Learner(model_config, params, lora)
  projector = make_tree_projector(
    config.features.projector.name, lora, config.features.projector.out_dim, key_proj
  )

  test = prompts.encode_for_scoring(tokenizer, task.test, config.max_len, config.max_choices)
  target = prompts.encode_for_training(tokenizer, task.target, config.max_len)
  acc0 = loop.evaluate(base, test, batch_size=config.eval.batch_size)
  log(f"after warm-up: test acc {acc0['acc']:.3f} (acc_norm {acc0['acc_norm']:.3f})")

  writer = report.MetricsWriter(workdir)
  rows = [{"method": name, "round": 0, **acc0} for name in names]
  for row in rows:
    writer.write(row)
  learners = {name: base for name in names}
  replay: dict[str, list] = {name: [] for name in names}
  rng = np.random.default_rng(config.seed)
  for rnd in range(1, config.rounds + 1):
    exemplars = [
      task.target[i] for i in rng.choice(len(task.target), config.num_exemplars, replace=False)
    ]
    raw = generator.generate(exemplars, config.pool_size, seed=config.seed * 1_000_003 + rnd)
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
    log(f"round {rnd}: kept {len(pool.examples)} of {len(raw)} generated; rejected {rejected}")
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
        desc=f"round {rnd} {name}",
      )
      learners[name] = out.learner
      replay[name].append(out.encoded)
      row = {"method": name, "round": rnd, **out.metrics}
      rows.append(row)
      writer.write(row)
      _write_jsonl(workdir / "selections" / name / f"round_{rnd:02d}.jsonl", out.chosen)
    log(report.format_table(rows, names))
  writer.close()
  report.plot_accuracy(
    rows, names, workdir / "accuracy.png", title=f"{config.task.name}: target-task accuracy"
  )
  log(f"outputs in {workdir}: metrics.jsonl, accuracy.png, selections/, tensorboard/, config.json")
  return rows


def _warmup(model_config, params, task, config, key, progress):
  """Full-parameter training on the task family's warm-up mix (no LoRA)."""
  examples = task.pretrain(config.warmup.examples, seed=config.seed)
  data = prompts.encode_for_training(task.tokenizer, examples, config.max_len)

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
    desc="warm-up",
    progress=progress,
  )
  return out.trainable


def _write_jsonl(path: pathlib.Path, examples) -> None:
  """Writes one example per line, atomically (a temporary file, then a rename)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_text("".join(json.dumps(ex.to_json()) + "\n" for ex in examples))
  tmp.replace(path)
