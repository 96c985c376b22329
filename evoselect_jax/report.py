"""What a run leaves for people: metrics.jsonl, TensorBoard events, a table, a plot."""

from __future__ import annotations

import io
import pathlib
import shutil
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import tensorboardX  # noqa: E402

from evoselect_jax import atomic_io  # noqa: E402


class MetricsWriter:
  """``metrics.jsonl`` (one JSON object per seed, round and method) and TensorBoard scalars.

  Rows come in run order, those a resumed run loaded first. ``metrics.jsonl`` is
  rewritten whole (atomically) on each :meth:`flush`, so it never holds a duplicate
  or a half-written row; the first flush also rebuilds ``tensorboard/`` from every
  row so far (a resumed run rewrites what an interrupted one wrote).

  Attributes:
    rows: every row added, in order.
  """

  def __init__(self, workdir: pathlib.Path):
    self.path = workdir / "metrics.jsonl"
    self._tb_dir = workdir / "tensorboard"
    self._writers: dict[str, tensorboardX.SummaryWriter] | None = None
    self._in_tensorboard = 0
    self.rows: list[dict[str, Any]] = []

  def add(self, row: dict[str, Any], *, new: bool) -> None:
    """Adds ``row`` (needs ``method`` and ``round``); writes the files if it is ``new``.

    A loaded row (``new=False``) is already in the files of the run that computed it;
    they are rewritten at the next new row or :meth:`flush`.
    """
    self.rows.append(row)
    if new:
      self.flush()

  def flush(self) -> None:
    """Writes every row to ``metrics.jsonl`` and the new ones to TensorBoard."""
    atomic_io.write_jsonl(self.path, self.rows)
    if self._writers is None:
      shutil.rmtree(self._tb_dir, ignore_errors=True)
      self._writers = {}
    for row in self.rows[self._in_tensorboard :]:
      method = row["method"]
      if method not in self._writers:
        self._writers[method] = tensorboardX.SummaryWriter(str(self._tb_dir / method))
      for name, value in _scalars(row):
        self._writers[method].add_scalar(name, value, global_step=row["round"])
    self._in_tensorboard = len(self.rows)
    for w in self._writers.values():
      w.flush()

  def close(self) -> None:
    """Closes the TensorBoard writers."""
    for w in (self._writers or {}).values():
      w.close()


def _scalars(row: dict[str, Any], prefix: str = ""):
  for k, v in row.items():
    if k in ("method", "round"):
      continue
    if isinstance(v, dict):
      yield from _scalars(v, f"{prefix}{k}/")
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
      yield f"{prefix}{k}", v


def _by_method(rows: list[dict[str, Any]], method: str, rnd: int, metric: str) -> np.ndarray:
  return np.array([r[metric] for r in rows if r["method"] == method and r["round"] == rnd])


def format_table(rows: list[dict[str, Any]], methods: list[str], metric: str = "acc") -> str:
  """A per-round text table of ``metric`` (columns = methods; mean ± std over seeds)."""
  rounds = sorted({r["round"] for r in rows})
  width = max(13, *(len(m) for m in methods))
  lines = ["round " + " ".join(f"{m:>{width}}" for m in methods)]
  for rnd in rounds:
    cells = []
    for m in methods:
      v = _by_method(rows, m, rnd, metric)
      cell = (
        ""
        if not len(v)
        else f"{v.mean():.3f}"
        if len(v) == 1
        else f"{v.mean():.3f} ± {v.std():.3f}"
      )
      cells.append(f"{cell:>{width}}")
    lines.append(f"{rnd:>5} " + " ".join(cells))
  return "\n".join(lines)


def results_table(rows: list[dict[str, Any]], methods: list[str]) -> str:
  """Markdown table of final-round test accuracy per method: mean ± std over seeds.

  Also lists what each method selected in total (the generator's ground-truth kinds).
  """
  last = max(r["round"] for r in rows)
  seeds = sorted({r["seed"] for r in rows})
  lines = [
    f"Final test accuracy after round {last}, mean ± std over seeds {seeds}:",
    "",
    "| method | acc | acc_norm | per seed (acc) | selected, all rounds and seeds |",
    "|---|---|---|---|---|",
  ]
  order = sorted(methods, key=lambda m: -_by_method(rows, m, last, "acc").mean())
  for m in order:
    acc, norm = _by_method(rows, m, last, "acc"), _by_method(rows, m, last, "acc_norm")
    kinds: dict[str, int] = {}
    for r in rows:
      if r["method"] == m:
        for k, v in r.get("selected_kinds", {}).items():
          kinds[k] = kinds.get(k, 0) + v
    total = sum(kinds.values()) or 1
    picked = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(kinds.items()))
    per_seed = " ".join(f"{a:.3f}" for a in acc)
    cells = [m, f"{acc.mean():.3f} ± {acc.std():.3f}", f"{norm.mean():.3f} ± {norm.std():.3f}"]
    lines.append("| " + " | ".join([*cells, per_seed, picked]) + " |")
  return "\n".join(lines)


def plot_accuracy(
  rows: list[dict[str, Any]], methods: list[str], path: pathlib.Path, title: str
) -> None:
  """Target-task test accuracy per round, one line per method (mean, shaded ± std over seeds)."""
  fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
  rounds = sorted({r["round"] for r in rows})
  colors = plt.get_cmap("tab20").colors
  for i, m in enumerate(methods):
    stats = [_by_method(rows, m, rnd, "acc") for rnd in rounds]
    mean = np.array([v.mean() for v in stats])
    std = np.array([v.std() for v in stats])
    color = colors[(2 * i) % 20 + (2 * i) // 20]  # the strong shades first, then the light
    ax.plot(rounds, mean, marker="o", label=m, color=color, linewidth=2.5 if i == 0 else 1.2)
    if any(len(v) > 1 for v in stats):
      ax.fill_between(rounds, mean - std, mean + std, alpha=0.12, color=color)
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_xlabel("round")
  ax.set_ylabel("test accuracy (target task)")
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  plt.close(fig)
  atomic_io.write_bytes(path, buffer.getvalue())
