"""HTTP to an inference server: timeouts, retries with backoff, an API key, server-sent events.

* Every request has a timeout (connect, and each read: a hung server costs at most `timeout`
  seconds per try).
* Transient failures (connection refused or reset, a read timeout, HTTP 429/502/503/504) are
  retried `retries` times with exponential backoff; any other HTTP error is final at once.
  When the tries run out the server is lost: `EngineLost` (decision_retry.errors) names it, the
  tries and the last failure, and `fix` ends the run as `engine-lost`, resumable.
* The API key comes from an environment variable and goes only into the Authorization header:
  it is never part of a message, a repr, the trace or a span.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx

from decision_retry.errors import DecisionRetryError, EngineLost

API_KEY_ENV = "DECISION_RETRY_API_KEY"
TRANSIENT_STATUS = frozenset({429, 502, 503, 504})
T = TypeVar("T")


class RemoteError(DecisionRetryError):
    """The server failed or went away while a run was using it (exit 1; the trace stays)."""


class HttpStatusError(RemoteError):
    """The server answered with an HTTP error; `status` is its code."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Transient(Exception):
    """A failure worth another try; `reason` is what the user reads if the tries run out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Http:
    """JSON and server-sent events over one connection pool to `base` (e.g. http://host:8080)."""

    def __init__(
        self,
        base: str,
        *,
        label: str = "server",
        timeout: float = 60.0,
        retries: int = 2,
        backoff: float = 0.5,
        api_key_env: str = API_KEY_ENV,
    ) -> None:
        self.base, self.label = base.rstrip("/"), label
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.api_key_env = api_key_env  # the variable's name; the key stays in the header only
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            base_url=self.base, headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        )

    def __repr__(self) -> str:  # never the headers: they hold the key
        return f"Http({self.base!r}, timeout={self.timeout}, retries={self.retries})"

    def close(self) -> None:
        self._client.close()

    # -- one try ---------------------------------------------------------------------------
    def _where(self) -> str:
        return f"{self.label} at {self.base}"

    def _check(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        if not response.is_closed:
            response.read()
        message = _error_message(response)
        if response.status_code in TRANSIENT_STATUS:
            raise _Transient(f"HTTP {response.status_code}: {message}")
        hint = f" (is the API key in ${self.api_key_env} right?)" if response.status_code in (
            401, 403) else ""
        raise HttpStatusError(
            f"{self._where()}: HTTP {response.status_code}: {message}{hint}", response.status_code
        )

    @contextmanager
    def _translate(self) -> Iterator[None]:
        """httpx's network errors as _Transient (retried) with a readable reason."""
        try:
            yield
        except httpx.ConnectError:
            raise _Transient("connection refused") from None
        except httpx.TimeoutException:
            raise _Transient(f"no answer within {self.timeout:g}s") from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as err:
            raise _Transient(f"connection lost ({type(err).__name__})") from None

    # -- retries ---------------------------------------------------------------------------
    def call(self, fn: Callable[[], T], *, retries: int | None = None) -> T:
        """fn() with retries on transient failures; fn restarts from scratch each try. EngineLost
        once the tries run out."""
        tries = 1 + (self.retries if retries is None else retries)
        for attempt in range(tries):
            try:
                with self._translate():
                    return fn()
            except _Transient as err:
                if attempt == tries - 1:
                    raise EngineLost(self._where(), tries, err.reason) from None
                time.sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def get(self, path: str, **kw) -> Any:
        """GET path -> decoded JSON."""
        def once():
            r = self._client.get(path)
            self._check(r)
            return r.json()

        return self.call(once, **kw)

    def post(self, path: str, body: dict, **kw) -> Any:
        """POST JSON -> decoded JSON."""
        def once():
            r = self._client.post(path, json=body)
            self._check(r)
            return r.json()

        return self.call(once, **kw)

    @contextmanager
    def events(self, path: str, body: dict) -> Iterator[Iterator[dict]]:
        """POST and read server-sent events (`data: {json}` lines) until the server ends or the
        caller leaves the block (closing the connection stops a llama.cpp/vLLM generation).
        Not retried here: wrap the whole exchange in `call`."""
        with self._translate(), self._client.stream("POST", path, json=body) as response:
            self._check(response)
            yield self._parse(response)

    def _parse(self, response: httpx.Response) -> Iterator[dict]:
        with self._translate():
            for line in response.iter_lines():
                if line.startswith("data:"):
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    if data:
                        event = json.loads(data)
                        if isinstance(event, dict) and "error" in event:
                            raise RemoteError(f"{self._where()}: {_message_of(event['error'])}")
                        yield event
                elif line.startswith("error:"):  # llama.cpp reports a failed task this way
                    raise RemoteError(f"{self._where()}: {_message_of(line[6:].strip())}")


def _message_of(err: Any) -> str:
    if isinstance(err, str):
        try:
            err = json.loads(err)
        except ValueError:
            return err.strip().splitlines()[0] if err.strip() else "error"
    if isinstance(err, dict):
        inner = err.get("error", err)
        if isinstance(inner, dict):
            return str(inner.get("message") or inner)
        return str(err.get("message") or inner)
    return str(err)


def _error_message(response: httpx.Response) -> str:
    try:
        return _message_of(response.json())
    except ValueError:
        text = response.text.strip()
        return text.splitlines()[0][:200] if text else response.reason_phrase
