"""Every bad input is a counted rejection or an error that names it, and loses nothing.

Each test runs the shrunk quickstart (two rounds where an earlier round must survive)
with one bad input, asserts the message (or the counts in the metrics), and that the
results finished before it are still on disk and load: metrics rows, selections,
pools and the fine-tuned adapters' checkpoints.
"""

import errno
import hashlib
import http.server
import json
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import quickstart
from evoselect_jax import atomic_io, experiment, loop
from evoselect_jax.data.benchmarks import catalog
from evoselect_jax.data.benchmarks.formats import FormatError
from evoselect_jax.eval import prompts
from evoselect_jax.generators.openai import GeneratorError
from evoselect_jax.registry import GENERATORS, MODELS, TASKS
from evoselect_jax.train import losses
from evoselect_jax.types import MCQExample
from evoselect_jax.workdir import ConfigMismatchError, Workdir, WorkdirBusyError

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("evoselect", "random")
RESUME_NOTE = "rerun the same command to resume"


def _config(rounds=2, **fields):
  config = quickstart.get_config("smoke")
  config.rounds = rounds
  for name, value in fields.items():
    config[name] = value
  return config


def _run(config, workdir, logs=None):
  log = logs.append if logs is not None else lambda _: None
  return experiment.run(config, workdir, progress=False, log=log)


def _notes(error: BaseException) -> str:
  return "\n".join(getattr(error, "__notes__", []))


def _snapshot(workdir: pathlib.Path) -> dict[str, str]:
  """Digest of every file under ``workdir`` but the lock (which holds the last run's pid)."""
  return {
    str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(workdir.rglob("*"))
    if p.is_file() and p.name != ".lock"
  }


def _assert_kept(workdir: pathlib.Path, rounds: int) -> list[dict]:
  """Rounds 0..``rounds`` of every method are on disk and load; returns the metric rows."""
  rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {(r["method"], r["round"]) for r in rows} >= {
    (m, r) for m in METHODS for r in range(rounds + 1)
  }
  config = quickstart.get_config("smoke")
  template = _learner_template(config)
  wd = Workdir(workdir)
  for rnd in range(1, rounds + 1):
    pool = atomic_io.read_json(wd.round_dir(0, rnd) / "pool.json")
    assert pool["examples"] and pool["generated"] == config.pool_size
    for method in METHODS:
      row = next(r for r in rows if r["method"] == method and r["round"] == rnd)
      path = wd.selection_output(0, method, rnd)
      chosen = [MCQExample.from_json(x) for x in atomic_io.read_jsonl(path)]
      assert len(chosen) == row["selected"] > 0
      ckpt = wd.checkpoints(0, f"learner_{method}")
      state, _ = ckpt.restore(rnd, template)
      ckpt.close()
      assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(state))
  return rows


def _learner_template(config):
  """Shapes of a saved learner checkpoint (traced, not computed)."""
  task = TASKS.build(config.task)

  def init(key):
    lora = MODELS.build(config.model, task=task, key=key).lora
    return {"lora": lora, "opt_state": loop.finetune_optimizer(config.finetune).init(lora)}

  return jax.eval_shape(init, jax.random.key(0))


def _assert_same_adapters(workdir: pathlib.Path, reference: pathlib.Path, rnd: int) -> None:
  """The adapters and optimizer states saved after round ``rnd`` are equal, bit for bit."""
  template = _learner_template(quickstart.get_config("smoke"))
  for method in METHODS:
    states = []
    for path in (workdir, reference):
      ckpt = Workdir(path).checkpoints(0, f"learner_{method}")
      states.append(ckpt.restore(rnd, template)[0])
      ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, *states)


def _records(n: int, seed: int, **mix) -> list[str]:
  """``n`` raw records of the quickstart's simulated generator (``mix`` overrides fractions)."""
  config = quickstart.get_config("smoke")
  task = TASKS.build(config.task)
  generator = GENERATORS.build(dict(config.generator.to_dict(), **mix), task=task)
  return generator.generate(task.target[:4], n, seed=seed)


BAD = [
  "this is not JSON",  # not_json
  '["a", "list"]',  # not_object
  '{"question": "cards on the table : 1 and 2 . the highest card is ?", "answer": "A"}',
  '{"question": "cards on the table : 3 and 4 . the highest card is ?", '
  '"choices": ["3", "4"], "answer": "B"}',  # two options: bad_choices
  '{"question": "cards on the table : 5 and 6 . the highest card is ?", '
  '"choices": ["5", "6", "7", "8"], "answer": 4}',  # answer out of range: bad_answer
]
BAD_REASONS = ("not_json", "not_object", "missing_field", "bad_choices", "bad_answer")


