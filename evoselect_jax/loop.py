"""One round of the loop: generate → clean → featurize → select → finetune → evaluate.

:func:`make_pool` turns a round's raw generator output into a cleaned, encoded pool;
:func:`run_round` runs featurize → select → finetune → evaluate on it for one
method's learner. :mod:`evoselect_jax.experiment` runs rounds for every method and
writes what they produce. Shapes are static across rounds (the pool is padded to
``pool_size`` rows with a mask; training gathers fixed-size batches), so nothing
recompiles after the first round.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections import Counter
from typing import Any

import jax
import numpy as np

from evoselect_jax import features as features_lib
from evoselect_jax.data import clean as clean_lib
from evoselect_jax.eval import mcqa, prompts
from evoselect_jax.models import llama
from evoselect_jax.train import losses, optim
from evoselect_jax.types import MCQExample


@dataclasses.dataclass(frozen=True)
class Learner:
  """The model being evolved: a frozen base and its LoRA adapters."""

  config: llama.LlamaConfig
  params: Any
  lora: Any

  def logits_fn(self):
    """``(tokens [b, t], attention_mask [b, t]) -> logits [b, t, V]``.

    A partial application: jitted consumers trace its arrays as arguments, so new
    weights do not recompile.
    """
    return functools.partial(llama.apply, self.config, self.params, self.lora)


@dataclasses.dataclass(frozen=True)
class Pool:
  """A cleaned candidate pool, encoded and padded to a static size.

  Attributes:
    examples: the kept candidates, ``len(examples) <= size``.
    encoded: training encodings, arrays with leading axis ``size``.
    mask: ``bool[size]``, True for real candidates.
    rejected: rejection counts by reason from cleaning.
  """

  examples: list[MCQExample]
  encoded: dict[str, np.ndarray]
  mask: np.ndarray
  rejected: Counter


@dataclasses.dataclass(frozen=True)
class RoundOutput:
  """What one method's round produced.

  Attributes:
    learner: the fine-tuned learner.
    metrics: JSON-ready metrics (accuracy, what was selected, seconds per stage).
    chosen: the selected examples, in selection order.
    encoded: their training encodings (for replay in later rounds).
  """

  learner: Learner
  metrics: dict[str, Any]
  chosen: list[MCQExample]
  encoded: dict[str, np.ndarray]


def make_pool(
  raw: list[str], *, test, tokenizer, size: int, max_len: int, round_idx: int, clean_cfg
) -> Pool:
  """Cleans raw generator output and encodes it, padded to ``size`` rows."""
  cleaned = clean_lib.clean(raw, test=test, id_prefix=f"r{round_idx}-", **clean_cfg)
  if not cleaned.examples:
    raise ValueError(
      f"Round {round_idx}: no valid candidates among {len(raw)} generated records; "
      f"rejections by reason: {dict(cleaned.rejected)}"
    )
  if len(cleaned.examples) > size:
    raise ValueError(
      f"Round {round_idx}: {len(cleaned.examples)} candidates exceed pool size {size}"
    )
  encoded = prompts.encode_for_training(tokenizer, cleaned.examples, max_len)
  pad = size - len(cleaned.examples)
  encoded = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) for k, v in encoded.items()}
  mask = np.arange(size) < len(cleaned.examples)
  return Pool(cleaned.examples, encoded, mask, cleaned.rejected)


@functools.partial(jax.jit, static_argnames=("config", "micro_batch"))
def featurize(
  config, params, lora, encoded, projector, *, micro_batch: int
) -> features_lib.Features:
  """Projected, L2-normalised per-example LoRA gradients ``[n, out_dim]`` (LESS-style).

  The gradient is that of the answer-token cross-entropy of each example with
  respect to the LoRA parameters of the current model.
  """
  loss_fn = lambda lora_, example: losses.example_loss(config, params, lora_, example)
  return features_lib.per_example_features(
    loss_fn, lora, encoded, projector, micro_batch=micro_batch
  )


def _batch_loss(config, params, lora, batch):
  logits = llama.apply(config, params, lora, batch["tokens"], batch["attention_mask"])
  return losses.token_losses(logits, batch["tokens"], batch["loss_mask"]).mean()


def finetune(
  learner: Learner, data: dict[str, np.ndarray], *, key, cfg, progress=True, desc="finetune"
) -> Learner:
  """Trains the LoRA adapters on ``data`` (training encodings) with AdamW."""
  optimizer = optim.make_optimizer(
    "adamw", learning_rate=cfg.learning_rate, total_steps=cfg.steps, warmup_steps=cfg.steps // 10
  )
  out = optim.fit(
    functools.partial(_batch_loss, learner.config, learner.params),
    learner.lora,
    data,
    steps=cfg.steps,
    batch_size=cfg.batch_size,
    optimizer=optimizer,
    key=key,
    desc=desc,
    progress=progress,
  )
  return dataclasses.replace(learner, lora=out.trainable)


def evaluate(learner: Learner, encoded_test, *, batch_size: int) -> dict[str, float]:
  """MCQA accuracy by option log-likelihood (``acc``, ``acc_norm``) on the held-out split."""
  out = mcqa.mcqa_accuracy(learner.logits_fn(), encoded_test, batch_size=batch_size)
  return {"acc": float(out.acc), "acc_norm": float(out.acc_norm)}


def run_round(
  learner,
  selector,
  pool: Pool,
  target,
  test,
  replay,
  config,
  *,
  projector,
  key,
  progress=True,
  desc="",
):
  """Featurize → select → finetune → evaluate for one method.

  Args:
    learner: the method's current learner.
    selector: ``selector(candidates, targets, k, key, mask=...) -> int32[k]``.
    pool: this round's cleaned pool (shared by every method).
    target: training encodings of the labelled target set (the OT target).
    test: scoring encodings of the held-out split.
    replay: training encodings selected in earlier rounds (used if
      ``config.finetune.replay``).
    config: the experiment config.
    projector: the gradient projector (a pytree).
    key: PRNG key for selection and training.
    progress: show progress bars.
    desc: progress-bar label.

  Returns:
    A :class:`RoundOutput`.
  """
  key_sel, key_ft = jax.random.split(key)
  seconds: dict[str, float] = {}
  feat = functools.partial(
    featurize,
    learner.config,
    learner.params,
    learner.lora,
    projector=projector,
    micro_batch=config.features.micro_batch,
  )
  with _timed(seconds, "featurize"):
    cand, targ = feat(pool.encoded), feat(target)
    jax.block_until_ready((cand, targ))
  finite = np.asarray(cand.finite)
  with _timed(seconds, "select"):
    idx = np.asarray(
      selector(cand.features, targ.features, config.budget, key_sel, mask=pool.mask & finite)
    )
  chosen = [pool.examples[i] for i in idx]
  selected = {k: v[idx] for k, v in pool.encoded.items()}
  data = selected
  if config.finetune.replay and replay:
    data = {k: np.concatenate([r[k] for r in replay] + [v]) for k, v in selected.items()}
  with _timed(seconds, "finetune"):
    learner = finetune(learner, data, key=key_ft, cfg=config.finetune, progress=progress, desc=desc)
  with _timed(seconds, "evaluate"):
    metrics = evaluate(learner, test, batch_size=config.eval.batch_size)
  metrics |= {
    "selected_kinds": dict(
      sorted(Counter(ex.meta.get("kind", "unknown") for ex in chosen).items())
    ),
    "non_finite_grads": int((pool.mask & ~finite).sum()),
    "target_non_finite_grads": int((~np.asarray(targ.finite)).sum()),
    "pool_kept": len(pool.examples),
    "seconds": {k: round(v, 3) for k, v in seconds.items()},
  }
  return RoundOutput(learner, metrics, chosen, selected)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str):
  t0 = time.perf_counter()
  yield
  seconds[name] = time.perf_counter() - t0
