"""A run's directory: where every stage's output lives, so a rerun can resume.

:mod:`evoselect_jax.experiment` walks the stages of a run in a fixed order and, at
each, loads the stage's output from here when it is already on disk, or computes it
and saves it before moving on. What is on disk is always a prefix of the walk, so
rerunning the same command continues at the first stage whose output is missing.
Layout (``S`` a seed, ``RR`` a round, ``M`` a method)::

  config.json              the resolved config; a run with another config is refused
  progress.log             a line per stage as it starts (never read back)
  state/seed_S/
    warmup/0/              orbax: the warmed-up parameters
    round_00/row.json      accuracy before round 1
    round_RR/raw.jsonl     the generator's raw records (one JSON string per line)
    round_RR/raw.partial.jsonl  records of a generation that failed (never read back)
    round_RR/pool.json     the cleaned pool, rejection counts, exemplar picks
    round_RR/M/features.npz    per-example features, target features, selector extras
    round_RR/M/selection.json  selected indices, OT diagnostics, effective budget
    round_RR/M/row.json    the method's metrics row: its round is finished
    learner_M/RR/          orbax CheckpointManager step RR: LoRA, optimizer state
  metrics.jsonl, results.md, accuracy.png, tensorboard/, selections/
                           reports, rewritten from state/ by every run

Files under ``state/`` are written with :mod:`evoselect_jax.atomic_io` (a temporary
name, then a rename) and checkpoints by orbax (a temporary directory, then a rename),
so a stage's output is either complete or absent; leftover temporary files and
directories are never read (orbax deletes its own on the next run).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import orbax.checkpoint as ocp

from evoselect_jax import atomic_io

# Config fields a resumed run may change: none. Every field can change a result:
# even `seeds` and `rounds` move the read position of the `jsonl` generator, which
# hands out its lines in call order across seeds and rounds.
RESUMABLE_CHANGES: frozenset[str] = frozenset()


class ConfigMismatchError(ValueError):
  """The workdir holds a run of another config."""


class WorkdirBusyError(RuntimeError):
  """Another process is running in the workdir."""


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
  """``{"a.b": leaf}`` for the nested dicts of ``value`` (a leaf is anything else)."""
  if not isinstance(value, Mapping) or (prefix and not value):
    return {prefix: value}
  out = {}
  for key in sorted(value):
    out |= flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
  return out


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """Readable differences between two resolved configs (JSON values), by dotted key."""
  old_flat, new_flat = flatten(old), flatten(new)
  missing = object()
  lines = []
  for key in sorted(old_flat.keys() | new_flat.keys()):
    a, b = old_flat.get(key, missing), new_flat.get(key, missing)
    if a != b and key not in RESUMABLE_CHANGES:
      shown = ["(absent)" if v is missing else json.dumps(v) for v in (a, b)]
      lines.append(f"{key}: {shown[0]} in the workdir, {shown[1]} now")
  return lines


class Workdir:
  """Paths and bookkeeping of one run's directory (see the module docstring).

  Attributes:
    root: the directory.
    state: ``root / "state"``, everything a rerun loads.
  """

  def __init__(self, root: str | os.PathLike):
    self.root = pathlib.Path(root)
    self.state = self.root / "state"

  @contextlib.contextmanager
  def lock(self) -> Iterator[None]:
    """Holds an exclusive lock on the workdir (``.lock``) for the block; busy: an error."""
    self.root.mkdir(parents=True, exist_ok=True)
    path = self.root / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
          raise
        owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        raise WorkdirBusyError(
          f"{self.root} is in use by another run (pid {owner}); wait for it to finish or "
          "use another --workdir"
        ) from None
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
      yield
    finally:
      os.close(fd)  # Releases the lock.

  def start(self, config_json: str) -> bool:
    """Checks ``config.json`` against this run's config and writes it.

    Args:
      config_json: the resolved config as JSON.

    Returns:
      Whether the workdir already held a run of this config (a resume).

    Raises:
      ConfigMismatchError: ``config.json`` holds another config; the message lists
        every differing field.
    """
    path = self.root / "config.json"
    new = json.loads(config_json)
    if path.exists():
      old = atomic_io.read_json(path)
      diff = config_diff(old, new)
      if diff:
        raise ConfigMismatchError(
          f"{self.root} holds a run of another config, so it is not resumed; differing "
          f"fields:\n  " + "\n  ".join(diff) + "\nRun with the workdir's config "
          f"({path}) to resume it, or use another --workdir."
        )
      return True
    if self.state.exists():
      raise ConfigMismatchError(
        f"{self.state} exists but {path} does not: cannot tell which config wrote it; "
        "use another --workdir"
      )
    atomic_io.write_text(path, config_json.rstrip("\n") + "\n")
    return False

  def mark(self, text: str) -> None:
    """Appends a line to ``progress.log``: one open, write and close per line."""
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n".encode()
    fd = os.open(self.root / "progress.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      os.write(fd, line)
    finally:
      os.close(fd)

  def seed_dir(self, seed: int) -> pathlib.Path:
    """``state/seed_S``."""
    return self.state / f"seed_{seed}"

  def round_dir(self, seed: int, rnd: int) -> pathlib.Path:
    """``state/seed_S/round_RR``."""
    return self.seed_dir(seed) / f"round_{rnd:02d}"

  def method_dir(self, seed: int, rnd: int, method: str) -> pathlib.Path:
    """``state/seed_S/round_RR/M``."""
    return self.round_dir(seed, rnd) / method

  def selection_output(self, seed: int, method: str, rnd: int) -> pathlib.Path:
    """``selections/seed_S/M/round_RR.jsonl``: the selected examples, for people."""
    return self.root / "selections" / f"seed_{seed}" / method / f"round_{rnd:02d}.jsonl"

  def checkpoints(self, seed: int, name: str) -> Checkpoints:
    """The orbax checkpoints ``state/seed_S/<name>`` (``warmup``, ``learner_M``)."""
    return Checkpoints(self.seed_dir(seed) / name)


class Checkpoints:
  """Numbered pytree checkpoints in one directory (an orbax ``CheckpointManager``).

  Each step holds ``state`` (a pytree of arrays) and ``meta`` (a JSON object). Saves
  are synchronous and atomic (orbax writes a temporary directory, then renames it);
  temporary directories left by a killed save are deleted when this opens.
  """

  def __init__(self, directory: pathlib.Path):
    self.directory = directory
    self._manager: ocp.CheckpointManager | None = None

  def _open(self) -> ocp.CheckpointManager:
    if self._manager is None:
      options = ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True
      )
      self._manager = ocp.CheckpointManager(self.directory.absolute(), options=options)
    return self._manager

  def has(self, step: int) -> bool:
    """Whether step ``step`` was saved completely."""
    if not self.directory.exists():
      return False
    return step in self._open().all_steps()

  def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
    """Saves ``state`` and ``meta`` as step ``step`` (an ``OSError`` names the directory)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    try:
      self._open().save(step, args=args, force=True)
      self._open().wait_until_finished()
    except OSError as e:
      raise OSError(
        e.errno, f"Could not save checkpoint {step} in {self.directory}: {e.strerror or e}"
      ) from e

  def restore(self, step: int, template: Any) -> tuple[Any, dict[str, Any]]:
    """``(state, meta)`` of step ``step``; ``template`` gives the pytree's structure."""
    args = ocp.args.Composite(state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore())
    try:
      out = self._open().restore(step, args=args)
    except (ValueError, OSError, KeyError) as e:
      raise atomic_io.UnreadableFileError(
        f"checkpoint {step} in {self.directory} is unreadable ({type(e).__name__}: {e}); "
        f"delete {self.directory / str(step)} to recompute it"
      ) from e
    return out.state, dict(out.meta)

  def close(self) -> None:
    """Closes the manager (if opened)."""
    if self._manager is not None:
      self._manager.close()
      self._manager = None
