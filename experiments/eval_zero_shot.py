r"""Zero-shot MCQA accuracy of a checkpoint on the paper's eight benchmarks, lm-eval style.

  python -m experiments.eval_zero_shot --model smollm2-135m-instruct --limit 100 \
    --out /tmp/eval_zero_shot_smollm2_n100.json

Each task is scored on its evaluation split (``BENCHMARKS[name].test_split``: ARC, OBQA,
LogiQA, LogiQA 2.0, MedQA (4 options) and HeadQA test; CommonsenseQA dev, whose test has
no answers; MedMCQA validation), without the items that cannot be scored (HeadQA's
``needs_image``, LogiQA 2.0's ``blank_option``), and with ``--limit`` only the first N
of the rest, in file order. Prompts ("Question: ...\nAnswer:", passages first), encoding
(no bos for SmolLM2, as lm-eval) and scores (acc; acc_norm by option characters) are those
of :mod:`evoselect_jax.eval`, with each example's options packed after one prompt.

Writes a JSON file after every task (per task: split, item counts, acc, acc_norm, their
standard errors, seconds, tokens, items/s, and per item its id, answer, predictions and
option log-likelihoods) and prints a markdown table. A task's seconds include encoding
and the compiles of bucket shapes no earlier task used.
"""

import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

from evoselect_jax.data.benchmarks import BENCHMARKS, load_task
from evoselect_jax.eval import HFTokenizer, encode_packed, packed_mcqa_accuracy
from evoselect_jax.models import llama, load_checkpoint

TASKS = (
  "arc_challenge",
  "openbookqa",
  "commonsenseqa",
  "logiqa",
  "logiqa2",
  "medqa",
  "medmcqa",
  "headqa",
)
EXCLUDED_QUIRKS = frozenset({"needs_image", "blank_option"})  # Items no scorer can score.

_MODEL = flags.DEFINE_string(
  "model", "smollm2-135m-instruct", "Registered checkpoint name, HF directory or .gguf file."
)
_TASKS = flags.DEFINE_list("tasks", list(TASKS), "Benchmarks to evaluate.")
_LIMIT = flags.DEFINE_integer("limit", None, "Score only the first N items of each task.")
_BATCH_TOKENS = flags.DEFINE_integer("batch_tokens", 2048, "Tokens per forward pass.")
_MAX_LEN = flags.DEFINE_integer("max_len", 2048, "Most tokens of a prompt + option; more raise.")
_OUT = flags.DEFINE_string("out", None, "JSON file to write.")
flags.mark_flag_as_required("out")


def evaluate_task(name, logits_fn, tokenizer, *, limit, batch_tokens, max_len) -> dict:
  """Zero-shot scores of one benchmark's evaluation split (its first ``limit`` items)."""
  split = BENCHMARKS[name].test_split
  examples = load_task(name, split)
  kept = [ex for ex in examples if not EXCLUDED_QUIRKS & set(ex.meta.get("quirks", ()))]
  subset = kept if limit is None else kept[:limit]
  start = time.perf_counter()
  encoded = encode_packed(tokenizer, subset, max_len, max(len(ex.choices) for ex in subset))
  out = packed_mcqa_accuracy(logits_fn, encoded, batch_tokens=batch_tokens)
  seconds = time.perf_counter() - start
  n = len(subset)
  return {
    "task": name,
    "split": split,
    "n_split": len(examples),
    "n_excluded": len(examples) - len(kept),
    "n_scored": n,
    "acc": out.acc,
    "acc_stderr": float(np.sqrt(out.acc * (1 - out.acc) / n)),
    "acc_norm": out.acc_norm,
    "acc_norm_stderr": float(np.sqrt(out.acc_norm * (1 - out.acc_norm) / n)),
    "seconds": seconds,
    "tokens": int(encoded["length"].sum()),
    "items_per_s": n / seconds,
    "items": [
      {
        "id": ex.id,
        "answer": ex.answer,
        "pred": int(pred),
        "pred_norm": int(pred_norm),
        "loglik": loglik[: len(ex.choices)].tolist(),
      }
      for ex, pred, pred_norm, loglik in zip(
        subset, out.pred, out.pred_norm, out.loglik, strict=True
      )
    ],
  }


def markdown(results: list[dict], total_seconds: float) -> str:
  """The results as a markdown table, with the run time below it."""
  lines = [
    "| task | split | scored / excluded / split | acc | acc_norm | s | items/s |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in results:
    lines.append(
      f"| {r['task']} | {r['split']} | {r['n_scored']} / {r['n_excluded']} / {r['n_split']} | "
      f"{r['acc']:.3f} ± {r['acc_stderr']:.3f} | {r['acc_norm']:.3f} ± {r['acc_norm_stderr']:.3f}"
      f" | {r['seconds']:.0f} | {r['items_per_s']:.2f} |"
    )
  return "\n".join(lines) + f"\n\nTotal run time: {total_seconds:.0f} s"


def main(argv):
  """Scores every task in --tasks and writes --out."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  unknown = sorted(set(_TASKS.value) - set(BENCHMARKS))
  if unknown:
    raise app.UsageError(f"Unknown tasks {unknown}; valid: {', '.join(sorted(BENCHMARKS))}")
  start = time.perf_counter()
  ckpt = load_checkpoint(_MODEL.value)
  tokenizer = HFTokenizer(ckpt.tokenizer)
  logits_fn = jax.tree_util.Partial(llama.apply, ckpt.config, ckpt.params, None)
  report = {
    "model": _MODEL.value,
    "source": ckpt.source,
    "limit": _LIMIT.value,
    "batch_tokens": _BATCH_TOKENS.value,
    "command": " ".join(sys.argv),
    "devices": [str(d) for d in jax.devices()],
    "results": [],
  }
  for name in _TASKS.value:
    result = evaluate_task(
      name,
      logits_fn,
      tokenizer,
      limit=_LIMIT.value,
      batch_tokens=_BATCH_TOKENS.value,
      max_len=_MAX_LEN.value,
    )
    report["results"].append(result)
    report["total_seconds"] = time.perf_counter() - start
    write_json(report, _OUT.value)  # After every task, so a cut-short run keeps its results.
    print(json.dumps({k: v for k, v in result.items() if k != "items"}), flush=True)
  print(markdown(report["results"], report["total_seconds"]))


def write_json(report: dict, path: str) -> None:
  """Writes ``report`` to ``path`` atomically: a reader never sees half a file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(report, f, indent=1)
  os.replace(path + ".tmp", path)


if __name__ == "__main__":
  app.run(main)
