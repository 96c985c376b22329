"""``diversity_only``: greedy facility location of the targets, no relevance term.

The coverage baseline: pick k candidates that greedily maximise
``sum_j max_{s in S} cos(v_j, u_s)`` over the target points ``v``
(:func:`~evoselect_jax.selectors.diversity.facility_location`, Nemhauser et al. 1978).
"""

from __future__ import annotations

import functools

import jax

from evoselect_jax.registry import SELECTORS
from evoselect_jax.selectors.base import Selector, make_selector
from evoselect_jax.selectors.diversity import facility_location


@functools.partial(jax.jit, static_argnames=("k",))
def _diversity_only(
  candidates: jax.Array, targets: jax.Array, mask: jax.Array, key: jax.Array, *, k: int
) -> jax.Array:
  del key
  return facility_location(candidates, targets, k, mask)


@SELECTORS.register("diversity_only")
def diversity_only() -> Selector:
  """Builds the facility-location baseline."""
  return make_selector("diversity_only", _diversity_only)
