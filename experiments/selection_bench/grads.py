"""Stage ``grads``: per-example gradient features, ours against the LESS way and torch.func.

Every case runs the project's decoder and, for the peers, transformers'
``LlamaForCausalLM`` of the same sizes holding the same weights
(:func:`~evoselect_jax.models.params_to_hf`), with LoRA as a minimal adapter
(``y = x Wᵀ + s·(x A) B``, A and B as ours). Inputs: ``cfg.num_examples`` sequences of
``cfg.seq_len`` random tokens, the loss on the last ``cfg.answer_tokens`` (the answer),
all real (no padding). The feature is each example's answer cross-entropy gradient,
projected with the same Kronecker matrix (``factored``/``kronecker`` projector,
``cfg.out_dim``) on every side, then L2-normalised.

- ``lora/<model>`` (``cfg.lora_models``): gradients of the LoRA factors. Ours:
  ``vmap`` (:func:`~evoselect_jax.features.per_example_features`: ``vmap(grad)`` in
  micro-batches, projected inside the map) and ``factored``
  (:func:`~evoselect_jax.features.factored_features`); peers: ``less`` (LESS, Xia et al.
  2024: one forward and backward per example, the gradients projected every
  ``cfg.project_interval`` examples) and ``torch_vmap`` (``torch.func.vmap(grad)`` over
  chunks of ``cfg.torch_micro_batch``, then the same projection).
- ``whole/<model>`` (``cfg.whole_model``): gradients of every weight. Ours: ``factored``
  and gradient-then-project ``gtp_<kind>_mb<b>`` (``per_example_features``: the
  per-example gradients of a micro-batch of ``b`` projected leaf by leaf inside the
  jitted map, for each ``(kind, b)`` of ``cfg.gtp``; ``kronecker`` is the same map as
  ``factored``, ``sjlt`` the sparse sketch that was the only feasible one before the
  Kronecker kinds: a dense [20M, out_dim] matrix does not fit); peer: ``less`` (as
  above, each weight's gradient projected with its Kronecker factors as soon as it is
  computed). The PyTorch peers run at each intra-op thread count in
  ``cfg.torch_threads`` (``None``: every core), interleaved, and each is reported at
  its fastest (``torch_threads``, ``median_s_by_threads``).

Rows: examples/s; model GFLOP/s (forward FLOPs of the dense layers, head and attention
scores, times 2 for LoRA features (forward + input gradients) and 3 for whole-model
ones (plus weight gradients), whatever a method actually computes); first-call seconds
(JAX: compile, ``compile_s``); for ours, XLA's temporary buffer size (``temp_mib``) and
the FLOPs XLA counts in the program (``xla_gflop``, ``xla_gflops`` per second): what a
method does compute (e.g. the factored path has no weight gradients; scoring the answer
positions only skips most of the head); the largest difference of our normalised
features from each peer's (``max_abs_diff``) and the fraction of our rows of unit norm
(``unit_rows``; 1 unless a gradient is 0).
Timings are interleaved: each method's first call, then ``repeats`` rounds of one call
of every method; medians. The summary bounds the factored projection's speed-up over
gradient-then-project on this machine: its XLA FLOPs at the measured matmul peak
(``factored_vs_grad_then_project_at_matmul_peak``). ``phases_s`` gives each case's wall
seconds by phase: ``setup_s`` (weights, inputs, projectors, the PyTorch models),
``compile_s`` (ours) and ``timed_s`` (every timed call, the peers' included).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evoselect_jax import features
from evoselect_jax.models import convert, llama
from evoselect_jax.train import losses
from experiments.selection_bench.timing import Laps, time_each


def llama_config(spec: dict) -> llama.LlamaConfig:
  """A :class:`~evoselect_jax.models.llama.LlamaConfig` from a config entry (minus ``name``)."""
  spec = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(spec).items()}
  spec.pop("name", None)
  return llama.LlamaConfig(**spec)


def num_params(tree: Any) -> int:
  """Number of entries of a pytree of arrays."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def forward_flops(c: llama.LlamaConfig, seq_len: int) -> float:
  """Forward FLOPs of one sequence: dense layers, the head and the attention scores."""
  q, kv, t = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, seq_len
  dense = c.hidden_size * (2 * q + 2 * kv) + 3 * c.hidden_size * c.intermediate_size
  attention = 2 * 2 * t * t * q  # q kᵀ and p v, full square
  return c.num_layers * (2 * t * dense + attention) + 2 * t * c.hidden_size * c.vocab_size


