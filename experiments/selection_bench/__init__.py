"""Stages of ``experiments/bench_selection.py``: one module per stage.

A stage module exposes ``run(cfg, hw, *, seed, repeats) -> dict``: ``cfg`` is its
sub-config of ``configs/bench_selection.py``, ``hw`` the machine numbers measured at the
start of the run (:func:`~experiments.selection_bench.timing.measure_hardware`), ``seed``
seeds every input, ``repeats`` is the number of timed calls after the first. It returns
a JSON-able dict with

- ``rows``: one dict per measured case, ours and the peer's side by side (times in
  seconds, compile/first call apart from the steady-state median);
- ``summary``: the ratios the acceptance criteria read (``> 1`` = ours faster);
- ``plot``: ``{"title", "ylabel", "labels": [case, ...], "series": {name: [value per
  case]}}``, drawn as one grouped bar panel of ``bench_selection.png`` (log scale).
"""
