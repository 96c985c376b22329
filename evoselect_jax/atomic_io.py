"""Files written atomically, and read back with errors that name the file.

A write goes to a temporary name in the target's directory (``.<name>.tmp-<pid>``),
is flushed and fsynced, then renamed over the target (``os.replace``, atomic on POSIX
file systems): a reader sees the old file or the whole new one, never a half-written
one, whether the writer runs out of disk, raises or is killed. A failed write removes
its temporary file and raises an ``OSError`` (same ``errno``) naming the target; a
killed writer may leave the temporary file behind, which nothing reads.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


def _write(f: io.BufferedWriter, data: bytes) -> None:
  """Writes ``data`` to the open temporary file (one function, so tests can fail it)."""
  f.write(data)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically (creating parent directories)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    with open(tmp, "wb") as f:
      _write(f, data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    tmp.unlink(missing_ok=True)
    if isinstance(e, OSError):
      raise OSError(e.errno, f"Could not write {path}: {e.strerror or e}") from e
    raise
  _fsync_dir(path.parent)


def _fsync_dir(directory: pathlib.Path) -> None:
  """Makes a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass  # Some file systems do not fsync directories; the rename itself is still atomic.
  finally:
    os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` (UTF-8) to ``path`` atomically."""
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any) -> None:
  """Writes ``value`` as one JSON document to ``path`` atomically."""
  write_text(path, json.dumps(value) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
  """Writes one JSON value per line to ``path`` atomically."""
  write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes ``arrays`` as an uncompressed ``.npz`` to ``path`` atomically."""
  buffer = io.BytesIO()
  np.savez(buffer, **{name: np.asarray(a) for name, a in arrays.items()})
  write_bytes(path, buffer.getvalue())


class UnreadableFileError(ValueError):
  """A file that exists but cannot be parsed (damaged, or written by something else)."""


_HINT = "delete it to have it written again"


def read_json(path: str | os.PathLike) -> Any:
  """The JSON value in ``path``; an :class:`UnreadableFileError` naming it if it does not parse."""
  path = pathlib.Path(path)
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (UnicodeDecodeError, ValueError) as e:
    raise UnreadableFileError(f"{path} is unreadable ({e}); {_HINT}") from None


def read_jsonl(path: str | os.PathLike) -> list[Any]:
  """The JSON values of the lines of ``path`` (see :func:`read_json` for errors)."""
  path = pathlib.Path(path)
  try:
    lines = path.read_text(encoding="utf-8").splitlines()
  except UnicodeDecodeError as e:
    raise UnreadableFileError(f"{path} is unreadable ({e}); {_HINT}") from None
  out = []
  for n, line in enumerate(lines, 1):
    try:
      out.append(json.loads(line))
    except ValueError as e:
      raise UnreadableFileError(f"{path}, line {n}, is unreadable ({e}); {_HINT}") from None
  return out


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The arrays of the ``.npz`` file ``path`` (see :func:`read_json` for errors)."""
  path = pathlib.Path(path)
  try:
    with np.load(path, allow_pickle=False) as data:
      return {name: data[name] for name in data.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    if isinstance(e, FileNotFoundError):
      raise
    raise UnreadableFileError(f"{path} is unreadable ({e}); {_HINT}") from None
