"""KV-cache decoding: against full recomputation, transformers' samplers and generate."""

import dataclasses
import functools
import importlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from ml_collections import ConfigDict

from evoselect_jax import stages
from evoselect_jax.data.clean import TEXT_REASONS, clean
from evoselect_jax.generators import local as local_lib
from evoselect_jax.generators.local import LocalGenerator
from evoselect_jax.models import (
  LlamaConfig,
  apply,
  apply_with_cache,
  chat_prompt,
  generate,
  generate_ids,
  init,
  init_cache,
  load_checkpoint,
  sample_tokens,
)
from evoselect_jax.models.generate import (
  BUCKETS_PER_OCTAVE,
  MIN_BUCKET,
  decode,
  encode_batch,
  generate_completions,
  prefill,
  prompt_bucket,
)
from evoselect_jax.registry import GENERATORS
from evoselect_jax.types import MCQExample

# The module, not the function that evoselect_jax.models exports under the same name.
generate_lib = importlib.import_module("evoselect_jax.models.generate")
apply_jit = jax.jit(apply, static_argnums=0)
step_jit = jax.jit(apply_with_cache, static_argnums=0)

# Small odd shapes: GQA with 6 query heads on 2 kv heads, head_dim 4, vocab 37.
CONFIG = LlamaConfig(37, 24, 40, 2, 6, 2, lora_rank=3, lora_alpha=5.0)
LENGTHS = (5, 2, 7)  # Mixed prompt lengths, left-padded to WIDTH.
WIDTH = 8
STEPS = 6
EXEMPLARS = [
  MCQExample("t-0", "Which gas do plants absorb?", ("oxygen", "carbon dioxide", "helium"), 1),
  MCQExample("t-1", "2 + 2 = ?", ("3", "4", "5", "22"), 1),
  MCQExample("t-2", "Which is a mammal?", ("trout", "whale", "frog"), 1),
]


@functools.cache
def model():
  """Params with random norms and LoRA with nonzero B (so adapters matter)."""
  rng = np.random.default_rng(1)
  noise = lambda tree, s: jax.tree.map(lambda x: np.asarray(x) + s * rng.normal(size=x.shape), tree)
  params, lora = init(CONFIG, jax.random.key(0))
  params = jax.tree.map(lambda x: x.astype(np.float32), noise(params, 0.3))
  lora = jax.tree.map(lambda x: x.astype(np.float32), noise(lora, 0.3))
  return params, lora


def prompts():
  """Left-padded prompts of ``LENGTHS`` as ``(ids [3, WIDTH], mask, rows without padding)``."""
  rng = np.random.default_rng(7)
  rows = [rng.integers(0, CONFIG.vocab_size, n).astype(np.int32) for n in LENGTHS]
  ids = np.zeros((len(rows), WIDTH), np.int32)
  mask = np.zeros((len(rows), WIDTH), bool)
  for i, row in enumerate(rows):
    ids[i, WIDTH - len(row) :], mask[i, WIDTH - len(row) :] = row, True
  return ids, mask, rows


def greedy(ids, mask, lora=None, eos_ids=(), max_new_tokens=STEPS):
  return np.asarray(
    generate_ids(
      CONFIG,
      model()[0],
      lora,
      ids,
      mask,
      max_new_tokens=max_new_tokens,
      eos_ids=eos_ids,
      key=jax.random.key(0),
      temperature=0.0,
      top_p=1.0,
      top_k=0,
    )
  )


def test_cached_steps_equal_full_recompute():
  params, lora = model()
  ids, mask, _ = prompts()
  b = ids.shape[0]
  # The oracle sees the growing sequence in a fixed buffer, right-padded past its end.
  seq = np.concatenate([ids, np.zeros((b, STEPS), np.int32)], axis=1)
  seq_mask = np.concatenate([mask, np.zeros((b, STEPS), bool)], axis=1)
  cache = init_cache(CONFIG, b, WIDTH + STEPS)
  logits, cache = step_jit(CONFIG, params, lora, ids, mask, cache)
  for step in range(STEPS):
    want = np.asarray(apply_jit(CONFIG, params, lora, seq, seq_mask))[:, WIDTH - 1 + step]
    np.testing.assert_allclose(logits, want, atol=1e-4, rtol=1e-4)
    if step == STEPS - 1:
      break
    token = np.asarray(jnp.argmax(logits, -1), np.int32)
    seq[:, WIDTH + step], seq_mask[:, WIDTH + step] = token, True
    logits, cache = step_jit(CONFIG, params, lora, token[:, None], np.ones((b, 1), bool), cache)
  assert int(cache.length) == WIDTH + STEPS - 1
  np.testing.assert_array_equal(cache.mask[:, : WIDTH + STEPS - 1], seq_mask[:, :-1])


