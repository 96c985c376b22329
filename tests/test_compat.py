"""The ott-jax online-geometry shim (evoselect_jax/compat.py)."""

import jax
import numpy as np
from jax.interpreters import batching
from ott.geometry import costs, pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

import evoselect_jax  # noqa: F401  (installs the shim)


def test_shim_installed():
  assert batching.is_vmappable(np.zeros(3)) is False


def test_online_pointcloud_equals_dense():
  x = jax.random.normal(jax.random.key(0), (53, 7))
  y = jax.random.normal(jax.random.key(1), (11, 7))
  potentials = []
  for batch_size in (None, 16):
    geom = pointcloud.PointCloud(x, y, cost_fn=costs.Cosine(), epsilon=0.05, batch_size=batch_size)
    out = sinkhorn.Sinkhorn()(linear_problem.LinearProblem(geom))
    assert out.converged
    potentials.append(out.f)
  np.testing.assert_allclose(potentials[0], potentials[1], atol=1e-5)
