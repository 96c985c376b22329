"""Oracle tests for per-example gradients, their features and the random projectors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from evoselect_jax import features
from evoselect_jax.registry import PROJECTORS


def mlp_params(key):
  k1, k2, k3 = jax.random.split(key, 3)
  return {
    "dense1": {"w": jax.random.normal(k1, (5, 7)) / 2, "b": jnp.full((7,), 0.1)},
    "dense2": {"w": jax.random.normal(k2, (7, 3)) / 2},
    "scale": jax.random.normal(k3, ()),
  }


def mlp_loss(params, example):
  h = jnp.tanh(example["x"] @ params["dense1"]["w"] + params["dense1"]["b"])
  out = params["scale"] * h @ params["dense2"]["w"]
  return jnp.sum(jnp.square(out - example["y"]))


def make_batch(n, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "x": jnp.asarray(rng.normal(size=(n, 5)), jnp.float32),
    "y": jnp.asarray(rng.normal(size=(n, 3)), jnp.float32),
  }


def loop_grads(params, batch, loss=mlp_loss):
  n = batch["x"].shape[0]
  grad = jax.jit(jax.grad(loss))
  grads = [grad(params, jax.tree.map(lambda x, i=i: x[i], batch)) for i in range(n)]
  return jax.tree.map(lambda *g: jnp.stack(g), *grads)


def flat(tree):
  leaves = jax.tree.leaves(tree)
  return jnp.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=1)


def dense_matrix(projector, in_dim):
  return np.asarray(projector(jnp.eye(in_dim, dtype=jnp.float32)))


def dense_tree_matrix(tree_projector, params):
  return np.concatenate(
    [
      dense_matrix(p, leaf.size)
      for p, leaf in zip(tree_projector.projectors, jax.tree.leaves(params), strict=True)
    ]
  )


@pytest.mark.parametrize(("n", "micro_batch"), [(1, 4), (7, 3), (11, 4), (12, 4), (5, 64)])
def test_per_example_grads_match_loop(n, micro_batch):
  params = mlp_params(jax.random.key(0))
  batch = make_batch(n)
  got = features.per_example_grads(mlp_loss, params, batch, micro_batch=micro_batch)
  want = loop_grads(params, batch)
  assert jax.tree.structure(got) == jax.tree.structure(params)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6), got, want)


def test_per_example_grads_rejects_ragged_batch():
  params = mlp_params(jax.random.key(0))
  batch = make_batch(4) | {"y": jnp.zeros((5, 3))}
  with pytest.raises(ValueError, match="same leading axis"):
    features.per_example_grads(mlp_loss, params, batch)


@pytest.mark.parametrize("name", ["gaussian", "sjlt"])
def test_per_example_features_match_dense_projection(name):
  params = mlp_params(jax.random.key(1))
  batch = make_batch(9)
  proj = features.make_tree_projector(name, params, 16, jax.random.key(2))
  got = features.per_example_features(mlp_loss, params, batch, proj, micro_batch=4)
  raw = features.per_example_features(mlp_loss, params, batch, proj, micro_batch=4, normalize=False)
  want = np.asarray(flat(loop_grads(params, batch))) @ dense_tree_matrix(proj, params)
  np.testing.assert_allclose(raw.features, want, rtol=1e-4, atol=1e-5)
  unit = want / np.linalg.norm(want, axis=1, keepdims=True)
  np.testing.assert_allclose(got.features, unit, rtol=1e-4, atol=1e-5)
  assert got.finite.all()


def test_adam_preconditioned_features_follow_less():
  params = mlp_params(jax.random.key(3))
  batch = make_batch(6)
  opt = optax.adam(1e-2, b1=0.8, b2=0.9, eps=1e-6)
  state = opt.init(params)
  _, state = opt.update(
    jax.grad(mlp_loss)(params, jax.tree.map(lambda x: x[0], batch)), state, params
  )
  pre = features.adam_preconditioner(state, b1=0.8, b2=0.9, eps=1e-6)
  proj = features.make_tree_projector("rademacher", params, 8, jax.random.key(4))
  got = features.per_example_features(
    mlp_loss, params, batch, proj, micro_batch=4, preconditioner=pre, normalize=False
  )
  adam = state[0]
  g = flat(loop_grads(params, batch))
  m = 0.8 * flat(jax.tree.map(lambda x: x[None], adam.mu)) + 0.2 * g
  v = 0.9 * flat(jax.tree.map(lambda x: x[None], adam.nu)) + 0.1 * g**2
  want = np.asarray(m / (jnp.sqrt(v) + 1e-6)) @ dense_tree_matrix(proj, params)
  np.testing.assert_allclose(got.features, want, rtol=1e-4, atol=1e-4)


def test_adam_preconditioner_needs_one_adam_state():
  with pytest.raises(ValueError, match="exactly one optax.ScaleByAdamState"):
    features.adam_preconditioner(optax.sgd(0.1).init({"w": jnp.ones(2)}))


def test_non_finite_rows_are_zero_and_flagged():
  params = {"w": jnp.array([0.5, -1.0, 2.0])}

  def loss(p, ex):  # sqrt'(0) = inf: example 1's gradient is not finite
    return jnp.sqrt(jnp.abs(ex["x"] @ p["w"]))

  batch = {"x": jnp.array([[1.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]])}
  proj = features.make_tree_projector("gaussian", params, 4, jax.random.key(0))
  out = features.per_example_features(loss, params, batch, proj, micro_batch=3)
  np.testing.assert_array_equal(out.finite, [True, False, False, True])
  np.testing.assert_array_equal(out.features[1:3], 0.0)
  np.testing.assert_allclose(
    jnp.linalg.norm(out.features[jnp.array([0, 3])], axis=1), 1.0, rtol=1e-5
  )

  def zero_grad_loss(p, ex):  # example 2 has a finite, all-zero gradient
    return jnp.square(ex["x"] @ p["w"])

  out = features.per_example_features(zero_grad_loss, params, batch, proj)
  assert out.finite.all()
  np.testing.assert_array_equal(out.features[2], 0.0)


def test_projector_registry():
  assert {"gaussian", "rademacher", "sjlt", "kronecker", "factored"} <= set(PROJECTORS.names())
  proj = PROJECTORS.build(
    {"name": "sjlt", "nonzeros": 2}, in_dim=5, out_dim=6, key=jax.random.key(0)
  )
  assert proj(jnp.ones((3, 5))).shape == (3, 6)


def test_dense_projectors_equal_explicit_matrix():
  key = jax.random.key(7)
  gauss = features.make_projector("gaussian", 5, 3, key)
  np.testing.assert_allclose(
    dense_matrix(gauss, 5), jax.random.normal(key, (5, 3)) / np.sqrt(3), rtol=1e-6
  )
  rad = dense_matrix(features.make_projector("rademacher", 5, 4, key), 5)
  np.testing.assert_allclose(np.abs(rad), 0.5)
  np.testing.assert_allclose(rad * 2, jax.random.rademacher(key, (5, 4), jnp.float32))
  x = jax.random.normal(jax.random.key(1), (6, 5))
  np.testing.assert_allclose(gauss(x), np.asarray(x) @ dense_matrix(gauss, 5), rtol=1e-5, atol=1e-6)


def test_sjlt_structure_and_linearity():
  proj = features.make_projector("sjlt", 9, 6, jax.random.key(3), nonzeros=3)
  mat = dense_matrix(proj, 9)
  for col in mat:  # each input coordinate: one ±1/sqrt(3) in each block of 2 rows
    np.testing.assert_allclose(np.abs(col.reshape(3, 2)).sum(axis=1), 1 / np.sqrt(3), rtol=1e-6)
    assert (col != 0).sum() == 3
  x = jax.random.normal(jax.random.key(1), (4, 9))
  np.testing.assert_allclose(proj(x), np.asarray(x) @ mat, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="nonzeros"):
    features.make_projector("sjlt", 9, 6, jax.random.key(3), nonzeros=4)


@pytest.mark.parametrize("name", ["gaussian", "rademacher", "sjlt"])
def test_projectors_preserve_norm_in_expectation(name):
  x = jax.random.normal(jax.random.key(0), (400, 96))
  ratios = []
  for seed in range(4):
    proj = features.make_projector(name, 96, 1024, jax.random.key(seed))
    ratios.append(jnp.sum(proj(x) ** 2, axis=1) / jnp.sum(x**2, axis=1))
  assert abs(float(jnp.mean(jnp.stack(ratios))) - 1.0) < 0.05


@pytest.mark.parametrize("name", ["gaussian", "rademacher", "sjlt", "kronecker"])
def test_projectors_deterministic_by_key(name):
  x = jax.random.normal(jax.random.key(0), (3, 10))
  a = features.make_projector(name, 10, 8, jax.random.key(5))(x)
  b = features.make_projector(name, 10, 8, jax.random.key(5))(x)
  c = features.make_projector(name, 10, 8, jax.random.key(6))(x)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


@pytest.mark.parametrize("name", ["rademacher", "sjlt"])
def test_tree_projector_equals_concatenated_projection(name):
  params = mlp_params(jax.random.key(0))
  key = jax.random.key(9)
  proj = features.make_tree_projector(name, params, 8, key)
  for i, (p, leaf) in enumerate(zip(proj.projectors, jax.tree.leaves(params), strict=True)):
    want = features.make_projector(name, leaf.size, 8, jax.random.fold_in(key, i))
    np.testing.assert_array_equal(dense_matrix(p, leaf.size), dense_matrix(want, leaf.size))
  batch = jax.tree.map(lambda x: jnp.stack([x, 2 * x + 1, -x]), params)
  want = np.asarray(flat(batch)) @ dense_tree_matrix(proj, params)
  np.testing.assert_allclose(proj(batch), want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="TreeProjector built for"):
    proj({"w": jnp.ones((3, 2))})


def test_wrong_preconditioner_and_projector_inputs_fail_loudly():
  params = mlp_params(jax.random.key(0))
  proj = features.make_tree_projector("sjlt", params, 4, jax.random.key(0))
  with pytest.raises(TypeError, match="adam_preconditioner"):
    features.per_example_features(
      mlp_loss, params, make_batch(3), proj, preconditioner=optax.adam(0.1).init(params)
    )
  flat_proj = features.make_projector("gaussian", 4, 2, jax.random.key(0))
  with pytest.raises(TypeError, match="make_tree_projector"):
    flat_proj({"w": jnp.ones((3, 4))})


def batch_sharding(num_devices):
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))
  return NamedSharding(mesh, PartitionSpec("data"))


def assert_same_leaves(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
  ("name", "in_dim", "options"),
  [
    ("gaussian", 24, {}),
    ("rademacher", 24, {}),
    ("sjlt", 24, {"nonzeros": 4}),
    ("kronecker", 128, {"in_shape": (8, 16), "out_shape": (8, 1)}),  # axes divisible by 8
  ],
)
def test_same_key_same_projection_on_any_device_count(name, in_dim, options):
  assert len(jax.devices()) == 8
  out_dim = options["out_shape"][0] if "out_shape" in options else 12
  build = functools.partial(features.make_projector, name, in_dim, out_dim, **options)
  want = build(jax.random.key(3))
  x = jax.random.normal(jax.random.key(0), (16, in_dim))
  project = jax.jit(lambda p, z: p(z))
  want_x = np.asarray(project(want, x))
  for num_devices in (1, 2, 8):
    sharding = batch_sharding(num_devices)
    # drawn inside jit with its rows spread over the devices
    proj = jax.jit(build, out_shardings=sharding)(jax.random.key(3))
    assert len(jax.tree.leaves(proj)[0].sharding.device_set) == num_devices
    assert_same_leaves(proj, want)
    got = project(want, jax.device_put(x, sharding))  # a data-parallel batch
    assert len(got.sharding.device_set) == num_devices
    np.testing.assert_array_equal(got, want_x)


def test_tree_projection_of_a_sharded_batch_equals_unsharded():
  params = mlp_params(jax.random.key(0))
  build = functools.partial(features.make_tree_projector, "sjlt", params, 8)
  proj = build(jax.random.key(4))
  batch = jax.tree.map(lambda x: jnp.stack([x * (i + 1) - i for i in range(16)]), params)
  assert_same_leaves(jax.jit(build)(jax.random.key(4)), proj)
  project = jax.jit(lambda p, b: p(b))
  want = np.asarray(project(proj, batch))
  for num_devices in (2, 8):
    got = project(proj, jax.device_put(batch, batch_sharding(num_devices)))
    assert len(got.sharding.device_set) == num_devices
    np.testing.assert_array_equal(got, want)


def test_kronecker_equals_explicit_kron_matrix():
  key = jax.random.key(11)
  proj = features.make_projector("kronecker", 35, 6, key, in_shape=(5, 7), out_shape=(3, 2))
  left_key, right_key = jax.random.split(key)
  left = np.asarray(jax.random.normal(left_key, (5, 3))) / np.sqrt(3)
  right = np.asarray(jax.random.normal(right_key, (7, 2))) / np.sqrt(2)
  np.testing.assert_allclose(proj.left, left, rtol=1e-6)
  np.testing.assert_allclose(proj.right, right, rtol=1e-6)
  mat = np.kron(left, right)  # row i·7 + j, column r·2 + s: left[i, r] right[j, s]
  np.testing.assert_allclose(dense_matrix(proj, 35), mat, rtol=1e-5, atol=1e-6)
  x = np.asarray(jax.random.normal(jax.random.key(1), (4, 35)))
  np.testing.assert_allclose(proj(x), x @ mat, rtol=1e-5, atol=1e-5)
  # the matrix view: P_aᵀ X P_b for X = x.reshape(5, 7)
  want = np.einsum("ar,nab,bs->nrs", left, x.reshape(4, 5, 7), right).reshape(4, 6)
  np.testing.assert_allclose(proj(x), want, rtol=1e-5, atol=1e-5)


def test_kronecker_default_shapes_and_vectors():
  proj = features.make_projector("kronecker", 96, 64, jax.random.key(0))
  assert proj.in_shape == (8, 12) and proj.out_shape == (8, 8)
  thin = features.make_projector("kronecker", 3 * 50, 64, jax.random.key(0), in_shape=(3, 50))
  assert thin.out_shape == (2, 32)  # r_a <= a
  key = jax.random.key(4)
  vec = features.make_projector("kronecker", 13, 6, key, in_shape=(13,))
  assert vec.in_shape == (1, 13) and vec.out_shape == (1, 6)
  np.testing.assert_array_equal(vec.left, [[1.0]])  # a vector: a dense Gaussian
  right = jax.random.normal(jax.random.split(key)[1], (13, 6)) / np.sqrt(6)
  np.testing.assert_allclose(dense_matrix(vec, 13), right, rtol=1e-5, atol=1e-6)
  assert features.make_projector("kronecker", 13, 6, key).in_shape == (1, 13)  # prime in_dim
  with pytest.raises(ValueError, match="in_shape"):
    features.make_projector("kronecker", 12, 4, key, in_shape=(5, 2))
  with pytest.raises(ValueError, match="out_shape"):
    features.make_projector("kronecker", 12, 4, key, out_shape=(3, 2))


def test_kronecker_preserves_norm_in_expectation():
  x = jax.random.normal(jax.random.key(0), (200, 32 * 48))
  ratios = []
  for seed in range(32):
    proj = features.make_projector(
      "kronecker", 32 * 48, 256, jax.random.key(seed), in_shape=(32, 48), out_shape=(16, 16)
    )
    ratios.append(jnp.sum(proj(x) ** 2, axis=1) / jnp.sum(x**2, axis=1))
  assert abs(float(jnp.mean(jnp.stack(ratios))) - 1.0) < 0.05


@pytest.mark.parametrize("name", ["kronecker", "factored"])
def test_kronecker_tree_projector_views_each_leaf_as_its_shape(name):
  params = mlp_params(jax.random.key(0))
  key = jax.random.key(9)
  proj = features.make_tree_projector(name, params, 8, key)
  assert proj.factored == (name == "factored") and proj.out_dim == 8
  leaves = jax.tree.leaves(params)
  for i, (p, leaf) in enumerate(zip(proj.projectors, leaves, strict=True)):
    want = features.make_projector(
      "kronecker", leaf.size, 8, jax.random.fold_in(key, i), in_shape=leaf.shape
    )
    assert p.in_shape == ((1, leaf.size) if leaf.ndim < 2 else leaf.shape)
    np.testing.assert_array_equal(dense_matrix(p, leaf.size), dense_matrix(want, leaf.size))
  batch = jax.tree.map(lambda x: jnp.stack([x, 2 * x + 1, -x]), params)
  want = np.asarray(flat(batch)) @ dense_tree_matrix(proj, params)
  np.testing.assert_allclose(proj(batch), want, rtol=1e-5, atol=1e-5)
  got = features.per_example_features(mlp_loss, params, make_batch(5), proj, normalize=False)
  want = np.asarray(flat(loop_grads(params, make_batch(5)))) @ dense_tree_matrix(proj, params)
  np.testing.assert_allclose(got.features, want, rtol=1e-4, atol=1e-5)
