"""The benchmark figure: one grouped bar panel per stage (see the package docstring)."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_report(report: dict, path: str | pathlib.Path) -> None:
  """Draws each stage's ``plot`` section of ``report`` into one PNG at ``path``."""
  panels = [(name, r["plot"]) for name, r in report["stages"].items() if r.get("plot")]
  if not panels:
    return
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
  for ax, (name, panel) in zip(axes[0], panels, strict=True):
    labels, series = panel["labels"], panel["series"]
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
      values = [np.nan if v is None else v for v in values]
      ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(panel["ylabel"])
    ax.set_title(panel.get("title", name))
    ax.legend(fontsize=7)
  machine = report["machine"]
  fig.suptitle(
    f"selection throughput on {machine['device']} ({machine['num_devices']} device(s)); "
    f"copy {machine['copy_gbps']:.1f} GB/s, matmul {machine['matmul_gflops']:.0f} GFLOP/s",
    fontsize=9,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