def make_batch(c: llama.LlamaConfig, n: int, seq_len: int, answer: int, seed: int) -> dict:
  """``n`` sequences of random tokens, all real, the last ``answer`` scored."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, c.vocab_size, (n, seq_len)).astype(np.int32)
  loss_mask = np.zeros((n, seq_len), bool)
  loss_mask[:, -answer:] = True
  return {"tokens": tokens, "attention_mask": np.ones((n, seq_len), bool), "loss_mask": loss_mask}


@functools.lru_cache(maxsize=4)
def init_model(c: llama.LlamaConfig, seed: int) -> tuple[dict, dict]:
  """Random weights N(0, 0.02²), norm scales 1, LoRA A and B N(0, 0.02²) (both nonzero).

  Drawn with numpy into the tree of :func:`~evoselect_jax.models.llama.init` (its
  shapes only): compiling that init took 39 s for SmolLM2-135M's 30 layers on this
  project's 2-core CPU, and on an H200 the stage spent about 252 of its 465 s outside our
  compiles and the timed calls when it compiled that init (``phases_s`` now times this).
  """
  shapes = jax.eval_shape(lambda key: llama.init(c, key), jax.random.key(seed))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == "scale":
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.asarray(0.02 * rng.standard_normal(leaf.shape, np.float32), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _paths(tree: Any) -> list[tuple[str, ...]]:
  return [tuple(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


# --- ours ------------------------------------------------------------------------------


@functools.partial(
  jax.jit, static_argnames=("config", "path", "collection", "micro_batch", "num_scored")
)
def ours(config, params, lora, batch, projector, *, path, collection, micro_batch, num_scored):
  """Our normalised features [n, out_dim]: ``path`` is ``factored`` or ``vmap``."""
  diff = lora if collection == "lora" else params
  if path == "factored":
    out = features.factored_features(
      config,
      params,
      lora,
      diff,
      batch,
      projector,
      collection=collection,
      micro_batch=micro_batch,
      num_scored=num_scored,
    )
    return out.features
  if collection == "lora":
    loss = lambda d, ex: losses.example_loss(config, params, d, ex, num_scored)
  else:
    loss = lambda d, ex: losses.example_loss(config, d, lora, ex, num_scored)
  return features.per_example_features(
    loss, diff, batch, projector, micro_batch=micro_batch
  ).features


def compile_ours(c, params, lora, batch, projector, **static) -> tuple[Callable, dict]:
  """Compiles :func:`ours`; returns a blocking call giving numpy, and compile facts.

  Returns:
    ``(call, info)``: ``info`` has ``compile_s`` (tracing and XLA compilation),
    ``temp_mib``, XLA's temporary buffers of the compiled program, and ``xla_gflop``,
    the FLOPs of one call by XLA's cost analysis (which counts a loop body once: times
    the number of micro-batches); None where unknown.
  """
  start = time.perf_counter()
  compiled = ours.lower(c, params, lora, batch, projector, **static).compile()
  info = {"compile_s": time.perf_counter() - start}
  temp = getattr(compiled.memory_analysis(), "temp_size_in_bytes", None)
  info["temp_mib"] = None if temp is None else temp / 2**20
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  n = batch["tokens"].shape[0]
  chunks = -(-n // min(static["micro_batch"], n))
  flops = (cost or {}).get("flops")
  info["xla_gflop"] = None if flops is None else flops * chunks / 1e9

  def call():
    return np.asarray(jax.block_until_ready(compiled(params, lora, batch, projector)))

  return call, info


# --- the PyTorch peers -----------------------------------------------------------------


def torch_model(c: llama.LlamaConfig, params: dict, lora: dict | None, device: str, attention: str):
  """The transformers ``LlamaForCausalLM`` with our weights (and LoRA adapters when given).

  Returns:
    ``(model, named)``: the model in eval mode and ``{our leaf path: torch parameter}``
    of the differentiated parameters (the adapters, or every weight), which alone
    require gradients.
  """
  import torch
  import transformers

  if c.rope_scaling is not None or c.attention_bias:
    raise ValueError("The benchmark's torch peer covers plain Llama configs only")
  hf_config = transformers.LlamaConfig(
    vocab_size=c.vocab_size,
    hidden_size=c.hidden_size,
    intermediate_size=c.intermediate_size,
    num_hidden_layers=c.num_layers,
    num_attention_heads=c.num_heads,
    num_key_value_heads=c.num_kv_heads,
    head_dim=c.head_dim,
    rope_theta=c.rope_theta,
    rms_norm_eps=c.rms_norm_eps,
    tie_word_embeddings=c.tie_word_embeddings,
    use_cache=False,
    attn_implementation=attention,
  )
  model = transformers.LlamaForCausalLM(hf_config)
  state = {k: torch.tensor(v) for k, v in convert.params_to_hf(params, c).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  if unexpected or set(missing) - {"lm_head.weight"}:
    raise ValueError(f"Torch peer weights: missing {missing}, unexpected {unexpected}")
  model = model.to(device).eval()
  for p in model.parameters():
    p.requires_grad_(lora is None)
  if lora is None:
    names = {row[1]: row[0] for row in convert.hf_parameter_table(c)}
    by_name = dict(model.named_parameters())
    return model, {path: by_name[names[path]] for path in _paths(params)}
  named = {}
  for i, block in enumerate(model.model.layers):
    for group, module in (("self_attn", block.self_attn), ("mlp", block.mlp)):
      for proj in c.lora_targets:
        if not hasattr(module, proj):
          continue
        adapter = lora[f"layers_{i}"][group][proj]
        wrapped = _LoraLinear(getattr(module, proj), adapter, c.lora_alpha / c.lora_rank, device)
        setattr(module, proj, wrapped)
        prefix = (f"layers_{i}", group, proj)
        named[(*prefix, "lora_a")], named[(*prefix, "lora_b")] = wrapped.lora_a, wrapped.lora_b
  return model, {path: named[path] for path in _paths(lora)}


def _LoraLinear(base, adapter: dict, scale: float, device: str):  # noqa: N802 (a class factory)
  """``base(x) + scale·(x A) B``, A [in, r] and B [r, out] as in our ``lora`` collection."""
  import torch

  class LoraLinear(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.base, self.scale = base, scale
      self.lora_a = torch.nn.Parameter(torch.tensor(np.asarray(adapter["lora_a"]), device=device))
      self.lora_b = torch.nn.Parameter(torch.tensor(np.asarray(adapter["lora_b"]), device=device))

    def forward(self, x):
      return self.base(x) + self.scale * ((x @ self.lora_a) @ self.lora_b)

  return LoraLinear()


def torch_losses(model, tokens, loss_mask):
  """Mean answer cross-entropy per sequence, as :func:`~evoselect_jax.train.losses.token_losses`."""
  import torch

  logits = model(input_ids=tokens).logits
  logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
  picked = logp.gather(-1, tokens[:, 1:, None])[..., 0]
  mask = loss_mask[:, 1:]
  return -(picked * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


class TorchKroneckerProjector:
  """Our leaf-wise Kronecker projection applied to PyTorch gradients (the peers' projector).

  A weight stored transposed by transformers ([out, in]) is projected as ``(Rᵀ G L)ᵀ``,
  which equals ``Lᵀ Gᵀ R`` on our [in, out] layout without transposing G.
  """

  def __init__(self, projector: features.TreeProjector, paths, transposed: set, device: str):
    import torch

    self.leaves = []
    for path, proj in zip(paths, projector.projectors, strict=True):
      left = torch.tensor(np.asarray(proj.left), device=device)
      right = torch.tensor(np.asarray(proj.right), device=device)
      self.leaves.append((left, right, path in transposed, proj.in_shape))

  def __call__(self, grads: list) -> Any:
    """Projects gradients [m, *torch_shape] (one per leaf, our leaf order) to [m, out_dim]."""
    out = 0
    for g, (left, right, transposed, (a, b)) in zip(grads, self.leaves, strict=True):
      m = g.shape[0]
      if transposed:  # g [m, b, a]
        z = (right.T @ g @ left).transpose(1, 2)
      else:
        z = left.T @ g.reshape(m, a, b) @ right
      out = out + z.reshape(m, -1)
    return out


def _normalize_torch(z) -> np.ndarray:
  z = z.detach().cpu().numpy()
  norm = np.linalg.norm(z, axis=1, keepdims=True)
  return z / np.where(norm > 0, norm, 1.0)


def less_way(model, params: list, batch: dict, project, *, interval: int, sync) -> np.ndarray:
  """LESS: a forward and backward per example; gradients projected every ``interval``."""
  import torch

  tokens, loss_mask = batch["tokens"], batch["loss_mask"]
  out, pending = [], []
  for i in range(tokens.shape[0]):
    for p in params:
      p.grad = None
    torch_losses(model, tokens[i : i + 1], loss_mask[i : i + 1]).sum().backward()
    pending.append([p.grad.detach().clone() for p in params])
    if len(pending) == interval or i == tokens.shape[0] - 1:
      with torch.no_grad():
        out.append(project([torch.stack(g) for g in zip(*pending, strict=True)]))
      pending = []
  result = _normalize_torch(torch.cat(out))
  sync()
  return result


def torch_vmap_way(model, named: dict, batch: dict, project, *, chunk: int, sync) -> np.ndarray:
  """``torch.func.vmap(grad)`` over chunks of ``chunk`` examples, then the projection."""
  import torch
  from torch.func import grad, vmap

  names = {id(p): n for n, p in model.named_parameters()}
  torch_names = [names[id(p)] for p in named.values()]
  params = {n: p.detach() for n, p in zip(torch_names, named.values(), strict=True)}

  def loss_one(p, tokens, loss_mask):
    wrapped = _Functional(model, p)
    return torch_losses(wrapped, tokens[None], loss_mask[None])[0]

  def _grads(tokens, loss_mask):
    return vmap(grad(loss_one), in_dims=(None, 0, 0), chunk_size=chunk)(params, tokens, loss_mask)

  grads = _grads(batch["tokens"], batch["loss_mask"])
  with torch.no_grad():
    result = _normalize_torch(project([grads[n] for n in torch_names]))
  sync()
  return result


class _Functional:
  """``model`` called through ``torch.func.functional_call`` with ``params`` swapped in."""

  def __init__(self, model, params):
    self.model, self.params = model, params

  def __call__(self, **kwargs):
    from torch.func import functional_call

    return functional_call(self.model, self.params, (), kwargs)


# --- cases -----------------------------------------------------------------------------


def scored(cfg, batch: dict) -> int | None:
  """Our ``num_scored``: the answer positions only (``cfg.scored='answer'``) or all (``None``)."""
  if cfg.scored not in ("answer", "all"):
    raise ValueError(f"grads.scored must be 'answer' or 'all', got {cfg.scored!r}")
  return losses.num_scored(batch["loss_mask"]) if cfg.scored == "answer" else None


def unit_rows(z: np.ndarray) -> float:
  """Fraction of rows of ``z`` with unit norm (a zero row: a zero or non-finite gradient)."""
  return float(np.mean(np.abs(np.linalg.norm(z, axis=1) - 1.0) < 1e-4))


def _row(case, method, timing, n, flops, **extra) -> dict:
  median = timing["median_s"]
  return {
    "case": case,
    "method": method,
    "first_s": timing["first_s"],
    "median_s": median,
    "min_s": timing["min_s"],
    "examples_per_s": n / median,
    "model_gflops": flops * n / median / 1e9,
    **extra,
    **({"xla_gflops": extra["xla_gflop"] / median} if extra.get("xla_gflop") else {}),
  }


def thread_counts(cfg) -> list[int]:
  """The peers' thread counts to time; ``None`` in ``cfg.torch_threads``: every core."""
  import torch

  default = torch.get_num_threads()
  return sorted({default if t is None else int(t) for t in cfg.torch_threads})


def with_threads(fn: Callable[[], Any], threads: int) -> Callable[[], Any]:
  """``fn`` run with PyTorch's intra-op thread count set to ``threads``."""
  import torch

  def call():
    torch.set_num_threads(threads)
    return fn()

  return call


def add_peers(fns: dict, peers: dict[str, Callable[[], Any]], counts: list[int]) -> None:
  """Adds each peer to ``fns`` once per thread count in ``counts``, as ``<peer>@<threads>``."""
  for name, fn in peers.items():
    for threads in counts:
      fns[f"{name}@{threads}"] = with_threads(fn, threads)


def fastest_peers(times: dict[str, dict]) -> dict[str, dict]:
  """``times`` with each peer's thread counts collapsed to its fastest, by median.

  The peer's entry gains ``torch_threads`` (the fastest count) and
  ``median_s_by_threads``; a shared machine can favour either count.
  """
  out = {name: t for name, t in times.items() if "@" not in name}
  for peer in sorted({name.split("@")[0] for name in times if "@" in name}):
    runs = {int(n.split("@")[1]): t for n, t in times.items() if n.split("@")[0] == peer}
    best = min(runs, key=lambda k: runs[k]["median_s"])
    by_threads = {str(k): t["median_s"] for k, t in sorted(runs.items())}
    out[peer] = dict(runs[best], torch_threads=best, median_s_by_threads=by_threads)
  return out


def _torch_setup(cfg, seed):
  import torch

  torch.manual_seed(seed)
  device = cfg.torch_device
  if device == "cuda" and not torch.cuda.is_available():
    raise RuntimeError("grads.torch_device='cuda' but torch sees no CUDA device")
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  return device, sync


def _torch_batch(batch, device):
  import torch

  return {
    "tokens": torch.tensor(batch["tokens"], dtype=torch.long, device=device),
    "loss_mask": torch.tensor(batch["loss_mask"], dtype=torch.float32, device=device),
  }


def lora_case(cfg, spec, *, seed: int, repeats: int, threads: list[int]) -> tuple[list, dict]:
  """One LoRA case: rows of ours (vmap, factored) and the peers (less, torch_vmap); phases."""
  laps = Laps()
  c = llama_config(spec)
  params, lora = init_model(c, seed)
  batch = make_batch(c, cfg.num_examples, cfg.seq_len, cfg.answer_tokens, seed)
  jbatch = jax.tree.map(jnp.asarray, batch)
  projector = features.make_tree_projector("factored", lora, cfg.out_dim, jax.random.key(seed))
  device, sync = _torch_setup(cfg, seed)
  model, named = torch_model(c, params, lora, device, cfg.torch_attention)
  vmodel, vnamed = torch_model(c, params, lora, device, cfg.torch_vmap_attention)
  project = TorchKroneckerProjector(projector, list(named), set(), device)
  tbatch = _torch_batch(batch, device)
  num = scored(cfg, batch)
  laps.lap("setup_s")
  compiled = {
    f"ours_{path}": compile_ours(
      c,
      params,
      lora,
      jbatch,
      projector,
      path=path,
      collection="lora",
      micro_batch=cfg.micro_batch,
      num_scored=num,
    )
    for path in cfg.lora_paths
  }
  laps.lap("compile_s")
  fns = {name: call for name, (call, _) in compiled.items()}
  peers = {
    "less": functools.partial(
      less_way,
      model,
      list(named.values()),
      tbatch,
      project,
      interval=cfg.project_interval,
      sync=sync,
    ),
    "torch_vmap": functools.partial(
      torch_vmap_way, vmodel, vnamed, tbatch, project, chunk=cfg.torch_micro_batch, sync=sync
    ),
  }
  add_peers(fns, peers, threads)
  times = fastest_peers(time_each(fns, repeats))
  laps.lap("timed_s")
  flops = 2 * forward_flops(c, cfg.seq_len)
  case = f"lora/{spec['name']}"
  info = {"params": num_params(params), "lora_params": num_params(lora), "seq_len": cfg.seq_len}
  info["num_scored"] = num
  rows = []
  for name, timing in times.items():
    extra = dict(info)
    if name in compiled:
      extra.update(compiled[name][1], micro_batch=cfg.micro_batch)
      ref = timing["result"]
      extra["unit_rows"] = unit_rows(ref)
      for peer in ("less", "torch_vmap"):
        extra[f"max_abs_diff_vs_{peer}"] = float(np.abs(ref - times[peer]["result"]).max())
    else:
      extra.update(torch_device=device, torch_threads=timing["torch_threads"])
      extra["median_s_by_threads"] = timing["median_s_by_threads"]
    rows.append(_row(case, name, timing, cfg.num_examples, flops, **extra))
  return rows, laps.seconds


def whole_case(cfg, spec, *, seed: int, repeats: int, threads: list[int]) -> tuple[list, dict]:
  """The whole-model case: rows of ours (factored, gradient-then-project) and less; phases."""
  laps = Laps()
  c = llama_config(spec)
  params, _ = init_model(c, seed)
  batch = make_batch(c, cfg.num_examples, cfg.seq_len, cfg.answer_tokens, seed)
  jbatch = jax.tree.map(jnp.asarray, batch)
  key = jax.random.key(seed)
  factored = features.make_tree_projector("factored", params, cfg.out_dim, key)
  kron = features.make_tree_projector("kronecker", params, cfg.out_dim, key)  # the same map
  device, sync = _torch_setup(cfg, seed)
  model, named = torch_model(c, params, None, device, cfg.torch_attention)
  transposed = {row[1] for row in convert.hf_parameter_table(c) if row[2]}
  project = TorchKroneckerProjector(factored, list(named), transposed, device)
  tbatch = _torch_batch(batch, device)
  calls = {"ours_factored": (factored, "factored", cfg.micro_batch)}
  for kind, b in cfg.gtp:
    proj = (
      kron if kind == "kronecker" else features.make_tree_projector(kind, params, cfg.out_dim, key)
    )
    calls[f"ours_gtp_{kind}_mb{b}"] = (proj, "vmap", b)
  num = scored(cfg, batch)
  laps.lap("setup_s")
  compiled = {
    name: compile_ours(
      c, params, None, jbatch, proj, path=path, collection="params", micro_batch=b, num_scored=num
    )
    for name, (proj, path, b) in calls.items()
  }
  laps.lap("compile_s")
  fns = {name: call for name, (call, _) in compiled.items()}
  less = functools.partial(
    less_way,
    model,
    list(named.values()),
    tbatch,
    project,
    interval=cfg.whole_project_interval,
    sync=sync,
  )
  add_peers(fns, {"less": less}, threads)
  times = fastest_peers(time_each(fns, repeats))
  laps.lap("timed_s")
  flops = 3 * forward_flops(c, cfg.seq_len)
  case = f"whole/{spec['name']}"
  info = {"params": num_params(params), "seq_len": cfg.seq_len, "num_scored": num}
  rows = []
  for name, timing in times.items():
    extra = dict(info)
    if name in compiled:
      extra.update(compiled[name][1], micro_batch=calls[name][2])
      extra["unit_rows"] = unit_rows(timing["result"])
      if isinstance(calls[name][0].projectors[0], features.KroneckerProjector):  # LESS's map
        diff = np.abs(timing["result"] - times["less"]["result"]).max()
        extra["max_abs_diff_vs_less"] = float(diff)
    else:
      extra.update(torch_device=device, torch_threads=timing["torch_threads"])
      extra["median_s_by_threads"] = timing["median_s_by_threads"]
    rows.append(_row(case, name, timing, cfg.num_examples, flops, **extra))
  return rows, laps.seconds


def _best(rows, case, prefix) -> dict:
  return min(
    (r for r in rows if r["case"] == case and r["method"].startswith(prefix)),
    key=lambda r: r["median_s"],
  )


def _peak_bound(rows, whole: str, gtp: dict, hw: dict[str, Any]) -> dict[str, Any]:
  """What the factored projection could reach against ``gtp`` at the machine's matmul peak.

  Its FLOPs (XLA's count) at ``hw['matmul_gflops']`` give the least time it could take;
  the ratio of ``gtp``'s measured time to that bounds ``factored_vs_grad_then_project``
  on this machine.
  """
  factored = next(r for r in rows if r["case"] == whole and r["method"] == "ours_factored")
  if not (factored.get("xla_gflop") and gtp.get("xla_gflop")):
    return {}
  least_s = factored["xla_gflop"] / hw["matmul_gflops"]
  return {
    "factored_xla_gflop": factored["xla_gflop"],
    "grad_then_project_xla_gflop": gtp["xla_gflop"],
    "factored_fraction_of_matmul_peak": factored["xla_gflops"] / hw["matmul_gflops"],
    "factored_vs_grad_then_project_at_matmul_peak": gtp["median_s"] / least_s,
  }


def run(cfg, hw: dict[str, Any], *, seed: int, repeats: int) -> dict[str, Any]:
  """Runs the LoRA cases and the whole-model case; see the module docstring."""
  import torch

  previous, threads = torch.get_num_threads(), thread_counts(cfg)
  rows, phases = [], {}
  try:
    for spec in cfg.lora_models:
      case_rows, phases[f"lora/{spec['name']}"] = lora_case(
        cfg, spec, seed=seed, repeats=repeats, threads=threads
      )
      rows += case_rows
    case_rows, phases[f"whole/{cfg.whole_model['name']}"] = whole_case(
      cfg, cfg.whole_model, seed=seed, repeats=repeats, threads=threads
    )
    rows += case_rows
  finally:
    torch.set_num_threads(previous)

  def time_of(case, method):
    return next(r for r in rows if r["case"] == case and r["method"] == method)["median_s"]

  lora_cases = [f"lora/{spec['name']}" for spec in cfg.lora_models]
  whole = f"whole/{cfg.whole_model['name']}"
  best = {case: _best(rows, case, "ours") for case in [*lora_cases, whole]}
  factored = time_of(whole, "ours_factored")
  gtp = _best(rows, whole, "ours_gtp_kronecker")
  diffs = [v for r in rows for k, v in r.items() if k.startswith("max_abs_diff")]
  summary = {
    "lora_vs_less": min(time_of(k, "less") / best[k]["median_s"] for k in lora_cases),
    "lora_vs_torch_vmap": min(time_of(k, "torch_vmap") / best[k]["median_s"] for k in lora_cases),
    "lora_best_ours": {k: best[k]["method"] for k in lora_cases},
    "whole_model_vs_less": time_of(whole, "less") / best[whole]["median_s"],
    "whole_model_best_ours": best[whole]["method"],
    "factored_vs_grad_then_project": gtp["median_s"] / factored,
    "grad_then_project_best": gtp["method"],
    **_peak_bound(rows, whole, gtp, hw),
    **{
      f"factored_vs_grad_then_project_{kind}": _best(rows, whole, f"ours_gtp_{kind}")["median_s"]
      / factored
      for kind in sorted({kind for kind, _ in cfg.gtp} - {"kronecker"})
    },
    "max_abs_diff_vs_peers": max(diffs),
  }
  methods = sorted({r["method"] for r in rows}, key=lambda m: (not m.startswith("ours"), m))
  labels = [*lora_cases, whole]
  series = {
    m: [
      next((r["examples_per_s"] for r in rows if r["case"] == k and r["method"] == m), None)
      for k in labels
    ]
    for m in methods
  }
  plot = {
    "title": "per-example gradient features",
    "ylabel": "examples/s",
    "labels": labels,
    "series": series,
  }
  return {"rows": rows, "summary": summary, "plot": plot, "phases_s": phases}
