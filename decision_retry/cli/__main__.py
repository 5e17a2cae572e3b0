"""`python -m decision_retry.cli`: the same as the `decision-retry` command."""

from decision_retry.cli.main import main

if __name__ == "__main__":
    main(prog_name="decision-retry")
