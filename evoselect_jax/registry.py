"""Registries: components are chosen by ``name`` in the config.

One :class:`Registry` per kind of component. A module registers a factory with
``@REGISTRY.register("name")``; a config sub-dict ``{"name": ..., **kwargs}`` is
turned into a component with ``REGISTRY.build(cfg)``. The package that holds the
implementations is imported on first use, so every registered name is known
before a lookup fails.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


class Registry:
  """Maps names to factories for one kind of component."""

  def __init__(self, kind: str, package: str):
    self.kind = kind
    self._package = package
    self._factories: dict[str, Callable[..., Any]] = {}

  def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator that registers ``factory`` under ``name``."""

    def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
      if name in self._factories:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._factories[name] = factory
      return factory

    return decorator

  def names(self) -> list[str]:
    """Sorted names of every registered component."""
    importlib.import_module(self._package)
    return sorted(self._factories)

  def get(self, name: str) -> Callable[..., Any]:
    """The factory registered under ``name``; a clear error lists the valid names."""
    names = self.names()
    if name not in self._factories:
      raise ValueError(f"Unknown {self.kind} {name!r}; valid names: {', '.join(names)}")
    return self._factories[name]

  def build(self, cfg: Mapping[str, Any], **extra: Any) -> Any:
    """Builds the component ``cfg['name']`` with the other keys of ``cfg`` as kwargs."""
    kwargs = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    if "name" not in kwargs:
      raise ValueError(
        f"A {self.kind} config needs a 'name'; valid names: {', '.join(self.names())}"
      )
    factory = self.get(kwargs.pop("name"))
    try:
      return factory(**kwargs, **extra)
    except TypeError as e:
      raise TypeError(f"Bad options for {self.kind} {cfg['name']!r}: {e}") from e


GENERATORS = Registry("generator", "evoselect_jax.generators")
SELECTORS = Registry("selector", "evoselect_jax.selectors")
PROJECTORS = Registry("projector", "evoselect_jax.features")
OT_SOLVERS = Registry("OT solver", "evoselect_jax.ot")
TASKS = Registry("task", "evoselect_jax.data")
MODELS = Registry("model", "evoselect_jax.models.learners")
