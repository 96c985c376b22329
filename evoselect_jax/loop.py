"""One round of the loop: generate → clean → featurize → select → finetune → evaluate.

:func:`make_pool` (:func:`clean_pool`, then :func:`encode_pool`) turns a round's raw
generator output into a cleaned, encoded pool; then one function per stage runs on it
for one method's learner (:func:`featurize_round`, :func:`select_round`,
:func:`finetune`, :func:`evaluate`), so :mod:`evoselect_jax.experiment` can save each
stage's output and resume between them. Each takes an optional sharding layout
(:mod:`evoselect_jax.sharding`). Shapes are static across rounds (the pool is padded to
``pool_size`` rows with a mask; features and training run on rows cropped to a few
power-of-two widths), so little recompiles after the first round.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evoselect_jax import distributed, sharding
from evoselect_jax import features as features_lib
from evoselect_jax.data import clean as clean_lib
from evoselect_jax.eval import packed, prompts
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


def clean_pool(raw: list[str], *, test, round_idx: int, clean_cfg) -> clean_lib.CleanOutput:
  """Cleans a round's raw generator output; an error if no record survives."""
  cleaned = clean_lib.clean(raw, test=test, id_prefix=f"r{round_idx}-", **clean_cfg)
  if not cleaned.examples:
    raise ValueError(
      f"Round {round_idx}: no valid candidates among {len(raw)} generated records; "
      f"rejections by reason: {dict(cleaned.rejected)}"
    )
  return cleaned


def encode_pool(
  examples: list[MCQExample], rejected: Counter, *, tokenizer, size: int, max_len: int, round_idx
) -> Pool:
  """Encodes cleaned examples, padded to ``size`` rows."""
  if len(examples) > size:
    raise ValueError(f"Round {round_idx}: {len(examples)} candidates exceed pool size {size}")
  encoded = prompts.encode_for_training(tokenizer, examples, max_len)
  pad = size - len(examples)
  encoded = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) for k, v in encoded.items()}
  mask = np.arange(size) < len(examples)
  return Pool(list(examples), encoded, mask, Counter(rejected))


