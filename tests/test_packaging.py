"""The wheel: the agent definitions travel as package data (decision_retry/prompts/), built without
setuptools warnings, and an installed wheel reads its own."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "decision_retry" / "prompts"


def _setuptools_major() -> int:
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return 0


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """A wheel of a copy of this checkout (the working tree stays untouched), and pip's stderr."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    keep = {"decision_retry", "pyproject.toml", "README.md", "MANIFEST.in"}
    shutil.copytree(ROOT, src, ignore=lambda d, names: [
        n for n in names if (d == str(ROOT) and n not in keep) or n == "__pycache__"])
    # this environment's setuptools when it is new enough (faster, offline; torch depends on it),
    # else pip's isolated build with pyproject's build requirements
    isolation = ["--no-build-isolation"] if _setuptools_major() >= 77 else []
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
         "-w", str(tmp / "dist"), str(src)],
        check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return next((tmp / "dist").glob("decision_retry-*.whl")), r.stderr


def test_wheel_carries_the_prompts_and_the_pytest_plugin(wheel):
    path, _ = wheel
    names = set(zipfile.ZipFile(path).namelist())
    prompts = sorted(p.name for p in PROMPTS.glob("*.toml"))
    assert prompts == ["patch.toml", "tools.toml"]
    assert {f"decision_retry/prompts/{p}" for p in prompts} <= names
    assert "decision_retry/repo/evidence/decision_retry_evidence.py" in names  # testrun loads it
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"decision_retry"}  # no tests/, examples/ or benchmarks/ in the wheel


def test_build_prints_no_setuptools_warnings(wheel):
    _, stderr = wheel
    noise = [ln for ln in stderr.splitlines()
             if "Warning" in ln and not ln.startswith("WARNING: Location")]  # the machine's pip config
    assert noise == []


def test_installed_wheel_reads_its_own_prompts(wheel, tmp_path):
    path, _ = wheel
    site = tmp_path / "site"
    zipfile.ZipFile(path).extractall(site)
    code = ("from decision_retry.agent import definitions as d; "
            "print(d.prompts_dir()); print(d.load('patch').name)")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                       cwd=tmp_path, env=os.environ | {"PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr
    where, name = r.stdout.split()
    assert Path(where) == site / "decision_retry" / "prompts" and name == "patch"
