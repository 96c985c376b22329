"""Several processes (hosts) on one mesh: ``jax.distributed``, one writer, agreement.

A multi-host run starts the same command on every host. :func:`initialize` connects
them (``jax.distributed.initialize``) from the config's ``distributed`` section or, where
that is empty, from the environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``; on TPU pods and SLURM/Open MPI clusters JAX detects them itself).
Then ``jax.devices()`` holds every process's devices and a
:class:`~evoselect_jax.sharding.Layout` spans them. Host-side work that must agree
(which pool a round uses, which examples were selected) is checked or broadcast here;
only process 0 writes files (:func:`is_writer`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize(cfg: Mapping[str, Any] | None = None) -> bool:
  """Connects this process to the others; a no-op for a single-process run.

  Args:
    cfg: ``{"coordinator_address": "host:port", "num_processes": int, "process_id":
      int}``; empty values are read from the environment (:data:`ENV`).
      ``num_processes`` 1 (or nothing set anywhere) means a single process.

  Returns:
    Whether ``jax.distributed`` was initialised.
  """
  cfg = dict(cfg or {})
  address = cfg.get("coordinator_address") or os.environ.get(ENV[0], "")
  num = int(cfg.get("num_processes") or os.environ.get(ENV[1], 1))
  pid = cfg.get("process_id")
  pid = int(os.environ.get(ENV[2], -1) if pid is None or pid < 0 else pid)
  if num == 1:
    return False
  if not address or not 0 <= pid < num:
    raise ValueError(
      f"A run of {num} processes needs distributed.coordinator_address (got {address!r}) "
      f"and a process_id in [0, {num}) (got {pid}), from the config or {', '.join(ENV)}"
    )
  # CPU devices talk across processes through gloo; GPUs and TPUs ignore this flag.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(address, num_processes=num, process_id=pid)
  return True


def is_writer() -> bool:
  """Whether this process writes metrics and files (process 0)."""
  return jax.process_index() == 0


def broadcast_json(obj: Any) -> Any:
  """Process 0's ``obj`` (JSON-able) on every process; ``obj`` itself on a single one.

  For host-side decisions only process 0 makes, such as a generated pool when the
  generator is not deterministic (a sampling server).
  """
  if jax.process_count() == 1:
    return obj
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int64(data.size)))
  buf = np.zeros(size, np.uint8)
  if is_writer():
    buf[:] = data
  buf = np.asarray(multihost_utils.broadcast_one_to_all(buf))
  return json.loads(buf.tobytes().decode())


def check_agree(name: str, value: np.ndarray) -> None:
  """Fails with a clear message unless every process holds the same ``value``."""
  if jax.process_count() == 1:
    return
  value = np.asarray(value)
  every = np.asarray(multihost_utils.process_allgather(value))
  differ = [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]
  if differ:
    raise RuntimeError(f"Processes {differ} disagree with process 0 on {name}")


def host_array(x: jax.Array) -> np.ndarray:
  """A replicated global array as a host numpy array, on any process."""
  if jax.process_count() == 1 or x.is_fully_addressable:
    return np.asarray(x)
  if not x.is_fully_replicated:
    raise ValueError(f"host_array needs a replicated array, got sharding {x.sharding}")
  return np.asarray(x.addressable_data(0))
