"""Greedy diversification with static shapes: MMR and facility location.

Both run ``k`` (static) greedy steps in a ``lax.fori_loop`` over a boolean mask of the
candidates still available, so one compiled program serves every pool of the same
shape. A step with no available candidate left writes index ``-1``; the selectors check
``k`` against the number of valid candidates before calling these.

Similarities are cosines between rows (a zero row has similarity 0 to everything),
computed from the features and their inverse norms, never a normalised copy: beyond the
[n, d] features, MMR holds O(n) and facility location the [n, m] candidate-target
similarities. A step costs one [n, d] matrix-vector product (MMR) or one pass over the
[n, m] similarities (facility location).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def unit_rows(z: jax.Array) -> jax.Array:
  """Rows of ``z`` [n, d] scaled to unit L2 norm, float32; zero rows stay zero."""
  z = z.astype(jnp.float32)
  norm = jnp.linalg.norm(z, axis=1, keepdims=True)
  return z / jnp.where(norm > 0, norm, 1.0)


def inv_norms(z: jax.Array) -> jax.Array:
  """``1 / ||z_i||`` per row of ``z`` [n, d], float32; 0 for zero rows."""
  norm = jnp.linalg.norm(z.astype(jnp.float32), axis=1)
  return jnp.where(norm > 0, 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0)


def min_max(x: jax.Array, available: jax.Array) -> jax.Array:
  """``x`` [n] scaled to [0, 1] over the available entries; 0 elsewhere and when all equal."""
  lo = jnp.min(jnp.where(available, x, jnp.inf))
  hi = jnp.max(jnp.where(available, x, -jnp.inf))
  span = hi - lo
  return jnp.where(available & (span > 0), (x - lo) / jnp.where(span > 0, span, 1.0), 0.0)


def _pick(score: jax.Array, available: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Index of the best available score, and whether there was one."""
  score = jnp.where(available, score, -jnp.inf)
  i = jnp.argmax(score)
  return i.astype(jnp.int32), available[i]


@functools.partial(jax.jit, static_argnames=("k",))
def mmr(
  relevance: jax.Array, feats: jax.Array, k: int, lam: float | jax.Array, mask: jax.Array
) -> jax.Array:
  """Maximal marginal relevance (Carbonell & Goldstein 1998), greedy.

  Step t picks ``argmax_i lam * rel_i - (1 - lam) * max_{s in S} cos(u_i, u_s)`` over
  available candidates, where the max over the empty set (the first step) is 0.

  Args:
    relevance: [n] relevance scores (finite where ``mask``).
    feats: [n, d] candidate features ``u``.
    k: number of picks (static).
    lam: trade-off in [0, 1]; 1 is top-k relevance.
    mask: bool [n], candidates that may be picked.

  Returns:
    int32 [k] picked indices in pick order (``-1`` once nothing is available).
  """
  feats = feats.astype(jnp.float32)
  inv = inv_norms(feats)

  def step(t: jax.Array, state: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    picked, available, max_sim = state
    penalty = jnp.where(t == 0, 0.0, max_sim)
    i, ok = _pick(lam * relevance - (1.0 - lam) * penalty, available)
    picked = picked.at[t].set(jnp.where(ok, i, -1))
    available = available.at[i].set(False)
    max_sim = jnp.maximum(max_sim, (feats @ feats[i]) * inv * inv[i])
    return picked, available, max_sim

  n = relevance.shape[0]
  init = (jnp.full((k,), -1, jnp.int32), mask.astype(bool), jnp.full((n,), -jnp.inf))
  return jax.lax.fori_loop(0, k, step, init)[0]


@functools.partial(jax.jit, static_argnames=("k",))
def facility_location(
  cand: jax.Array,
  targets: jax.Array,
  k: int,
  mask: jax.Array,
  weights: jax.Array | None = None,
) -> jax.Array:
  """Greedy facility location over target points (Nemhauser, Wolsey & Fisher 1978).

  Maximises ``F(S) = sum_j w_j max(0, max_{s in S} cos(v_j, u_s))``, a monotone
  submodular coverage of the targets ``v``, so the greedy set is within ``1 - 1/e`` of
  the best set of size k. Step t picks the candidate with the largest gain
  ``sum_j w_j max(cos(v_j, u_i) - cover_j, 0)``.

  Args:
    cand: [n, d] candidate features ``u``.
    targets: [m, d] target features ``v``.
    k: number of picks (static).
    mask: bool [n], candidates that may be picked.
    weights: [m] nonnegative target weights ``w``; ``None`` for all ones.

  Returns:
    int32 [k] picked indices in pick order (``-1`` once nothing is available).
  """
  cand = cand.astype(jnp.float32)
  sim = (cand @ unit_rows(targets).T) * inv_norms(cand)[:, None]
  w = jnp.ones((targets.shape[0],), jnp.float32) if weights is None else weights

  def step(t: jax.Array, state: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    picked, available, cover = state
    gain = jnp.sum(jnp.maximum(sim - cover, 0.0) * w, axis=1)  # a fused reduction
    i, ok = _pick(gain, available)
    picked = picked.at[t].set(jnp.where(ok, i, -1))
    available = available.at[i].set(False)
    cover = jnp.maximum(cover, sim[i])
    return picked, available, cover

  m = targets.shape[0]
  init = (jnp.full((k,), -1, jnp.int32), mask.astype(bool), jnp.zeros((m,), jnp.float32))
  return jax.lax.fori_loop(0, k, step, init)[0]
