"""``diversity_only``: greedy facility location of the targets, no relevance term.

The coverage baseline: pick k candidates that greedily maximise
``sum_j max_{s in S} cos(v_j, u_s)`` over the target points ``v``
(:func:`~evoselect_jax.selectors.diversity.facility_location`, Nemhauser et al. 1978).
"""

from __future__ import annotations

from typing import Any

import jax

from evoselect_jax.registry import SELECTORS
from evoselect_jax.selectors.base import Selector, check_inputs
from evoselect_jax.selectors.diversity import facility_location


@SELECTORS.register("diversity_only")
def diversity_only() -> Selector:
  """Builds the facility-location baseline."""

  def select(
    candidates: jax.Array,
    targets: jax.Array,
    k: int,
    key: jax.Array,
    *,
    mask: jax.Array | None = None,
    **extras: Any,
  ) -> jax.Array:
    del key, extras
    mask = check_inputs(candidates, targets, k, mask)
    return facility_location(candidates, targets, k, mask)

  return select
