"""The pytest plugin the test command loads (`decision_retry_evidence.py`, standard library
only); this directory goes on the tests' PYTHONPATH. The runner's side is repo/verdict.py."""
