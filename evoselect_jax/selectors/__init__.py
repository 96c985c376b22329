"""Selectors: EvoSelect and every baseline, one module each, registered in SELECTORS."""

from evoselect_jax.selectors import (
  all,  # noqa: F401 (registers the "all" selector)
  diversity_only,
  embedding,
  evoselect,
  evoselect_no_interleave,
  gotd,
  less,
  loss,
  random,
  tsds,
)
from evoselect_jax.selectors.base import (
  EXTRAS,
  CoreSelector,
  Selector,
  build_selector,
  check_extras,
  check_inputs,
  make_selector,
)
from evoselect_jax.selectors.diversity import facility_location, min_max, mmr
from evoselect_jax.selectors.tsds import tsds_probabilities

__all__ = [
  "EXTRAS",
  "CoreSelector",
  "Selector",
  "build_selector",
  "check_extras",
  "check_inputs",
  "diversity_only",
  "embedding",
  "evoselect",
  "evoselect_no_interleave",
  "facility_location",
  "gotd",
  "less",
  "loss",
  "make_selector",
  "min_max",
  "mmr",
  "random",
  "tsds",
  "tsds_probabilities",
]
