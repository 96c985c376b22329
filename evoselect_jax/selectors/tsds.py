"""``tsds``: OT distribution matching with a kernel-density diversity regulariser (TSDS).

TSDS (Liu, Karbasi & Rekatsinas, NeurIPS 2024, "TSDS: Data Selection for Task-Specific
Model Finetuning", arXiv 2410.11303) chooses a sampling distribution ``p`` over the
candidates by optimal transport from the target examples, with a regulariser that
spreads mass and a kernel density estimate that counts a cluster of near-duplicates as
one point, then samples the budget from ``p``. Our reading, from the paper's abstract
and the authors' reference implementation (``tsds.py``, KNN-KDE), is:

- Target j holds mass ``1/m`` and sends it to candidates by a plan ``gamma`` [m, n]
  (``sum_i gamma_ji = 1/m``); the selection distribution is its candidate marginal
  ``p_i = sum_j gamma_ji``. So ``<gamma, D>`` is the OT cost between ``p`` and the
  targets, with ``D_ji = ||v_j - u_i||`` the distance between unit-normalised rows.
- The density of candidate i is the Epanechnikov KDE
  ``rho_i = sum_{i'} max(0, 1 - ||u_i - u_i'||^2 / sigma^2)`` over valid candidates
  (itself included, so ``rho_i >= 1``; ``sigma = 0`` gives ``rho = 1``, the paper's
  KNN-Uniform).
- ``gamma`` minimises ``alpha / C * <gamma, D> + (1 - alpha) * m * max_ji rho_i gamma_ji``
  (``C`` is the option ``distance_scale``): alignment against a cap ``t`` on the
  density-weighted mass any target sends to any candidate. This is the objective the
  reference algorithm optimises (the paper's ``G_KDE`` regulariser; tests/
  test_selectors.py checks our solution against a linear program). For a cap ``t``,
  each target fills its nearest candidates up to ``t / rho_i`` in order of distance, so
  a duplicated point receives ``1/rho`` of an isolated one's share and the whole
  duplicate cluster about one point's worth.
- The optimum is exact in closed form (no Sinkhorn, no approximate nearest neighbours):
  with ``s = 1 / (m t)``, the objective is piecewise linear in ``s`` with breakpoints at
  each target's cumulative inverse densities ``S_jl = sum_{l' <= l} 1/rho`` (sorted by
  distance); the derivative changes sign at the first breakpoint (in increasing order)
  where ``alpha / C * sum_j sum_{l <= l_j} (d_{j, l_j + 1} - d_jl) / rho_l >= (1 - alpha)
  m``. That is the authors' heap algorithm, run here as one sort and one cumsum over the
  [m, n] breakpoints.

Then ``k`` distinct candidates are drawn from ``p`` without replacement (Gumbel top-k on
``log p``, i.e. successive sampling, Vieira 2014 / Kool et al. 2019) with ``key``. The
reference samples with replacement; distinct draws need at least ``k`` candidates with
positive mass, so when the optimal cap leaves fewer, the cap is lowered to the first
breakpoint at which ``k`` candidates have mass (the least extra spreading that allows k
distinct draws). Beyond that, the differences from the reference are: exact nearest
neighbours over the whole pool (the reference prefetches ``max_K`` neighbours with
FAISS and estimates the density from the ``kde_K`` nearest of those) and cosine
geometry (distances between unit rows, so ``C`` and ``sigma`` are on the scale of [0, 2]).

Memory: the [m, n] distances and their sort, and the [n, n] kernel (``batch_size`` rows
at a time when set).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from evoselect_jax.registry import SELECTORS
from evoselect_jax.selectors.base import Selector, make_selector
from evoselect_jax.selectors.diversity import unit_rows


def _sq_dist(u: jax.Array, v: jax.Array) -> jax.Array:
  """Squared Euclidean distances [a, b] between the rows of ``u`` [a, d] and ``v`` [b, d]."""
  sq_u, sq_v = jnp.sum(u * u, axis=1), jnp.sum(v * v, axis=1)
  return jnp.maximum(sq_u[:, None] + sq_v[None, :] - 2.0 * u @ v.T, 0.0)


def _density(u: jax.Array, mask: jax.Array, sigma: float, batch_size: int | None) -> jax.Array:
  """Epanechnikov KDE [n] of each row of ``u`` over the valid rows (1 for ``sigma = 0``)."""
  if sigma == 0:
    return jnp.ones((u.shape[0],), jnp.float32)

  def row(ui: jax.Array) -> jax.Array:
    kernel = jnp.maximum(1.0 - _sq_dist(ui[None], u)[0] / sigma**2, 0.0)
    return jnp.sum(jnp.where(mask, kernel, 0.0))

  if batch_size is None:
    return jax.vmap(row)(u)
  return jax.lax.map(row, u, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("k", "alpha", "distance_scale", "sigma", "batch_size"))
def tsds_probabilities(
  candidates: jax.Array,
  targets: jax.Array,
  mask: jax.Array,
  *,
  k: int,
  alpha: float,
  distance_scale: float,
  sigma: float,
  batch_size: int | None = None,
) -> jax.Array:
  """TSDS's selection distribution ``p`` [n] (see the module docstring).

  Args:
    candidates: [n, d] candidate features.
    targets: [m, d] target features.
    mask: bool [n] valid candidates, at least ``k`` of them.
    k: the budget: at least ``k`` valid candidates get positive probability.
    alpha: trade-off in (0, 1]; 1 sends each target's mass to its nearest candidate.
    distance_scale: the paper's ``C``, on the scale of the distances.
    sigma: KDE bandwidth (Euclidean, between unit rows); 0 for no density weighting.
    batch_size: rows per block of the [n, n] kernel; ``None`` for all at once.

  Returns:
    float32 [n] probabilities, summing to 1, zero where ``mask`` is False.
  """
  u, v = unit_rows(candidates), unit_rows(targets)
  m = v.shape[0]
  inv_density = jnp.where(mask, 1.0 / _density(u, mask, sigma, batch_size), 0.0)
  dist = jnp.where(mask[None, :], jnp.sqrt(_sq_dist(v, u)), jnp.inf)  # [m, n]

  # Each target's candidates by distance (valid first), with their inverse densities.
  order = jnp.argsort(dist, axis=1, stable=True)
  d = jnp.take_along_axis(dist, order, axis=1)
  valid = mask[order]
  w = inv_density[order]
  breaks = jnp.cumsum(w, axis=1)  # S_jl
  # S_{j, l-1}: entry l gets mass once s exceeds it
  before = jnp.concatenate([jnp.zeros((m, 1)), breaks[:, :-1]], axis=1)
  last = valid & ~jnp.concatenate([valid[:, 1:], jnp.zeros((m, 1), bool)], axis=1)
  d_next = jnp.concatenate([d[:, 1:], jnp.zeros((m, 1))], axis=1)
  # Growth of the alignment-cost slope when target j's state passes breakpoint l; the
  # last valid entry is where the cap cannot be lowered further for that target.
  growth = jnp.where(last, jnp.inf, jnp.where(valid, (d_next - d) * breaks, 0.0))
  events = jnp.where(valid, breaks, jnp.inf).reshape(-1)
  by_break = jnp.argsort(events, stable=True)
  sorted_breaks = events[by_break]
  slope = jnp.cumsum(growth.reshape(-1)[by_break])
  threshold = (1.0 - alpha) / alpha * distance_scale * m
  s_opt = sorted_breaks[jnp.argmax(slope >= threshold)]

  # The smallest breakpoint at which at least k candidates have positive mass.
  enter = jnp.full(mask.shape, jnp.inf).at[order].min(jnp.where(valid, before, jnp.inf))
  kth = jnp.sort(enter)[k - 1]
  s_k = sorted_breaks[jnp.searchsorted(sorted_breaks, kth, side="right")]
  s = jnp.maximum(s_opt, s_k)

  gamma = jnp.where(valid, jnp.clip((s - before) / (m * s), 0.0, w / (m * s)), 0.0)
  return jnp.zeros(mask.shape, jnp.float32).at[order].add(gamma)


@functools.partial(jax.jit, static_argnames=("k", "alpha", "distance_scale", "sigma", "batch_size"))
def _tsds(
  candidates: jax.Array,
  targets: jax.Array,
  mask: jax.Array,
  key: jax.Array,
  *,
  k: int,
  alpha: float,
  distance_scale: float,
  sigma: float,
  batch_size: int | None,
) -> jax.Array:
  p = tsds_probabilities(
    candidates,
    targets,
    mask,
    k=k,
    alpha=alpha,
    distance_scale=distance_scale,
    sigma=sigma,
    batch_size=batch_size,
  )
  scores = jnp.where(p > 0, jnp.log(p) + jax.random.gumbel(key, p.shape), -jnp.inf)
  return jax.lax.top_k(scores, k)[1].astype(jnp.int32)


@SELECTORS.register("tsds")
def tsds(
  alpha: float = 0.5,
  distance_scale: float = 0.5,
  sigma: float = 0.5,
  batch_size: int | None = None,
) -> Selector:
  """Builds TSDS selection (see the module docstring).

  Args:
    alpha: alignment vs. diversity in (0, 1]; the reference's default 0.5.
    distance_scale: the paper's ``C``, "on the scale of" the distances (here in
      [0, 2]); larger spreads each target's mass over more of its neighbours.
    sigma: KDE bandwidth in distance between unit rows; points closer than ``sigma``
      share density (0.5: cosine above 0.875). 0 turns the density weighting off.
    batch_size: rows per block of the [n, n] kernel; ``None`` for all at once.

  Returns:
    The selector.
  """
  if not 0 < alpha <= 1:
    raise ValueError(f"tsds alpha must be in (0, 1], got {alpha!r}")
  if not distance_scale > 0:
    raise ValueError(f"tsds distance_scale must be positive, got {distance_scale!r}")
  if not sigma >= 0:
    raise ValueError(f"tsds sigma must be nonnegative, got {sigma!r}")
  if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
    raise ValueError(f"tsds batch_size must be None or a positive int, got {batch_size!r}")
  return make_selector(
    "tsds",
    _tsds,
    alpha=float(alpha),
    distance_scale=float(distance_scale),
    sigma=float(sigma),
    batch_size=batch_size,
  )
