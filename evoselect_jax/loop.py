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
import jax.numpy as jnp
import numpy as np

from evoselect_jax import features as features_lib
from evoselect_jax.data import clean as clean_lib
from evoselect_jax.eval import mcqa, prompts
from evoselect_jax.models import llama
from evoselect_jax.train import losses, optim
from evoselect_jax.types import MCQExample


@dataclasses.dataclass(frozen=True)
class Learner:
  """The model being evolved: a frozen base, its LoRA adapters and their optimizer state.

  ``opt_state`` is the AdamW state after the latest fine-tuning (``None`` before
  any); the ``adam`` feature preconditioner reads its moments (LESS).
  """

  config: llama.LlamaConfig
  params: Any
  lora: Any
  opt_state: Any = None

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


FEATURE_PARAMS = ("lora", "last_k_layers", "all")
PRECONDITIONERS = ("sgd", "adam")


def check_features_config(cfg) -> None:
  """Fails at once on an unknown ``features.params`` or ``features.preconditioner``."""
  if cfg.params not in FEATURE_PARAMS:
    raise ValueError(f"Unknown features.params {cfg.params!r}; valid: {', '.join(FEATURE_PARAMS)}")
  if cfg.preconditioner not in PRECONDITIONERS:
    valid = ", ".join(PRECONDITIONERS)
    raise ValueError(f"Unknown features.preconditioner {cfg.preconditioner!r}; valid: {valid}")
  if cfg.preconditioner == "adam" and cfg.params != "lora":
    raise ValueError(
      "features.preconditioner='adam' needs features.params='lora' (the trained ones)"
    )


def feature_params(learner: Learner, which: str, last_k: int = 1) -> Any:
  """The parameters whose per-example gradients are the proxy features.

  Args:
    learner: the current learner.
    which: ``lora`` (the adapters), ``last_k_layers`` (base weights of the last
      ``last_k`` decoder blocks) or ``all`` (every base weight).
    last_k: blocks used by ``last_k_layers``.

  Returns:
    The parameter subtree (a pytree of arrays).
  """
  if which == "lora":
    return learner.lora
  if which == "all":
    return learner.params
  if which == "last_k_layers":
    layers = learner.config.num_layers
    if not 1 <= last_k <= layers:
      raise ValueError(f"features.last_k={last_k} must be in [1, {layers}] (the model's layers)")
    return {f"layers_{i}": learner.params[f"layers_{i}"] for i in range(layers - last_k, layers)}
  raise ValueError(f"Unknown features.params {which!r}; valid: {', '.join(FEATURE_PARAMS)}")


@functools.partial(jax.jit, static_argnames=("config", "which", "micro_batch"))
def featurize(
  config, params, lora, diff, encoded, projector, preconditioner, *, which: str, micro_batch: int
) -> features_lib.Features:
  """Projected, L2-normalised per-example gradients ``[n, out_dim]`` (LESS-style).

  The gradient is that of each example's answer-token cross-entropy with respect to
  ``diff`` (the subtree :func:`feature_params` chose by ``which``), at the current
  model. ``preconditioner`` is ``None`` (plain gradients) or an
  :class:`~evoselect_jax.features.AdamPreconditioner`.
  """

  def loss_fn(d, example):
    if which == "lora":
      return losses.example_loss(config, params, d, example)
    return losses.example_loss(config, params | d, lora, example)

  return features_lib.per_example_features(
    loss_fn, diff, encoded, projector, micro_batch=micro_batch, preconditioner=preconditioner
  )


