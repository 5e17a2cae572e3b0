"""`bench` spread over replicas: two llama.cpp servers on 127.0.0.1, one worker per URL."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from decision_retry.bench.harness import model_list
from decision_retry.engines.remote.serve import LocalServer

CLI = [sys.executable, "-m", "decision_retry.cli"]
ROOT = Path(__file__).resolve().parents[2]


def test_model_list_splits_only_server_urls():
    a, b = "llamacpp+http://127.0.0.1:1", "vllm+http://10.0.0.2:8000/m?top=10"
    assert model_list(f"{a},{b}") == [a, b]
    assert model_list(f" {a} , {a}") == [a, a]
    assert model_list(a) == [a]
    assert model_list("smollm2-135m") == ["smollm2-135m"]
    assert model_list(None) == [None]


@pytest.fixture(scope="module")
def replicas():
    with LocalServer(alias="replica-a", parallel=2) as a, LocalServer(alias="replica-b", parallel=2) as b:
        yield a, b


@pytest.mark.slow
def test_bench_cells_are_spread_over_two_servers(replicas, tmp_path):
    a, b = replicas
    suite, out = tmp_path / "suite", tmp_path / "bench"
    for name in ("units", "names"):  # a suite directory: one repository per subdirectory
        shutil.copytree(ROOT / "fixtures" / name, suite / name)
    r = subprocess.run(
        [*CLI, "bench", str(suite), "--strategies", "restart", "--seeds", "0,1",
         "--budget-tokens", "120", "--max-attempts", "2", "--test-timeout", "600",
         "--model", f"{a.url},{b.url}",
         "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 worker(s)" in r.stderr
    cells = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]
    assert len(cells) == 4
    assert not [c["error"] for c in cells if c["error"]], cells
    logs = subprocess.run([*CLI, "logs", "list", "--json", "-n", "10", "--home", str(out / "traces")],
                          capture_output=True, text=True, check=True)
    served = {run["model"] for run in json.loads(logs.stdout)}
    # each run names the server that decoded it: both replicas took cells
    assert served == {"llamacpp:replica-a", "llamacpp:replica-b"}
