"""Stage ``projection``: GB/s of gradient consumed by each projector, against numpy and the machine.

Each case of ``cfg.cases`` (``name`` and ``options`` of a registered projector) projects
``cfg.rows`` float32 gradient rows to ``cfg.out_dim``:

- structured kinds (``kronecker``, ``sjlt``) a weight-gradient leaf of shape
  ``cfg.structured_shape`` (``kronecker`` views it as that [d_in, d_out] matrix);
- dense kinds (``gaussian``, ``rademacher``), which store [in_dim, out_dim], rows of
  ``cfg.dense_in_dim``.

Ours: the projector jitted (``p(x)``). numpy: the same map with numpy (BLAS), ``x @ M``
for the dense kinds, ``(x.reshape(n·a, b) @ P_b)`` then ``P_a`` for ``kronecker``
(``sjlt`` has no fast numpy form: its numpy reference, ``np.add.at``, is checked but not
timed). Each row: GB/s of input consumed (``rows · in_dim · 4 B / s``), that as a
fraction of the measured copy bandwidth (STREAM copy, read + write), achieved GFLOP/s
against the measured matmul peak, and ``max_rel_diff`` of ours from the explicit dense
numpy matrix (``x @ P``, P from projecting the identity) when ``in_dim · out_dim <=
cfg.dense_check_entries``, else from the numpy form above, on ``cfg.check_rows`` rows.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evoselect_jax import features
from experiments.selection_bench.timing import time_each

DENSE = ("gaussian", "rademacher")


def _label(case) -> str:
  options = dict(case.get("options", {}))
  if case["name"] == "kronecker" and "out_shape" in options:
    return "kronecker {}x{}".format(*options["out_shape"])
  if case["name"] == "sjlt":
    return f"sjlt s={options.get('nonzeros', 4)}"
  return case["name"]


def _flops(proj, rows: int) -> float:
  """Multiply-adds x 2 of one call."""
  if isinstance(proj, features.DenseProjector):
    return 2.0 * rows * proj.in_dim * proj.out_dim
  if isinstance(proj, features.KroneckerProjector):
    (a, b), (r_a, r_b) = proj.in_shape, proj.out_shape
    return 2.0 * rows * a * r_b * (b + r_a)
  return 2.0 * rows * proj.in_dim * proj.rows.shape[1]  # sjlt: one multiply-add per nonzero


def numpy_projection(proj) -> Any:
  """The fast numpy form of ``proj`` (``None`` for ``sjlt``)."""
  if isinstance(proj, features.DenseProjector):
    matrix = np.asarray(proj.matrix)
    return lambda x: x @ matrix
  if isinstance(proj, features.KroneckerProjector):
    left, right = np.asarray(proj.left), np.asarray(proj.right)
    (a, b), (r_a, r_b) = proj.in_shape, proj.out_shape

    def kron(x):
      y = (x.reshape(-1, b) @ right).reshape(x.shape[0], a, r_b)
      return np.einsum("nas,ar->nrs", y, left).reshape(x.shape[0], r_a * r_b)

    return kron
  return None


def _sjlt_numpy(proj, x: np.ndarray) -> np.ndarray:
  rows, values = np.asarray(proj.rows), np.asarray(proj.values)
  out = np.zeros((x.shape[0], proj.out_dim), np.float64)
  for r in range(rows.shape[1]):
    for i in range(x.shape[0]):
      np.add.at(out[i], rows[:, r], x[i] * values[:, r])
  return out


def _reference(cfg, proj, x: np.ndarray) -> tuple[np.ndarray, str]:
  """The numpy result for the check rows ``x``, and which reference it is."""
  if proj.in_dim * proj.out_dim <= cfg.dense_check_entries:
    dense = np.asarray(jax.jit(lambda p: p(jnp.eye(p.in_dim, dtype=jnp.float32)))(proj))
    return x.astype(np.float64) @ dense.astype(np.float64), "dense matrix"
  fast = numpy_projection(proj)
  if fast is not None:
    return fast(x), "numpy form"
  return _sjlt_numpy(proj, x), "numpy add.at"


def run(cfg, hw: dict[str, Any], *, seed: int, repeats: int) -> dict[str, Any]:
  """Times every case of ``cfg.cases``; see the module docstring."""
  rng = np.random.default_rng(seed)
  structured_dim = math.prod(cfg.structured_shape)
  inputs = {
    "structured": rng.standard_normal((cfg.rows, structured_dim), np.float32),
    "dense": rng.standard_normal((cfg.rows, cfg.dense_in_dim), np.float32),
  }
  project = jax.jit(lambda p, x: p(x))
  rows = []
  for i, case in enumerate(cfg.cases):
    name, options = case["name"], dict(case.get("options", {}))
    kind = "dense" if name in DENSE else "structured"
    x_np = inputs[kind]
    in_dim = x_np.shape[1]
    if name in ("kronecker", "factored"):
      options.setdefault("in_shape", tuple(cfg.structured_shape))
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    proj = features.make_projector(name, in_dim, cfg.out_dim, jax.random.key(seed + i), **options)
    x = jnp.asarray(x_np)
    fns = {"ours": lambda proj=proj, x=x: np.asarray(jax.block_until_ready(project(proj, x)))}
    fast = numpy_projection(proj)
    if fast is not None:
      fns["numpy"] = functools.partial(fast, x_np)
    times = time_each(fns, repeats)
    check = x_np[: cfg.check_rows]
    want, reference = _reference(cfg, proj, check)
    got = times["ours"]["result"][: cfg.check_rows]
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    gigabytes, flops = x_np.nbytes / 1e9, _flops(proj, cfg.rows)
    row = {"case": _label(case), "name": name, "in_dim": in_dim, "out_dim": cfg.out_dim}
    for method, timing in times.items():
      gbps = gigabytes / timing["median_s"]
      row |= {
        f"{method}_first_s": timing["first_s"],
        f"{method}_median_s": timing["median_s"],
        f"{method}_gbps": gbps,
        f"{method}_fraction_of_copy": gbps / hw["copy_gbps"],
        f"{method}_gflops": flops / timing["median_s"] / 1e9,
        f"{method}_fraction_of_matmul_peak": flops / timing["median_s"] / 1e9 / hw["matmul_gflops"],
      }
    row |= {"max_rel_diff": rel, "reference": reference}
    rows.append(row)

  structured = [r for r in rows if r["name"] not in DENSE]
  best = max(structured, key=lambda r: r["ours_gbps"])
  dense = [r for r in rows if r["name"] in DENSE]
  summary = {
    "copy_gbps": hw["copy_gbps"],
    "matmul_gflops": hw["matmul_gflops"],
    "best_projector": best["case"],
    "best_projector_gbps": best["ours_gbps"],
    "best_projector_fraction_of_copy": best["ours_fraction_of_copy"],
    "max_rel_diff_vs_numpy": max(r["max_rel_diff"] for r in rows),
  }
  for r in rows:
    key = r["case"].replace(" ", "_").replace("=", "")
    summary[f"{key}_gbps"] = r["ours_gbps"]
  if dense:  # a dense projection does 2·out_dim flops per input float: compute-bound
    summary["dense_numpy_gbps"] = max(r["numpy_gbps"] for r in dense)
    summary["dense_jax_gbps"] = max(r["ours_gbps"] for r in dense)
  labels = [r["case"] for r in rows]
  plot = {
    "title": "projection (input consumed)",
    "ylabel": "GB/s",
    "labels": labels,
    "series": {
      "ours (jax)": [r["ours_gbps"] for r in rows],
      "numpy": [r.get("numpy_gbps") for r in rows],
      "copy bandwidth": [hw["copy_gbps"]] * len(rows),
    },
  }
  return {"rows": rows, "summary": summary, "plot": plot}
