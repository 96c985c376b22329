"""Factored per-example gradient features of the decoder: never form a per-example gradient.

LoGra (Choe et al. 2024, "What is your data worth to GPT?"): for a linear map
``y = x W`` (x [t, d_in], W [d_in, d_out]) one example's gradient is
``dW = Σ_t x_tᵀ δ_t`` with ``δ = dL/dy`` [t, d_out]. Its projection by the Kronecker
matrix ``kron(P_in, P_out)`` (the ``kronecker`` projector, P_in [d_in, r_in], P_out
[d_out, r_out]) is ``P_inᵀ dW P_out = (x P_in)ᵀ (δ P_out)`` [r_in, r_out]: two thin
matmuls per token and a sum over tokens, never the [d_in, d_out] gradient.

The decoder's taps (:mod:`evoselect_jax.models.llama`) supply both factors for a whole
micro-batch at once: one batched forward records every layer's input x, and one batched
backward of ``Σ_i loss_i`` with respect to zero perturbations on the layer outputs gives
every δ; examples do not interact, so row i of δ is example i's own output gradient. No
weight gradient is computed at all (the backward is the input-gradient half only).

Every parameter of the decoder is covered, so ``params='all'`` features are exact:

- projection kernels (q/k/v/o, gate/up/down) and ``lm_head``: ``(x P_in)ᵀ (δ P_out)``;
- the embedding [V, d]: its lookup is a linear map of one-hot tokens, so
  ``(P_V[tokens])ᵀ (δ_embed P_d)``, plus, when tied, the head's
  ``(δ_logits P_V)ᵀ (h P_d)``;
- vectors (RMSNorm scales, biases): their per-example gradients are [n, d]
  (``Σ_t x̂_t ⊙ δ_t``, ``Σ_t δ_t``) and are projected as they are (dense Gaussian);
- LoRA factors (``y += s·x A B``): ``dA = s·xᵀ(δ Bᵀ)`` and ``dB = s·(x A)ᵀ δ``, again
  two factors each.

The result equals ``make_tree_projector("kronecker", diff, ...)`` applied to the true
per-example gradients (tests/test_grads_decoder.py checks it against the dense
``kron`` matrix).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from evoselect_jax.features.grads import Features, _map_micro_batches, finish_features
from evoselect_jax.features.projectors import KroneckerProjector, TreeProjector
from evoselect_jax.models import llama
from evoselect_jax.train import losses

COLLECTIONS = ("params", "lora")


def decoder_factors(
  config: llama.LlamaConfig,
  params: dict,
  lora: dict | None,
  batch: dict[str, jax.Array],
  num_scored: int | None = None,
  outputs: set[tuple[str, ...]] | None = None,
) -> tuple[dict, dict]:
  """Every layer's input and output gradient for a batch, by one forward and one backward.

  A caller that runs many batches with float32 adapters passes the merged model
  instead (:func:`merged`).

  Args:
    config: the architecture.
    params: the ``params`` collection.
    lora: the ``lora`` collection or ``None``.
    batch: ``tokens int32[b, t]``, ``attention_mask [b, t]``, ``loss_mask [b, t]``.
    num_scored: ``None`` or the positions scored per row
      (:func:`~evoselect_jax.train.losses.batch_losses`); then the last block's query
      side, MLP and the head hold those positions only (the others get no gradient).
    outputs: the perturbation paths (e.g. ``("layers_0", "self_attn", "q_proj", "out")``,
      ``("head_out",)``) whose gradients are wanted; ``None``: all. The backward stops
      where no wanted gradient needs it.

  Returns:
    ``(taps, deltas)``: the ``taps`` collection (inputs, each a 1-tuple of [b, t, ...])
    and the gradients of ``Σ_i loss_i`` with respect to the ``perturbations`` (output
    gradients [b, t, ...]), both keyed by module path; see the decoder's taps. With
    ``num_scored``, those of the last block's query side, MLP and head are
    [b, num_scored, ...].
  """
  model = llama.Llama(config, use_lora=lora is not None)
  variables = {"params": params} | ({"lora": lora} if lora is not None else {})
  tokens, mask, loss_mask = batch["tokens"], batch["attention_mask"], batch["loss_mask"]
  at = None if num_scored is None else losses.scored_positions(loss_mask, num_scored)

  def shapes():
    _, state = model.apply(variables, tokens, mask, logits_at=at, mutable=["perturbations"])
    return state["perturbations"]

  zeros = traverse_util.flatten_dict(
    jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(shapes))
  )
  wanted = set(zeros) if outputs is None else set(outputs)
  unknown = sorted(wanted - set(zeros))
  if unknown:
    raise ValueError(
      f"No output gradient for {', '.join('/'.join(p) for p in unknown)}: the decoder "
      "records the outputs of its projections and norms, embed_out and head_out (see "
      "evoselect_jax.models.llama)"
    )

  def total_loss(diffed):
    perturbations = traverse_util.unflatten_dict(zeros | diffed)
    logits, state = model.apply(
      variables | {"perturbations": perturbations},
      tokens,
      mask,
      logits_at=at,
      mutable=[llama.TAPS],
    )
    return losses.scored_losses(logits, tokens, loss_mask, at).sum(), state[llama.TAPS]

  deltas, taps = jax.grad(total_loss, has_aux=True)({p: zeros[p] for p in wanted})
  return taps, traverse_util.unflatten_dict(deltas)


def merged(config: llama.LlamaConfig, params: dict, lora: dict | None) -> tuple[dict, dict | None]:
  """``(params, lora)`` for :func:`decoder_factors`: with float32 adapters, the merged model.

  The merged model (:func:`~evoselect_jax.models.llama.merge_lora`) is the same function
  with the same layer inputs and output gradients, at one matmul per projection instead
  of three. In bfloat16 the small update ``s A B`` would be rounded away in ``W + s A B``,
  so the adapters stay apart.
  """
  if lora is None or config.compute_dtype != jnp.float32:
    return params, lora
  return llama.merge_lora(config, params, lora), None


def _at(tree: dict, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


@dataclasses.dataclass(frozen=True)
class _Side:
  """One projected factor of a term: ``source @ matrix`` [n, t, r], or ``source`` itself."""

  source: jax.Array
  matrix: jax.Array | None = None


_Term = tuple[_Side, _Side]  # Σ_t left_tᵀ right_t per example, [n, r_a·r_b]


def _leaf_outputs(
  path: tuple[str, ...], collection: str, config: llama.LlamaConfig
) -> set[tuple[str, ...]]:
  """The perturbations whose gradients :func:`_leaf_terms` reads for ``path``."""
  if collection == "params" and path == ("embed_tokens", "embedding"):
    return {("embed_out",), ("head_out",)} if config.tie_word_embeddings else {("embed_out",)}
  if collection == "params" and path == ("lm_head",):
    return {("head_out",)}
  return {(*path[:-1], "out")}


def _leaf_terms(
  path: tuple[str, ...],
  proj: KroneckerProjector,
  *,
  collection: str,
  config: llama.LlamaConfig,
  lora: dict | None,
  taps: dict,
  deltas: dict,
  tokens: jax.Array,
) -> tuple[list[_Term], jax.Array | None]:
  """The projected per-example gradient of the parameter at ``path``.

  Returns:
    ``(terms, dense)``: the projection is the sum of the terms (see
    :func:`_project_terms`) plus ``dense`` [n, out_dim] (vectors) when not None.
  """
  *module, name = path
  module = tuple(module)
  if collection == "params" and path == ("embed_tokens", "embedding"):
    terms = [(_Side(proj.left[tokens]), _Side(deltas["embed_out"], proj.right))]
    if config.tie_word_embeddings:  # logits = h Eᵀ: dE = δ_logitsᵀ h
      terms.append((_Side(deltas["head_out"], proj.left), _Side(taps["head_in"][0], proj.right)))
    return terms, None
  if collection == "params" and path == ("lm_head",):
    return [(_Side(taps["head_in"][0], proj.left), _Side(deltas["head_out"], proj.right))], None
  x, delta = _at(taps, module)["in"][0], _at(deltas, module)["out"]
  f32 = jnp.float32
  if collection == "params" and name == "kernel":
    return [(_Side(x, proj.left), _Side(delta, proj.right))], None
  if collection == "params" and name == "bias":
    return [], proj(delta.astype(f32).sum(1))
  if collection == "params" and name == "scale":
    return [], proj((x.astype(f32) * delta.astype(f32)).sum(1))
  if collection == "lora" and name in ("lora_a", "lora_b"):
    adapter, scale = _at(lora, module), config.lora_alpha / config.lora_rank
    if name == "lora_a":  # dA = s xᵀ (δ Bᵀ): P_inᵀ dA P_out = (x P_in)ᵀ (δ s Bᵀ P_out)
      return [(_Side(x, proj.left), _Side(delta, scale * adapter["lora_b"].T @ proj.right))], None
    # dB = s (x A)ᵀ δ: P_inᵀ dB P_out = (x s A P_in)ᵀ (δ P_out)
    return [(_Side(x, scale * adapter["lora_a"] @ proj.left), _Side(delta, proj.right))], None
  raise ValueError(f"No factored gradient for {collection} leaf {'/'.join(path)}")


def _project_terms(terms: list[_Term], n: int) -> jax.Array:
  """``Σ_terms Σ_t left_tᵀ right_t`` per example, flattened: [n, r_a·r_b].

  Batched for the CPU's sake, where a hundred thin matmuls cost more than their FLOPs:
  each source array is multiplied once by all the matrices that read it, side by side
  (the decoder records one array for the shared input of q/k/v and of gate/up), and
  the terms of one output shape are contracted in one matmul, their tokens stacked.
  """
  f32 = jnp.float32
  reads: dict[int, tuple[jax.Array, list[jax.Array]]] = {}
  for side in (side for term in terms for side in term if side.matrix is not None):
    reads.setdefault(id(side.source), (side.source, []))[1].append(side.matrix)
  products = {}
  for key, (source, matrices) in reads.items():
    wide = source.astype(f32) @ jnp.concatenate(matrices, axis=1)
    bounds = np.cumsum([m.shape[1] for m in matrices])[:-1].tolist()
    products[key] = iter(jnp.split(wide, bounds, axis=-1))
  groups: dict[tuple[int, int], list[tuple[jax.Array, jax.Array]]] = {}
  for term in terms:  # the order of the reads above
    left, right = (
      side.source.astype(f32) if side.matrix is None else next(products[id(side.source)])
      for side in term
    )
    groups.setdefault((left.shape[-1], right.shape[-1]), []).append((left, right))
  return sum(
    jnp.einsum(
      "ntr,nts->nrs",
      jnp.concatenate([left for left, _ in pairs], axis=1),
      jnp.concatenate([right for _, right in pairs], axis=1),
    ).reshape(n, -1)
    for pairs in groups.values()
  )


def check_factored_projector(projector: Any, diff: Any) -> None:
  """Raises unless ``projector`` is a leaf-wise Kronecker projector built on ``diff``."""
  if not isinstance(projector, TreeProjector):
    raise TypeError(
      f"factored_features needs a TreeProjector, got {type(projector).__name__}; build it "
      "with make_tree_projector('factored' or 'kronecker', diff, out_dim, key)"
    )
  leaves, treedef = jax.tree.flatten(diff)
  if treedef != projector.treedef:
    raise ValueError(f"Projector built for {projector.treedef}, the parameters are {treedef}")
  for proj, leaf in zip(projector.projectors, leaves, strict=True):
    shape = tuple(leaf.shape)
    view = (math.prod(shape[:-1]), shape[-1]) if shape else (1, 1)
    if not isinstance(proj, KroneckerProjector) or proj.in_shape != view:
      raise ValueError(
        f"factored_features needs Kronecker leaf projectors with in_shape=leaf.shape "
        f"(make_tree_projector('factored', ...)); got {type(proj).__name__} for a leaf {shape}"
      )


def factored_features(
  config: llama.LlamaConfig,
  params: dict,
  lora: dict | None,
  diff: Any,
  batch: dict[str, jax.Array],
  projector: TreeProjector,
  *,
  collection: str,
  micro_batch: int = 64,
  normalize: bool = True,
  num_scored: int | None = None,
) -> Features:
  """Kronecker-projected per-example gradients of the decoder, from layer factors.

  Equal to ``per_example_features(loss, diff, batch, projector)`` with ``loss`` the
  example's answer-token cross-entropy (:func:`~evoselect_jax.train.losses.example_loss`),
  but without forming any per-example gradient.

  Args:
    config: the architecture.
    params: the ``params`` collection (the whole model, for the forward pass).
    lora: the ``lora`` collection or ``None``.
    diff: the parameters whose gradients are featurised: a subtree of ``params`` (with
      the same paths) when ``collection='params'``, the ``lora`` tree when ``'lora'``.
    batch: ``tokens int32[n, t]``, ``attention_mask [n, t]``, ``loss_mask [n, t]``.
    projector: ``make_tree_projector('factored' or 'kronecker', diff, out_dim, key)``.
    collection: ``params`` or ``lora``, which collection ``diff`` comes from.
    micro_batch: examples per batched forward and backward.
    normalize: L2-normalise each row; zero rows stay zero.
    num_scored: ``None`` (logits everywhere) or at least
      :func:`~evoselect_jax.train.losses.num_scored` of the batch: only the positions
      that predict targets are scored (:func:`decoder_factors`).

  Returns:
    :class:`~evoselect_jax.features.Features` [n, out_dim]; rows whose projection is
    not finite (a NaN or inf in any factor makes it so) are zeros, flagged in ``finite``.
  """
  if collection not in COLLECTIONS:
    raise ValueError(f"collection={collection!r}; valid: {', '.join(COLLECTIONS)}")
  if collection == "lora" and lora is None:
    raise ValueError("collection='lora' needs the lora collection")
  check_factored_projector(projector, diff)
  paths = [tuple(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(diff)[0]]
  outputs = set().union(*(_leaf_outputs(path, collection, config) for path in paths))

  forward = merged(config, params, lora)  # once, outside the loop over micro-batches

  def featurize(examples):
    taps, deltas = decoder_factors(config, *forward, examples, num_scored, outputs)
    terms, z = [], jnp.zeros((examples["tokens"].shape[0], projector.out_dim), jnp.float32)
    for path, proj in zip(paths, projector.projectors, strict=True):
      leaf_terms, dense = _leaf_terms(
        path,
        proj,
        collection=collection,
        config=config,
        lora=lora,
        taps=taps,
        deltas=deltas,
        tokens=examples["tokens"],
      )
      terms += leaf_terms
      z = z if dense is None else z + dense
    if terms:
      z = z + _project_terms(terms, z.shape[0])
    return finish_features(z, jnp.all(jnp.isfinite(z), axis=1), normalize)

  return _map_micro_batches(featurize, batch, micro_batch)
