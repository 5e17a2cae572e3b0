"""Remote engines: a llama.cpp server or a vLLM deployment over HTTP (docs/scaling.md).

`--model` forms (`connect(spec)`):

| spec | server |
|---|---|
| `llamacpp+http://HOST:PORT` | a llama.cpp server (`llama-server`, or `python -m decision_retry.engines.remote.serve`) |
| `llamacpp+http://HOST:PORT/MODEL` | one model of a llama.cpp server that serves several |
| `vllm+http://HOST:PORT/MODEL` | a vLLM OpenAI-compatible server, MODEL = its `--served-model-name` (default: the first it lists) |

`https` works the same (`vllm+https://...`). Options go in the query string:
`timeout` (seconds per read, default 60), `retries` (on transient errors, default 2),
`top` (candidates listed per token for the bounds, default 20), `exact=1` (list the whole
vocabulary: exact entropy and log A, much larger answers), `vocab=N` (vLLM: the vocabulary size
when the server cannot tell), `api_key_env=NAME` (the variable holding the API key, default
`DECISION_RETRY_API_KEY`; the key itself never goes into the URL).

A server that stops answering mid-run past its retries raises `EngineLost`: `fix` ends the run
as `engine-lost` and `fix --resume RUN` continues it once the server is back.

Modules: `http` (timeouts, retries, the key), `llamacpp_server` and `vllm` (the two APIs),
`wire` (what they hand the engine), `engine` (the contract: requests and statistics), `rows`
(a request's events read into tokens), `bounds` (entropy and log Z from the top-k), `banned`
(excluding draws), `pieces` (token text from byte pieces), `serve` (a llama.cpp server from
the xllamacpp wheel).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from decision_retry.engines.remote.engine import DEFAULT_TOP, RemoteEngine, RemoteStats
from decision_retry.engines.remote.http import API_KEY_ENV, Http, RemoteError
from decision_retry.errors import EngineLost, ModelLoadError

KINDS = {"llamacpp": "llama.cpp server", "vllm": "vLLM server"}
OPTIONS = ("timeout", "retries", "top", "exact", "vocab", "api_key_env")

__all__ = ["EngineLost", "RemoteEngine", "RemoteError", "RemoteStats", "Target", "connect",
           "is_remote", "parse"]


@dataclass(frozen=True)
class Target:
    """A parsed remote `--model` spec."""

    kind: str
    base: str  # scheme://host:port
    model: str | None = None
    timeout: float = 60.0
    retries: int = 2
    top: int = DEFAULT_TOP
    exact: bool = False
    vocab: int | None = None
    api_key_env: str = API_KEY_ENV


def is_remote(spec: str | None) -> bool:
    """True for `KIND+http(s)://...` specs."""
    return bool(spec) and ("+http://" in spec or "+https://" in spec)


def parse(spec: str) -> Target:
    """`KIND+http://HOST:PORT[/MODEL][?opts]` -> Target (ModelLoadError on a bad form)."""
    kind, _, url = spec.partition("+")
    if kind not in KINDS:
        raise ModelLoadError(f"unknown server kind {kind!r} in --model {spec!r}: use "
                             "llamacpp+http://HOST:PORT or vllm+http://HOST:PORT/MODEL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelLoadError(f"--model {spec!r}: expected {kind}+http://HOST:PORT[/MODEL]")
    if parts.username or parts.password:
        raise ModelLoadError(f"put the API key in ${API_KEY_ENV} (or ?api_key_env=NAME), not in "
                             "the --model URL: the URL is recorded with the run")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - set(OPTIONS))
    if unknown:
        raise ModelLoadError(f"unknown option {unknown[0]!r} in --model; known: {', '.join(OPTIONS)}")
    try:
        port = parts.port
        opts = dict(
            timeout=float(query.get("timeout", 60.0)), retries=int(query.get("retries", 2)),
            top=int(query.get("top", DEFAULT_TOP)),
            exact=query.get("exact", "0").lower() in ("1", "true", "yes"),
            vocab=int(query["vocab"]) if "vocab" in query else None,
        )
    except ValueError as err:
        raise ModelLoadError(f"--model {spec!r}: {err}") from None
    if opts["timeout"] <= 0 or opts["retries"] < 0 or opts["top"] < 1:
        raise ModelLoadError(f"--model {spec!r}: timeout > 0, retries >= 0 and top >= 1 please")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    base = f"{parts.scheme}://{host}" + (f":{port}" if port else "")
    model = parts.path.strip("/") or None
    return Target(kind, base, model, api_key_env=query.get("api_key_env", API_KEY_ENV), **opts)


def connect(spec: str) -> RemoteEngine:
    """An engine over the server `spec` names; ModelLoadError (exit 2) if it cannot be used."""
    target = parse(spec)
    label = KINDS[target.kind]
    http = Http(target.base, label=label, timeout=target.timeout, retries=target.retries,
                api_key_env=target.api_key_env)
    if target.kind == "llamacpp":
        from decision_retry.engines.remote.llamacpp_server import LlamaCppServer

        dialect = LlamaCppServer(http, target.model)
    else:
        from decision_retry.engines.remote.vllm import VllmServer

        dialect = VllmServer(http, target.model, vocab=target.vocab)
    try:
        info = http.call(dialect.info)
    except EngineLost as err:  # never answered: a bad --model before any work, not a lost run
        http.close()
        raise ModelLoadError(f"cannot use {label} {target.base}: {err.reason} ({err.tries} "
                             f"{'try' if err.tries == 1 else 'tries'})") from None
    except RemoteError as err:
        http.close()
        raise ModelLoadError(f"cannot use {label} {target.base}: {str(err).split(': ', 1)[-1]}") from None
    except (LookupError, ValueError) as err:
        http.close()
        raise ModelLoadError(f"{label} at {target.base}: {err}") from None
    return RemoteEngine(dialect, http, info, exact=target.exact, top=target.top)
