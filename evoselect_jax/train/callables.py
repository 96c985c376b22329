"""Passing a callable into a jitted function without baking its arrays into the program.

``jax.jit`` turns arrays that a function closes over into constants of the compiled
program: a model's weights would be copied into the executable, and new weights would
mean a new compilation. A partial application (``functools.partial(f, config, params)``
or ``jax.tree_util.Partial``) avoids both when its array leaves are traced arguments
and the rest (the function, configs) is the static part, as ``equinox.filter_jit`` does.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class StaticPart:
  """The hashable remainder of a callable: its tree structure and non-array leaves.

  Attributes:
    treedef: the callable's pytree structure.
    leaves: its non-array leaves, ``None`` where an array leaf goes.
  """

  treedef: Any
  leaves: tuple[Any, ...]


def split_callable(fn: Callable[..., Any]) -> tuple[StaticPart, list[Any]]:
  """Splits ``fn`` into a static part (a jit static argument) and its arrays (traced).

  A ``functools.partial`` is read as a ``jax.tree_util.Partial``, so the arrays among
  its bound arguments are traced and its function and other arguments are static. Any
  other callable is flattened as a pytree; a plain function or closure is a single
  non-array leaf, all static, compiled once per function object.
  """
  if isinstance(fn, functools.partial) and not isinstance(fn, jax.tree_util.Partial):
    fn = jax.tree_util.Partial(fn.func, *fn.args, **fn.keywords)
  leaves, treedef = jax.tree.flatten(fn)
  is_array = [isinstance(x, jax.Array | np.ndarray) for x in leaves]
  static = StaticPart(
    treedef, tuple(None if a else x for x, a in zip(leaves, is_array, strict=True))
  )
  return static, [x if a else None for x, a in zip(leaves, is_array, strict=True)]


def merge_callable(static: StaticPart, arrays: list[Any]) -> Callable[..., Any]:
  """Inverse of :func:`split_callable`."""
  leaves = [s if a is None else a for s, a in zip(static.leaves, arrays, strict=True)]
  return jax.tree.unflatten(static.treedef, leaves)
