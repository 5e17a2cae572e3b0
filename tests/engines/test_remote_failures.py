"""Failure modes of the remote engine, each against a real llama.cpp server on 127.0.0.1 that the
test stops, kills, pauses (SIGSTOP: hung), starves of context, locks with an API key, or puts
behind a loopback proxy that answers 503 a few times first. A server killed mid-run, and the
run resumed: test_engine_lost.py."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading

import httpx
import pytest
import torch

from decision_retry.engines.remote import RemoteError, connect
from decision_retry.engines.remote.serve import LocalServer, free_port
from decision_retry.errors import EngineLost, ModelLoadError
from decision_retry.tokens import Sampling
from tests.helpers import fixture_repo

CLI = [sys.executable, "-m", "decision_retry.cli"]
SECRET = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def server():
    with LocalServer("smollm2-135m", parallel=2, alias="smollm2") as srv:
        yield srv


def run(args, env=None, timeout=600):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.slow
def test_server_down_at_start_is_one_line_and_exit_2(tmp_path):
    url = f"llamacpp+http://127.0.0.1:{free_port()}?retries=1"
    repo = fixture_repo(tmp_path, "units")
    r = run(["fix", str(repo), "--model", url, "--home", str(tmp_path / "h")])
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert line.startswith("error: cannot use llama.cpp server http://127.0.0.1:")
    assert "connection refused (2 tries)" in line
    r = run(["sample", "hi", "--model", url])
    assert r.returncode == 2 and "connection refused" in one_line(r.stderr)


def test_unknown_model_name(server):
    r = run(["sample", "hi", "--model", f"{server.url}/no-such-model"])
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert "unknown model 'no-such-model'; the server has: " in line and "smollm2" in line


@pytest.mark.slow
def test_http_error_mid_run_is_one_line_and_exit_1():
    with LocalServer("smollm2-135m", parallel=1, ctx=64) as small:  # 256 tokens (its minimum)
        engine = connect(small.url)
        with pytest.raises(RemoteError, match="HTTP 400") as err:
            engine.extend(engine.prefill("word " * 400), Sampling(max_new_tokens=4),
                          torch.Generator().manual_seed(0))
        assert "\n" not in str(err.value)
        r = run(["sample", "word " * 400, "--model", small.url, "--max-tokens", "4"])
        assert r.returncode == 1 and "HTTP 400" in one_line(r.stderr)


def test_a_hung_server_costs_at_most_the_timeout_per_try(server):
    engine = connect(server.url + "?timeout=1&retries=1")
    state = engine.prefill("Name a colour.")
    s = Sampling(temperature=1.0, max_new_tokens=4)
    server.pause()
    try:
        with pytest.raises(EngineLost, match=r"after 2 tries: no answer within 1s$"):
            engine.extend(state, s, torch.Generator().manual_seed(0))
    finally:
        server.resume()
    patient = connect(server.url)  # resumed, it serves again (a 1 s timeout would be flaky here)
    assert len(patient.extend(state, s, torch.Generator().manual_seed(0)).tokens) == 4


class FlakyProxy:
    """A loopback HTTP proxy to `upstream` that answers 503 to the first `fail` POSTs."""

    def __init__(self, upstream: str, fail: int) -> None:
        self.fail, self.seen = fail, []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _forward(self, method):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.seen.append(self.path)
                if method == "POST" and proxy.fail > 0:
                    proxy.fail -= 1
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "Loading model", "code": 503}}')
                    return
                r = httpx.request(method, upstream + self.path, content=body, timeout=60,
                                  headers={"Content-Type": "application/json"})
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("content-type", "text/plain"))
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.mark.slow
def test_transient_errors_are_retried_with_backoff(server):
    proxy = FlakyProxy(f"http://127.0.0.1:{server.port}", fail=0)
    try:
        engine = connect(f"llamacpp+http://127.0.0.1:{proxy.port}?retries=2")
        state = engine.prefill("Name a colour.")
        s = Sampling(temperature=1.0, max_new_tokens=4)
        proxy.fail, proxy.seen[:] = 2, []
        out = engine.extend(state, s, torch.Generator().manual_seed(0))
        assert len(out.tokens) == 4 and proxy.seen == ["/completion"] * 3  # two 503s, then served
        proxy.fail = 3
        with pytest.raises(EngineLost, match=r"after 3 tries: HTTP 503: Loading model$"):
            engine.extend(state, s, torch.Generator().manual_seed(0))
    finally:
        proxy.close()


@pytest.mark.slow
def test_api_key_from_the_environment_never_recorded(tmp_path):
    with LocalServer("smollm2-135m", parallel=1, api_key_env="SERVER_KEY",
                     env={"SERVER_KEY": SECRET}) as locked:
        os.environ.pop("DECISION_RETRY_API_KEY", None)
        with pytest.raises(ModelLoadError, match=r"HTTP 401.*DECISION_RETRY_API_KEY"):
            connect(locked.url)
        os.environ["MY_KEY"] = SECRET
        try:
            engine = connect(locked.url + "?api_key_env=MY_KEY")
        finally:
            del os.environ["MY_KEY"]
        assert SECRET not in repr(engine) and SECRET not in repr(engine.http)
        out = engine.extend(engine.prefill("hi"), Sampling(max_new_tokens=3),
                            torch.Generator().manual_seed(0))
        assert len(out.tokens) == 3
        r = run(["sample", "hi", "--model", locked.url, "--max-tokens", "3", "--json"],
                env={"DECISION_RETRY_API_KEY": SECRET})
        assert r.returncode == 0, r.stderr
        assert SECRET not in r.stdout + r.stderr
