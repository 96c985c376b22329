"""The OpenAI-compatible server over a fake backend: endpoints, sampling fields, errors."""

import contextlib
import json
import threading
import urllib.error
import urllib.request

import pytest

from evoselect_jax.generators import serve


class FakeBackend:
  """Echoes its inputs, so a test can see what reached the model."""

  name = "fake-model"

  def __init__(self):
    self.calls = []

  def chat_prompt(self, messages):
    return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

  def generate(self, prompts, *, max_new_tokens, temperature, top_p, stop, seed):
    self.calls.append(
      dict(prompts=prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
      | dict(stop=stop, seed=seed)
    )
    if any("FAIL" in p for p in prompts):
      raise RuntimeError("model exploded")
    words = [f"w{seed}"] * min(max_new_tokens, 3)
    return [
      " ".join(words + [str(len(p))]) if max_new_tokens > 3 else " ".join(words) for p in prompts
    ]

  def num_tokens(self, text):
    return len(text.split())


@contextlib.contextmanager
def running(server):
  """Serves in a thread; yields the API root; stops and closes the server."""
  thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
  finally:
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def api():
  backend = FakeBackend()
  with running(serve.make_server(backend, port=0)) as url:
    yield url, backend


def call(url, body=None, *, method=None, data=None, headers=None):
  """``(status, JSON body)`` of one request."""
  if body is not None:
    data = json.dumps(body).encode()
  request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
  try:
    with urllib.request.urlopen(request, timeout=5) as response:
      return response.status, json.loads(response.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def test_models(api):
  url, _ = api
  status, body = call(f"{url}/models")
  assert status == 200 and [m["id"] for m in body["data"]] == ["fake-model"]
  assert call(f"{url}/models/fake-model") == (200, body["data"][0])
  status, body = call(f"{url}/models/other")
  assert status == 404 and body["error"]["code"] == "model_not_found"
  assert call(f"{url}/nothing")[0] == 404


def test_chat_completion_passes_the_sampling_fields(api):
  url, backend = api
  request = dict(model="fake-model", messages=MESSAGES, max_tokens=7, temperature=0.5)
  status, body = call(f"{url}/chat/completions", request | dict(top_p=0.9, stop="x", seed=11))
  assert status == 200, body
  assert body["object"] == "chat.completion" and body["model"] == "fake-model"
  (choice,) = body["choices"]
  prompt = "<system>be brief<user>hi<assistant>"
  assert choice["message"] == {"role": "assistant", "content": f"w11 w11 w11 {len(prompt)}"}
  assert choice["finish_reason"] == "stop"
  assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
  assert backend.calls == [
    dict(prompts=[prompt], max_new_tokens=7, temperature=0.5, top_p=0.9, stop=("x",), seed=11)
  ]


def test_defaults_and_length_finish(api):
  url, backend = api
  status, body = call(f"{url}/chat/completions", {"messages": MESSAGES, "max_completion_tokens": 3})
  assert status == 200 and body["choices"][0]["finish_reason"] == "length"
  assert backend.calls[-1] | {"prompts": None} == dict(
    prompts=None, max_new_tokens=3, temperature=1.0, top_p=1.0, stop=(), seed=0
  )
  call(f"{url}/chat/completions", {"messages": MESSAGES})
  assert backend.calls[-1]["max_new_tokens"] == 256


def test_completions_batch_a_list_of_prompts(api):
  url, backend = api
  status, body = call(f"{url}/completions", {"prompt": ["a", "bcd"], "max_tokens": 5, "n": 1})
  assert status == 200 and body["object"] == "text_completion"
  assert [c["text"] for c in body["choices"]] == ["w0 w0 w0 1", "w0 w0 w0 3"]
  assert [c["index"] for c in body["choices"]] == [0, 1]
  assert len(backend.calls) == 1 and backend.calls[0]["prompts"] == ["a", "bcd"]


@pytest.mark.parametrize(
  "path, body, status, param",
  [
    ("chat/completions", {"messages": []}, 400, "messages"),
    ("chat/completions", {"messages": [{"role": "bot", "content": "x"}]}, 400, "messages[0]"),
    ("chat/completions", {"messages": [{"role": "user", "content": ["x"]}]}, 400, "messages[0]"),
    ("chat/completions", {"messages": MESSAGES, "n": 2}, 400, "n"),
    ("chat/completions", {"messages": MESSAGES, "stream": True}, 400, "stream"),
    ("chat/completions", {"messages": MESSAGES, "max_tokens": 0}, 400, "max_tokens"),
    ("chat/completions", {"messages": MESSAGES, "max_tokens": 4096}, 400, "max_tokens"),
    ("chat/completions", {"messages": MESSAGES, "temperature": 3}, 400, "temperature"),
    ("chat/completions", {"messages": MESSAGES, "top_p": 0}, 400, "top_p"),
    ("chat/completions", {"messages": MESSAGES, "stop": ["a"] * 5}, 400, "stop"),
    ("chat/completions", {"messages": MESSAGES, "seed": -1}, 400, "seed"),
    ("chat/completions", {"messages": MESSAGES, "logprobs": True}, 400, "logprobs"),
    ("chat/completions", {"messages": MESSAGES, "model": "gpt-4"}, 404, "model"),
    ("completions", {"prompt": []}, 400, "prompt"),
    ("completions", {"prompt": ["a", ""]}, 400, "prompt"),
    ("completions", {"prompt": "x", "messages": MESSAGES}, 400, "messages"),
    ("completions", [1, 2], 400, None),
  ],
)
def test_bad_requests_get_json_errors(api, path, body, status, param):
  url, backend = api
  got, answer = call(f"{url}/{path}", body)
  assert got == status, answer
  assert answer["error"]["param"] == param and answer["error"]["message"]
  assert answer["error"]["type"] == "invalid_request_error"
  assert not backend.calls


def test_malformed_bodies(api):
  url, _ = api
  for data in (b"{not json", b'"caf\xe9"', b"[" * 100_000):
    status, body = call(f"{url}/chat/completions", data=data)
    assert status == 400 and body["error"]["code"] == "invalid_json"
  headers = {"Content-Length": str(serve.MAX_BODY_BYTES + 1)}
  status, body = call(f"{url}/completions", data=b"{}", headers=headers)
  assert status == 413
  assert call(f"{url}/embeddings", {"input": "x"})[0] == 404


def test_backend_failure_is_a_500_and_the_server_lives_on(api, caplog):
  url, _ = api
  status, body = call(f"{url}/completions", {"prompt": "FAIL"})
  assert status == 500 and body["error"]["type"] == "server_error"
  assert "model exploded" in body["error"]["message"]
  assert "model exploded" in caplog.text
  assert call(f"{url}/completions", {"prompt": "ok"})[0] == 200


def test_binds_loopback_by_default():
  server = serve.make_server(FakeBackend(), port=0)
  try:
    assert server.server_address[0] == "127.0.0.1"
  finally:
    server.server_close()
  with pytest.raises(ValueError, match="default_max_tokens"):
    serve.make_server(FakeBackend(), port=0, default_max_tokens=10, max_tokens_limit=5)


def test_command_line():
  args = serve.parse_args(["--model", "m", "--port", "0"])
  assert (args.model, args.host, args.port, args.batch_size) == ("m", "127.0.0.1", 0, 8)
  with pytest.raises(SystemExit):
    serve.parse_args([])
