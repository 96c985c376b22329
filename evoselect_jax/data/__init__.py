"""Tasks: each module registers its builders in ``registry.TASKS`` on import."""

from evoselect_jax.data import clean, synthetic, tokenizer  # noqa: F401
