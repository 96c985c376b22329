"""An LLM behind an OpenAI-compatible HTTP API as generator (OpenAI, vLLM, llama.cpp, ``serve``).

Each of the ``n`` records of a call is one request: ``num_shots`` exemplars drawn at
random, turned into chat messages by :func:`~.prompting.generation_messages`, sent to
``{base_url}/chat/completions`` (or, for ``endpoint="completions"``, joined into one
plain-text prompt for ``{base_url}/completions``). The completion's first ``{...}`` span
(:func:`~.prompting.extract_json_object`) is the raw record; :func:`~evoselect_jax.data.clean.clean`
parses it. Requests run on a bounded thread pool (``concurrency``).

Failures. Every failed attempt is counted by reason in :attr:`OpenAIGenerator.stats`:

==========================  ========================================================
``connection_error``        refused, reset or dropped connection: retried
``timeout``                 no answer within ``timeout_s``: retried
``http_429``, ``http_5xx``  rate limit, server error (and ``http_408``): retried,
                            waiting at least the server's ``Retry-After: <seconds>``
``bad_response``            a 200 whose body is not JSON or holds no completion
                            text: retried (proxies and overloaded servers send these)
``http_4xx``                any other client error (bad key, unknown model): fatal
                            at once, as retrying cannot help
==========================  ========================================================

A request is tried ``1 + max_retries`` times, waiting ``b/2 + U(0, b/2)`` seconds with
``b = min(max_backoff_s, backoff_s * 2**retry)`` (jitter from a per-request seeded
rng). When a request runs out of tries, or fails fatally, no new request starts, the
ones in flight finish, and :class:`GeneratorError` is raised: its message names the
URL, the reason, the attempts and how many records were done; ``.partial`` holds the
records of the first requests, up to the first one not finished (requests finish out
of order; the few finished after that gap are dropped). A call can be resumed:
``on_records`` gets those first records whenever there are more of them, and a later
call with ``done=`` them sends only the requests after them (each request's exemplars
and seed depend on its index alone, so the records are those of one uninterrupted
call, from a server that honours the seed)::

  try:
    raw = generator.generate(exemplars, n, seed)
  except GeneratorError as e:
    raw = generator.generate(exemplars, n, seed, done=e.partial)  # once the server is back

Secrets. The API key is read from the environment variable named by ``api_key_env``
for each call and sent only in the ``Authorization`` header: it is never stored on the
generator (nothing to pickle or print), never logged, and any echo of it in a server's
error body is redacted before it reaches a log line or an error message.
"""

from __future__ import annotations

import collections
import concurrent.futures
import http.client
import itertools
import json
import logging
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from evoselect_jax.generators.prompting import extract_json_object, generation_messages
from evoselect_jax.registry import GENERATORS
from evoselect_jax.types import MCQExample

logger = logging.getLogger(__name__)

ENDPOINTS = ("chat/completions", "completions")
_RETRY_STATUS = frozenset({408, 429})  # plus every 5xx
_SNIPPET = 200  # characters of a bad body quoted in messages
_REDACTED = "[REDACTED]"


class GeneratorError(RuntimeError):
  """A generation call that could not finish; its first records done are in ``partial``.

  Attributes:
    url: the endpoint that failed.
    reason: the failure's reason, a key of ``stats``.
    status: the HTTP status, if the server answered.
    partial: the records of the first requests, up to the first not finished (a later
      call resumes after them with ``done=partial``).
    stats: the call's counts (as :attr:`OpenAIGenerator.stats`).
  """

  def __init__(
    self,
    message: str,
    *,
    url: str,
    reason: str,
    status: int | None,
    partial: list[str],
    stats: collections.Counter[str],
  ):
    super().__init__(message)
    self.url = url
    self.reason = reason
    self.status = status
    self.partial = partial
    self.stats = stats


class _Failure(Exception):
  """One failed attempt: its stats reason, a readable detail, and whether to retry."""

  def __init__(
    self,
    reason: str,
    detail: str,
    *,
    retryable: bool,
    status: int | None = None,
    retry_after: float | None = None,
  ):
    super().__init__(reason)
    self.reason = reason
    self.detail = detail
    self.retryable = retryable
    self.status = status
    self.retry_after = retry_after
    self.attempts = 0