def test_greedy_equals_argmax_of_full_recompute_and_rows_alone():
  params, lora = model()
  ids, mask, rows = prompts()
  got = greedy(ids, mask, lora)
  assert got.shape == (3, STEPS) and got.dtype == np.int32
  seq = np.concatenate([ids, np.zeros((3, STEPS), np.int32)], axis=1)
  seq_mask = np.concatenate([mask, np.zeros((3, STEPS), bool)], axis=1)
  for step in range(STEPS):
    logits = np.asarray(apply_jit(CONFIG, params, lora, seq, seq_mask))[:, WIDTH - 1 + step]
    seq[:, WIDTH + step], seq_mask[:, WIDTH + step] = logits.argmax(-1), True
  np.testing.assert_array_equal(got, seq[:, WIDTH:])
  for i, row in enumerate(rows):
    alone = greedy(row[None], np.ones((1, len(row)), bool), lora)
    np.testing.assert_array_equal(got[i], alone[0])


def test_prompt_buckets_bound_the_padding_and_the_compiles():
  lengths = np.arange(1, 5000)
  buckets = np.array([prompt_bucket(int(n)) for n in lengths])
  assert (buckets >= lengths).all() and (buckets >= MIN_BUCKET).all()
  assert (np.diff(buckets) >= 0).all() and (buckets % MIN_BUCKET == 0).all()
  long = lengths > 4 * MIN_BUCKET  # shorter ones: MIN_BUCKET granules
  assert ((buckets - lengths)[long] < buckets[long] / BUCKETS_PER_OCTAVE).all()
  for low in 2 ** np.arange(6, 12):  # lengths in (low, 2 low]: one compile per bucket
    assert len(set(buckets[(lengths > low) & (lengths <= 2 * low)])) == BUCKETS_PER_OCTAVE
  assert prompt_bucket(300) == 320 and prompt_bucket(512) == 512 and prompt_bucket(513) == 640
  with pytest.raises(ValueError, match="at least one token"):
    prompt_bucket(0)


def test_rows_end_at_eos_and_are_filled_after_it():
  _, lora = model()
  ids, mask, _ = prompts()
  free = greedy(ids, mask, lora)
  eos = int(free[0, 2])
  got = greedy(ids, mask, lora, eos_ids=(eos, 36))
  for row_free, row in zip(free, got, strict=True):
    hits = np.flatnonzero(np.isin(row_free, (eos, 36)))
    end = hits[0] + 1 if hits.size else STEPS
    np.testing.assert_array_equal(row[:end], row_free[:end])
    assert (row[end:] == eos).all()


@pytest.mark.parametrize(
  "temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.6), (0.8, 7, 0.8)]
)
def test_sampling_matches_transformers_warpers(temperature, top_k, top_p):
  logits = np.random.default_rng(0).normal(size=(3, 37)).astype(np.float32) * 2
  warpers = [transformers.TemperatureLogitsWarper(temperature)]
  if top_k:
    warpers.append(transformers.TopKLogitsWarper(top_k))
  if top_p < 1:
    warpers.append(transformers.TopPLogitsWarper(top_p))
  scores = torch.tensor(logits)
  for warper in warpers:
    scores = warper(None, scores)
  want = torch.softmax(scores, -1).numpy()
  n = 20000
  draw = jax.jit(
    jax.vmap(
      lambda k: sample_tokens(
        jnp.asarray(logits), k, temperature=temperature, top_p=top_p, top_k=top_k
      )
    )
  )
  samples = np.asarray(draw(jax.random.split(jax.random.key(1), n)))  # [n, 3]
  freq = np.stack([np.bincount(samples[:, i], minlength=37) / n for i in range(3)])
  assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(want))
  np.testing.assert_allclose(freq, want, atol=0.015)


def test_top_k_one_is_greedy():
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(4, 37)), jnp.float32)
  got = sample_tokens(logits, jax.random.key(0), temperature=1.0, top_p=1.0, top_k=1)
  np.testing.assert_array_equal(got, jnp.argmax(logits, -1))


