"""``embedding``: top-k candidates by embedding cosine to the target set.

Two relevances of a candidate embedding ``e_i`` [e] to the target embeddings ``t_j``:

- ``centroid`` (Aharoni & Goldberg 2020, domain data selection by cosine to the
  centroid of in-domain sentence embeddings): ``cos(e_i, c)`` with ``c`` the mean of the
  unit-normalised target embeddings (a zero centroid scores every candidate 0);
- ``knn``: the mean cosine of ``e_i`` to its ``knn_k`` nearest target embeddings, the
  nearest-neighbour relevance of retrieval-based selection (Ivison et al. 2023, DEFT,
  retrieve pool examples near each target example; scoring each candidate by its
  nearest targets makes a budget of k one top-k). ``knn_k=1`` is the max cosine.

The embeddings are the ``candidate_embeddings`` [n, e] and ``target_embeddings`` [m, e]
extras (e.g. a sentence encoder's, or the model's mean hidden state); the proxy
gradient features are not used.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from evoselect_jax.registry import SELECTORS
from evoselect_jax.selectors.base import Selector, make_selector
from evoselect_jax.selectors.diversity import unit_rows

MODES = ("centroid", "knn")


@functools.partial(jax.jit, static_argnames=("k", "mode", "knn_k"))
def _embedding(
  candidates: jax.Array,
  targets: jax.Array,
  mask: jax.Array,
  key: jax.Array,
  *,
  k: int,
  mode: str,
  knn_k: int,
  candidate_embeddings: jax.Array,
  target_embeddings: jax.Array,
) -> jax.Array:
  del candidates, targets, key
  u, v = unit_rows(candidate_embeddings), unit_rows(target_embeddings)
  if mode == "centroid":
    score = u @ unit_rows(jnp.mean(v, axis=0, keepdims=True))[0]
  else:
    m = v.shape[0]
    if knn_k > m:
      raise ValueError(f"embedding knn_k={knn_k} exceeds the number of targets ({m})")
    score = jnp.mean(jax.lax.top_k(u @ v.T, knn_k)[0], axis=1)
  return jax.lax.top_k(jnp.where(mask, score, -jnp.inf), k)[1].astype(jnp.int32)


@SELECTORS.register("embedding")
def embedding(mode: str = "centroid", knn_k: int = 1) -> Selector:
  """Builds embedding-similarity selection.

  Args:
    mode: ``centroid`` or ``knn`` (see the module docstring).
    knn_k: nearest targets averaged per candidate in ``knn`` mode, at most m.

  Returns:
    The selector; it requires the ``candidate_embeddings`` and ``target_embeddings``
    extras.
  """
  if mode not in MODES:
    raise ValueError(f"embedding mode must be one of {MODES}, got {mode!r}")
  if not isinstance(knn_k, int) or knn_k < 1:
    raise ValueError(f"embedding knn_k must be a positive int, got {knn_k!r}")
  return make_selector(
    "embedding",
    _embedding,
    requires=("candidate_embeddings", "target_embeddings"),
    mode=mode,
    knn_k=knn_k,
  )
