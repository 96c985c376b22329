"""Decoding throughput: our jitted KV-cache sampler against transformers' ``generate``.

  python -m experiments.bench_generate --batch_size=8 --max_new_tokens=64 --out=bench.json

Both decode the same chat prompts (one batch, left-padded) with the same model, loaded
from the same file: ours through :func:`evoselect_jax.models.load_checkpoint`, theirs
through transformers' own GGUF or safetensors loading. Every row generates exactly
``max_new_tokens`` tokens (ours ignores EOS, theirs sets ``min_new_tokens``), so both
count ``batch_size * max_new_tokens`` tokens per call. The first call of each is timed
apart (ours: tracing and XLA compilation; theirs: warm-up), then ``repeats`` calls of
each, interleaved so that load from other processes hits both alike; throughput uses
the median. Writes the JSON to ``--out`` and prints it.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from evoselect_jax.models import chat_prompt, generate_ids, load_checkpoint
from evoselect_jax.models import checkpoint as checkpoint_lib
from evoselect_jax.models.generate import encode_batch

_MODEL = flags.DEFINE_string(
  "model", "smollm2-135m-instruct", "Checkpoint path or registered name."
)
_BATCH = flags.DEFINE_integer("batch_size", 8, "Prompts decoded together.")
_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens generated per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 for greedy, else sampling.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass when sampling.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Top-k cut when sampling, 0 for none.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls of each after the first.")
_TORCH_THREADS = flags.DEFINE_integer(
  "torch_threads", 0, "torch.set_num_threads for transformers; 0 keeps torch's default."
)
_OUT = flags.DEFINE_string("out", "bench_generate.json", "Where to write the JSON.")

QUESTIONS = (
  "Which planet is known as the red planet, and why?",
  "Explain in detail how photosynthesis works.",
  "Write a short poem about the sea.",
  "What are the main causes of inflation?",
  "Give three tips for learning a new language.",
  "How does a binary search work?",
  "Summarise the plot of Romeo and Juliet.",
  "Why is the sky blue?",
)


def _timed(fn) -> float:
  """Seconds one call of ``fn`` takes (it must block until its result is ready)."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main(argv):
  """Runs both samplers on one batch and writes their throughput."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import torch
  import transformers

  b, new = _BATCH.value, _NEW.value
  ckpt = load_checkpoint(_MODEL.value)
  prompts = [
    chat_prompt(ckpt, [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
    for i in range(b)
  ]
  sampling = dict(temperature=_TEMPERATURE.value, top_p=_TOP_P.value, top_k=_TOP_K.value)
  if sampling["temperature"] == 0:
    sampling.update(top_p=1.0, top_k=0)

  ids, mask = encode_batch(ckpt.tokenizer, prompts, b)
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)

  def ours():
    out = generate_ids(
      ckpt.config,
      ckpt.params,
      None,
      ids,
      mask,
      max_new_tokens=new,
      eos_ids=(),
      key=jax.random.key(0),
      **sampling,
    )
    out.block_until_ready()

  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  source = checkpoint_lib.resolve(_MODEL.value)
  if source.is_dir():
    hf = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
  else:
    hf = transformers.AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
  hf = hf.eval()
  pad = ckpt.tokenizer.pad_token_id
  if pad is None:
    raise ValueError(f"{ckpt.source}'s tokenizer has no pad token, which transformers needs")
  batch = ckpt.tokenizer(
    prompts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt"
  )
  hf_sampling = (
    dict(do_sample=False)
    if sampling["temperature"] == 0
    else dict(do_sample=True, **sampling)  # HF's top_k=0 also means no cut.
  )

  def theirs():
    with torch.no_grad():
      hf.generate(
        **batch,
        max_new_tokens=new,
        min_new_tokens=new,
        pad_token_id=pad,
        **hf_sampling,
      )

  first = {"ours": _timed(ours), "transformers": _timed(theirs)}
  steady: dict[str, list[float]] = {"ours": [], "transformers": []}
  for _ in range(_REPEATS.value):
    steady["ours"].append(_timed(ours))
    steady["transformers"].append(_timed(theirs))

  tokens = b * new
  result = {
    "model": _MODEL.value,
    "batch_size": b,
    "max_new_tokens": new,
    "prompt_tokens": [int(n) for n in np.asarray(mask).sum(1)],
    "padded_prompt_len": {"ours": int(ids.shape[1]), "transformers": batch.input_ids.shape[1]},
    "sampling": sampling,
    "tokens_per_call": tokens,
    "environment": {
      "jax": jax.__version__,
      "jax_backend": jax.default_backend(),
      "torch": torch.__version__,
      "torch_threads": torch.get_num_threads(),
      "transformers": transformers.__version__,
      "cpu_count": os.cpu_count(),
      "load_average_end": os.getloadavg()[0],
      "machine": platform.machine(),
    },
  }
  for name in ("ours", "transformers"):
    median = statistics.median(steady[name])
    result[name] = {
      "first_call_s": first[name],
      "compile_s": max(first[name] - median, 0.0),
      "steady_s": steady[name],
      "steady_median_s": median,
      "tokens_per_s": tokens / median,
    }
  result["speedup"] = result["ours"]["tokens_per_s"] / result["transformers"]["tokens_per_s"]
  text = json.dumps(result, indent=2)
  pathlib.Path(_OUT.value).write_text(text + "\n")
  print(text)


if __name__ == "__main__":
  app.run(main)