class _Cancelled(Exception):
  """A request abandoned because another one failed."""


class _Call:
  """The state one :meth:`OpenAIGenerator.generate` call shares between its threads.

  It holds the request headers (with the key): it lives only as long as the call.
  """

  def __init__(self, headers: dict[str, str]):
    self.headers = headers
    self.stats: collections.Counter[str] = collections.Counter()
    self.cancel = threading.Event()  # Set on a fatal failure: start no new request.
    self._lock = threading.Lock()

  def count(self, reason: str) -> None:
    with self._lock:
      self.stats[reason] += 1

  def snippet(self, raw: bytes) -> str:
    """The start of a body for a message, with the key (if a server echoed it) redacted."""
    text = raw.decode("utf-8", errors="replace").strip()
    auth = self.headers.get("Authorization")
    if auth:  # Before the cut, so that no part of the key is left.
      text = text.replace(auth.removeprefix("Bearer "), _REDACTED)
    return repr(text[:_SNIPPET] + ("…" if len(text) > _SNIPPET else ""))


@GENERATORS.register("openai")
class OpenAIGenerator:
  """Few-shot generation through an OpenAI-compatible completions API.

  Attributes:
    stats: counts of the last :meth:`generate` call: ``requests`` (HTTP attempts),
      ``records`` (completions returned), ``truncated`` (completions cut at
      ``max_tokens``, which ``clean`` will likely reject as ``not_json``), and one
      count per failure reason (see the module docstring).
  """

  resumable = True  # generate takes done= and on_records= (the experiment's stage uses them)

  def __init__(
    self,
    task: Any = None,
    *,
    base_url: str,
    model: str,
    endpoint: str = "chat/completions",
    api_key_env: str | None = None,
    max_tokens: int = 512,
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    num_shots: int = 3,
    concurrency: int = 4,
    timeout_s: float = 60.0,
    max_retries: int = 4,
    backoff_s: float = 1.0,
    max_backoff_s: float = 30.0,
  ):
    """Checks the options; sends nothing.

    Args:
      task: unused: the prompts are built from the exemplars alone.
      base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (http or https).
      model: the model name sent with each request.
      endpoint: ``"chat/completions"`` (chat messages; the server applies the model's
        chat template) or ``"completions"`` (the messages' contents joined by blank
        lines, for a base model).
      api_key_env: name of the environment variable that holds the API key, or
        ``None`` for a server without authentication. Must be set when a call starts.
      max_tokens: most tokens per completion.
      temperature: sampling temperature, in [0, 2].
      top_p: nucleus sampling mass, in (0, 1].
      stop: up to 4 stop strings.
      num_shots: exemplars shown per request, drawn without replacement (all of them
        when fewer are given).
      concurrency: requests in flight at once.
      timeout_s: seconds to wait for a connection and for each read.
      max_retries: retries of a request after a retryable failure.
      backoff_s: base of the exponential backoff, in seconds.
      max_backoff_s: longest wait between tries, in seconds.
    """
    del task
    parsed = urllib.parse.urlsplit(base_url) if isinstance(base_url, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
      raise ValueError(
        f"base_url must be an http(s) URL like http://host:8000/v1, got {base_url!r}"
      )
    if endpoint not in ENDPOINTS:
      raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
    if not isinstance(model, str) or not model:
      raise ValueError(f"model must be a non-empty string, got {model!r}")
    if api_key_env is not None and (not isinstance(api_key_env, str) or not api_key_env):
      raise ValueError(f"api_key_env must name an environment variable, got {api_key_env!r}")
    _check_int("max_tokens", max_tokens, 1)
    _check_int("num_shots", num_shots, 1)
    _check_int("concurrency", concurrency, 1)
    _check_int("max_retries", max_retries, 0)
    _check_number("temperature", temperature, 0, 2)
    _check_number("top_p", top_p, 0, 1, low_open=True)
    _check_number("timeout_s", timeout_s, 0, float("inf"), low_open=True)
    _check_number("backoff_s", backoff_s, 0, float("inf"))
    _check_number("max_backoff_s", max_backoff_s, 0, float("inf"))
    if isinstance(stop, str) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
      raise ValueError(f"stop must be a list of at most 4 non-empty strings, got {stop!r}")
    self.base_url = base_url.rstrip("/")
    self.url = f"{self.base_url}/{endpoint}"
    self.model = model
    self.endpoint = endpoint
    self.api_key_env = api_key_env
    self.max_tokens = max_tokens
    self.temperature = float(temperature)
    self.top_p = float(top_p)
    self.stop = list(stop)
    self.num_shots = num_shots
    self.concurrency = concurrency
    self.timeout_s = float(timeout_s)
    self.max_retries = max_retries
    self.backoff_s = float(backoff_s)
    self.max_backoff_s = float(max_backoff_s)
    self.stats: collections.Counter[str] = collections.Counter()

  def __repr__(self) -> str:
    return (
      f"OpenAIGenerator(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"
    )

  def generate(
    self,
    exemplars: Sequence[MCQExample],
    n: int,
    seed: int,
    *,
    done: Sequence[str] = (),
    on_records: Callable[[list[str]], None] | None = None,
  ) -> list[str]:
    """``n`` raw records, one request each, in request order.

    Args:
      exemplars: labelled target examples; each request shows ``num_shots`` of them.
      n: number of records (requests).
      seed: seeds each request's choice of exemplars, its ``seed`` field (servers that
        honour it sample reproducibly) and its backoff jitter.
      done: the first records of an earlier call with the same arguments (its
        ``on_records`` or its error's ``partial``); only the requests after them are sent.
      on_records: called with the first records, in order, whenever more of them are done.

    Returns:
      One record per request, ``done`` first.

    Raises:
      GeneratorError: a request failed fatally or ran out of retries; its ``partial``
        holds the first records done.
      ValueError: bad arguments, or ``api_key_env`` is not set.
    """
    _check_int("n", n, 0)
    _check_int("seed", seed, 0)
    if not exemplars:
      raise ValueError("The openai generator needs at least one exemplar")
    if len(done) > n:
      raise ValueError(f"{len(done)} records done, more than the n={n} asked for")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if self.api_key_env is not None:
      key = os.environ.get(self.api_key_env)
      if not key:
        raise ValueError(
          f"api_key_env={self.api_key_env!r}: the environment variable {self.api_key_env} is "
          "not set or empty"
        )
      if key != key.strip() or not key.isprintable():  # http.client would quote it in an error.
        raise ValueError(
          f"The API key in ${self.api_key_env} has surrounding whitespace or control "
          "characters (a line break?); strip it"
        )
      headers["Authorization"] = f"Bearer {key}"
    call = _Call(headers)
    self.stats = call.stats
    requests = []
    for i in range(n):
      rng = np.random.default_rng([seed, i])
      picks = rng.choice(len(exemplars), min(self.num_shots, len(exemplars)), replace=False)
      payload = self._payload(generation_messages([exemplars[j] for j in picks]))
      payload["seed"] = int(rng.integers(2**31))
      requests.append((json.dumps(payload).encode(), rng))

    records = list(done)
    finished: dict[int, str] = {}  # after a request not yet finished
    failure: _Failure | None = None
    with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
      futures = {
        pool.submit(self._complete, data, rng, call): i
        for i, (data, rng) in enumerate(requests)
        if i >= len(records)
      }
      try:
        for future in concurrent.futures.as_completed(futures):
          try:
            finished[futures[future]] = future.result()
          except _Cancelled:
            continue
          except _Failure as f:  # The failing request has set call.cancel.
            failure = failure or f
          if len(records) in finished:
            while len(records) in finished:
              records.append(finished.pop(len(records)))
            if on_records is not None:
              on_records(list(records))
      finally:  # Also on KeyboardInterrupt: requests not yet started never start.
        call.cancel.set()
    if failure is not None:
      raise GeneratorError(
        f"{self.url}: {failure.detail} ({failure.reason}) after {failure.attempts} attempt(s); "
        f"{len(records)} of {n} records done (kept in .partial); counts: {dict(self.stats)}",
        url=self.url,
        reason=failure.reason,
        status=failure.status,
        partial=records,
        stats=collections.Counter(self.stats),
      )
    return records

  def _payload(self, messages: list[dict[str, str]]) -> dict[str, Any]:
    """The request body for ``messages``, without its seed."""
    payload: dict[str, Any] = {
      "model": self.model,
      "max_tokens": self.max_tokens,
      "temperature": self.temperature,
      "top_p": self.top_p,
    }
    if self.endpoint == "chat/completions":
      payload["messages"] = messages
    else:
      payload["prompt"] = "\n\n".join(m["content"] for m in messages) + "\n"
    if self.stop:
      payload["stop"] = self.stop
    return payload

  def _complete(self, data: bytes, rng: np.random.Generator, call: _Call) -> str:
    """One request with retries: the record, or a :class:`_Failure` after the last try."""
    for attempt in itertools.count():
      if call.cancel.is_set():
        raise _Cancelled
      try:
        text = self._attempt(data, call)
      except _Failure as f:
        call.count(f.reason)
        f.attempts = attempt + 1
        if not f.retryable or attempt == self.max_retries:
          call.cancel.set()  # Before any other request of this call starts.
          raise
        base = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        delay = base / 2 + rng.random() * base / 2
        if f.retry_after is not None:
          delay = max(delay, min(f.retry_after, self.max_backoff_s))
        logger.warning(
          "%s: %s (%s); retry %d of %d in %.2f s",
          self.url,
          f.detail,
          f.reason,
          attempt + 1,
          self.max_retries,
          delay,
        )
        if call.cancel.wait(delay):
          raise _Cancelled from None
        continue
      call.count("records")
      return extract_json_object(text)

  def _attempt(self, data: bytes, call: _Call) -> str:
    """One HTTP request: the completion text, or a :class:`_Failure`."""
    call.count("requests")
    request = urllib.request.Request(self.url, data=data, headers=call.headers, method="POST")
    try:
      with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
        raw = response.read()
    except urllib.error.HTTPError as e:
      try:
        body = call.snippet(e.read())
      except (OSError, http.client.HTTPException) as read_error:
        body = f"(body unreadable: {type(read_error).__name__})"
      raise _Failure(
        f"http_{e.code}",
        f"HTTP {e.code}: {body}",
        retryable=e.code in _RETRY_STATUS or e.code >= 500,
        status=e.code,
        retry_after=_retry_after(e.headers.get("Retry-After")),
      ) from None
    except (OSError, http.client.HTTPException) as e:
      cause = e.reason if isinstance(e, urllib.error.URLError) else e
      if isinstance(cause, TimeoutError):
        raise _Failure(
          "timeout", f"no answer within {self.timeout_s:g} s", retryable=True
        ) from None
      detail = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
      raise _Failure("connection_error", detail, retryable=True) from None
    return self._completion_text(raw, call)

  def _completion_text(self, raw: bytes, call: _Call) -> str:
    """The completion in a 200 body; a retryable ``bad_response`` if there is none."""
    try:
      body = json.loads(raw)
    except (ValueError, RecursionError):
      raise _Failure(
        "bad_response", f"body is not JSON: {call.snippet(raw)}", retryable=True
      ) from None
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
      raise _Failure("bad_response", f"no 'choices' in body: {call.snippet(raw)}", retryable=True)
    choice = choices[0]
    if self.endpoint == "chat/completions":
      message = choice.get("message")
      text = message.get("content") if isinstance(message, dict) else None
    else:
      text = choice.get("text")
    if not isinstance(text, str):
      field = "message.content" if self.endpoint == "chat/completions" else "text"
      raise _Failure(
        "bad_response", f"choices[0] has no string {field}: {call.snippet(raw)}", retryable=True
      )
    if choice.get("finish_reason") == "length":
      call.count("truncated")
    return text


def _retry_after(value: str | None) -> float | None:
  """Seconds to wait from a ``Retry-After: <seconds>`` header, if it holds a number.

  The HTTP-date form (which OpenAI and vLLM do not send) is not read: the exponential
  backoff alone then applies.
  """
  try:
    return max(0.0, float(value)) if value else None
  except ValueError:
    return None


def _check_int(name: str, value: Any, low: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_number(
  name: str, value: Any, low: float, high: float, *, low_open: bool = False
) -> None:
  ok = isinstance(value, int | float) and not isinstance(value, bool)
  if not ok or not (low < value if low_open else low <= value) or not value <= high:
    bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
    raise ValueError(f"{name} must be a number in {bounds}, got {value!r}")
