"""Selectors: EvoSelect and every baseline, one module each, registered in SELECTORS."""

from evoselect_jax.selectors import diversity_only, evoselect, gotd, less, random
from evoselect_jax.selectors.base import Selector, build_selector, check_inputs
from evoselect_jax.selectors.diversity import facility_location, mmr

__all__ = [
  "Selector",
  "build_selector",
  "check_inputs",
  "diversity_only",
  "evoselect",
  "facility_location",
  "gotd",
  "less",
  "mmr",
  "random",
]