# --- Text: a tiny transformers checkpoint with a word-level tokenizer -------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A random 2-layer Llama saved by transformers, words w3..w36, a chat template."""
  import tokenizers

  directory = tmp_path_factory.mktemp("tiny")
  config = transformers.LlamaConfig(
    vocab_size=37,
    hidden_size=24,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    bos_token_id=1,
    eos_token_id=2,
  )
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(config).save_pretrained(directory)
  # Special tokens are matched inside words, so none is a prefix of a word ("w1" of "w10").
  vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, 37)}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.decoder = tokenizers.decoders.WordPiece()  # Joins words with spaces.
  transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok,
    unk_token="<unk>",
    bos_token="<s>",
    eos_token="</s>",
    chat_template="{% for m in messages %}{{ m['content'] }} {% endfor %}w3",
  ).save_pretrained(directory)
  return load_checkpoint(directory)


def test_generate_text(tiny):
  texts = ["w5 w6 w7", "w9", "w10 w11 w12 w13 w14", "w20 w21"]
  compiled = prefill._cache_size(), decode._cache_size()
  out = generate(tiny, texts, max_new_tokens=8, batch_size=3)
  # Both batches: 3 rows, 16 slots.
  assert (prefill._cache_size(), decode._cache_size()) == (compiled[0] + 1, compiled[1] + 1)
  assert len(out) == 4 and all(isinstance(t, str) for t in out)
  assert out == generate(tiny, texts[::-1], max_new_tokens=8, batch_size=8)[::-1]
  # Alone, through the core: the text is the decoded tokens before the first EOS.
  ids, mask = encode_batch(tiny.tokenizer, texts[2:3], rows=1)
  assert ids.shape == (1, 16) and mask.sum() == 5
  options = dict(max_new_tokens=8, eos_ids=tiny.eos_token_ids, temperature=0.0, top_p=1.0, top_k=0)
  new = np.asarray(
    generate_ids(tiny.config, tiny.params, None, ids, mask, key=jax.random.key(0), **options)
  )
  new = new[0].tolist()
  assert generate(tiny, texts[2:3], max_new_tokens=8) == [out[2]]
  assert out[2] == tiny.tokenizer.decode(new[: new.index(2)] if 2 in new else new)
  word = out[2].split()[-1]  # A stop string cuts the text before its first occurrence.
  cut = generate(tiny, texts[2:3], max_new_tokens=8, stop=["zz", word])
  assert cut == [out[2][: out[2].find(word)]]
  sampled = generate(tiny, texts, max_new_tokens=8, temperature=1.0, top_k=20, seed=3)
  assert sampled == generate(tiny, texts, max_new_tokens=8, temperature=1.0, top_k=20, seed=3)
  assert sampled != generate(tiny, texts, max_new_tokens=8, temperature=1.0, top_k=20, seed=4)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_stop_strings_end_decoding_early_with_the_same_tokens(tiny, monkeypatch, temperature):
  tiny = dataclasses.replace(tiny, eos_token_ids=())  # Only stop strings or the length end rows.
  texts = ["w5 w6 w7", "w9", "w10 w11 w12 w13 w14", "w20 w21"]
  states = []

  def recording_decode(*args, **kwargs):
    states.append(decode(*args, **kwargs))
    return states[-1]

  monkeypatch.setattr(generate_lib, "decode", recording_decode)
  options = dict(max_new_tokens=40, batch_size=4, temperature=temperature, top_k=20, seed=3)
  compiled = decode._cache_size()
  free = generate_completions(tiny, texts, **options)
  assert len(states) == 1 and int(states[0].step) == 40  # No stop strings: one call.
  assert all(c.finish == "length" and c.num_tokens == 40 for c in free)
  free_ids = np.asarray(states[0].out)
  # Each row's third word, spaced so that "w3" does not match inside "w30", stops it.
  stop = [f" {c.text.split()[2]} " for c in free]
  states.clear()
  got = generate_completions(tiny, texts, stop=stop, stop_check_every=4, **options)
  assert decode._cache_size() == compiled + 1  # Chunks of any length: one compile.
  want = [c.text[: min(i for i in (c.text.find(s) for s in stop) if i >= 0)] for c in free]
  assert [c.text for c in got] == want
  assert all(c.finish == "stop" for c in got)
  ends = [c.num_tokens for c in got]
  for row, n in zip(free_ids, ends, strict=True):
    # The fewest tokens whose text holds a stop string: that many match the free run.
    text = lambda k, row=row: tiny.tokenizer.decode(row[:k].tolist())  # noqa: E731
    assert any(s in text(n) for s in stop) and not any(s in text(n - 1) for s in stop)
  got_ids = np.asarray(states[-1].out)
  for i, n in enumerate(ends):
    np.testing.assert_array_equal(got_ids[i, :n], free_ids[i, :n])
  # The batch stopped at the first check after its last row's stop, far before 40.
  steps = [int(s.step) for s in states]
  assert steps == list(range(5, steps[-1] + 1, 4)) and max(ends) <= steps[-1] < max(ends) + 4
  assert steps[-1] < 40


