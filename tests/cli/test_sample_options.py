"""`decision-retry sample` refuses non-finite numbers (a nan passes every range check) with one
line and exit code 2, like every other command; finite values still run. Real CLI processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def sample(*args, tmp_path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "hello.json"
    script.write_text(json.dumps({"segments": ["hello", " world"]}))
    env = {**os.environ, "DECISION_RETRY_HOME": str(tmp_path / "home")}
    return subprocess.run([sys.executable, "-m", "decision_retry.cli", "sample", "Say hi",
                           "--model", f"scripted:{script}", *args], capture_output=True,
                          text=True, env=env, timeout=300, check=False)


@pytest.mark.parametrize(("flag", "value"), [("--temperature", "nan"), ("--alpha", "nan"),
                                             ("--proposal-temperature", "inf"),
                                             ("--eps", "nan")])
def test_non_finite_numbers_are_bad_input(tmp_path, flag, value):
    proc = sample(flag, value, tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "finite" in proc.stderr and flag in proc.stderr and "Traceback" not in proc.stderr


def test_finite_values_still_run(tmp_path):
    proc = sample("--temperature", "0", "--eps", "0.5", "--json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "hello world" in "".join(t["text"] for t in json.loads(proc.stdout)["tokens"])


@pytest.mark.parametrize(("given", "sampler", "kind", "argmax"), [
    (["--sampler", "rewind"], "rewind", "entropy-jump", False),
    (["--sampler", "rewind", "--cut", "softmax", "--argmax"], "rewind", "softmax", True),
    (["--sampler", "ec-mh"], "rewind", "entropy-jump", False),  # former names read as today's
    (["--sampler", "uniform-mh"], "rewind", "uniform", False),
    (["--sampler", "argmax-cut"], "rewind", "entropy-jump", True),
])
def test_samplers_are_named_as_fix_names_them(tmp_path, given, sampler, kind, argmax):
    proc = sample(*given, "--steps", "2", "--block", "2", "--json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)["config"]
    assert (cfg["sampler"], cfg["cut"]["kind"], cfg["argmax"]) == (sampler, kind, argmax)


@pytest.mark.parametrize("given", [["--sampler", "egps", "--argmax"],
                                   ["--sampler", "rewind", "--cut", "uniform", "--argmax"]])
def test_argmax_where_it_cannot_rank_is_one_line(tmp_path, given):
    proc = sample(*given, tmp_path=tmp_path)
    assert proc.returncode == 2 and "argmax" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
