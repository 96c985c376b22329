"""The openai generator against the real server (fake backend) and against misbehaving servers.

Every server runs on 127.0.0.1 in a thread and is stopped by its test. An API key is
set for every test; the autouse fixture checks that it reached the servers and that
it appears in no log line.
"""

import contextlib
import http.server
import json
import logging
import pathlib
import pickle
import queue
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from evoselect_jax.data.clean import clean
from evoselect_jax.generators import serve
from evoselect_jax.generators.openai import GeneratorError, OpenAIGenerator
from evoselect_jax.registry import GENERATORS
from evoselect_jax.types import MCQExample

KEY = "sk-test-6f1c0d2e9b8a7f65-secret"
KEY_ENV = "EVOSELECT_TEST_OPENAI_KEY"

EXEMPLARS = [
  MCQExample(f"ex{i}", f"Which number is largest, case {i}?", ("1", "5", str(9 + i)), 2)
  for i in range(4)
]


@pytest.fixture(autouse=True)
def api_key(monkeypatch, caplog):
  monkeypatch.setenv(KEY_ENV, KEY)
  caplog.set_level(logging.DEBUG)
  yield
  assert KEY not in caplog.text


@contextlib.contextmanager
def running(server, on_stop=lambda: None):
  """Serves in a thread; yields the API root; stops and closes the server."""
  thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
  finally:
    on_stop()
    server.shutdown()
    server.server_close()
    thread.join(5)


def generator(url, **kwargs):
  options = dict(base_url=url, model="fake-model", api_key_env=KEY_ENV, num_shots=2, backoff_s=0.01)
  return GENERATORS.build({"name": "openai", **options, **kwargs}, task=None)


# --- Against the real server -----------------------------------------------------------------


class JsonBackend:
  """Writes one JSON item per prompt, wrapped in prose, set by the prompt and the seed."""

  name = "fake-model"

  def __init__(self):
    self.prompts = []

  def chat_prompt(self, messages):
    return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

  def generate(self, prompts, *, max_new_tokens, temperature, top_p, stop, seed):
    self.prompts += prompts
    out = []
    for p in prompts:
      record = {"question": f"Item {seed} of {len(p)}?", "choices": ["x", "y", "z"], "answer": "B"}
      out.append(f"Sure:\n```json\n{json.dumps(record)}\n```\n")
    return out

  def num_tokens(self, text):
    return len(text.split())


@pytest.fixture
def real_server():
  backend = JsonBackend()
  with running(serve.make_server(backend, port=0)) as url:
    yield url, backend


@pytest.mark.parametrize("endpoint", ["chat/completions", "completions"])
def test_records_from_the_real_server(real_server, endpoint):
  url, backend = real_server
  gen = generator(url, endpoint=endpoint, concurrency=3)
  raw = gen.generate(EXEMPLARS, 7, seed=3)
  assert len(raw) == 7 and all(r.startswith("{") and r.endswith("}") for r in raw)
  assert len(clean(raw, test=[]).examples) == 7  # distinct seeds: distinct questions
  assert gen.stats == {"requests": 7, "records": 7}
  assert len(backend.prompts) == 7
  shown = [ex.question for ex in EXEMPLARS]
  for prompt in backend.prompts:  # num_shots=2 exemplars per request
    assert sum(q in prompt for q in shown) == 2
    assert prompt.startswith("<system>") == (endpoint == "chat/completions")
  # Deterministic by seed, in request order whatever the concurrency.
  assert generator(url, endpoint=endpoint, concurrency=1).generate(EXEMPLARS, 7, seed=3) == raw
  assert generator(url, endpoint=endpoint).generate(EXEMPLARS, 7, seed=4) != raw


def test_truncated_completions_are_counted(real_server):
  url, _ = real_server
  gen = generator(url, max_tokens=3)  # the fake's answers have more than 3 words
  assert len(gen.generate(EXEMPLARS, 2, seed=0)) == 2
  assert gen.stats["truncated"] == 2


def test_model_unknown_to_the_server_is_fatal(real_server):
  url, _ = real_server
  with pytest.raises(GeneratorError, match=r"HTTP 404.*model_not_found") as info:
    generator(url, model="gpt-9", concurrency=1).generate(EXEMPLARS, 3, seed=0)
  assert info.value.stats["requests"] == 1 and info.value.status == 404


# --- Against misbehaving servers -------------------------------------------------------------


def ok(body):
  record = {
    "question": f"Made with seed {body['seed']}?",
    "choices": ["a", "b", "c"],
    "answer": "A",
  }
  return 200, {"choices": [{"message": {"role": "assistant", "content": json.dumps(record)}}]}


class Script:
  """The answers of a scripted server: ``steps`` for the first requests, then ``then``.

  A step is ``"ok"``, ``"slow"`` (waits until the test ends), ``"drop"`` (closes the
  connection unanswered), or ``(status, body, headers)``.
  """

  def __init__(self, steps=(), then="ok"):
    self.steps = list(steps)
    self.then = then
    self.auth = []
    self.release = threading.Event()
    self.lock = threading.Lock()

  def next(self, auth):
    with self.lock:
      self.auth.append(auth)
      return self.steps.pop(0) if self.steps else self.then