def _map_chunks(fn, encoded, micro_batch: int) -> jax.Array:
  """``fn(batch) -> [b, ...]`` over ``encoded`` in chunks of ``micro_batch`` rows (lax.map)."""
  n = encoded["tokens"].shape[0]
  size = min(micro_batch, n)
  chunks = -(-n // size)
  index = jnp.minimum(jnp.arange(chunks * size), n - 1).reshape(chunks, size)
  out = jax.lax.map(lambda idx: fn(jax.tree.map(lambda x: x[idx], encoded)), index)
  return out.reshape(chunks * size, *out.shape[2:])[:n]


@functools.partial(jax.jit, static_argnames=("config", "micro_batch"))
def example_losses(config, params, lora, encoded, *, micro_batch: int) -> jax.Array:
  """Per-example answer-token losses ``[n]`` under the current model."""
  return _map_chunks(lambda b: _batch_losses(config, params, lora, b), encoded, micro_batch)


@functools.partial(jax.jit, static_argnames=("config", "micro_batch"))
def example_embeddings(config, params, lora, encoded, *, micro_batch: int) -> jax.Array:
  """Mean final hidden state over each example's real tokens, ``[n, d]``.

  The representation-based (RDS) baseline of Xia et al. 2024 (LESS); the ``embedding``
  selector compares candidates to targets with it.
  """

  def embed(batch):
    h = llama.hidden_states(config, params, lora, batch["tokens"], batch["attention_mask"])
    w = batch["attention_mask"].astype(jnp.float32)[..., None]
    return (h * w).sum(1) / jnp.maximum(w.sum(1), 1.0)

  return _map_chunks(embed, encoded, micro_batch)


def _features(learner: Learner, encoded, projector, cfg, *, candidates: bool):
  """Features of ``encoded`` with the options in ``cfg`` (the config's ``features``).

  The ``adam`` preconditioner applies to candidates only (targets use plain
  gradients, as in LESS), and only once the learner has an optimizer state: in the
  first round there are no moments yet, and the round's metrics say which was used.
  """
  use_adam = candidates and cfg.preconditioner == "adam" and learner.opt_state is not None
  preconditioner = features_lib.adam_preconditioner(learner.opt_state) if use_adam else None
  out = featurize(
    learner.config,
    learner.params,
    learner.lora,
    feature_params(learner, cfg.params, cfg.last_k),
    encoded,
    projector,
    preconditioner,
    which=cfg.params,
    micro_batch=cfg.micro_batch,
  )
  return out, ("adam" if use_adam else "sgd")


def _batch_losses(config, params, lora, batch):
  logits = llama.apply(config, params, lora, batch["tokens"], batch["attention_mask"])
  return losses.token_losses(logits, batch["tokens"], batch["loss_mask"])


def _batch_loss(config, params, lora, batch):
  return _batch_losses(config, params, lora, batch).mean()


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
  return dataclasses.replace(learner, lora=out.trainable, opt_state=out.opt_state)


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
  with _timed(seconds, "featurize"):
    cand, preconditioner = _features(
      learner, pool.encoded, projector, config.features, candidates=True
    )
    targ, _ = _features(learner, target, projector, config.features, candidates=False)
    requires = getattr(selector, "requires", ())
    model = (learner.config, learner.params, learner.lora)
    mb = config.features.micro_batch
    extras = {}
    if "losses" in requires:
      extras["losses"] = example_losses(*model, pool.encoded, micro_batch=mb)
    if "candidate_embeddings" in requires or "target_embeddings" in requires:
      extras["candidate_embeddings"] = example_embeddings(*model, pool.encoded, micro_batch=mb)
      extras["target_embeddings"] = example_embeddings(*model, target, micro_batch=mb)
    jax.block_until_ready((cand, targ, extras))
  finite = np.asarray(cand.finite)
  valid = pool.mask & finite
  budget = int(valid.sum()) if getattr(selector, "whole_pool", False) else config.budget
  with _timed(seconds, "select"):
    idx = np.asarray(selector(cand.features, targ.features, budget, key_sel, mask=valid, **extras))
  chosen = [pool.examples[i] for i in idx]
  selected = {name: v[idx] for name, v in pool.encoded.items()}
  data = selected
  if config.finetune.replay and replay:
    data = {name: np.concatenate([r[name] for r in replay] + [v]) for name, v in selected.items()}
  with _timed(seconds, "finetune"):
    learner = finetune(learner, data, key=key_ft, cfg=config.finetune, progress=progress, desc=desc)
  with _timed(seconds, "evaluate"):
    metrics = evaluate(learner, test, batch_size=config.eval.batch_size)
  metrics |= {
    "selected_kinds": dict(
      sorted(Counter(ex.meta.get("kind", "unknown") for ex in chosen).items())
    ),
    "preconditioner": preconditioner,
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
