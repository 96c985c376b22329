"""Device meshes and logical sharding: which array axis lives on which mesh axis.

The mesh has two named axes, ``data`` and ``model`` (config ``mesh=dict(data=-1,
model=1)``; ``-1`` takes the devices the other axis leaves). Code names array axes
logically (``rows``: candidates, examples, a training batch; ``targets``: the OT target
set; ``features``; model axes such as ``heads``, ``mlp``, ``vocab``, ``embed``) and the
config's ``sharding_rules`` map each logical name to a mesh axis or ``None``
(replicated), as in levanter and maxtext, so a new layout is a config change:

- per-example gradients and projections shard ``rows`` over ``data``
  (:func:`map_rows`: each device featurises its own rows, no gradient crosses devices);
- OT shards the candidate ``rows`` and replicates the ``targets``;
- training splits each batch's ``rows`` over ``data`` (data parallel; XLA all-reduces
  the gradients), with the parameters replicated or, for a model axis > 1, sharded by
  their logical names (:func:`param_shardings`).

Arrays are placed with :func:`put`, which also builds global arrays when several
processes share the mesh (:mod:`evoselect_jax.distributed`): every process passes the
same host array and contributes the rows its devices hold.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from evoselect_jax import distributed

MESH_AXES = ("data", "model")
DEFAULT_RULES = (
  ("rows", "data"),  # candidates, examples, a training batch
  ("targets", None),  # OT targets: replicated on every device
  ("features", None),
  ("seq", None),
  ("embed", None),
  ("heads", "model"),  # attention projections' head dimension
  ("mlp", "model"),  # the MLP's hidden dimension
  ("vocab", "model"),
)


@dataclasses.dataclass(frozen=True)
class Layout:
  """A mesh and the logical → mesh axis rules; hashable, so a static ``jit`` argument.

  Attributes:
    mesh: the device mesh with axes ``data`` and ``model``.
    rules: ``((logical_name, mesh_axis_or_None), ...)``.
  """

  mesh: Mesh
  rules: tuple[tuple[str, str | None], ...] = DEFAULT_RULES

  @property
  def data_size(self) -> int:
    """Devices along ``data``."""
    return self.mesh.shape["data"]

  def spec(self, *logical: str | None) -> PartitionSpec:
    """The ``PartitionSpec`` of an array whose axes have these logical names."""
    table = dict(self.rules)
    unknown = [name for name in logical if name is not None and name not in table]
    if unknown:
      raise ValueError(f"No sharding rule for logical axes {unknown}; rules: {dict(self.rules)}")
    return PartitionSpec(*(None if name is None else table[name] for name in logical))

  def sharding(self, *logical: str | None) -> NamedSharding:
    """The ``NamedSharding`` of an array whose axes have these logical names."""
    return NamedSharding(self.mesh, self.spec(*logical))

  @property
  def replicated(self) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(self.mesh, PartitionSpec())


def make_layout(
  mesh: Mapping[str, int],
  rules: Sequence[Sequence[str | None]] = DEFAULT_RULES,
  devices: Sequence[jax.Device] | None = None,
) -> Layout:
  """Builds the :class:`Layout` of a config's ``mesh`` and ``sharding_rules``.

  Args:
    mesh: ``{"data": int, "model": int}``; one of them may be ``-1`` (the rest of the
      devices). Without a ``-1`` the mesh takes the first ``data * model`` devices.
    rules: ``(logical_name, mesh_axis_or_None)`` pairs.
    devices: the devices to use; every device of every process by default.

  Returns:
    The layout (mesh axes in auto mode: XLA propagates shardings through jitted code).
  """
  unknown = sorted(set(mesh) - set(MESH_AXES))
  if unknown or set(mesh) != set(MESH_AXES):
    raise ValueError(f"mesh needs exactly the axes {MESH_AXES}, got {dict(mesh)}")
  devices = list(jax.devices() if devices is None else devices)
  sizes = {name: int(mesh[name]) for name in MESH_AXES}
  fill = [name for name, size in sizes.items() if size == -1]
  if len(fill) > 1 or any(size == 0 or size < -1 for size in sizes.values()):
    raise ValueError(f"mesh sizes must be positive, with at most one -1; got {sizes}")
  known = math.prod(size for size in sizes.values() if size != -1)
  if fill:
    if len(devices) % known:
      raise ValueError(f"mesh {sizes}: {len(devices)} devices do not divide by {known}")
    sizes[fill[0]] = len(devices) // known
  if math.prod(sizes.values()) > len(devices):
    raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, have {len(devices)}")
  devices = devices[: math.prod(sizes.values())]
  for pair in rules:
    if len(pair) != 2 or (pair[1] is not None and pair[1] not in MESH_AXES):
      raise ValueError(
        f"sharding rule {tuple(pair)!r} must be (logical_name, one of {MESH_AXES} or None)"
      )
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  shape = tuple(sizes[name] for name in MESH_AXES)
  built = jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
  return Layout(built, tuple((str(a), b) for a, b in rules))


def single_device_layout() -> Layout:
  """A 1 × 1 layout on the default device: the unsharded reference."""
  return make_layout({"data": 1, "model": 1}, devices=jax.devices()[:1])


def put(x: Any, shardings: Any) -> Any:
  """Places host arrays (a pytree) with ``shardings``; global arrays across processes.

  ``shardings`` is one ``NamedSharding`` for every leaf or a pytree of them shaped
  like ``x``. Every process must pass the same values: each contributes the slices
  its own devices hold (``jax.make_array_from_callback``), so nothing is sent between
  hosts.
  """

  def one(leaf, sharding):
    if isinstance(leaf, jax.Array) and (leaf.sharding == sharding or not leaf.is_fully_addressable):
      return leaf if leaf.sharding == sharding else jax.device_put(leaf, sharding)
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda leaf: one(leaf, shardings), x)
  return jax.tree.map(one, x, shardings)


def pad_rows(x: Any, multiple: int) -> tuple[Any, int]:
  """Pads every leaf's leading axis to a multiple of ``multiple`` by repeating row 0.

  Returns:
    The padded pytree and the original number of rows.
  """
  n = jax.tree.leaves(x)[0].shape[0]
  pad = -n % multiple
  if not pad:
    return x, n
  index = np.concatenate([np.arange(n), np.zeros(pad, np.int64)])
  return jax.tree.map(lambda leaf: leaf[index], x), n


def map_rows(
  fn: Callable[[Any, Any], Any], layout: Layout | None, replicated: Any, rows: Any
) -> Any:
  """``fn(replicated, rows)`` with ``rows`` split over the ``data`` axis (``shard_map``).

  ``fn`` must treat rows independently (per-example gradients, projections, losses):
  each device runs it on its own rows with the ``replicated`` arguments, and the
  outputs (leading axis = rows) stay sharded over ``data``. Rows are padded to a
  multiple of the data size and sliced back. The ``model`` axis stays automatic, so
  parameters sharded over it are still partitioned by XLA. With ``layout`` ``None`` or
  one data device, it is ``fn(replicated, rows)``. Traceable: call it inside ``jit``.
  """
  if layout is None or layout.data_size == 1:
    return fn(replicated, rows)
  padded, n = pad_rows(rows, layout.data_size)
  row = layout.spec("rows")
  mapped = jax.shard_map(
    fn,
    mesh=layout.mesh,
    in_specs=(PartitionSpec(), row),
    out_specs=row,
    axis_names=frozenset({"data"}),
    check_vma=False,
  )
  out = mapped(replicated, padded)
  return jax.tree.map(lambda y: y[:n], out)


def to_host(x: Any, layout: Layout | None) -> Any:
  """Host numpy copies of the arrays in ``x`` (a pytree), on every process.

  Sharded arrays are gathered to every device first, so this also works when other
  processes hold some of the rows.
  """
  if layout is not None:
    x = jax.jit(lambda t: t, out_shardings=layout.replicated)(x)
  return jax.tree.map(distributed.host_array, x)


# Logical axes of the decoder's weights by parameter name (evoselect_jax.models.llama):
# the first matching suffix wins; unnamed weights are replicated.
PARAM_AXES = (
  ("q_proj", ("embed", "heads")),
  ("k_proj", ("embed", "heads")),
  ("v_proj", ("embed", "heads")),
  ("o_proj", ("heads", "embed")),
  ("gate_proj", ("embed", "mlp")),
  ("up_proj", ("embed", "mlp")),
  ("down_proj", ("mlp", "embed")),
  ("embed_tokens", ("vocab", "embed")),
  ("lm_head", ("embed", "vocab")),
)


def param_shardings(params: Any, layout: Layout) -> Any:
  """A ``NamedSharding`` per parameter: by its logical axes, where they divide evenly.

  A base weight (``kernel``/``embedding``) under a name in :data:`PARAM_AXES` gets
  that name's logical axes (so with ``model`` > 1 the heads/MLP/vocab dimension is
  split over ``model``); anything else (norms, LoRA adapters), or a dimension the mesh
  axis does not divide, is replicated.
  """

  def one(path, leaf):
    names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
    axes = next((ax for name, ax in PARAM_AXES if name in names), None)
    if axes is None or names[-1] not in ("kernel", "embedding") or jnp.ndim(leaf) != 2:
      return layout.replicated
    spec = layout.spec(*axes)
    dims = [
      None if axis is None or np.shape(leaf)[i] % layout.mesh.shape[axis] else axis
      for i, axis in enumerate(spec)
    ]
    return NamedSharding(layout.mesh, PartitionSpec(*dims))

  return jax.tree_util.tree_map_with_path(one, params)
