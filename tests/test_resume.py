"""Kill-anywhere resume: SIGKILL the smoke run in every stage, rerun the command, compare.

One uninterrupted run is the reference. Then one workdir is run again and again with
the same command: each launch is killed (SIGKILL) at a random moment (0-0.2 s, fixed
seed) inside the next stage of a kind not killed in yet (warm-up, round-0 and
per-method evaluation, generate, clean, featurize, select, finetune, report), and the
next launch resumes it; the last launch finishes.

Stage markers make the kills deterministic: ``progress.log`` is made a named pipe, and
the run opens it afresh for each stage line it writes, so the run blocks at the start
of its next stage until the test reads that line. After reading the line of the wanted
stage the test waits a random 0-0.2 s and kills: the run is then somewhere in the last
stage read (or done with it and blocked before the next). A fast stage's next line can
arrive in the same read; the kill then lands in that later stage, and the next target
is chosen after it.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from evoselect_jax import loop
from evoselect_jax.workdir import Workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMAND = [
  sys.executable,
  "-m",
  "experiments.main",
  "--config",
  "configs/quickstart.py:smoke",
  "--config.rounds=2",
]
STAGES = ("warmup", "evaluate", "generate", "clean", "featurize", "select", "finetune", "report")
MARKER = re.compile(r"^\S+ \S+ (\w+): (.*)$")  # "<date> <time> <stage>: <where>"
LAUNCH_TIMEOUT_S = 300


def _env(cache: pathlib.Path) -> dict[str, str]:
  # Compiled programs are cached on disk across launches: a relaunch does not recompile.
  return os.environ | {
    "JAX_COMPILATION_CACHE_DIR": str(cache),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
  }


def _launch(workdir: pathlib.Path, log: pathlib.Path, env) -> subprocess.Popen:
  with log.open("ab") as out:
    return subprocess.Popen(
      [*COMMAND, f"--workdir={workdir}"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env
    )


def _next_markers(fifo: pathlib.Path, proc: subprocess.Popen) -> list[str]:
  """The run's next stage line (rarely more), or ``[]`` if it exits first.

  Opens the pipe, which blocks until the run opens it for its next line, and reads
  until the run closes it again: the run's next open then blocks until the next call.
  """
  box: dict[str, bytes] = {}

  def read():
    fd = os.open(fifo, os.O_RDONLY)
    try:
      data = b""
      while chunk := os.read(fd, 4096):
        data += chunk
      box["data"] = data
    finally:
      os.close(fd)

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  deadline = time.monotonic() + LAUNCH_TIMEOUT_S
  while reader.is_alive():
    reader.join(0.05)
    if reader.is_alive() and proc.poll() is not None:  # Exited: unblock the reader.
      os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
      reader.join()
    if time.monotonic() > deadline:
      proc.kill()
      raise TimeoutError(f"no stage line within {LAUNCH_TIMEOUT_S} s")
  return box.get("data", b"").decode().splitlines()


def _parse(line: str) -> tuple[str, str]:
  match = MARKER.match(line)
  assert match, line
  return match.group(1), match.group(2)


def _rows(workdir: pathlib.Path) -> list[dict]:
  rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  for row in rows:
    row.pop("seconds", None)  # Wall-clock time, the one thing a rerun cannot repeat.
  return rows


def _final_lora(workdir: pathlib.Path, method: str):
  from configs import quickstart
  from evoselect_jax.registry import MODELS, TASKS

  config = quickstart.get_config("smoke")
  task = TASKS.build(config.task)

  def init(key):  # Traced for the shapes only.
    lora = MODELS.build(config.model, task=task, key=key).lora
    return {"lora": lora, "opt_state": loop.finetune_optimizer(config.finetune).init(lora)}

  template = jax.eval_shape(init, jax.random.key(0))
  ckpt = Workdir(workdir).checkpoints(0, f"learner_{method}")
  try:
    return ckpt.restore(2, template)[0]
  finally:
    ckpt.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run (it also fills the compilation cache for the launches after)."""
  base = tmp_path_factory.mktemp("resume")
  workdir, cache = base / "reference", base / "jax_cache"
  proc = _launch(workdir, base / "reference.log", _env(cache))
  assert proc.wait(timeout=LAUNCH_TIMEOUT_S) == 0, (base / "reference.log").read_text()[-3000:]
  markers = [_parse(x) for x in (workdir / "progress.log").read_text().splitlines()]
  return workdir, cache, markers


def test_sigkill_in_every_stage_then_resume_equals_uninterrupted_run(reference, tmp_path):
  ref_dir, cache, markers = reference
  assert {stage for stage, _ in markers} == set(STAGES)
  rng = np.random.default_rng(7)

  def next_target(after: int, covered: set[str]) -> int | None:
    """The first stage start after ``after`` of a kind not killed in yet."""
    return next(
      (i for i, (stage, _) in enumerate(markers) if i > after and stage not in covered), None
    )

  workdir = tmp_path / "run"
  workdir.mkdir()
  fifo = workdir / "progress.log"
  os.mkfifo(fifo)
  log = tmp_path / "launches.log"
  killed_at: list[int] = []  # indices into markers
  target = next_target(-1, set())
  launches = 0
  while True:
    proc = _launch(workdir, log, _env(cache))
    first, seen = None, []
    while target is None or markers[target] not in seen:
      lines = _next_markers(fifo, proc)
      if not lines:
        break
      seen += [_parse(line) for line in lines]
      first = first or seen[0]
    if killed_at:
      # A relaunch continues in the stage it was killed in, or at the one after.
      prev = killed_at[-1]
      assert first in markers[prev : prev + 2], (first, markers[prev])
    launches += 1
    if target is None:
      assert proc.wait(timeout=LAUNCH_TIMEOUT_S) == 0, log.read_text()[-3000:]
      break
    # The run blocks at each stage line until it is read; a fast stage's next line can
    # arrive in the same read, so the kill lands in the last stage seen.
    time.sleep(rng.uniform(0.0, 0.2))
    proc.send_signal(signal.SIGKILL)
    code = proc.wait(timeout=LAUNCH_TIMEOUT_S)
    assert code == -signal.SIGKILL, f"launch {launches} ended with {code} before its kill"
    killed_at.append(markers.index(seen[-1]))
    target = next_target(killed_at[-1], {markers[i][0] for i in killed_at})
  assert {markers[i][0] for i in killed_at} == set(STAGES), [markers[i] for i in killed_at]
  text = log.read_text()
  assert text.count("Resuming ") == len(killed_at), text[-3000:]

  # Same metrics (no row twice), selections, report and final adapters.
  assert _rows(workdir) == _rows(ref_dir)
  for path in sorted((ref_dir / "selections").rglob("*.jsonl")):
    assert (workdir / path.relative_to(ref_dir)).read_bytes() == path.read_bytes(), path
  assert len(list((ref_dir / "selections").rglob("*.jsonl"))) == 4
  assert (workdir / "results.md").read_text() == (ref_dir / "results.md").read_text()
  for method in ("evoselect", "random"):
    got, want = _final_lora(workdir, method), _final_lora(ref_dir, method)
    jax.tree.map(np.testing.assert_array_equal, got, want)
