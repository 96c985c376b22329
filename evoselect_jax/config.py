"""Helpers for ml_collections experiment configs (big_vision style)."""

from __future__ import annotations

import ast

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses a config argument ``"smoke,seed=3"`` into typed values.

  Each comma-separated item is ``key=value`` or a bare ``key`` (meaning True).
  Values take the type of their default; keys without a default are an error.

  Args:
    arg: the string after the ``:`` in ``--config configs/x.py:arg``, or None.
    **defaults: every accepted key with its default value.

  Returns:
    A locked ConfigDict with the defaults overridden by ``arg``.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r} in {arg!r}; valid: {', '.join(defaults)}")
    default = defaults[key]
    if not value:
      parsed = True
    elif isinstance(default, bool):
      if value not in ("True", "False", "true", "false", "1", "0"):
        raise ValueError(f"Config argument {key}={value!r} must be a bool")
      parsed = value in ("True", "true", "1")
    elif isinstance(default, str):
      parsed = value
    else:
      parsed = type(default)(ast.literal_eval(value))
    out[key] = parsed
  out.lock()
  return out
