"""A small OpenAI-compatible server over a local Flax model, for the ``openai`` generator.

  python -m evoselect_jax.generators.serve --model smollm2-135m-instruct --port 8000

then ``{"name": "openai", "base_url": "http://127.0.0.1:8000/v1", "model":
"smollm2-135m-instruct"}`` as generator config. ``--model`` is anything
:func:`~evoselect_jax.models.load_checkpoint` loads (a registered name, a Hugging Face
directory, a ``.gguf`` file). ``--port 0`` picks a free port; the first line printed
to stdout, ``Serving <name> at http://<host>:<port>/v1``, says which.

Endpoints (no authentication; it binds 127.0.0.1 unless ``--host`` says otherwise):

- ``GET /v1/models``, ``GET /v1/models/<name>``: the one model.
- ``POST /v1/chat/completions``: ``messages`` (``role`` system/user/assistant,
  string ``content``), formatted by the model's chat template.
- ``POST /v1/completions``: ``prompt``, a string or a list of strings (one choice
  each, generated as one batch).

Both take ``model`` (the served name, if given), ``max_tokens`` (chat also
``max_completion_tokens``), ``temperature`` in [0, 2], ``top_p`` in (0, 1], ``stop`` (a
string or up to 4), ``seed`` (default 0: the same request gives the same answer),
``n`` (1 only), ``stream`` (false only) and ``user`` (ignored). Any other field is a
400, not silently dropped. Errors are OpenAI-style JSON ``{"error": {"message",
"type", "param", "code"}}`` with status 400 (bad request), 404 (unknown path or model),
411/413 (missing or too large body) or 500 (the model failed; logged with traceback).

``finish_reason`` is ``"length"`` when the completion has ``max_tokens`` tokens (the
text re-tokenized), else ``"stop"``; ``usage`` counts tokens the same way.

Requests are served one at a time: concurrent requests queue on a lock around the
model (JAX on one device gains nothing from interleaving, and each request's output
then depends on its own seed only). Batching across requests is not done; a
``/v1/completions`` request with a list of prompts is one batch.
"""

from __future__ import annotations