def test_completions_say_why_they_ended(tiny):
  free = generate_completions(
    dataclasses.replace(tiny, eos_token_ids=()), ["w5 w6"], max_new_tokens=6
  )
  assert free[0].finish == "length" and free[0].num_tokens == 6
  words = free[0].text.split()
  end = words.index(words[1])  # Its first occurrence: the EOS ends the row there.
  eos = tiny.tokenizer.convert_tokens_to_ids(words[1])
  [got] = generate_completions(
    dataclasses.replace(tiny, eos_token_ids=(eos,)), ["w5 w6"], max_new_tokens=6
  )
  assert (got.text, got.finish, got.num_tokens) == (" ".join(words[:end]), "eos", end + 1)
  with pytest.raises(ValueError, match="stop_check_every"):
    generate_completions(tiny, ["w5"], max_new_tokens=2, stop=["w4"], stop_check_every=0)


def test_chat_prompt_and_errors(tiny):
  assert chat_prompt(tiny, [{"role": "user", "content": "w4 w5"}]) == "w4 w5 w3"
  with pytest.raises(ValueError, match="no chat template"):
    chat_prompt(dataclasses.replace(tiny, chat_template=None), [])
  for bad, match in [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(top_p=0.0), "top_p"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=1.5), "top_k"),
    (dict(stop="w5"), "stop"),
  ]:
    with pytest.raises(ValueError, match=match):
      generate(tiny, ["w4"], **({"max_new_tokens": 2} | bad))
  with pytest.raises(ValueError, match=r"Prompts \[1\] have no tokens"):
    generate(tiny, ["w4", ""], max_new_tokens=2)


def test_local_generator_on_random_model(tiny):
  gen = GENERATORS.build(
    {"name": "local", "model": tiny.source, "max_new_tokens": 6, "num_shots": 2, "batch_size": 4},
    task=None,
  )
  assert isinstance(gen, LocalGenerator) and gen.format == "json"
  raw = gen.generate(EXEMPLARS, n=5, seed=1)
  assert len(raw) == 5 and raw == gen.generate(EXEMPLARS, n=5, seed=1)
  out = clean(raw, test=[])
  assert not out.examples and out.rejected["not_json"] == 5
  with pytest.raises(ValueError, match="num_shots=2 exemplars per prompt, but only 1"):
    gen.generate(EXEMPLARS[:1], n=1, seed=0)
  with pytest.raises(ValueError, match="num_shots"):
    LocalGenerator(model=tiny, num_shots=0)
  with pytest.raises(ValueError, match="format must be one of"):
    LocalGenerator(model=tiny, format="xml")


def test_local_generator_text_format_records(tiny, monkeypatch):
  """A record is the item label, the continuation, and the item end unless cut by length."""
  replies = [
    generate_lib.Completion(" w9", "stop", 3),
    generate_lib.Completion(" w9 w10", "eos", 3),
    generate_lib.Completion(" w9 w10 w11", "length", 6),
  ]
  calls = []

  def fake_completions(checkpoint, prompts, *, first, on_batch, **options):
    calls.append((prompts, options))
    on_batch(replies[first : len(prompts)])
    return replies[first : len(prompts)]

  monkeypatch.setattr(local_lib, "generate_completions", fake_completions)
  gen = LocalGenerator(model=dataclasses.replace(tiny, chat_template=None), format="text")
  raw = gen.generate(EXEMPLARS, n=3, seed=0)
  assert raw == ["Question: w9\n\n", "Question: w9 w10\n\n", "Question: w9 w10 w11"]
  [(prompts, options)] = calls
  assert options["stop"] == ("\n\n",) and all(p.endswith("\n\nQuestion:") for p in prompts)
  shown = [p.count("Question:") - 1 for p in prompts]
  assert shown == [3, 3, 3] and all(p.startswith("Question: ") for p in prompts)
  out = clean(raw, test=[], format="text")
  assert out.rejected == {"no_answer": 2, "truncated": 1}


