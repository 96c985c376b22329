"""What a run leaves for people: metrics.jsonl, TensorBoard events, a table, a plot."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import tensorboardX  # noqa: E402


class MetricsWriter:
  """Appends one JSON object per (round, method) and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: pathlib.Path):
    self.path = workdir / "metrics.jsonl"
    self._tb_dir = workdir / "tensorboard"
    self._writers: dict[str, tensorboardX.SummaryWriter] = {}

  def write(self, row: dict[str, Any]) -> None:
    """Writes ``row`` (needs ``method`` and ``round``)."""
    with self.path.open("a") as f:
      f.write(json.dumps(row) + "\n")
    method = row["method"]
    if method not in self._writers:
      self._writers[method] = tensorboardX.SummaryWriter(str(self._tb_dir / method))
    for name, value in _scalars(row):
      self._writers[method].add_scalar(name, value, global_step=row["round"])
    self._writers[method].flush()

  def close(self) -> None:
    """Closes the TensorBoard writers."""
    for w in self._writers.values():
      w.close()


def _scalars(row: dict[str, Any], prefix: str = ""):
  for k, v in row.items():
    if k in ("method", "round"):
      continue
    if isinstance(v, dict):
      yield from _scalars(v, f"{prefix}{k}/")
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
      yield f"{prefix}{k}", v


def format_table(rows: list[dict[str, Any]], methods: list[str], metric: str = "acc") -> str:
  """A per-round text table of ``metric`` (columns = methods)."""
  rounds = sorted({r["round"] for r in rows})
  by = {(r["round"], r["method"]): r for r in rows}
  width = max(10, *(len(m) for m in methods))
  lines = ["round " + " ".join(f"{m:>{width}}" for m in methods)]
  for rnd in rounds:
    cells = [
      f"{by[rnd, m][metric]:>{width}.3f}" if (rnd, m) in by else " " * width for m in methods
    ]
    lines.append(f"{rnd:>5} " + " ".join(cells))
  return "\n".join(lines)


def plot_accuracy(
  rows: list[dict[str, Any]], methods: list[str], path: pathlib.Path, title: str
) -> None:
  """Target-task test accuracy per round, one line per method."""
  fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
  for m in methods:
    pts = sorted((r["round"], r["acc"]) for r in rows if r["method"] == m)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_xlabel("round")
  ax.set_ylabel("test accuracy (target task)")
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
