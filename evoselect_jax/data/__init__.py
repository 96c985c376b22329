"""Tasks: each module registers its builders in ``registry.TASKS`` on import."""

from evoselect_jax.data import benchmarks, clean, synthetic, tokenizer  # noqa: F401
from evoselect_jax.data.benchmarks import load_task  # noqa: F401