def test_local_generator_resumes_a_stopped_call_with_the_same_records(tiny):
  gen = LocalGenerator(model=tiny, format="text", max_new_tokens=6, num_shots=2, batch_size=2)
  want = gen.generate(EXEMPLARS, n=7, seed=3)
  reported = []

  def stop_after_two_batches(records):
    reported.append(records)
    if len(reported) == 2:
      raise KeyboardInterrupt  # as a kill between two batches

  with pytest.raises(KeyboardInterrupt):
    gen.generate(EXEMPLARS, n=7, seed=3, on_records=stop_after_two_batches)
  assert reported == [want[:2], want[:4]]
  rest = []
  assert gen.generate(EXEMPLARS, n=7, seed=3, done=reported[-1], on_records=rest.append) == want
  assert rest == [want[:6], want]
  assert gen.generate(EXEMPLARS, n=7, seed=3, done=want) == want  # nothing left to decode
  with pytest.raises(ValueError, match="first=3 must be a multiple of the batch's 2 rows"):
    gen.generate(EXEMPLARS, n=7, seed=3, done=want[:3])
  with pytest.raises(ValueError, match="7 records done, more than the n=5"):
    gen.generate(EXEMPLARS, n=5, seed=3, done=want)


def test_the_generate_stage_saves_each_batch_and_continues_after_them(tiny, tmp_path, monkeypatch):
  gen = LocalGenerator(model=tiny, format="text", max_new_tokens=6, num_shots=2, batch_size=2)
  want = gen.generate(EXEMPLARS, n=5, seed=3)
  logs = []
  walk = types.SimpleNamespace(config=ConfigDict({"pool_size": 5}), generator=gen, log=logs.append)
  generate = functools.partial(stages.Walk._generate, walk, tmp_path, EXEMPLARS, 3)
  write, writes = stages.atomic_io.write_jsonl, []

  def killed_after_two_batches(path, rows):
    write(path, rows)
    writes.append(rows)
    if len(writes) == 2:
      raise KeyboardInterrupt

  monkeypatch.setattr(stages.atomic_io, "write_jsonl", killed_after_two_batches)
  with pytest.raises(KeyboardInterrupt):
    generate()
  monkeypatch.undo()
  partial = tmp_path / "raw.partial.jsonl"
  assert stages.atomic_io.read_jsonl(partial) == want[:4]
  assert generate() == want
  assert logs == [f"{partial}: continuing after 4 of 5 records"]
  assert stages.atomic_io.read_jsonl(partial) == want  # the stage then saves raw.jsonl


def test_local_generator_text_format_on_random_model(tiny):
  gen = LocalGenerator(model=tiny, format="text", max_new_tokens=6, num_shots=2, batch_size=4)
  raw = gen.generate(EXEMPLARS, n=5, seed=1)
  assert raw == gen.generate(EXEMPLARS, n=5, seed=1) and raw != gen.generate(EXEMPLARS, 5, 2)
  assert all(r.startswith("Question:") for r in raw)
  out = clean(raw, test=[], format="text")
  assert sum(out.rejected.values()) == 5 and set(out.rejected) <= set(TEXT_REASONS)


# --- SmolLM2-135M-Instruct (Q4_1 GGUF) -------------------------------------------------------


def test_smollm2_greedy_matches_transformers_generate(smollm2, smollm2_torch):
  messages = [{"role": "user", "content": "Explain in detail how photosynthesis works."}]
  prompt = chat_prompt(smollm2, messages)
  ids, mask = encode_batch(smollm2.tokenizer, [prompt], rows=1)  # Left-padded to 64.
  eos = smollm2.eos_token_ids
  options = dict(max_new_tokens=32, eos_ids=eos, temperature=0.0, top_p=1.0, top_k=0)
  ours = generate_ids(
    smollm2.config, smollm2.params, None, ids, mask, key=jax.random.key(0), **options
  )
  real = torch.tensor(ids[:, mask[0]], dtype=torch.long)  # transformers without padding
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # Several threads run ~10x slower on a busy 2-core CI machine.
  try:
    with torch.no_grad():
      want = smollm2_torch.generate(
        real, max_new_tokens=32, do_sample=False, eos_token_id=list(eos)
      )
  finally:
    torch.set_num_threads(threads)
  want = want[0, real.shape[1] :].numpy()
  assert want.shape == (32,)  # The reply is longer than 32 tokens: no EOS to compare.
  np.testing.assert_array_equal(np.asarray(ours)[0], want)
  assert "photosynthesis" in smollm2.tokenizer.decode(want).lower()