def _jsonl_config(path: pathlib.Path, lines: list[str], rounds: int, **fields):
  path.write_text("".join(line + "\n" for line in lines))
  return _config(rounds=rounds, generator=dict(name="jsonl", path=str(path)), **fields)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted two-round run."""
  workdir = tmp_path_factory.mktemp("bad_input") / "reference"
  rows = _run(_config(), workdir)
  return workdir, rows


@pytest.fixture(scope="module")
def short_pool(tmp_path_factory):
  """A one-round run on a pool of 12 valid records and 84 malformed ones (BAD, cycled)."""
  base = tmp_path_factory.mktemp("short_pool")
  lines = _records(12, seed=1, malformed=0.0, near_dup=0.0)
  lines += BAD * (84 // len(BAD)) + BAD[: 84 % len(BAD)]
  logs = []
  rows = _run(_jsonl_config(base / "pool.jsonl", lines, rounds=1), base / "run", logs)
  return base, lines, rows, logs


def test_malformed_generator_output_is_rejected_and_counted(short_pool):
  base, lines, rows, _ = short_pool
  expected = {
    reason: sum(line == bad for line in lines) for reason, bad in zip(BAD_REASONS, BAD, strict=True)
  }
  assert sum(expected.values()) == 84
  saved = atomic_io.read_json(base / "run/state/seed_0/round_01/pool.json")
  for row in rows[2:]:
    assert {k: row["rejected"][k] for k in BAD_REASONS} == expected
    assert row["pool_kept"] == len(saved["examples"]) == 96 - sum(row["rejected"].values())
  assert saved["rejected"] == rows[-1]["rejected"]
  _assert_kept(base / "run", rounds=1)


def test_zero_valid_candidates_fails_the_round_and_keeps_earlier_rounds(tmp_path):
  lines = _records(96, seed=1) + BAD * (96 // len(BAD)) + BAD[: 96 % len(BAD)]
  config = _jsonl_config(tmp_path / "pool.jsonl", lines, rounds=2)
  with pytest.raises(ValueError, match=r"Round 2: no valid candidates among 96 generated") as e:
    _run(config, tmp_path / "run")
  assert "not_json" in str(e.value) and "during clean (seed 0 round 2)" in _notes(e.value)
  assert RESUME_NOTE in _notes(e.value)
  _assert_kept(tmp_path / "run", rounds=1)
  raw = atomic_io.read_jsonl(tmp_path / "run" / "state/seed_0/round_02/raw.jsonl")
  assert raw == lines[96:]  # The round's records are kept to look at.


def test_fewer_valid_candidates_than_the_budget(short_pool, tmp_path):
  base, lines, rows, logs = short_pool
  kept = rows[-1]["pool_kept"]
  assert 0 < kept < 16
  for row in rows[2:]:
    assert row["selected"] == row["valid"] == kept and sum(row["selected_kinds"].values()) == kept
  assert any(f"only {kept} valid candidates for a budget of 16" in line for line in logs)
  _assert_kept(base / "run", rounds=1)

  config = _jsonl_config(tmp_path / "pool.jsonl", lines, rounds=1, on_small_pool="fail")
  with pytest.raises(ValueError, match=rf"Only {kept} valid candidates .* budget of 16") as e:
    _run(config, tmp_path / "fail")
  assert "during select (seed 0 round 1 evoselect)" in _notes(e.value)
  assert (tmp_path / "fail/state/seed_0/round_01/evoselect/features.npz").exists()
  assert atomic_io.read_json(tmp_path / "fail/state/seed_0/round_00/row.json")["acc"] >= 0


def test_ot_nonconvergence_is_reported_or_fails_by_config(tmp_path):
  selector = dict(name="evoselect", ot=dict(max_iterations=2, inner_iterations=1))
  logs = []
  rows = _run(_config(rounds=1, selector=selector), tmp_path / "warn", logs)
  ot = next(r for r in rows if r["method"] == "evoselect" and r["round"] == 1)["ot"]
  assert ot["converged"] is False and ot["iterations"] == 2 and ot["marginal_error"] > 1e-3
  assert any("warning: seed 0 round 1 evoselect: the selector's OT solve" in x for x in logs)
  assert "ot" not in rows[-1]  # random solves no OT
  _assert_kept(tmp_path / "warn", rounds=1)

  config = _config(rounds=1, selector=selector, ot_on_nonconvergence="fail")
  with pytest.raises(experiment.OTNotConvergedError, match=r"did not converge in 2 iter") as e:
    _run(config, tmp_path / "fail")
  assert f"target-marginal error {ot['marginal_error']:.3g}" in str(e.value)
  assert RESUME_NOTE in _notes(e.value)
  assert atomic_io.read_json(tmp_path / "fail/state/seed_0/round_00/row.json")["acc"] >= 0
  assert not (tmp_path / "fail/state/seed_0/round_01/evoselect/selection.json").exists()


def test_config_typos_and_unknown_names_fail_before_any_work(reference, tmp_path):
  ref_dir, _ = reference
  before = _snapshot(ref_dir)
  for field, value, error, match in [
    ("selector", dict(name="evoselct"), ValueError, "Unknown selector 'evoselct'; valid names:"),
    ("generator", dict(name="simulatd"), ValueError, "Unknown generator 'simulatd'"),
    ("task", dict(name="synthetc"), ValueError, "Unknown task 'synthetc'"),
    ("selector", dict(name="evoselect", sub_round=3), TypeError, "Bad options for selector"),
    ("ot_on_nonconvergence", "wrn", ValueError, "Unknown ot_on_nonconvergence 'wrn'; valid"),
    ("on_small_pool", "all", ValueError, "Unknown on_small_pool 'all'; valid: select_all, fail"),
  ]:
    with pytest.raises(error, match=match):
      _run(_config(**{field: value}), ref_dir)
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.main", "--config", "configs/quickstart.py:smoke"]
    + [f"--workdir={ref_dir}", "--config.rounds=2", "--config.selector.kk=3"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0 and "kk" in proc.stderr
  assert _snapshot(ref_dir) == before
  _assert_kept(ref_dir, rounds=2)


def test_missing_or_unreadable_data_files(reference, tmp_path, monkeypatch):
  ref_dir, _ = reference
  before = _snapshot(ref_dir)
  # A benchmark's file missing, then malformed.
  monkeypatch.setenv(catalog.DATA_DIR_ENV, str(tmp_path / "data"))
  config = _config(task=dict(name="arc_challenge", num_target=4, num_test=4, seed=0))
  with pytest.raises(FileNotFoundError, match=r"arc_challenge/\w+: no file .*data/arc_chall"):
    _run(config, ref_dir)
  for split in catalog.split_names("arc_challenge"):
    path = catalog.split_path("arc_challenge", split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"id": "x1", "question": \n')
  with pytest.raises(FormatError, match=r"data/arc_challenge/\w+\.jsonl.*line 1"):
    _run(config, ref_dir)
  # A pool file missing, then not UTF-8.
  pool = tmp_path / "pool.jsonl"
  with pytest.raises(FileNotFoundError, match=f"no pool file at '{pool}'"):
    _run(_config(generator=dict(name="jsonl", path=str(pool))), ref_dir)
  pool.write_bytes(b'{"question": "\xff\xfe"}\n')
  with pytest.raises(ValueError, match=f"{pool} is not UTF-8"):
    _run(_config(generator=dict(name="jsonl", path=str(pool))), ref_dir)
  assert _snapshot(ref_dir) == before

  # A damaged file of the workdir's own state: named, with how to recompute it.
  workdir = tmp_path / "damaged"
  shutil.copytree(ref_dir, workdir)
  damaged = workdir / "state/seed_0/round_01/pool.json"
  damaged.write_text(damaged.read_text()[:100])
  message = f"{damaged} is unreadable .*; delete it"
  with pytest.raises(atomic_io.UnreadableFileError, match=message) as e:
    _run(_config(), workdir)
  assert "while loading the saved stages" in _notes(e.value)
  damaged.unlink()  # Deleting it recomputes the round's pool; the rest is loaded.
  logs = []
  rows = _run(_config(), workdir, logs)
  assert any("continuing at clean (seed 0 round 1)" in x for x in logs)
  assert _strip(rows) == _strip(reference[1])
  _assert_same_adapters(workdir, ref_dir, rnd=2)


def _strip(rows):
  return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


class _Server:
  """A fake OpenAI-compatible server: ``up``, ``error`` (HTTP 500) or ``slow`` (sleeps).

  It answers each request with one of ``records`` (chosen by the request's seed) and
  turns to ``error`` once it has answered ``fail_after`` requests.
  """

  def __init__(self, records: list[str], *, port: int = 0, fail_after: int | None = None):
    self.mode = "up"
    self.served = 0
    owner = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_POST(self):  # noqa: N802 (http.server's name)
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if owner.mode == "slow":
          time.sleep(1.0)
        if owner.mode != "up" or owner.served == fail_after:
          owner.mode = "error" if owner.mode == "up" else owner.mode
          self.send_error(500, "overloaded")
          return
        record = records[payload["seed"] % len(records)]
        body = {"choices": [{"message": {"content": record}, "finish_reason": "stop"}]}
        data = json.dumps(body).encode()
        owner.served += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      def log_message(self, *args):
        pass

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    self.server.daemon_threads = True
    self.server.handle_error = lambda *args: None  # Clients that timed out and left.
    self.port = self.server.server_address[1]
    threading.Thread(target=self.server.serve_forever, daemon=True).start()

  def stop(self):
    self.server.shutdown()
    self.server.server_close()


def test_generator_server_down_slow_or_erroring_then_resume(tmp_path):
  workdir = tmp_path / "run"
  records = _records(2000, seed=5)
  server = _Server(records, fail_after=96 + 40)  # Round 1's 96 requests, 40 more, then HTTP 500.
  url = f"http://127.0.0.1:{server.port}/v1"
  generator = dict(
    name="openai",
    base_url=url,
    model="fake",
    concurrency=4,
    timeout_s=0.3,
    max_retries=1,
    backoff_s=0.01,
    max_backoff_s=0.02,
  )
  config = _config(generator=generator)
  partial = workdir / "state/seed_0/round_02/raw.partial.jsonl"
  try:
    kept = first = None
    for mode, reason in [("error", "http_500"), ("slow", "timeout"), ("down", "connection_error")]:
      if mode == "down":
        server.stop()
      server.mode = mode if kept else server.mode
      with pytest.raises(GeneratorError, match=rf"{url}/chat/completions: .*\({reason}\)") as e:
        _run(config, workdir)
      # Round 2's first records (up to the first request in flight at the failure) are kept.
      first = first or atomic_io.read_jsonl(partial)
      assert 36 <= len(first) <= 40 and atomic_io.read_jsonl(partial) == first
      assert f"{len(first)} of 96 records done" in str(e.value)
      assert "during generate (seed 0 round 2)" in _notes(e.value) and RESUME_NOTE in _notes(
        e.value
      )
      rows = _assert_kept(workdir, rounds=1)
      assert rows == (kept or rows)
      kept = rows
      assert not (workdir / "state/seed_0/round_02/raw.jsonl").exists()
    server = _Server(records, port=server.port)  # Back up: the run resumes in round 2.
    logs = []
    rows = _run(config, workdir, logs)
    assert any("continuing at generate (seed 0 round 2)" in x for x in logs)
    assert f"{partial}: continuing after {len(first)} of 96 records" in logs
    assert rows[: len(kept)] == kept and len(rows) == 6
    _assert_kept(workdir, rounds=2)
    assert not partial.exists()
    # The same records and results as a run the server never failed.
    ref = _run(config, tmp_path / "uninterrupted")
    assert _strip(rows) == _strip(ref)
    raw = "state/seed_0/round_02/raw.jsonl"
    assert (workdir / raw).read_text() == (tmp_path / "uninterrupted" / raw).read_text()
  finally:
    server.stop()


def test_workdir_of_another_config_is_refused(reference):
  ref_dir, _ = reference
  before = _snapshot(ref_dir)
  config = _config(rounds=3, budget=12)
  with pytest.raises(ConfigMismatchError) as e:
    _run(config, ref_dir)
  message = str(e.value)
  assert "holds a run of another config" in message
  assert "budget: 16 in the workdir, 12 now" in message
  assert "rounds: 2 in the workdir, 3 now" in message
  assert message.count(" in the workdir, ") == 2
  assert _snapshot(ref_dir) == before


def test_workdir_in_use_is_refused(reference):
  ref_dir, _ = reference
  before = _snapshot(ref_dir)
  with Workdir(ref_dir).lock():  # As another process running in it would hold it.
    with pytest.raises(WorkdirBusyError, match=f"{ref_dir} is in use by another run"):
      _run(_config(), ref_dir)
  assert _snapshot(ref_dir) == before


def test_disk_full_while_writing_keeps_nothing_half_written_and_resumes(
  reference, tmp_path, monkeypatch
):
  ref_dir, ref_rows = reference
  workdir = tmp_path / "run"
  target = "round_02/evoselect/.features.npz.tmp"
  write = atomic_io._write  # noqa: SLF001

  def disk_full(f, data):  # Half the bytes, then ENOSPC, for one file.
    if target in f.name:
      write(f, data[: len(data) // 2])
      raise OSError(errno.ENOSPC, "No space left on device")
    write(f, data)

  monkeypatch.setattr(atomic_io, "_write", disk_full)
  with pytest.raises(OSError, match=r"Could not write .*round_02/evoselect/features.npz") as e:
    _run(_config(), workdir)
  assert e.value.errno == errno.ENOSPC and RESUME_NOTE in _notes(e.value)
  assert not list((workdir / "state/seed_0/round_02/evoselect").glob("*features*"))
  _assert_kept(workdir, rounds=1)
  monkeypatch.undo()

  # Then the disk fills while orbax saves the round's adapters: a partial checkpoint
  # directory is left behind, as a killed save would leave it.
  save = ocp.CheckpointManager.save

  def orbax_disk_full(self, step, *args, **kwargs):
    if step == 2 and "learner_evoselect" in str(self.directory):
      partial = pathlib.Path(self.directory) / f"{step}.orbax-checkpoint-tmp-1234"
      (partial / "state").mkdir(parents=True)
      (partial / "state" / "d").write_bytes(b"\0" * 10)
      raise OSError(errno.ENOSPC, "No space left on device")
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", orbax_disk_full)
  logs = []
  with pytest.raises(OSError, match=r"Could not save checkpoint 2 in .*learner_evoselect"):
    _run(_config(), workdir, logs)
  assert any("continuing at featurize (seed 0 round 2 evoselect)" in x for x in logs)
  monkeypatch.undo()

  logs = []
  rows = _run(_config(), workdir, logs)
  assert any("continuing at finetune (seed 0 round 2 evoselect)" in x for x in logs)
  assert not list((workdir / "state/seed_0/learner_evoselect").glob("*tmp*"))
  assert _strip(rows) == _strip(ref_rows)
  for path in sorted((ref_dir / "selections").rglob("*.jsonl")):
    assert (workdir / path.relative_to(ref_dir)).read_bytes() == path.read_bytes()
  assert (workdir / "results.md").read_text() == (ref_dir / "results.md").read_text()
  _assert_same_adapters(workdir, ref_dir, rnd=2)


# Last in the module: it clears the compiled features step (to trace the NaN loss).
NAN_EVERY = 7  # an example's gradient is NaN when the sum of its token ids divides by this


def _nan_rows(tokens: np.ndarray) -> np.ndarray:
  return tokens.sum(-1) % NAN_EVERY == 0


def test_nan_gradients_are_excluded_counted_and_reported(tmp_path, monkeypatch):
  example_loss = losses.example_loss

  def nan_loss(config, params, lora, example, num=None):  # NaN for the rows _nan_rows picks.
    nan = jnp.where(jnp.sum(example["tokens"]) % NAN_EVERY == 0, jnp.nan, 1.0)
    return example_loss(config, params, lora, example, num) * nan

  monkeypatch.setattr(losses, "example_loss", nan_loss)
  loop.featurize.clear_cache()  # Trace again with the patched loss (and after: untraced).
  try:
    rows = _run(_config(rounds=1), tmp_path)
  finally:
    loop.featurize.clear_cache()

  config = quickstart.get_config("smoke")
  task = TASKS.build(config.task)
  saved = atomic_io.read_json(tmp_path / "state/seed_0/round_01/pool.json")
  examples = [MCQExample.from_json(x) for x in saved["examples"]]
  tokens = loop.encode_pool(
    examples, {}, tokenizer=task.tokenizer, size=96, max_len=config.max_len, round_idx=1
  ).encoded["tokens"][: len(examples)]
  bad = _nan_rows(tokens)
  target = prompts.encode_for_training(task.tokenizer, task.target, config.max_len)["tokens"]
  assert 0 < bad.sum() < len(examples) - 16 and 0 < _nan_rows(target).sum() < len(target)
  for row in rows[2:]:
    assert row["non_finite_grads"] == bad.sum()
    assert row["target_non_finite_grads"] == _nan_rows(target).sum()
    assert row["valid"] == len(examples) - bad.sum()
    chosen = atomic_io.read_jsonl(Workdir(tmp_path).selection_output(0, row["method"], 1))
    assert not any(bad[examples.index(MCQExample.from_json(x))] for x in chosen)
  _assert_kept(tmp_path, rounds=1)
