"""Generators: each module registers its builders in ``registry.GENERATORS`` on import."""

from evoselect_jax.generators import jsonl, local, openai, replay, simulated  # noqa: F401
