import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.tree_util import Partial

from evoselect_jax.models import LlamaConfig, apply, init
from evoselect_jax.train import (
  batch_indices,
  example_loss,
  fit,
  make_optimizer,
  token_logprobs,
  token_losses,
)
from evoselect_jax.train.losses import batch_losses, crop_padding, num_scored

CONFIG = LlamaConfig(
  vocab_size=29,
  hidden_size=16,
  intermediate_size=24,
  num_layers=1,
  num_heads=4,
  num_kv_heads=2,
  lora_rank=4,
  lora_targets=("q_proj", "v_proj", "up_proj"),
)


def numpy_token_losses(logits, tokens, loss_mask):
  out = []
  for lg, tok, m in zip(logits, tokens, loss_mask, strict=True):
    total, count = 0.0, 0
    for i in range(1, len(tok)):
      if m[i]:
        z = lg[i - 1] - lg[i - 1].max()
        total -= z[tok[i]] - np.log(np.exp(z).sum())
        count += 1
    out.append(total / max(count, 1))
  return np.array(out)


def test_token_losses_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
  tokens = rng.integers(0, 11, size=(3, 5)).astype(np.int32)
  loss_mask = np.array([[1, 0, 1, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], bool)
  got = token_losses(logits, tokens, loss_mask)
  np.testing.assert_allclose(got, numpy_token_losses(logits, tokens, loss_mask), rtol=1e-5)
  assert got[2] == 0.0
  lp = token_logprobs(logits, tokens)
  assert lp.shape == (3, 5) and np.all(lp[:, 0] == 0)


def tiny_data(n=3, t=7):
  rng = np.random.default_rng(1)
  tokens = rng.integers(1, CONFIG.vocab_size, size=(n, t)).astype(np.int32)
  attention_mask = np.ones((n, t), bool)
  attention_mask[0, -2:] = False  # Right padding on the first example.
  loss_mask = attention_mask.copy()
  loss_mask[:, :2] = False
  return {"tokens": tokens, "loss_mask": loss_mask, "attention_mask": attention_mask}


def batch_loss(params, lora, batch):
  logits = apply(CONFIG, params, lora, batch["tokens"], batch["attention_mask"])
  return token_losses(logits, batch["tokens"], batch["loss_mask"]).mean()


def test_example_loss_and_per_example_grads():
  params, lora = init(CONFIG, jax.random.key(0))
  lora = jax.tree.map(lambda x: np.asarray(x) + 0.1, lora)
  data = jax.tree.map(jnp.asarray, tiny_data())
  per_example = jax.jit(
    jax.vmap(jax.grad(example_loss, argnums=2), in_axes=(None, None, None, 0)), static_argnums=0
  )(CONFIG, params, lora, data)
  grad_fn = jax.jit(jax.grad(batch_loss, argnums=1))
  losses = jax.jit(jax.vmap(example_loss, (None, None, None, 0)), static_argnums=0)(
    CONFIG, params, lora, data
  )
  logits = jax.jit(apply, static_argnums=0)(
    CONFIG, params, lora, data["tokens"], data["attention_mask"]
  )
  np.testing.assert_allclose(
    losses, token_losses(logits, data["tokens"], data["loss_mask"]), rtol=1e-5
  )
  for i in range(3):
    one = jax.tree.map(lambda x, i=i: x[i : i + 1], data)
    want = grad_fn(params, lora, one)
    jax.tree.map(
      lambda g, w, i=i: np.testing.assert_allclose(g[i], w, atol=1e-6), per_example, want
    )


def test_make_optimizer_schedule_and_errors():
  opt = make_optimizer("sgd", learning_rate=0.5, warmup_steps=2, total_steps=6, grad_clip=None)
  w = jnp.zeros(3)
  state = opt.init(w)
  lrs = []
  for _ in range(6):
    updates, state = opt.update(jnp.ones(3), state, w)
    lrs.append(-float(updates[0]))
  np.testing.assert_allclose(lrs[:3], [0.0, 0.25, 0.5], atol=1e-6)
  assert lrs[2] > lrs[3] > lrs[4] > lrs[5] > 0

  clipped = make_optimizer("sgd", learning_rate=1.0, total_steps=2, grad_clip=1.0)
  updates, _ = clipped.update(100 * jnp.ones(4), clipped.init(jnp.zeros(4)), jnp.zeros(4))
  np.testing.assert_allclose(optax.tree.norm(updates), 1.0, rtol=1e-5)

  with pytest.raises(ValueError, match="'adam'.*adamw, sgd"):
    make_optimizer("adam", learning_rate=1e-3, total_steps=10)
  with pytest.raises(ValueError, match="warmup_steps=11"):
    make_optimizer(learning_rate=1e-3, total_steps=10, warmup_steps=11)


def test_batch_indices_are_shuffled_epochs():
  idx = batch_indices(jax.random.key(0), n=5, steps=7, batch_size=3)
  assert idx.shape == (7, 3) and idx.dtype == np.int32
  for epoch in idx.reshape(-1)[:20].reshape(4, 5):
    assert sorted(epoch) == list(range(5))
  small = batch_indices(jax.random.key(1), n=2, steps=3, batch_size=5)  # n < batch_size.
  assert np.bincount(small.reshape(-1), minlength=2).tolist() in ([8, 7], [7, 8])


@chex.assert_max_traces(n=1)
def frozen_lora_loss(lora, params, batch):
  return batch_loss(params, lora, batch)


def test_fit_memorises_without_retracing():
  params, lora = init(CONFIG, jax.random.key(0))
  lora = jax.tree.map(lambda x: np.asarray(x) + 0.1, lora)
  # Train the base params; the adapters are frozen arrays bound by a partial.
  optimizer = make_optimizer(learning_rate=5e-2, warmup_steps=5, total_steps=60)
  data = tiny_data()
  out = fit(
    Partial(frozen_lora_loss, lora),
    params,
    data,
    steps=30,
    batch_size=2,
    optimizer=optimizer,
    key=jax.random.key(1),
    progress=False,
  )
  assert out.losses.shape == (30,)
  # Resume with a rebuilt optimizer, new frozen arrays and a functools.partial: no retrace.
  assert make_optimizer(learning_rate=5e-2, warmup_steps=5, total_steps=60) is optimizer
  out = fit(
    functools.partial(frozen_lora_loss, jax.tree.map(lambda x: x * 1.0, lora)),
    out.trainable,
    data,
    steps=30,
    batch_size=2,
    optimizer=make_optimizer(learning_rate=5e-2, warmup_steps=5, total_steps=60),
    key=jax.random.key(2),
    opt_state=out.opt_state,
    progress=False,
  )
  first = float(jax.jit(batch_loss)(params, lora, data))
  last = float(jax.jit(batch_loss)(out.trainable, lora, data))
  assert last < 0.3 * first, (first, last)
  # The caller's arrays were not donated away.
  assert np.all(np.isfinite(params["norm"]["scale"]))


def test_fit_errors():
  optimizer = optax.sgd(1.0)
  # The gradient of -w is -1, so w = step before each update; the loss is NaN from w = 3.
  loss_fn = lambda w, batch: jnp.where(w >= 3.0, jnp.nan, -w + 0 * batch["x"].sum())
  data = {"x": np.zeros((4, 2))}
  with pytest.raises(FloatingPointError, match="nan-test.*nan at step 3"):
    fit(
      loss_fn,
      jnp.float32(0.0),
      data,
      steps=6,
      batch_size=2,
      optimizer=optimizer,
      key=jax.random.key(0),
      desc="nan-test",  # With a progress bar, which the error must close.
    )
  with pytest.raises(ValueError, match="no examples"):
    fit(
      loss_fn,
      jnp.float32(0.0),
      {"x": np.zeros((0, 2))},
      steps=2,
      batch_size=2,
      optimizer=optimizer,
      key=jax.random.key(0),
      progress=False,
    )
  with pytest.raises(ValueError, match="common leading axis"):
    fit(
      loss_fn,
      jnp.float32(0.0),
      {"x": np.zeros((3, 2)), "y": np.zeros(4)},
      steps=2,
      batch_size=2,
      optimizer=optimizer,
      key=jax.random.key(0),
      progress=False,
    )


def test_num_scored_rounds_up_the_most_targets_and_caps_at_t_minus_1():
  mask = np.zeros((3, 40), bool)
  mask[0, 0] = True  # position 0 is never a target
  mask[1, 30:33] = True
  assert num_scored(mask) == 8 and num_scored(mask, multiple=1) == 3
  mask[2, 1:] = True
  assert num_scored(mask) == 39
  assert num_scored(np.zeros((2, 5), bool)) == 1


def test_scored_losses_and_gradients_equal_the_full_logits():
  params, lora = init(CONFIG, jax.random.key(0))
  lora = jax.tree.map(lambda x: np.asarray(x) + 0.1, lora)
  data = tiny_data()
  data["loss_mask"][1, 2:-3] = False  # rows with different numbers of targets
  data["loss_mask"][2] = False  # and one without any
  data = jax.tree.map(jnp.asarray, data)
  num = num_scored(data["loss_mask"], multiple=1)
  assert num < data["tokens"].shape[1] - 1

  def total(params, lora, num):
    return batch_losses(CONFIG, params, lora, data, num).sum()

  full = jax.jit(batch_losses, static_argnums=(0, 4))(CONFIG, params, lora, data, None)
  for n in (num, num + 2):  # the least and a padded count
    got = jax.jit(batch_losses, static_argnums=(0, 4))(CONFIG, params, lora, data, n)
    np.testing.assert_allclose(got, full, rtol=1e-6, atol=1e-7)
  assert float(full[2]) == 0.0
  want = jax.jit(jax.grad(total, argnums=(0, 1)), static_argnums=2)(params, lora, None)
  got = jax.jit(jax.grad(total, argnums=(0, 1)), static_argnums=2)(params, lora, num)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6), got, want)