import argparse
import http.server
import importlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # A request body above this is refused (413).
_COMMON_FIELDS = frozenset(
  {"model", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream", "user"}
)
_FIELDS = {
  "/v1/chat/completions": _COMMON_FIELDS | {"messages", "max_completion_tokens"},
  "/v1/completions": _COMMON_FIELDS | {"prompt"},
}
_ROLES = ("system", "user", "assistant")


class Backend(Protocol):
  """What the server needs from a model: its name, a chat formatter and a sampler."""

  name: str

  def chat_prompt(self, messages: list[dict[str, str]]) -> str:
    """The prompt text of a conversation, ending where the assistant's answer starts."""

  def generate(
    self,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop: tuple[str, ...],
    seed: int,
  ) -> list[str]:
    """One completion per prompt (without the prompt), cut before any stop string."""

  def num_tokens(self, text: str) -> int:
    """How many tokens ``text`` has (no special tokens added)."""


class CheckpointBackend:
  """A checkpoint sampled with :mod:`evoselect_jax.models.generate`."""

  def __init__(self, model: str, *, name: str | None = None, batch_size: int = 8):
    """Loads the checkpoint.

    Args:
      model: anything :func:`~evoselect_jax.models.load_checkpoint` loads.
      name: the name served in ``/v1/models``; ``None``: ``model`` as given.
      batch_size: prompts per forward pass of a multi-prompt request.
    """
    from evoselect_jax.models import load_checkpoint

    self._generate = importlib.import_module("evoselect_jax.models.generate")
    self.checkpoint = load_checkpoint(model)
    self.name = name or str(model)
    self.batch_size = batch_size

  def chat_prompt(self, messages: list[dict[str, str]]) -> str:
    """The checkpoint's chat template applied to ``messages``."""
    return self._generate.chat_prompt(self.checkpoint, messages)

  def generate(
    self,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop: tuple[str, ...],
    seed: int,
  ) -> list[str]:
    """Samples one completion per prompt."""
    return self._generate.generate(
      self.checkpoint,
      prompts,
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      top_p=top_p,
      stop=stop,
      seed=seed,
      batch_size=self.batch_size,
    )

  def num_tokens(self, text: str) -> int:
    """Token count of ``text`` under the checkpoint's tokenizer."""
    return len(self.checkpoint.tokenizer.encode(text, add_special_tokens=False))


class BadRequest(Exception):
  """An error answer: its HTTP status and OpenAI error fields (a 500 for a model failure)."""

  def __init__(self, status: int, message: str, *, param: str | None = None, code: str = ""):
    super().__init__(message)
    self.status = status
    self.message = message
    self.param = param
    self.code = code or "invalid_request"


def make_server(
  backend: Backend,
  host: str = "127.0.0.1",
  port: int = 8000,
  *,
  default_max_tokens: int = 256,
  max_tokens_limit: int = 2048,
) -> http.server.ThreadingHTTPServer:
  """An HTTP server answering the OpenAI endpoints with ``backend``; not yet serving.

  Call ``serve_forever()`` (in a thread, for tests), then ``shutdown()`` and
  ``server_close()``.

  Args:
    backend: the model.
    host: the address to bind; 127.0.0.1 keeps the unauthenticated server local.
    port: the port; 0 picks a free one (read it from ``server.server_address``).
    default_max_tokens: ``max_tokens`` of a request that gives none.
    max_tokens_limit: the largest ``max_tokens`` accepted.
  """
  if not 1 <= default_max_tokens <= max_tokens_limit:
    raise ValueError(
      f"Need 1 <= default_max_tokens ({default_max_tokens}) <= max_tokens_limit "
      f"({max_tokens_limit})"
    )
  app = _App(backend, default_max_tokens, max_tokens_limit)
  handler = type("Handler", (_Handler,), {"app": app})
  server = http.server.ThreadingHTTPServer((host, port), handler)
  server.daemon_threads = True
  return server


class _App:
  """The endpoints, apart from HTTP: each takes the parsed body and returns the answer."""

  def __init__(self, backend: Backend, default_max_tokens: int, max_tokens_limit: int):
    self.backend = backend
    self.default_max_tokens = default_max_tokens
    self.max_tokens_limit = max_tokens_limit
    self._lock = threading.Lock()
    self._count = 0

  def model_card(self) -> dict[str, Any]:
    return {"id": self.backend.name, "object": "model", "created": 0, "owned_by": "evoselect-jax"}

  def complete(self, path: str, body: Any) -> dict[str, Any]:
    """Answers ``POST path`` with JSON ``body``."""
    if not isinstance(body, dict):
      raise BadRequest(400, f"The body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - _FIELDS[path])
    if unknown:
      raise BadRequest(
        400,
        f"Unsupported parameter(s) {unknown}; supported: {sorted(_FIELDS[path])}",
        param=unknown[0],
        code="unsupported_parameter",
      )
    if "model" in body and body["model"] != self.backend.name:
      raise BadRequest(
        404,
        f"The model {body['model']!r} does not exist; this server has {self.backend.name!r}",
        param="model",
        code="model_not_found",
      )
    chat = path == "/v1/chat/completions"
    sampling = self._sampling(body, chat)
    if chat:
      prompts = [self.backend.chat_prompt(_messages(body.get("messages")))]
    else:
      prompts = _prompts(body.get("prompt"))
    with self._lock:
      texts = self.backend.generate(prompts, **sampling)
      self._count += 1
      number = self._count
    if len(texts) != len(prompts) or not all(isinstance(t, str) for t in texts):
      raise RuntimeError(f"The backend returned {texts!r:.200} for {len(prompts)} prompt(s)")
    choices, used = [], 0
    for i, text in enumerate(texts):
      tokens = self.backend.num_tokens(text)
      used += tokens
      finish = "length" if tokens >= sampling["max_new_tokens"] else "stop"
      if chat:
        choices.append(
          {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        )
      else:
        choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": finish})
    prompt_tokens = sum(map(self.backend.num_tokens, prompts))
    return {
      "id": f"{'chatcmpl' if chat else 'cmpl'}-{number}",
      "object": "chat.completion" if chat else "text_completion",
      "created": int(time.time()),
      "model": self.backend.name,
      "choices": choices,
      "usage": {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": used,
        "total_tokens": prompt_tokens + used,
      },
    }

  def _sampling(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
    """The backend's sampling kwargs from a request's fields, each checked."""
    if body.get("n", 1) != 1 or isinstance(body.get("n"), bool):
      raise BadRequest(400, f"Only n=1 is supported, got n={body['n']!r}", param="n")
    if body.get("stream", False) is not False:
      raise BadRequest(400, "Streaming is not supported: stream must be false", param="stream")
    field = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    max_tokens = body.get(field, self.default_max_tokens)
    if not _is_int(max_tokens) or not 1 <= max_tokens <= self.max_tokens_limit:
      raise BadRequest(
        400,
        f"{field} must be an int in [1, {self.max_tokens_limit}], got {max_tokens!r}",
        param=field,
      )
    temperature = body.get("temperature", 1.0)
    if not _is_number(temperature) or not 0 <= temperature <= 2:
      raise BadRequest(
        400, f"temperature must be a number in [0, 2], got {temperature!r}", param="temperature"
      )
    top_p = body.get("top_p", 1.0)
    if not _is_number(top_p) or not 0 < top_p <= 1:
      raise BadRequest(400, f"top_p must be a number in (0, 1], got {top_p!r}", param="top_p")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if (
      not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop)
    ):
      raise BadRequest(
        400, f"stop must be a string or up to 4 strings, got {body['stop']!r}", param="stop"
      )
    seed = body.get("seed", 0)
    if not _is_int(seed) or not 0 <= seed < 2**32:  # A JAX PRNG seed keeps 32 bits.
      raise BadRequest(400, f"seed must be an int in [0, 2**32), got {seed!r}", param="seed")
    return {
      "max_new_tokens": max_tokens,
      "temperature": float(temperature),
      "top_p": float(top_p),
      "stop": tuple(stop),
      "seed": seed,
    }


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool)


def _messages(messages: Any) -> list[dict[str, str]]:
  """Checked chat messages."""
  if not isinstance(messages, list) or not messages:
    raise BadRequest(400, "messages must be a non-empty list", param="messages")
  for i, m in enumerate(messages):
    if (
      not isinstance(m, dict)
      or m.get("role") not in _ROLES
      or not isinstance(m.get("content"), str)
      or set(m) - {"role", "content", "name"}
    ):
      raise BadRequest(
        400,
        f"messages[{i}] must be {{'role': one of {_ROLES}, 'content': a string}}, got {m!r:.200}",
        param=f"messages[{i}]",
      )
  return [{"role": m["role"], "content": m["content"]} for m in messages]


def _prompts(prompt: Any) -> list[str]:
  """Checked completion prompts: one non-empty string, or a non-empty list of them."""
  prompts = [prompt] if isinstance(prompt, str) else prompt
  if (
    not isinstance(prompts, list)
    or not prompts
    or not all(isinstance(p, str) and p for p in prompts)
  ):
    raise BadRequest(
      400,
      f"prompt must be a non-empty string or a non-empty list of them, got {prompt!r:.200}",
      param="prompt",
    )
  return prompts


class _Handler(http.server.BaseHTTPRequestHandler):
  """HTTP around :class:`_App`; request lines go to ``logging`` (never headers)."""

  app: _App
  server_version = "evoselect-serve/0.1"

  def do_GET(self) -> None:
    path = self.path.split("?", 1)[0].rstrip("/")
    name = self.app.backend.name
    if path == "/v1/models":
      self._send(200, {"object": "list", "data": [self.app.model_card()]})
    elif path == f"/v1/models/{name}":
      self._send(200, self.app.model_card())
    elif path.startswith("/v1/models/"):
      self._error(
        BadRequest(404, f"No model {path[11:]!r}; this server has {name!r}", code="model_not_found")
      )
    else:
      self._error(BadRequest(404, f"No GET endpoint {path!r}; try /v1/models", code="not_found"))

  def do_POST(self) -> None:
    path = self.path.split("?", 1)[0].rstrip("/")
    try:
      if path not in _FIELDS:
        raise BadRequest(
          404, f"No POST endpoint {path!r}; endpoints: {sorted(_FIELDS)}", code="not_found"
        )
      answer = self.app.complete(path, self._read_json())
    except BadRequest as e:
      self._error(e)
      return
    except Exception as e:  # The request boundary: any model failure becomes a 500.
      logger.exception("POST %s failed", path)
      self._error(BadRequest(500, f"{type(e).__name__}: {e}", code="internal_error"))
      return
    self._send(200, answer)

  def _read_json(self) -> Any:
    length = self.headers.get("Content-Length")
    if length is None or not length.isdigit():
      raise BadRequest(411, "A Content-Length header is required", code="length_required")
    if int(length) > MAX_BODY_BYTES:
      raise BadRequest(413, f"Body of {length} bytes exceeds {MAX_BODY_BYTES}", code="too_large")
    try:
      return json.loads(self.rfile.read(int(length)))
    except (ValueError, RecursionError) as e:  # Not JSON, not UTF-8, nested too deep.
      raise BadRequest(400, f"The body is not valid JSON: {e}", code="invalid_json") from None

  def _error(self, e: BadRequest) -> None:
    error_type = "invalid_request_error" if e.status < 500 else "server_error"
    self._send(
      e.status,
      {"error": {"message": e.message, "type": error_type, "param": e.param, "code": e.code}},
    )

  def _send(self, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, format: str, *args: Any) -> None:
    logger.info("%s %s", self.address_string(), format % args)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command-line options (see the module docstring)."""
  parser = argparse.ArgumentParser(
    prog="python -m evoselect_jax.generators.serve", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--model", required=True, help="a registered name, HF directory or .gguf")
  parser.add_argument("--served_model_name", default=None, help="name in /v1/models (--model)")
  parser.add_argument("--host", default="127.0.0.1", help="address to bind")
  parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one")
  parser.add_argument("--batch_size", type=int, default=8, help="prompts per forward pass")
  parser.add_argument("--default_max_tokens", type=int, default=256)
  parser.add_argument("--max_tokens_limit", type=int, default=2048)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
  """Loads ``--model`` and serves it until interrupted."""
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  backend = CheckpointBackend(args.model, name=args.served_model_name, batch_size=args.batch_size)
  server = make_server(
    backend,
    args.host,
    args.port,
    default_max_tokens=args.default_max_tokens,
    max_tokens_limit=args.max_tokens_limit,
  )
  host, port = server.server_address[:2]
  print(f"Serving {backend.name} at http://{host}:{port}/v1", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    logger.info("Interrupted: shutting down")
  finally:
    server.server_close()


if __name__ == "__main__":
  main()
