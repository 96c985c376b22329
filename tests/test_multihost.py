"""Two CPU processes on localhost with jax.distributed run one selection round."""

import json
import pathlib
import socket
import subprocess
import sys

import numpy as np
import sharded_round  # tests/sharded_round.py

SCRIPT = pathlib.Path(__file__).with_name("sharded_round.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(num: int, out: pathlib.Path) -> dict:
  port = _free_port()
  procs = [
    subprocess.Popen(
      [sys.executable, str(SCRIPT), str(pid), str(num), str(port), str(out)],
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for pid in range(num)
  ]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  for pid, (p, log) in enumerate(zip(procs, logs, strict=True)):
    assert p.returncode == 0, f"process {pid} of {num} failed:\n{log[-3000:]}"
  return json.loads(out.read_text())


def test_two_processes_select_what_one_process_selects(tmp_path):
  one = sharded_round.run_round(*sharded_round.round_inputs(), layout=None)  # one device
  two = _launch(2, tmp_path / "two.json")
  assert (two["process_count"], two["device_count"]) == (2, 4)  # a mesh over both hosts
  np.testing.assert_allclose(two["candidates"], one["candidates"], atol=2e-5)
  np.testing.assert_allclose(two["relevance"], one["relevance"], rtol=1e-4, atol=1e-5)
  for name in sharded_round.SELECTORS:
    assert two[name] == one[name].tolist(), name  # each process checked it holds the same
