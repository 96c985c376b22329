"""Selection throughput: every stage of EvoSelect timed against its peer in one run.

  python -m experiments.bench_selection --config configs/bench_selection.py --out /tmp/bench

Stages (``experiments/selection_bench/<stage>.py``): per-example gradient features
against the LESS way (PyTorch, one backward per example) and ``torch.func.vmap(grad)``;
projection against a dense numpy matmul and the machine's copy bandwidth; OT relevance
against POT; greedy diversity; end-to-end selection. Compile (first call) and steady
state are reported apart. Writes ``bench_selection.json`` and ``bench_selection.png``
under ``--out`` and prints the summaries.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import platform
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from experiments.selection_bench import plot, timing

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Benchmark config file.", lock_config=True
)
_OUT = flags.DEFINE_string("out", None, "Directory for bench_selection.json and .png.")
flags.mark_flags_as_required(["config", "out"])


def run(config, out: str | pathlib.Path) -> dict:
  """Runs the stages of ``config`` at its matmul precision; writes and returns the report."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  with timing.matmul_precision(config.matmul_precision):
    return _run(config, out)


def _run(config, out: pathlib.Path) -> dict:
  hw = timing.measure_hardware(**config.hardware)
  report = {
    "config": json.loads(config.to_json_best_effort()),
    "machine": {
      **hw,
      "platform": platform.platform(),
      "processor": platform.processor(),
      "jax": jax.__version__,
    },
    "stages": {},
  }
  print(f"machine: {json.dumps(report['machine'])}", flush=True)
  for stage in config.stages:
    module = importlib.import_module(f"experiments.selection_bench.{stage}")
    start = time.perf_counter()
    result = module.run(config[stage], hw, seed=config.seed, repeats=config.repeats)
    result["wall_s"] = time.perf_counter() - start
    report["stages"][stage] = result
    print(f"{stage}: {json.dumps(result['summary'])} ({result['wall_s']:.1f} s)", flush=True)
    _write_json(out / "bench_selection.json", report)  # partial results survive a crash
  plot.plot_report(report, out / "bench_selection.png")
  return report


def _write_json(path: pathlib.Path, obj) -> None:
  """Writes ``obj`` as JSON atomically (a temporary file, then a rename)."""
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(obj, indent=2) + "\n")
  tmp.replace(path)


def main(argv):
  """Runs --config, writing under --out."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # On an accelerator the PyTorch peers and the online OT solve's child process share
  # the device with this process: JAX takes what it uses, not 75% of it up front.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  run(_CONFIG.value, _OUT.value)


if __name__ == "__main__":
  app.run(main)