def make_pool(
  raw: list[str], *, test, tokenizer, size: int, max_len: int, round_idx: int, clean_cfg
) -> Pool:
  """Cleans raw generator output and encodes it, padded to ``size`` rows."""
  cleaned = clean_pool(raw, test=test, round_idx=round_idx, clean_cfg=clean_cfg)
  return encode_pool(
    cleaned.examples,
    cleaned.rejected,
    tokenizer=tokenizer,
    size=size,
    max_len=max_len,
    round_idx=round_idx,
  )


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
  projector = getattr(cfg, "projector", None)
  if cfg.preconditioner == "adam" and projector is not None and projector.name == "factored":
    raise ValueError(
      "features.projector.name='factored' needs features.preconditioner='sgd': the adam "
      "preconditioner is elementwise on the gradient, which the factored path never forms"
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


@functools.partial(
  jax.jit, static_argnames=("config", "which", "micro_batch", "num_scored", "layout")
)
def featurize(
  config,
  params,
  lora,
  diff,
  encoded,
  projector,
  preconditioner,
  *,
  which: str,
  micro_batch: int,
  num_scored: int | None = None,
  layout: sharding.Layout | None = None,
) -> features_lib.Features:
  """Projected, L2-normalised per-example gradients ``[n, out_dim]`` (LESS-style).

  The gradient is that of each example's answer-token cross-entropy with respect to
  ``diff`` (the subtree :func:`feature_params` chose by ``which``), at the current
  model. ``preconditioner`` is ``None`` (plain gradients) or an
  :class:`~evoselect_jax.features.AdamPreconditioner`. ``num_scored`` (at least
  :func:`~evoselect_jax.train.losses.num_scored` of ``encoded``) scores only the
  positions that predict answer tokens; ``None`` scores all. With a ``layout``, the examples
  are split over its ``data`` axis and each device featurises its own
  (:func:`~evoselect_jax.sharding.map_rows`); the rows stay sharded.
  """

  def rows_features(replicated, rows):
    params, lora, diff, projector, preconditioner = replicated

    def loss_fn(d, example):
      if which == "lora":
        return losses.example_loss(config, params, d, example, num_scored)
      return losses.example_loss(config, params | d, lora, example, num_scored)

    if getattr(projector, "factored", False):  # from layer factors, no per-example gradients
      if preconditioner is not None:
        raise ValueError("The factored projector cannot apply the adam preconditioner")
      collection = "lora" if which == "lora" else "params"
      return features_lib.factored_features(
        config,
        params,
        lora,
        diff,
        rows,
        projector,
        collection=collection,
        micro_batch=micro_batch,
        num_scored=num_scored,
      )
    return features_lib.per_example_features(
      loss_fn, diff, rows, projector, micro_batch=micro_batch, preconditioner=preconditioner
    )

  replicated = (params, lora, diff, projector, preconditioner)
  return sharding.map_rows(rows_features, layout, replicated, encoded)


def _map_chunks(fn, encoded, micro_batch: int) -> jax.Array:
  """``fn(batch) -> [b, ...]`` over ``encoded`` in chunks of ``micro_batch`` rows (lax.map)."""
  n = encoded["tokens"].shape[0]
  size = min(micro_batch, n)
  chunks = -(-n // size)
  index = jnp.minimum(jnp.arange(chunks * size), n - 1).reshape(chunks, size)
  out = jax.lax.map(lambda idx: fn(jax.tree.map(lambda x: x[idx], encoded)), index)
  return out.reshape(chunks * size, *out.shape[2:])[:n]


@functools.partial(jax.jit, static_argnames=("config", "micro_batch", "num_scored"))
def example_losses(
  config, params, lora, encoded, *, micro_batch: int, num_scored: int | None = None
) -> jax.Array:
  """Per-example answer-token losses ``[n]`` under the current model (see :func:`featurize`)."""
  return _map_chunks(
    lambda b: losses.batch_losses(config, params, lora, b, num_scored), encoded, micro_batch
  )


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


def _by_length(fn, encoded, rows: np.ndarray, *, size: int, chunk: int, min_length: int, layout):
  """``fn(batch, num_scored)`` over the ``rows`` of ``encoded``, in chunks of similar length.

  Per-example work need not run on padding: the rows are grouped by their width (their
  real tokens rounded up to a power of two, at least ``min_length``:
  :func:`~evoselect_jax.train.losses.padded_width`), each group is cut into chunks of
  ``chunk`` rows (the last one filled with copies of its first row) and each chunk is
  cropped to its width, so a few shapes are compiled once and no pool padding is
  computed. ``num_scored`` is that of all the rows, at most the width - 1. With a
  ``layout``, each chunk is split over its ``data`` axis.

  Returns:
    ``fn``'s outputs as host arrays with leading axis ``size``; rows not in ``rows`` are
    zeros (False).
  """
  if not len(rows):
    raise ValueError("No rows to featurize")
  encoded = {name: np.asarray(x) for name, x in encoded.items()}
  mask = encoded["attention_mask"]
  t = mask.shape[1]
  num = losses.num_scored(encoded["loss_mask"][rows])
  widths = losses.padded_width(losses.real_lengths(mask[rows]), t, max(min_length, num + 1))
  done = []
  for width in np.unique(widths):
    group = rows[widths == width]
    for start in range(0, len(group), chunk):
      idx = group[start : start + chunk]
      full = np.concatenate([idx, np.repeat(idx[:1], chunk - len(idx))])
      batch = {name: x[full, :width] for name, x in encoded.items()}
      if layout is not None:
        batch = sharding.put(batch, layout.sharding("rows"))
      done.append((idx, fn(batch, min(num, int(width) - 1))))
  outs = sharding.to_host([out for _, out in done], layout)
  result = jax.tree.map(lambda x: np.zeros((size, *x.shape[1:]), x.dtype), outs[0])
  for (idx, _), out in zip(done, outs, strict=True):
    jax.tree.map(lambda r, x, idx=idx: r.__setitem__(idx, x[: len(idx)]), result, out)
  return result


def _features(
  learner: Learner, encoded, projector, cfg, *, candidates: bool, rows=None, layout=None
):
  """Features of ``encoded``'s ``rows`` (default all) with the options in ``cfg`` (``features``).

  The rows run in chunks of similar length (:func:`_by_length`); the others get zero
  features, not finite. The ``adam`` preconditioner applies to candidates only (targets
  use plain gradients, as in LESS), and only once the learner has an optimizer state: in
  the first round there are no moments yet, and the round's metrics say which was used.

  Returns:
    The :class:`~evoselect_jax.features.Features` (host arrays) and ``"adam"`` or ``"sgd"``.
  """
  use_adam = candidates and cfg.preconditioner == "adam" and learner.opt_state is not None
  preconditioner = features_lib.adam_preconditioner(learner.opt_state) if use_adam else None
  fn = functools.partial(
    featurize,
    learner.config,
    learner.params,
    learner.lora,
    feature_params(learner, cfg.params, cfg.last_k),
    projector=projector,
    preconditioner=preconditioner,
    which=cfg.params,
    micro_batch=cfg.micro_batch,
    layout=layout,
  )
  n = len(encoded["tokens"])
  out = _by_length(
    lambda batch, num: fn(batch, num_scored=num),
    encoded,
    np.arange(n) if rows is None else rows,
    size=n,
    **_chunking(cfg, layout),
  )
  return out, ("adam" if use_adam else "sgd")


def _chunking(cfg, layout) -> dict[str, Any]:
  """:func:`_by_length`'s chunks for the ``features`` options ``cfg``."""
  data_size = 1 if layout is None else layout.data_size
  return dict(chunk=cfg.micro_batch * data_size, min_length=cfg.min_length, layout=layout)


def _batch_loss(config, params, num_scored, lora, batch):
  return losses.batch_losses(config, params, lora, batch, num_scored).mean()


def finetune_optimizer(cfg):
  """The AdamW of :func:`finetune` for the config's ``finetune`` options."""
  return optim.make_optimizer(
    "adamw", learning_rate=cfg.learning_rate, total_steps=cfg.steps, warmup_steps=cfg.steps // 10
  )


def finetune(
  learner: Learner,
  data: dict[str, np.ndarray],
  *,
  key,
  cfg,
  progress=True,
  desc="finetune",
  layout: sharding.Layout | None = None,
) -> Learner:
  """Trains the LoRA adapters on ``data`` (training encodings) with AdamW.

  Each batch is cut to its longest row rounded up to a power of two, at least
  ``cfg.min_length`` (:func:`~evoselect_jax.train.losses.crop_padding`). With a
  ``layout``, each batch is split over its ``data`` axis (data parallel).
  """
  optimizer = finetune_optimizer(cfg)
  num_scored = losses.num_scored(data["loss_mask"])
  # scored_positions reads num_scored of the t - 1 predicting positions
  min_length = max(cfg.min_length, num_scored + 1)
  out = optim.fit(
    functools.partial(_batch_loss, learner.config, learner.params, num_scored),
    learner.lora,
    data,
    steps=cfg.steps,
    batch_size=cfg.batch_size,
    optimizer=optimizer,
    key=key,
    desc=desc,
    progress=progress,
    batch_sharding=None if layout is None else layout.sharding("rows"),
    crop=functools.partial(losses.crop_padding, min_length=min_length),
  )
  return dataclasses.replace(learner, lora=out.trainable, opt_state=out.opt_state)


def evaluate(
  learner: Learner, encoded_test, *, batch_tokens: int, min_length: int
) -> dict[str, float]:
  """MCQA accuracy by option log-likelihood (``acc``, ``acc_norm``) on the held-out split.

  ``encoded_test`` is :func:`~evoselect_jax.eval.encode_packed`'s: each question's options
  are scored after one pass over its prompt
  (:func:`~evoselect_jax.eval.packed_mcqa_accuracy`, ``batch_tokens`` tokens per forward
  pass, rows padded to powers of two from ``min_length``).
  """
  out = packed.packed_mcqa_accuracy(
    learner.logits_fn(), encoded_test, batch_tokens=batch_tokens, min_length=min_length
  )
  return {"acc": float(out.acc), "acc_norm": float(out.acc_norm)}


SMALL_POOL_POLICIES = ("select_all", "fail")


@dataclasses.dataclass(frozen=True)
class RoundFeatures:
  """The featurize stage's output for one method (host arrays).

  Attributes:
    candidates: ``[size, out_dim]`` pool features; zero rows where not finite.
    candidate_finite: ``bool[size]``, False where a candidate's gradient had a NaN/inf
      and on the pool's padding rows.
    targets: ``[m, out_dim]`` target features.
    target_finite: ``bool[m]``.
    extras: the selector's required extras (see
      :data:`~evoselect_jax.selectors.EXTRAS`), host arrays.
    preconditioner: ``sgd`` or ``adam``, what the candidates used.
  """

  candidates: np.ndarray
  candidate_finite: np.ndarray
  targets: np.ndarray
  target_finite: np.ndarray
  extras: dict[str, np.ndarray]
  preconditioner: str


@dataclasses.dataclass(frozen=True)
class Selection:
  """The select stage's output.

  Attributes:
    indices: ``int32[k]`` selected pool rows, in selection order.
    budget: ``k``: the config's budget, or fewer when fewer candidates were valid.
    valid: candidates that could be selected (in the pool, finite gradient).
    ot: for selectors that solve OT, the report of the solve their picks start from
      (GOT-D's one solve, EvoSelect's first sub-round; ``converged``, ``iterations``,
      ``marginal_error`` = ``||P^T 1 - b||_1``, :class:`~evoselect_jax.ot.OTReport`);
      else ``None``.
  """

  indices: np.ndarray
  budget: int
  valid: int
  ot: dict[str, Any] | None


def featurize_round(
  learner: Learner,
  selector,
  pool: Pool,
  target,
  config,
  *,
  projector,
  layout: sharding.Layout | None = None,
  shared: RoundFeatures | None = None,
):
  """Per-example features of the pool and the target set, and the selector's extras.

  Only the pool's real rows are featurised, in chunks of rows of similar length cropped
  to it (:func:`_by_length`, ``features.min_length``); padding rows get zero features,
  not finite. With a ``layout``, each chunk is split over its ``data`` axis and each
  device featurises its own rows (the pool size must divide by the axis, for the
  selection's sharding).

  Args:
    learner: the method's learner.
    selector: the method's selector (its ``requires`` says which extras to compute).
    pool: the round's pool.
    target: the target set's training encodings.
    config: the run's config.
    projector: the gradient projector.
    layout: the sharding layout, or ``None`` for one device.
    shared: another method's features of this ``pool`` under this same ``learner``
      (methods share the learner until their first fine-tuning): its gradient features
      are reused, and only this selector's extras are computed.

  Returns:
    A :class:`RoundFeatures` (host arrays).
  """
  cfg = config.features
  if layout is not None and len(pool.mask) % layout.data_size:
    raise ValueError(
      f"pool_size={len(pool.mask)} must be a multiple of the mesh's data axis "
      f"({layout.data_size} devices)"
    )
  real = np.flatnonzero(pool.mask)
  if shared is None:
    cand, preconditioner = _features(
      learner, pool.encoded, projector, cfg, candidates=True, rows=real, layout=layout
    )
    targ, _ = _features(learner, target, projector, cfg, candidates=False, layout=layout)
    shared = RoundFeatures(
      cand.features, cand.finite, targ.features, targ.finite, {}, preconditioner
    )
  requires = getattr(selector, "requires", ())
  model = (learner.config, learner.params, learner.lora)
  chunking = _chunking(cfg, layout)
  pool_rows = functools.partial(
    _by_length, encoded=pool.encoded, rows=real, size=len(pool.mask), **chunking
  )
  extras = {}
  if "losses" in requires:
    extras["losses"] = pool_rows(
      lambda b, num: example_losses(*model, b, micro_batch=cfg.micro_batch, num_scored=num)
    )
  if "candidate_embeddings" in requires or "target_embeddings" in requires:
    embed = lambda b, num: example_embeddings(*model, b, micro_batch=cfg.micro_batch)
    extras["candidate_embeddings"] = pool_rows(embed)
    m = len(target["tokens"])
    extras["target_embeddings"] = _by_length(embed, target, np.arange(m), size=m, **chunking)
  return dataclasses.replace(shared, extras={name: np.asarray(v) for name, v in extras.items()})


def select_round(
  selector,
  feats: RoundFeatures,
  pool: Pool,
  config,
  *,
  key,
  small_pool: str = "select_all",
  layout: sharding.Layout | None = None,
) -> Selection:
  """Selects ``config.budget`` valid candidates (a finite gradient, in the pool).

  Target rows with a non-finite gradient are left out of the target set. With fewer
  valid candidates than the budget, ``small_pool="select_all"`` selects every valid
  one (the returned ``budget`` says how many) and ``"fail"`` raises a ``ValueError``.
  With a ``layout``, the candidate rows are split over its ``data`` axis and the
  targets replicated, so the OT solve and the greedy run sharded.
  """
  valid = pool.mask & feats.candidate_finite
  n_valid = int(valid.sum())
  n_real = int(pool.mask.sum())
  if not n_valid:
    raise ValueError(
      f"No candidate has a finite gradient ({n_real} in the pool, all NaN/inf); "
      "check the learner and the pool"
    )
  if not feats.target_finite.any():
    raise ValueError(f"No target example has a finite gradient (all {len(feats.targets)} NaN/inf)")
  targets = feats.targets[feats.target_finite]
  extras = dict(feats.extras)
  if "target_embeddings" in extras:
    extras["target_embeddings"] = extras["target_embeddings"][feats.target_finite]
  if getattr(selector, "whole_pool", False):
    budget = n_valid
  elif n_valid < config.budget:
    if small_pool == "fail":
      raise ValueError(
        f"Only {n_valid} valid candidates ({n_real} in the pool, "
        f"{n_real - n_valid} with NaN/inf gradients) for a budget of {config.budget} "
        "(on_small_pool='fail'; 'select_all' selects them all)"
      )
    budget = n_valid
  else:
    budget = config.budget
  candidates = feats.candidates
  if layout is not None:
    candidates = sharding.put(candidates, layout.sharding("rows", "features"))
    targets = sharding.put(targets, layout.sharding("targets", "features"))
    extras = {
      name: sharding.put(v, layout.sharding("targets" if name == "target_embeddings" else "rows"))
      for name, v in extras.items()
    }
  if hasattr(selector, "select"):  # a CoreSelector: the indices and its OT report
    out = selector.select(candidates, targets, budget, key, mask=valid, **extras)
  else:  # any callable of the selector protocol
    out = selector(candidates, targets, budget, key, mask=valid, **extras), None
  idx, report = sharding.to_host(out, layout)
  distributed.check_agree("the selection", idx)
  ot = None if report is None else report.to_dict()
  return Selection(np.asarray(idx, np.int32), budget, n_valid, ot)


def selected_data(pool: Pool, indices: np.ndarray) -> dict[str, np.ndarray]:
  """Training encodings of the selected pool rows."""
  return {name: v[indices] for name, v in pool.encoded.items()}


def training_data(selected: dict[str, np.ndarray], replay: list, config) -> dict[str, np.ndarray]:
  """This round's selection, after earlier rounds' selections if ``config.finetune.replay``."""
  if config.finetune.replay and replay:
    return {name: np.concatenate([r[name] for r in replay] + [v]) for name, v in selected.items()}
  return selected


def round_metrics(
  evaluated: dict[str, float],
  pool: Pool,
  feats: RoundFeatures,
  selection: Selection,
  chosen: list[MCQExample],
  seconds: dict[str, float],
) -> dict[str, Any]:
  """The JSON-ready metrics of one method's round."""
  kinds = Counter(ex.meta.get("kind", "unknown") for ex in chosen)
  out = dict(evaluated) | {
    "selected_kinds": dict(sorted(kinds.items())),
    "preconditioner": feats.preconditioner,
    "non_finite_grads": int((pool.mask & ~feats.candidate_finite).sum()),
    "target_non_finite_grads": int((~feats.target_finite).sum()),
    "pool_kept": len(pool.examples),
    "rejected": dict(sorted(pool.rejected.items())),
    "selected": len(chosen),
    "valid": selection.valid,
  }
  if selection.ot is not None:
    out["ot"] = selection.ot
  return out | {"seconds": {k: round(v, 3) for k, v in seconds.items()}}