class ScriptedHandler(http.server.BaseHTTPRequestHandler):
  def do_POST(self):
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    step = self.server.script.next(self.headers.get("Authorization"))
    if step == "drop":
      self.close_connection = True
      return
    if step == "slow":
      self.server.script.release.wait(10)
      step = "ok"
    status, payload, headers = (*ok(body), {}) if step == "ok" else step
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    self.send_response(status)
    for name, value in headers.items():
      self.send_header(name, value)
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, format, *args):
    logging.getLogger("scripted").info(format, *args)


@contextlib.contextmanager
def scripted(script):
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ScriptedHandler)
  server.daemon_threads = True
  server.script = script
  with running(server, on_stop=script.release.set) as url:
    yield url


def clean_run(n, seed=0):
  """The records of a call to a server that never fails."""
  with scripted(Script()) as url:
    return generator(url).generate(EXEMPLARS, n, seed)


def test_key_is_sent_and_never_kept(caplog):
  script = Script()
  with scripted(script) as url:
    gen = generator(url)
    raw = gen.generate(EXEMPLARS, 3, seed=0)
  assert isinstance(gen, OpenAIGenerator)
  assert script.auth == [f"Bearer {KEY}"] * 3
  assert KEY not in repr(gen) and KEY_ENV in repr(gen)
  assert KEY.encode() not in pickle.dumps(gen)
  assert KEY not in json.dumps([raw, gen.stats, {k: repr(v) for k, v in vars(gen).items()}])


def test_no_key_env_sends_no_authorization():
  script = Script()
  with scripted(script) as url:
    generator(url, api_key_env=None).generate(EXEMPLARS, 1, seed=0)
  assert script.auth == [None]


def test_server_down():
  with socket.socket() as s:  # a port nothing listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  gen = generator(f"http://127.0.0.1:{port}/v1", max_retries=2, concurrency=1)
  with pytest.raises(
    GeneratorError, match=rf"127.0.0.1:{port}/v1/chat/completions: .*refused"
  ) as e:
    gen.generate(EXEMPLARS, 4, seed=0)
  assert e.value.reason == "connection_error" and e.value.partial == []
  assert "after 3 attempt(s); 0 of 4 records done" in str(e.value)
  assert gen.stats == {"requests": 3, "connection_error": 3}


def test_dropped_connection_is_retried():
  with scripted(Script(["drop"])) as url:
    gen = generator(url, concurrency=1)
    assert len(gen.generate(EXEMPLARS, 2, seed=0)) == 2
  assert gen.stats == {"requests": 3, "records": 2, "connection_error": 1}


def test_slow_server_times_out_and_keeps_earlier_records():
  with scripted(Script(["ok", "ok", "slow"])) as url:
    gen = generator(url, timeout_s=0.2, max_retries=0, concurrency=1)
    with pytest.raises(GeneratorError, match=r"no answer within 0.2 s \(timeout\)") as e:
      gen.generate(EXEMPLARS, 5, seed=0)
  assert len(e.value.partial) == 2 and "2 of 5 records done" in str(e.value)
  assert e.value.stats == gen.stats == {"requests": 3, "records": 2, "timeout": 1}
  want = clean_run(5)
  assert e.value.partial == want[:2]
  # Once the server answers again, the call resumes after the records it kept.
  reported = []
  script = Script()
  with scripted(script) as url:
    again = generator(url, concurrency=1)
    got = again.generate(EXEMPLARS, 5, seed=0, done=e.value.partial, on_records=reported.append)
  assert got == want
  assert reported == [want[:3], want[:4], want] and again.stats["requests"] == 3
  with pytest.raises(ValueError, match="5 records done, more than the n=4"):
    again.generate(EXEMPLARS, 4, seed=0, done=want)


@pytest.mark.parametrize(
  "garbage, detail",
  [
    ((200, b"<html>bad gateway</html>", {}), "body is not JSON"),
    ((200, {"object": "chat.completion"}, {}), "no 'choices'"),
    ((200, {"choices": [{"message": {"content": None}}]}, {}), "no string message.content"),
  ],
)
def test_garbage_is_retried_then_fatal(garbage, detail):
  with scripted(Script(then=garbage)) as url:
    gen = generator(url, max_retries=1)
    with pytest.raises(GeneratorError, match=detail) as e:
      gen.generate(EXEMPLARS, 3, seed=0)
  assert e.value.reason == "bad_response" and e.value.partial == []
  assert gen.stats["bad_response"] >= 2


@pytest.mark.parametrize(
  "failure",
  [
    (500, {"error": {"message": "boom"}}, {}),
    (503, b"overloaded", {}),
    (429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}),
    (200, b"not json", {}),
  ],
)
def test_transient_failures_are_retried(failure):
  with scripted(Script([failure, failure])) as url:
    gen = generator(url, max_retries=3, concurrency=1)
    raw = gen.generate(EXEMPLARS, 3, seed=0)
  assert raw == clean_run(3)
  reason = "bad_response" if failure[0] == 200 else f"http_{failure[0]}"
  assert gen.stats == {"requests": 5, "records": 3, reason: 2}


