"""These tests check what spans say about content too: ask for it, as a user would, with the
standard variable (tests/otel/test_content.py checks the default, no content)."""

import pytest

from decision_retry.otel.attributes import CAPTURE_ENV


@pytest.fixture(autouse=True, scope="module")
def capture_message_content():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CAPTURE_ENV, "true")
        yield