def test_crop_padding_keeps_every_real_token_and_the_losses():
  rng = np.random.default_rng(0)
  lengths = np.array([5, 19, 9])
  t = 40
  real = np.arange(t)[None] < lengths[:, None]
  data = {
    "tokens": np.where(real, rng.integers(1, CONFIG.vocab_size, (3, t)), 0).astype(np.int32),
    "attention_mask": real,
    "loss_mask": real & (np.arange(t)[None] >= lengths[:, None] - 3),
  }
  cropped = crop_padding(data, min_length=8)
  assert {x.shape for x in cropped.values()} == {(3, 32)}  # 19 -> 32
  assert crop_padding({k: v[:1] for k, v in data.items()}, 8)["tokens"].shape == (1, 8)
  assert crop_padding(data, min_length=64)["tokens"].shape == (3, 40)  # at most t
  params, lora = init(CONFIG, jax.random.key(0))
  losses = jax.jit(batch_losses, static_argnums=(0, 4))
  want = losses(CONFIG, params, lora, jax.tree.map(jnp.asarray, data), 8)
  got = losses(CONFIG, params, lora, jax.tree.map(jnp.asarray, cropped), 8)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="crop_padding needs \\[b, t\\] arrays"):
    crop_padding({**data, "answer": np.zeros(3)}, min_length=8)


def test_fit_trains_on_the_cropped_batches():
  seen = []

  def crop(batch):
    seen.append(batch["x"].shape)
    return {"x": batch["x"][:, :1]}

  # The gradient is the cropped batch's sum (2, not 6): w goes 0 -> -2 -> -4.
  out = fit(
    lambda w, batch: w * batch["x"].sum(),
    jnp.float32(0.0),
    {"x": np.ones((4, 3), np.float32)},
    steps=2,
    batch_size=2,
    optimizer=optax.sgd(1.0),
    key=jax.random.key(0),
    progress=False,
    crop=crop,
  )
  assert seen == [(2, 3), (2, 3)] and float(out.trainable) == -4.0
