"""Stage ``ot``: OT relevance against POT at equal epsilon and tolerance, and online at 1M.

For each case ``n x m x d`` of ``cfg.cases`` (clustered features, :func:`clustered`):

- ours: :func:`evoselect_jax.ot.solve` jitted, from the features (cost computation
  included), in each mode of ``cfg.modes`` (``kernel``: stored row-stabilised kernel,
  ``lse``: stored cost, log domain), with ``norm_error=2`` so the stopping error is
  POT's;
- POT ``ot.sinkhorn`` (float32 like ours; backend ``cfg.pot_backend``: numpy, or torch on
  ``cfg.pot_device``) and, up to ``cfg.pot_log_max_n`` candidates,
  ``ot.bregman.sinkhorn_log``, each from the same features with the cost computed on its
  backend (``1 - x^ y^T`` for cosine, ``ot.dist`` for sqeuclidean) inside the timed
  call, at our absolute epsilon, ``stopThr = cfg.threshold``, the same ``numItermax``.

Both stop on the L2 norm of the plan's column-marginal error, computed every 10
iterations: POT after iterations 1, 11, 21, ..., ott-jax after 10, 20, 30, ... (so
their iteration counts can differ by up to 10 at the same tolerance). Each row reports,
per solver, seconds (first call apart), iterations, the final column-marginal error
(L2, recomputed from the returned solution), and for ours the mode that ran and the
largest difference of the relevance (calibrated potential, GOT-D) from POT's, in units
of epsilon.

Online (``cfg.online``): the same solve with ``batch_size`` rows per block (nothing
[n, m] stored) in a child process (at this process's matmul precision), which reports
its peak resident memory (``VmHWM`` of ``/proc/self/status``, the whole process:
features, runtime, solve) and, on an accelerator, the device's ``peak_bytes_in_use``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import subprocess
import sys
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evoselect_jax.ot import make_ot_config, solve
from experiments.selection_bench.timing import time_interleaved

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_GIB = 2**30


def _block_rows(n: int, limit: int = 8192) -> int:
  """The largest divisor of ``n`` that is at most ``limit`` (rows generated per block)."""
  return next(b for b in range(min(n, limit), 0, -1) if n % b == 0)


@functools.partial(jax.jit, static_argnames=("n", "m", "d", "clusters", "block"))
def _clustered(key, noise, *, n, m, d, clusters, block):
  k_centres, k_x, k_y = jax.random.split(key, 3)
  centres = jax.random.normal(k_centres, (clusters, d)) / math.sqrt(d)

  def rows(key, count, among):
    k_label, k_noise = jax.random.split(key)
    labels = jax.random.randint(k_label, (count,), 0, among)
    return centres[labels] + noise / math.sqrt(d) * jax.random.normal(k_noise, (count, d))

  keys = jax.random.split(k_x, n // block)
  x = jax.lax.map(lambda k: rows(k, block, clusters), keys).reshape(n, d)
  return x, rows(k_y, m, max(clusters // 2, 1))


def clustered(
  key: jax.Array, n: int, m: int, d: int, *, clusters: int, noise: float
) -> tuple[jax.Array, jax.Array]:
  """Candidates [n, d] from ``clusters`` Gaussian clusters, targets [m, d] from half.

  Centres ``N(0, I/d)``, points ``centre + noise N(0, I/d)`` (cosine to another point of
  the same cluster about ``1 / (1 + noise^2)``), float32, generated ``_block_rows(n)``
  rows at a time so the peak is the output.
  """
  return _clustered(key, noise, n=n, m=m, d=d, clusters=clusters, block=_block_rows(n))


def _ours(config) -> Any:
  """Jitted: features -> what a row reports (relevance, potentials, error, mode)."""

  @jax.jit
  def fn(x, y, a, b):
    out = solve(config, x, y, a, b)
    cols = out.solution.marginals()[1]
    return dict(
      relevance=out.relevance,
      epsilon=out.epsilon,
      iterations=out.iterations,
      converged=out.converged,
      kernel=out.kernel,
      marginal_error_l2=jnp.linalg.norm(cols - b / jnp.sum(b)),
    )

  return fn


def _pot_cost(x, y, cost: str):
  """POT's side of the cost [n, m], float32, on the inputs' backend (numpy or torch)."""
  import ot  # noqa: PLC0415

  if cost == "sqeuclidean":
    return ot.dist(x, y)
  nx = ot.backend.get_backend(x, y)
  xn = x / nx.sqrt(nx.sum(x * x, axis=1, keepdims=True))
  yn = y / nx.sqrt(nx.sum(y * y, axis=1, keepdims=True))
  return 1.0 - xn @ yn.T


def _pot_inputs(cfg, *arrays: np.ndarray) -> tuple[list, Any]:
  """``arrays`` on POT's backend (``cfg.pot_backend``), and a call that waits for its device.

  ``numpy``: as they are; ``torch``: tensors on ``cfg.pot_device`` (``cuda``: POT on the
  GPU, the like-for-like peer of ours there).
  """
  if cfg.pot_backend == "numpy":
    return list(arrays), lambda: None
  if cfg.pot_backend != "torch":
    raise ValueError(f"ot.pot_backend must be numpy or torch, got {cfg.pot_backend!r}")
  import torch  # noqa: PLC0415

  tensors = [torch.tensor(a, device=cfg.pot_device) for a in arrays]
  return tensors, (torch.cuda.synchronize if tensors[0].is_cuda else lambda: None)


def _to_numpy(value):
  """A POT output (backend array, list of them, or plain value) as numpy / Python."""
  if isinstance(value, list):
    return [_to_numpy(v) for v in value]
  return value.detach().cpu().numpy() if hasattr(value, "detach") else value


def _calibrated(f: np.ndarray) -> np.ndarray:
  """GOT-D relevance ``-(f_i - mean_{j != i} f_j)``."""
  f = f.astype(np.float64)
  return -(f - (f.sum() - f) / (len(f) - 1))


def _case(cfg, n: int, m: int, d: int, key: jax.Array, repeats: int) -> dict[str, Any]:
  import ot  # noqa: PLC0415

  x, y = clustered(key, n, m, d, clusters=cfg.clusters, noise=cfg.noise)
  a, b = jnp.ones((n,), jnp.float32), jnp.ones((m,), jnp.float32)
  solver = dict(threshold=cfg.threshold, max_iterations=cfg.max_iterations, norm_error=2)
  calls = {}
  for i, mode in enumerate(cfg.modes):
    config = make_ot_config(cost=cfg.cost, epsilon=cfg.epsilon, mode=mode, **solver)
    fn = _ours(config)
    calls[f"ours_{mode}"] = (
      lambda fn=fn: jax.device_get(jax.block_until_ready(fn(x, y, a, b))),
      repeats if i == 0 else min(repeats, cfg.lse_repeats),
    )
  # POT gets our absolute epsilon (computed in closed form, outside its timed call), read
  # off our first call (compile included)
  main = f"ours_{cfg.modes[0]}"
  start = time.perf_counter()
  first = calls[main][0]()
  done = {main: (time.perf_counter() - start, first)}
  reg = float(first["epsilon"])
  bn = np.full(m, 1 / m, np.float32)
  (xp, yp, ap, bp), sync = _pot_inputs(
    cfg, np.asarray(x), np.asarray(y), np.full(n, 1 / n, np.float32), bn
  )
  peers = {"pot_sinkhorn": (ot.sinkhorn, repeats)}
  if n <= cfg.pot_log_max_n:
    peers["pot_sinkhorn_log"] = (ot.bregman.sinkhorn_log, cfg.pot_log_repeats)
  for name, (method, peer_repeats) in peers.items():

    def pot(method=method):
      cost = _pot_cost(xp, yp, cfg.cost)
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "did not converge" is reported in the row
        plan, log = method(
          ap, bp, cost, reg, numItermax=cfg.max_iterations, stopThr=cfg.threshold, log=True
        )
      sync()
      return plan, log

    calls[name] = (pot, peer_repeats)
  timed = time_interleaved(calls, done)

  row: dict[str, Any] = {"case": f"{n}x{m}x{d}", "n": n, "m": m, "d": d}
  row["epsilon"] = reg
  row["epsilon_relative"] = cfg.epsilon
  pot_f = {}
  for name in peers:
    times, (plan, log) = timed[name]
    plan, log = _to_numpy(plan), {k: _to_numpy(v) for k, v in log.items()}
    pot_f[name] = reg * (log["log_u"] if "log_u" in log else np.log(log["u"]))
    row[name] = {
      **times,
      "iterations": int(log["niter"]) + 1,
      "converged": bool(log["err"][-1] < cfg.threshold),
      "marginal_error_l2": float(np.linalg.norm(plan.sum(0, dtype=np.float64) - bn)),
    }
  for mode in cfg.modes:
    times, out = timed[f"ours_{mode}"]
    entry = {
      **times,
      "iterations": int(out["iterations"]),
      "converged": bool(out["converged"]),
      "mode_ran": "kernel" if out["kernel"] else "lse",
      "marginal_error_l2": float(out["marginal_error_l2"]),
    }
    for name, f in pot_f.items():
      diff = np.abs(out["relevance"].astype(np.float64) - _calibrated(f)).max() / reg
      entry[f"relevance_diff_vs_{name}_over_eps"] = float(diff)
      entry[f"speedup_vs_{name}"] = row[name]["median_s"] / times["median_s"]
    row[f"ours_{mode}"] = entry
  return row


def _vm_hwm_bytes() -> int | None:
  """Peak resident memory of this process (Linux ``VmHWM``), or ``None`` elsewhere."""
  try:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  except OSError:
    return None
  return None


def online_child(args: dict[str, Any]) -> dict[str, Any]:
  """Runs one online solve in this process; the parent reads its memory peak."""
  n, m, d = args["n"], args["m"], args["d"]
  x, y = clustered(
    jax.random.key(args["seed"]), n, m, d, clusters=args["clusters"], noise=args["noise"]
  )
  jax.block_until_ready((x, y))
  after_data = _vm_hwm_bytes()
  config = make_ot_config(
    cost=args["cost"],
    epsilon=args["epsilon"],
    batch_size=args["batch_size"],
    mode=args["mode"],
    threshold=args["threshold"],
    max_iterations=args["max_iterations"],
    norm_error=2,
  )
  a, b = jnp.ones((n,), jnp.float32), jnp.ones((m,), jnp.float32)
  start = time.perf_counter()
  compiled = _ours(config).lower(x, y, a, b).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  out = jax.device_get(jax.block_until_ready(compiled(x, y, a, b)))
  solve_s = time.perf_counter() - start
  hwm = _vm_hwm_bytes()
  stats = jax.devices()[0].memory_stats() or {}
  device_peak = stats.get("peak_bytes_in_use")
  return {
    "case": f"{n}x{m}x{d}",
    "batch_size": args["batch_size"],
    "compile_s": compile_s,
    "solve_s": solve_s,
    "iterations": int(out["iterations"]),
    "converged": bool(out["converged"]),
    "mode_ran": "kernel" if out["kernel"] else "lse",
    "marginal_error_l2": float(out["marginal_error_l2"]),
    "relevance_finite": bool(np.isfinite(out["relevance"]).all()),
    "features_gib": n * d * 4 / _GIB,
    "peak_host_gib_after_data": None if after_data is None else after_data / _GIB,
    "peak_host_gib": None if hwm is None else hwm / _GIB,
    "peak_device_gib": None if device_peak is None else device_peak / _GIB,
    "platform": jax.devices()[0].platform,
    "matmul_precision": jax.config.jax_default_matmul_precision,
    **({"relevance": out["relevance"].tolist()} if args.get("return_relevance") else {}),
  }


def _online(cfg, seed: int) -> dict[str, Any]:
  n, m, d = cfg.online
  args = dict(
    n=n,
    m=m,
    d=d,
    seed=seed,
    clusters=cfg.clusters,
    noise=cfg.noise,
    cost=cfg.cost,
    epsilon=cfg.epsilon,
    batch_size=cfg.online_batch_size,
    mode=cfg.modes[0],
    threshold=cfg.threshold,
    max_iterations=cfg.max_iterations,
  )
  command = [sys.executable, "-m", "experiments.selection_bench.ot", json.dumps(args)]
  env = dict(os.environ)
  precision = jax.config.jax_default_matmul_precision  # the parent's, e.g. the bench's
  if precision:
    env["JAX_DEFAULT_MATMUL_PRECISION"] = precision
  start = time.perf_counter()
  try:
    proc = subprocess.run(
      command, cwd=_ROOT, env=env, capture_output=True, text=True, timeout=cfg.online_timeout_s
    )
  except subprocess.TimeoutExpired:
    return {"case": f"{n}x{m}x{d}", "completed": False, "error": "timeout"}
  wall = time.perf_counter() - start
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode or not lines:
    return {
      "case": f"{n}x{m}x{d}",
      "completed": False,
      "error": f"exit {proc.returncode}: {proc.stderr[-2000:]}",
    }
  return {**json.loads(lines[-1]), "completed": True, "child_wall_s": wall}


def run(cfg, hw: dict[str, Any], *, seed: int, repeats: int) -> dict[str, Any]:
  """Runs the stage (see the module docstring); ``hw`` is unused."""
  del hw
  keys = jax.random.split(jax.random.key(seed), len(cfg.cases))
  rows = [_case(cfg, n, m, d, key, repeats) for (n, m, d), key in zip(cfg.cases, keys, strict=True)]
  summary: dict[str, Any] = {}
  main = f"ours_{cfg.modes[0]}"
  for row in rows:
    case = row["case"]
    summary[f"speedup_vs_pot_{case}"] = row[main]["speedup_vs_pot_sinkhorn"]
    if "pot_sinkhorn_log" in row and "ours_lse" in row:
      summary[f"speedup_lse_vs_pot_log_{case}"] = row["ours_lse"]["speedup_vs_pot_sinkhorn_log"]
    summary[f"relevance_diff_over_eps_{case}"] = row[main][
      "relevance_diff_vs_pot_sinkhorn_over_eps"
    ]
  online = None
  if cfg.online:
    online = _online(cfg, seed)
    case = online["case"]
    summary[f"online_completed_{case}"] = online["completed"]
    if online["completed"]:
      summary[f"online_peak_host_gib_{case}"] = online["peak_host_gib"]
      summary[f"online_peak_device_gib_{case}"] = online["peak_device_gib"]
      summary[f"online_solve_s_{case}"] = online["solve_s"]
      summary[f"online_converged_{case}"] = online["converged"]
  series = {f"ours ({mode})": [r[f"ours_{mode}"]["median_s"] for r in rows] for mode in cfg.modes}
  series["POT sinkhorn"] = [r["pot_sinkhorn"]["median_s"] for r in rows]
  series["POT sinkhorn_log"] = [r.get("pot_sinkhorn_log", {}).get("median_s") for r in rows]
  return {
    "rows": rows,
    "online": online,
    "summary": summary,
    "plot": {
      "title": f"OT relevance (eps {cfg.epsilon} x mean cost, stopThr {cfg.threshold})",
      "ylabel": "seconds per solve (cost included)",
      "labels": [r["case"] for r in rows],
      "series": series,
    },
  }


if __name__ == "__main__":
  print(json.dumps(online_child(json.loads(sys.argv[1]))), flush=True)
