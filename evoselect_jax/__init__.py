"""evoselect-jax: adapt an LLM to a target task by generate → select → train."""

from evoselect_jax import compat as _compat

_compat.install()

__version__ = "0.1.0"
