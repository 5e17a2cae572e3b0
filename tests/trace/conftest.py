"""Fixtures: a real store in a tmp dir and a sample run recorded into it."""

from __future__ import annotations

import pytest
from sample_run import SampleRun, record_sample

from decision_retry.trace import TraceStore


@pytest.fixture
def store(tmp_path) -> TraceStore:
    with TraceStore.open(tmp_path / "home") as s:
        yield s


@pytest.fixture
def sample(store) -> SampleRun:
    return record_sample(store)
