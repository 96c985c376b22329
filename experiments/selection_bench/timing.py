"""Timing helpers shared by the selection benchmarks: compile apart, steady state, machine.

Every measured call must block until its result is ready (``jax.block_until_ready`` for
JAX; PyTorch and numpy on CPU are synchronous). The first call is timed apart (JAX:
tracing and XLA compilation; peers: warm-up), then ``repeats`` calls; the median is the
steady-state time, robust to other processes on a shared machine.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
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


# Float32 matmul precisions by JAX's name, with PyTorch's name for the same arithmetic.
MATMUL_PRECISIONS = {"float32": "highest", "tensorfloat32": "high", "bfloat16": "medium"}


@contextlib.contextmanager
def matmul_precision(name: str) -> Iterator[None]:
  """Inside, JAX's and PyTorch's float32 matmuls run at ``name`` (a key of MATMUL_PRECISIONS).

  Their defaults differ on accelerators: JAX's on a GPU is tensorfloat32 (bfloat16
  passes on a TPU), PyTorch's float32; on a CPU both compute in float32 either way.
  """
  import torch

  if name not in MATMUL_PRECISIONS:
    raise ValueError(f"matmul_precision must be one of {list(MATMUL_PRECISIONS)}, got {name!r}")
  previous = torch.get_float32_matmul_precision()
  torch.set_float32_matmul_precision(MATMUL_PRECISIONS[name])
  try:
    with jax.default_matmul_precision(name):
      yield
  finally:
    torch.set_float32_matmul_precision(previous)


class Laps:
  """Wall seconds between successive :meth:`lap` calls, summed by name in ``seconds``."""

  def __init__(self):
    self.seconds: dict[str, float] = {}
    self._last = time.perf_counter()

  def lap(self, name: str) -> None:
    """Adds the seconds since the previous lap (or construction) to ``seconds[name]``."""
    now = time.perf_counter()
    self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
    self._last = now


def measure_hardware(*, copy_mb: int, matmul_dim: int, repeats: int = 5) -> dict[str, Any]:
  """The machine's copy bandwidth and float32 matmul rate, measured now.

  Each through numpy on the host and through XLA on JAX's default device, the larger
  being the peak we compare to (on a CPU numpy's, on an accelerator the device's).
  Copy: ``copy_mb`` MiB, GB/s counting bytes read + written as STREAM's copy does
  (numpy ``np.copyto``; XLA ``x + 1``, the same traffic, which XLA cannot elide).
  Matmul: ``[dim, dim] @ [dim, dim]``.

  Returns:
    ``copy_gbps_numpy``, ``copy_gbps_jax``, ``copy_gbps`` (the max),
    ``matmul_gflops_numpy``, ``matmul_gflops_jax``, ``matmul_gflops`` (the max),
    ``device`` (JAX's default device kind) and ``num_devices``.
  """
  src = np.ones(copy_mb * 2**20 // 4, np.float32)
  dst = np.empty_like(src)
  src_jax = jnp.asarray(src)
  plus_one = jax.jit(lambda x: x + 1)
  a = np.random.default_rng(0).standard_normal((matmul_dim, matmul_dim), np.float32)
  a_jax = jnp.asarray(a)
  mm = jax.jit(lambda x: x @ x)
  timed = time_each(
    {
      "copy_numpy": lambda: np.copyto(dst, src),
      "copy_jax": lambda: plus_one(src_jax).block_until_ready(),
      "matmul_numpy": lambda: a @ a,
      "matmul_jax": lambda: mm(a_jax).block_until_ready(),
    },
    repeats,
  )
  copy = {k: 2 * src.nbytes / timed[f"copy_{k}"]["min_s"] / 1e9 for k in ("numpy", "jax")}
  flops = {k: 2 * matmul_dim**3 / timed[f"matmul_{k}"]["min_s"] / 1e9 for k in ("numpy", "jax")}
  return {
    "copy_gbps_numpy": copy["numpy"],
    "copy_gbps_jax": copy["jax"],
    "copy_gbps": max(copy.values()),
    "matmul_gflops_numpy": flops["numpy"],
    "matmul_gflops_jax": flops["jax"],
    "matmul_gflops": max(flops.values()),
    "device": jax.devices()[0].device_kind,
    "num_devices": jax.device_count(),
  }