def test_retry_after_is_honoured():
  with scripted(Script([(429, b"{}", {"Retry-After": "0.3"})])) as url:
    start = time.monotonic()
    generator(url, backoff_s=0.0).generate(EXEMPLARS, 1, seed=0)
  assert time.monotonic() - start >= 0.3


def test_unauthorized_is_not_retried_and_the_echoed_key_is_redacted():
  # The key straddles the 200-character cut of quoted bodies: no part of it may show.
  echo = (401, {"error": {"message": "x" * 140 + f"Incorrect API key provided: {KEY}"}}, {})
  with scripted(Script(["ok", "ok", "ok"], then=echo)) as url:
    gen = generator(url, concurrency=1, max_retries=5)
    with pytest.raises(GeneratorError) as e:
      gen.generate(EXEMPLARS, 6, seed=0)
  err = e.value
  assert (err.status, err.reason) == (401, "http_401")
  assert err.partial == clean_run(6)[:3] and "3 of 6 records done" in str(err)
  assert gen.stats == {"requests": 4, "records": 3, "http_401": 1}
  assert "[REDAC" in str(err) and err.url in str(err)
  for text in (str(err), repr(err), repr(vars(err)), str(err.args)):
    assert KEY not in text and KEY[:8] not in text


def test_bad_options_and_missing_key(monkeypatch):
  with pytest.raises(ValueError, match="base_url"):
    generator("localhost:8000")
  with pytest.raises(ValueError, match="endpoint"):
    generator("http://x/v1", endpoint="embeddings")
  with pytest.raises(ValueError, match="top_p"):
    generator("http://x/v1", top_p=0)
  with pytest.raises(ValueError, match="stop"):
    generator("http://x/v1", stop="END")
  with pytest.raises(TypeError, match="api_key"):
    generator("http://x/v1", api_key=KEY)
  monkeypatch.setenv(KEY_ENV, KEY + "\n")
  with pytest.raises(ValueError, match="line break") as e:
    generator("http://x/v1").generate(EXEMPLARS, 1, seed=0)
  assert KEY not in str(e.value)
  monkeypatch.delenv(KEY_ENV)
  with pytest.raises(ValueError, match=f"{KEY_ENV} is not set"):
    generator("http://x/v1").generate(EXEMPLARS, 1, seed=0)
  with pytest.raises(ValueError, match="exemplar"):
    generator("http://x/v1", api_key_env=None).generate([], 1, seed=0)


# --- The real server process over a real (tiny, random) checkpoint ---------------------------


def tiny_checkpoint(directory):
  """A random 2-layer Llama over a 37-word vocabulary (w0..w36) with a chat template."""
  import tokenizers
  import torch
  import transformers

  vocab = {f"w{i}": i for i in range(37)}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  transformers.PreTrainedTokenizerFast(
    tokenizer_object=tok,
    bos_token="w1",
    eos_token="w2",
    chat_template="{% for m in messages %}{{ m['content'] }} {% endfor %}w3",
  ).save_pretrained(directory)
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
    vocab_size=37,
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    bos_token_id=1,
    eos_token_id=2,
  )
  transformers.LlamaForCausalLM(config).save_pretrained(directory)


def test_against_the_server_process(tmp_path):
  tiny_checkpoint(tmp_path / "tiny")
  log = tmp_path / "server.log"
  command = [
    sys.executable,
    "-m",
    "evoselect_jax.generators.serve",
    "--model",
    str(tmp_path / "tiny"),
  ]
  with log.open("w") as stderr:
    process = subprocess.Popen(
      command + ["--port", "0", "--served_model_name", "tiny", "--batch_size", "2"],
      stdout=subprocess.PIPE,
      stderr=stderr,
      text=True,
      cwd=pathlib.Path(__file__).resolve().parents[1],
    )
  try:
    lines = queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    try:
      first = lines.get(timeout=120)
    except queue.Empty:
      first = ""
    match = re.fullmatch(r"Serving tiny at (http://127\.0\.0\.1:\d+/v1)\n", first)
    assert match, f"server did not start: {first!r}\n{log.read_text()}"
    gen = generator(match[1], model="tiny", max_tokens=6, temperature=0.0, concurrency=2)
    raw = gen.generate(EXEMPLARS, 3, seed=0)
    assert gen.stats["records"] == 3 and len(raw) == 3
    assert all(set(r.split()) <= {f"w{i}" for i in range(37)} for r in raw)  # the model's words
    assert gen.generate(EXEMPLARS, 3, seed=0) == raw  # greedy: deterministic
  finally:
    process.terminate()
    process.wait(10)
  server_log = log.read_text()
  assert "POST /v1/chat/completions" in server_log and KEY not in server_log
