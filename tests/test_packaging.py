"""The wheel: agents/ travels as decision_retry/agents_data/, built without setuptools warnings."""

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
    keep = {"decision_retry", "agents", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in"}
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


def test_wheel_carries_agents_as_data(wheel):
    path, _ = wheel
    names = zipfile.ZipFile(path).namelist()
    agents = sorted(p.relative_to(ROOT / "agents").as_posix()
                    for p in (ROOT / "agents").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert agents and all(f"decision_retry/agents_data/{a}" in names for a in agents)
    assert not any(n.startswith("agents/") for n in names)  # never a top-level package


def test_build_prints_no_setuptools_warnings(wheel):
    _, stderr = wheel
    noise = [ln for ln in stderr.splitlines()
             if "Warning" in ln and not ln.startswith("WARNING: Location")]  # the machine's pip config
    assert noise == []


def test_installed_wheel_reads_its_own_agents(wheel, tmp_path):
    path, _ = wheel
    site = tmp_path / "site"
    zipfile.ZipFile(path).extractall(site)
    code = ("from decision_retry.agent import definitions as d; "
            "print(d.agents_dir()); print(d.load('patch').name)")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                       cwd=tmp_path, env=os.environ | {"PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr
    where, name = r.stdout.split()
    assert Path(where) == site / "decision_retry" / "agents_data" and name == "patch"
