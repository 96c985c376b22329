"""Stage ``diversity``: greedy diversification against a straightforward numpy greedy.

Times :func:`evoselect_jax.selectors.diversity.mmr` (the design's default
diversification, and EvoSelect's near-duplicate update ``max_sim = max(max_sim, cos(u,
u_i))``) and :func:`~evoselect_jax.selectors.diversity.facility_location` over a grid
of pool sizes ``n`` and budgets ``k`` (``cfg.ns`` x ``cfg.ks``, cases with ``n * k >
cfg.max_nk`` skipped, the numpy peer only where ``n * k <= cfg.peer_max_nk``), on
clustered features [n, d] (:func:`..ot.clustered`) with a
uniform random relevance, against the same greedy written in numpy (per pick: one
matrix-vector product, then the running max / coverage and an argmax, as in the
docstrings of the JAX versions). Each row reports seconds per call (compile apart),
picks per second, whether the picks are identical (and the first index where they
differ, float rounding at near-ties being the only expected cause), and XLA's temporary
memory for the compiled greedy (``memory_analysis``: what it allocates beyond its
inputs and outputs; O(n) for MMR, the [n, m] similarities for facility location).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evoselect_jax.selectors import diversity
from experiments.selection_bench.ot import clustered
from experiments.selection_bench.timing import time_interleaved


def _inv_norms(z: np.ndarray) -> np.ndarray:
  norm = np.linalg.norm(z, axis=1)
  return np.where(norm > 0, 1.0 / np.where(norm > 0, norm, 1.0), 0.0).astype(np.float32)


def numpy_mmr(
  relevance: np.ndarray, feats: np.ndarray, k: int, lam: float, mask: np.ndarray
) -> np.ndarray:
  """MMR greedy in numpy: ``argmax_i lam rel_i - (1 - lam) max_{s in S} cos(u_i, u_s)``."""
  inv = _inv_norms(feats)
  lam = np.float32(lam)
  available = mask.copy()
  max_sim = np.full(len(relevance), -np.inf, np.float32)
  picked = np.full(k, -1, np.int32)
  for t in range(k):
    penalty = max_sim if t else np.float32(0.0)
    score = np.where(available, lam * relevance - (1 - lam) * penalty, -np.inf)
    i = int(np.argmax(score))
    if not available[i]:
      break
    picked[t] = i
    available[i] = False
    max_sim = np.maximum(max_sim, (feats @ feats[i]) * inv * inv[i])
  return picked


def numpy_facility_location(
  cand: np.ndarray, targets: np.ndarray, k: int, mask: np.ndarray
) -> np.ndarray:
  """Facility-location greedy in numpy: gain ``sum_j max(cos(v_j, u_i) - cover_j, 0)``."""
  sim = (cand @ (targets * _inv_norms(targets)[:, None]).T) * _inv_norms(cand)[:, None]
  available = mask.copy()
  cover = np.zeros(targets.shape[0], np.float32)
  picked = np.full(k, -1, np.int32)
  for t in range(k):
    gain = np.where(available, np.maximum(sim - cover, 0.0).sum(axis=1), -np.inf)
    i = int(np.argmax(gain))
    if not available[i]:
      break
    picked[t] = i
    available[i] = False
    cover = np.maximum(cover, sim[i])
  return picked


def _temp_bytes(compiled) -> int | None:
  """XLA's temporary allocation of a compiled function, if it reports one."""
  analysis = compiled.memory_analysis()
  return None if analysis is None else int(analysis.temp_size_in_bytes)


def _first_difference(a: np.ndarray, b: np.ndarray) -> int | None:
  diff = np.flatnonzero(np.asarray(a) != np.asarray(b))
  return int(diff[0]) if diff.size else None


def _case(cfg, algo: str, n: int, k: int, feats, targets, relevance, mask) -> dict[str, Any]:
  if algo == "mmr":
    fn = jax.jit(lambda rel, feats, lam, mask: diversity.mmr(rel, feats, k, lam, mask))
    args = (relevance, feats, cfg.lam, mask)
    host = [np.asarray(a) for a in (relevance, feats, mask)]
    peer = lambda: numpy_mmr(host[0], host[1], k, cfg.lam, host[2])  # noqa: E731
  else:
    fn = jax.jit(lambda cand, targets, mask: diversity.facility_location(cand, targets, k, mask))
    args = (feats, targets, mask)
    host = [np.asarray(a) for a in (feats, targets, mask)]
    peer = lambda: numpy_facility_location(host[0], host[1], k, host[2])  # noqa: E731
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  ours = lambda: np.asarray(jax.block_until_ready(compiled(*args)))  # noqa: E731
  calls = {"ours": (ours, cfg.repeats)}
  if n * k <= cfg.peer_max_nk:
    calls["numpy"] = (peer, cfg.repeats)
  timed = time_interleaved(calls)
  ours_t, ours_picks = timed["ours"]
  row = {
    "algo": algo,
    "case": f"{n}x{k}",
    "n": n,
    "k": k,
    "d": cfg.d,
    "ours": {**ours_t, "compile_s": compile_s, "picks_per_s": k / ours_t["median_s"]},
    "numpy": None,
    "speedup_vs_numpy": None,
    "same_picks": None,
    "first_difference": None,
    "xla_temp_bytes": _temp_bytes(compiled),
  }
  if "numpy" in timed:
    peer_t, peer_picks = timed["numpy"]
    row["numpy"] = {**peer_t, "picks_per_s": k / peer_t["median_s"]}
    row["speedup_vs_numpy"] = peer_t["median_s"] / ours_t["median_s"]
    row["same_picks"] = bool(np.array_equal(ours_picks, peer_picks))
    row["first_difference"] = _first_difference(ours_picks, peer_picks)
  return row


def run(cfg, hw: dict[str, Any], *, seed: int, repeats: int) -> dict[str, Any]:
  """Runs the stage (see the module docstring); ``cfg.repeats`` replaces ``repeats``."""
  del hw, repeats
  rows, skipped = [], []
  key = jax.random.key(seed)
  for n in cfg.ns:
    key, k_feats, k_rel = jax.random.split(key, 3)
    feats, targets = clustered(
      k_feats, n, cfg.num_targets, cfg.d, clusters=cfg.clusters, noise=cfg.noise
    )
    relevance = jax.random.uniform(k_rel, (n,), jnp.float32)
    mask = jnp.ones((n,), bool)
    for k in cfg.ks:
      if n * k > cfg.max_nk or k > n:
        skipped.append(f"{n}x{k}")
        continue
      for algo in cfg.algos:
        rows.append(_case(cfg, algo, n, k, feats, targets, relevance, mask))
    del feats, targets
  compared = [r for r in rows if r["numpy"] is not None]
  summary: dict[str, Any] = {
    "same_picks_all": all(r["same_picks"] for r in compared),
    "compared_with_numpy": len(compared),
    "skipped": skipped,
  }
  for r in rows:
    summary[f"{r['algo']}_s_{r['case']}"] = r["ours"]["median_s"]
    if r["numpy"] is not None:
      summary[f"{r['algo']}_speedup_vs_numpy_{r['case']}"] = r["speedup_vs_numpy"]
  labels = [f"{r['algo']} {r['case']}" for r in rows]
  return {
    "rows": rows,
    "summary": summary,
    "plot": {
      "title": f"greedy diversity (d={cfg.d}, facility location m={cfg.num_targets})",
      "ylabel": "seconds per selection",
      "labels": labels,
      "series": {
        "ours (jit)": [r["ours"]["median_s"] for r in rows],
        "numpy": [r["numpy"] and r["numpy"]["median_s"] for r in rows],
      },
    },
  }
