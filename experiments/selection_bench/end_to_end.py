"""Stage ``end_to_end``: selecting k of n candidates, features to picks, as the loop does.

For each pool size n: per-example LoRA gradient features of n random-token examples
through the loop's own :func:`~evoselect_jax.loop.featurize` (gradient, projection,
normalisation in one jitted program) and of the m targets, then the configured selector
(EvoSelect: OT relevance, demand-filling greedy with diversity). Compilation is timed
apart: features ahead of time (``jit(...).lower(...).compile()``), the selector by its
first call; then one steady-state call of each, since at n = 100k one call is the
measurement. Reports seconds per stage, candidates per second end to end, and the
chosen options.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from evoselect_jax import loop
from evoselect_jax.features import make_tree_projector
from evoselect_jax.models import llama
from evoselect_jax.selectors import build_selector
from evoselect_jax.train import losses


def _encoded(rng: np.random.Generator, n: int, seq_len: int, vocab: int, answer: int) -> dict:
  """``n`` training encodings of random tokens, the last ``answer`` tokens scored."""
  tokens = rng.integers(0, vocab, (n, seq_len), dtype=np.int32)
  loss_mask = np.zeros((n, seq_len), bool)
  loss_mask[:, -answer:] = True
  attention_mask = np.ones((n, seq_len), bool)
  return {"tokens": tokens, "attention_mask": attention_mask, "loss_mask": loss_mask}


def run(cfg, hw: dict, *, seed: int, repeats: int) -> dict:
  """Times features → selection for each ``cfg.pool_sizes``; see the module docstring."""
  del hw, repeats  # one steady-state call per size (see the module docstring)
  config = llama.LlamaConfig(**cfg.model)
  params, lora = llama.init(config, jax.random.key(seed))
  lora = jax.tree.map(
    lambda x: x + 0.02 * jax.random.normal(jax.random.key(seed + 1), x.shape), lora
  )
  projector = make_tree_projector(
    cfg.projector.name, lora, cfg.projector.out_dim, jax.random.key(seed + 2)
  )
  selector = build_selector(cfg.selector.to_dict())
  rng = np.random.default_rng(seed)
  targets = _encoded(rng, cfg.num_targets, cfg.seq_len, config.vocab_size, cfg.answer_tokens)

  def features_fn(encoded, num_scored):
    return loop.featurize(
      config, params, lora, lora, encoded, projector, None,
      which="lora", micro_batch=cfg.micro_batch, num_scored=num_scored,
    ).features  # fmt: skip

  rows = []
  for n in cfg.pool_sizes:
    pool = _encoded(rng, n, cfg.seq_len, config.vocab_size, cfg.answer_tokens)
    row = {"n": n, "m": cfg.num_targets, "k": cfg.budget}
    feats = {}
    for name, encoded in (("candidates", pool), ("targets", targets)):
      num_scored = losses.num_scored(encoded["loss_mask"])  # as loop.featurize_round
      encoded = jax.tree.map(jnp.asarray, encoded)
      start = time.perf_counter()
      compiled = jax.jit(features_fn, static_argnums=1).lower(encoded, num_scored).compile()
      row[f"{name}_compile_s"] = time.perf_counter() - start
      start = time.perf_counter()
      feats[name] = jax.block_until_ready(compiled(encoded))
      row[f"{name}_features_s"] = time.perf_counter() - start
    key = jax.random.key(seed + 3)

    def select():
      return jax.block_until_ready(
        selector(feats["candidates"], feats["targets"], cfg.budget, key)  # noqa: B023
      )

    start = time.perf_counter()
    first = select()
    row["select_first_s"] = time.perf_counter() - start
    start = time.perf_counter()
    picks = select()
    row["select_s"] = time.perf_counter() - start
    if not np.array_equal(first, picks) or len(set(np.asarray(picks).tolist())) != cfg.budget:
      raise AssertionError(f"n={n}: the selector is not deterministic or repeats a pick")
    row["total_s"] = row["candidates_features_s"] + row["targets_features_s"] + row["select_s"]
    row["candidates_per_s"] = n / row["total_s"]
    row["features_examples_per_s"] = n / row["candidates_features_s"]
    rows.append(row)
    print(f"  end_to_end n={n}: {row}", flush=True)
  summary = {f"end_to_end_s_{r['n']}": r["total_s"] for r in rows} | {
    f"candidates_per_s_{r['n']}": r["candidates_per_s"] for r in rows
  }
  return {
    "rows": rows,
    "summary": summary,
    "plot": {
      "title": "end-to-end selection (steady state)",
      "ylabel": "seconds",
      "labels": [f"n={r['n']}" for r in rows],
      "series": {
        "features": [r["candidates_features_s"] + r["targets_features_s"] for r in rows],
        "selection": [r["select_s"] for r in rows],
      },
    },
  }
