"""Timing helpers shared by the selection benchmarks: compile apart, steady state, machine.

Every measured call must block until its result is ready (``jax.block_until_ready`` for
JAX; PyTorch and numpy on CPU are synchronous). The first call is timed apart (JAX:
tracing and XLA compilation; peers: warm-up), then ``repeats`` calls; the median is the
steady-state time, robust to other processes on a shared machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def time_interleaved(
  calls: dict[str, tuple[Any, int]], done: dict[str, tuple[float, Any]] | None = None
) -> dict[str, tuple[dict[str, float], Any]]:
  """Times ``{name: (fn, repeats)}`` interleaved: first calls, then rounds of one call each.

  Interleaving spreads the load of a shared machine over every solver alike. ``repeats``
  is the number of timed calls after the first (0: the first call is the measurement);
  ``done`` holds ``{name: (seconds, result)}`` of first calls already made. Returns
  ``{name: ({first_s, median_s, min_s}, last result)}``.
  """
  times: dict[str, list[float]] = {name: [] for name in calls}
  results: dict[str, Any] = {name: result for name, (_, result) in (done or {}).items()}
  first: dict[str, float] = {name: seconds for name, (seconds, _) in (done or {}).items()}

  def call(name):
    start = time.perf_counter()
    results[name] = calls[name][0]()
    return time.perf_counter() - start

  for name in calls:
    if name not in first:
      first[name] = call(name)
  for r in range(max(repeats for _, repeats in calls.values())):
    for name, (_, repeats) in calls.items():
      if r < repeats:
        times[name].append(call(name))
  out = {}
  for name in calls:
    timed = times[name] or [first[name]]
    stats = {"first_s": first[name], "median_s": statistics.median(timed), "min_s": min(timed)}
    out[name] = (stats, results[name])
  return out


def time_each(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, Any]]:
  """:func:`time_interleaved` with one ``repeats`` for every call.

  Returns:
    ``{name: {first_s, median_s, min_s, result}}``.
  """
  timed = time_interleaved({name: (fn, repeats) for name, fn in fns.items()})
  return {name: {**stats, "result": result} for name, (stats, result) in timed.items()}


def measure_hardware(*, copy_mb: int, matmul_dim: int, repeats: int = 5) -> dict[str, Any]:
  """The machine's copy bandwidth and float32 matmul rate, measured now.

  Copy: numpy ``np.copyto`` of ``copy_mb`` MiB (GB/s counts bytes read + written, as
  STREAM's copy does). Matmul: ``[dim, dim] @ [dim, dim]`` float32 through numpy (BLAS)
  and through XLA on JAX's default device; the larger is the peak we compare to.

  Returns:
    ``copy_gbps``, ``matmul_gflops_numpy``, ``matmul_gflops_jax``, ``matmul_gflops``
    (the max), ``device`` (JAX's default device kind) and ``num_devices``.
  """
  src = np.ones(copy_mb * 2**20 // 4, np.float32)
  dst = np.empty_like(src)
  copy = time_each({"copy": lambda: np.copyto(dst, src)}, repeats)["copy"]
  copy_gbps = 2 * src.nbytes / copy["min_s"] / 1e9

  a = np.random.default_rng(0).standard_normal((matmul_dim, matmul_dim), np.float32)
  flops = 2 * matmul_dim**3
  np_mm = time_each({"mm": lambda: a @ a}, repeats)["mm"]
  a_jax = jnp.asarray(a)
  mm = jax.jit(lambda x: x @ x)
  jax_mm = time_each({"mm": lambda: mm(a_jax).block_until_ready()}, repeats)["mm"]
  np_gflops = flops / np_mm["min_s"] / 1e9
  jax_gflops = flops / jax_mm["min_s"] / 1e9
  return {
    "copy_gbps": copy_gbps,
    "matmul_gflops_numpy": np_gflops,
    "matmul_gflops_jax": jax_gflops,
    "matmul_gflops": max(np_gflops, jax_gflops),
    "device": jax.devices()[0].device_kind,
    "num_devices": jax.device_count(),
  }
