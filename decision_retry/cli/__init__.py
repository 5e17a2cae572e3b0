"""The `decision-retry` command line."""

from decision_retry.cli.main import main

__all__ = ["main"]
