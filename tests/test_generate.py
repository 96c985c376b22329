"""KV-cache decoding: against full recomputation, transformers' samplers and generate."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from evoselect_jax.data.clean import clean
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
from evoselect_jax.models import checkpoint as checkpoint_lib
from evoselect_jax.models.generate import encode_batch
from evoselect_jax.registry import GENERATORS
from evoselect_jax.types import MCQExample

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
  compiled = generate_ids._cache_size()
  out = generate(tiny, texts, max_new_tokens=8, batch_size=3)
  assert generate_ids._cache_size() == compiled + 1  # Both batches: 3 rows, 16 slots.
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
  assert isinstance(gen, LocalGenerator)
  raw = gen.generate(EXEMPLARS, n=5, seed=1)
  assert len(raw) == 5 and raw == gen.generate(EXEMPLARS, n=5, seed=1)
  out = clean(raw, test=[])
  assert not out.examples and out.rejected["not_json"] == 5
  with pytest.raises(ValueError, match="num_shots=2 exemplars per prompt, but only 1"):
    gen.generate(EXEMPLARS[:1], n=1, seed=0)
  with pytest.raises(ValueError, match="num_shots"):
    LocalGenerator(model=tiny, num_shots=0)


# --- SmolLM2-135M-Instruct (Q4_1 GGUF) -------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
  return load_checkpoint("smollm2-135m-instruct")


def test_smollm2_greedy_matches_transformers_generate(smollm2):
  messages = [{"role": "user", "content": "Explain in detail how photosynthesis works."}]
  prompt = chat_prompt(smollm2, messages)
  ids, mask = encode_batch(smollm2.tokenizer, [prompt], rows=1)  # Left-padded to 64.
  eos = smollm2.eos_token_ids
  options = dict(max_new_tokens=32, eos_ids=eos, temperature=0.0, top_p=1.0, top_k=0)
  ours = generate_ids(
    smollm2.config, smollm2.params, None, ids, mask, key=jax.random.key(0), **options
  )
  file = checkpoint_lib.resolve("smollm2-135m-instruct")
  hf = transformers.AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name).eval()
  real = torch.tensor(ids[:, mask[0]], dtype=torch.long)  # transformers without padding
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # Several threads run ~10x slower on a busy 2-core CI machine.
  try:
    with torch.no_grad():
      want = hf.generate(real, max_new_tokens=32, do_sample=False, eos_token_id=list(eos))
  finally:
    torch.set_num_threads(threads)
  want = want[0, real.shape[1] :].numpy()
  assert want.shape == (32,)  # The reply is longer than 32 tokens: no EOS to compare.
  np.testing.assert_array_equal(np.asarray(ours)[0], want)
  assert "photosynthesis" in smollm2.tokenizer.decode(want).lower()


def test_smollm2_local_generator_smoke(smollm2):
  gen = LocalGenerator(model=smollm2, max_new_tokens=80, num_shots=1, batch_size=2)
  raw = gen.generate(EXEMPLARS, n=2, seed=0)
  assert len(raw) == 2 and all(isinstance(r, str) for r in raw)
  out = clean(raw, test=[])
  print(f"SmolLM2 local generator: {len(out.examples)}/2 parsed; rejected {dict(out.rejected)}")
  print(*raw, sep="\n")
