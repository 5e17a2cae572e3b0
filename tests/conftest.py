"""Shared fixtures: tiny models built from configs (never downloads), a real trace store in a tmp
dir, and the units script as a file. Plain helpers live in tests/helpers.py."""

import json

import pytest

from decision_retry.testing import table_lm, tiny_llama
from decision_retry.trace.store import TraceStore
from tests.helpers import UNITS_SCRIPT


@pytest.fixture(scope="session")
def tiny():
    return tiny_llama(vocab=64, seed=0)


@pytest.fixture(scope="session")
def table():
    return table_lm(vocab=4, seed=0)


@pytest.fixture
def store(tmp_path):
    """A real SQLite trace store in tmp_path/home, as `--home` would open it."""
    with TraceStore.open(tmp_path / "home") as s:
        yield s


@pytest.fixture
def script_file(tmp_path):
    """UNITS_SCRIPT as a file, for `--model scripted:PATH`."""
    path = tmp_path / "units.json"
    path.write_text(json.dumps({"segments": UNITS_SCRIPT}))
    return path
