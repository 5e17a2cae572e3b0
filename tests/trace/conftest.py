"""Fixtures: the sample run recorded into the real store of tests/conftest.py."""

from __future__ import annotations

import pytest

from tests.trace.sample_run import SampleRun, record_sample


@pytest.fixture
def sample(store) -> SampleRun:
    return record_sample(store)
