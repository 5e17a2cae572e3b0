"""A llama.cpp server from the xllamacpp wheel: `python -m decision_retry.engines.remote.serve`.

The wheel's `xllamacpp.Server` runs the llama.cpp HTTP server (the same code as `llama-server`)
inside this process and listens until the process ends. Started by the remote engine's tests,
the benchmark and users without a `llama-server` binary:

    python -m decision_retry.engines.remote.serve smollm2-135m --port 8080 --parallel 4
    decision-retry fix REPO --model llamacpp+http://127.0.0.1:8080

It prints `listening on http://HOST:PORT` once ready and serves until SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def build_params(model: str, *, host: str, port: int, parallel: int, ctx: int, threads: int,
                 api_key: str | None = None, alias: str | None = None):
    """xllamacpp.CommonParams for one model on host:port (ctx tokens per slot)."""
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = model
    p.hostnames = [host]
    p.port = port
    p.n_parallel = parallel
    p.n_ctx = ctx * parallel  # the context is shared by the slots
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    p.kv_unified = True  # n_cmpl children copy the parent's prompt cache
    p.verbosity = -1
    if api_key:
        p.api_keys = [api_key]
    if alias:
        p.model_alias = {alias}  # a set of names in this binding (a str would be its letters)
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m decision_retry.engines.remote.serve",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a catalogue name (decision-retry models) or a .gguf file")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--parallel", type=int, default=4, help="slots: requests decoded together")
    ap.add_argument("--ctx", type=int, default=4096, help="context tokens per slot")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--alias", default=None, help="the model name the server reports")
    ap.add_argument("--api-key-env", default=None, metavar="NAME",
                    help="require the API key held in this environment variable")
    args = ap.parse_args(argv)

    path = args.model
    if not path.endswith(".gguf"):
        from decision_retry import catalogue

        if not catalogue.known(path):
            print(f"error: unknown model {path!r} (a catalogue name or a .gguf file)", file=sys.stderr)
            return 2
        path = str(catalogue.resolve(path))
    if not os.path.isfile(path):
        print(f"error: model file not found: {path}", file=sys.stderr)
        return 2
    key = os.environ.get(args.api_key_env, "") if args.api_key_env else None
    if args.api_key_env and not key:
        print(f"error: ${args.api_key_env} is empty", file=sys.stderr)
        return 2

    import xllamacpp

    # the handlers are in place before the server starts: a SIGTERM during loading still ends us
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        server = xllamacpp.Server(build_params(
            path, host=args.host, port=args.port, parallel=args.parallel, ctx=args.ctx,
            threads=args.threads, api_key=key, alias=args.alias))
    except Exception as err:  # the binding raises RuntimeError and friends; one line for the user
        print(f"error: cannot start the llama.cpp server: {err}", file=sys.stderr)
        return 1
    print(f"listening on {server.listening_address}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    del server  # stops the HTTP threads and frees the model
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


class LocalServer:
    """A llama.cpp server in a child process on 127.0.0.1 (tests, benchmarks): start, then
    stop (SIGTERM), kill (SIGKILL), pause (SIGSTOP: a hung server) or resume it."""

    def __init__(self, model: str = "smollm2-135m", *, port: int | None = None, parallel: int = 4,
                 ctx: int = 4096, threads: int = 1, alias: str | None = None,
                 api_key_env: str | None = None, env: dict | None = None) -> None:
        self.model, self.port = model, port or free_port()
        self.args = ["--port", str(self.port), "--parallel", str(parallel), "--ctx", str(ctx),
                     "--threads", str(threads)]
        if alias:
            self.args += ["--alias", alias]
        if api_key_env:
            self.args += ["--api-key-env", api_key_env]
        self.env, self.proc = env, None

    @property
    def url(self) -> str:
        """The `--model` spec of this server."""
        return f"llamacpp+http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> LocalServer:
        """Start and wait for `listening on` (RuntimeError with its stderr if it exits first)."""
        import select
        import subprocess
        import tempfile

        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "decision_retry.engines.remote.serve", self.model, *self.args],
            stdout=subprocess.PIPE, stderr=self._log, text=True,
            env={**os.environ, **(self.env or {})})
        ready = select.select([self.proc.stdout], [], [], timeout)[0]  # a line, or EOF at exit
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("listening on"):
            self.kill()
            self._log.seek(0)
            tail = self._log.read().decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"llama.cpp server did not start: {' | '.join(tail)}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.resume()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except Exception:  # noqa: BLE001 - stuck in teardown: end it
                self.kill()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> LocalServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
