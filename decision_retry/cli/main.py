"""Root command group; each subcommand lives in its own module."""

import click

@click.group()
def main() -> None:
    """decision-retry: rewind to the uncertain token and resample."""

from decision_retry.cli.logs import logs  # noqa: E402
from decision_retry.cli.report import report  # noqa: E402

main.add_command(logs)
main.add_command(report)
