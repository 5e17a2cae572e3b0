"""Root command group; each subcommand lives in its own module."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

# Before torch starts OpenMP: with the default (active) wait policy two threads on two busy cores
# decode at 0.05-0.13x of one thread; PASSIVE keeps them at parity (docs/benchmarks.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click

from decision_retry import __version__
from decision_retry.errors import DecisionRetryError


class _Main(click.Group):
    """Every `DecisionRetryError` and every option error reaches the user as one line and its
    exit code (2 for an option error, as click has it); `--help` is unchanged."""

    def make_context(self, *args, **kwargs) -> click.Context:
        with _one_line_usage():  # an option of the group itself
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context):
        for stream in (sys.stdout, sys.stderr):  # a lone surrogate of a model's prints escaped
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="backslashreplace")
        try:
            with _one_line_usage():  # a subcommand's options, or no such command
                return super().invoke(ctx)
        except DecisionRetryError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)


@contextmanager
def _one_line_usage():
    """A usage error as `error: <message> (`<command> --help`)`, exit 2, instead of click's
    usage block; no arguments at all still show the help."""
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise
    except click.UsageError as err:
        hint = f" (`{err.ctx.command_path} --help`)" if err.ctx is not None else ""
        click.echo(f"error: {' '.join(err.format_message().split())}{hint}", err=True)
        sys.exit(err.exit_code)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="decision-retry")
def main() -> None:
    """decision-retry: when an agent's tests fail, rewind to the token where the model
    hesitated and resample from there (Entropy-Cut Metropolis-Hastings).

    \b
    Start here:
      decision-retry fix PATH          fix the failing tests of a git repository
      decision-retry sample PROMPT     sample one answer, tokens coloured by entropy
      decision-retry logs              list recorded runs; `logs show RUN` for one
      decision-retry report RUN -o r.html   an entropy heat map of a run
      decision-retry models            the model catalogue; `models install NAME`
    """


from decision_retry.cli.bench import bench
from decision_retry.cli.fix import fix
from decision_retry.cli.logs import logs
from decision_retry.cli.models import models
from decision_retry.cli.report import report
from decision_retry.cli.sample import sample

main.add_command(bench)
main.add_command(fix)
main.add_command(logs)
main.add_command(models)
main.add_command(report)
main.add_command(sample)
