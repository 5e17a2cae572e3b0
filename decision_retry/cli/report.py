"""`decision-retry report RUN -o report.html`: render one run as a self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

import click

from decision_retry.cli.logs import home_option, open_store, user_errors
from decision_retry.errors import BadInput
from decision_retry.trace.html import render_report


@click.command("report")
@click.argument("run_ref", metavar="RUN")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="Where to write the HTML file.",
)
@home_option
@user_errors
def report(run_ref: str, output: Path, home: str | None) -> None:
    """Write an HTML report of RUN (an id, a unique id prefix, or `latest`).

    The run's outcome, cost and settings, its localisation, one line per attempt (where it cut
    and by which signal, what it changed, the MH decision, the tests; identical attempts
    collapsed), the fix with its whole diff, tokens coloured by the signal the run cut by
    (surprise or entropy, with a toggle) and plotted over position, the MH steps and the change
    measures of each retry. One file, no network loads.
    """
    with open_store(home) as store:
        tree = store.load(store.resolve(run_ref))
    try:
        output.write_text(render_report(tree), encoding="utf-8")
    except OSError as err:
        raise BadInput(f"cannot write {output}: {err.strerror or err}") from err
    click.echo(str(output))
