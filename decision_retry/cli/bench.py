"""`decision-retry bench SUITE`: every retry strategy on a suite of buggy repos at one token budget."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from decision_retry.catalogue import DEFAULT as DEFAULT_MODEL
from decision_retry.choices import BENCH_STRATEGIES, STRATEGIES
from decision_retry.cli.fix import Duration
from decision_retry.errors import BadInput


def parse_strategies(text: str) -> tuple[str, ...]:
    """The --strategies list, each variant checked as `fix` checks its options."""
    from decision_retry.choices import parse_variant
    from decision_retry.cli.options import retry_config

    names = tuple(s.strip() for s in text.split(",") if s.strip())
    if not names:
        raise BadInput(f"unknown strategy {text!r} in --strategies: "
                       f"choose from default,{','.join(STRATEGIES)}")
    for name in names:  # a strategy, optionally with +options (rewind+local+code, +alpha=2)
        try:
            kw = parse_variant(name)
        except ValueError as err:
            raise BadInput(f"--strategies: {err}") from None
        try:  # the +KEY=VALUE options' keys and every value, by RetryConfig
            retry_config(kw, [o for o in name.split("+")[1:] if "=" in o], flag="+")
        except BadInput as err:
            raise BadInput(f"--strategies {name}: {err}") from None
    if len(set(names)) != len(names):
        raise BadInput(f"--strategies names a strategy twice: {text}")
    return names


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise BadInput(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise BadInput(f"--seeds must name at least one seed, each once, got {text!r}")
    return seeds


def _positive(name: str, value, *, zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not zero)):
        raise BadInput(f"{name} must be {'>= 0' if zero else '> 0'}, got {value}")


def _default_workers(model: str | None) -> int:
    """One worker per replica URL, else the harness default."""
    from decision_retry.bench.harness import default_workers, model_list

    urls = model_list(model)
    return len(urls) if len(urls) > 1 else default_workers()


def canonical_command(suite: str, cfg, limit: int | None, mutations: int, out) -> str:
    """The command line that reproduces these cells (worker and thread counts do not matter);
    settings at their defaults are left out."""
    words = ["decision-retry", "bench", suite, "--strategies", ",".join(cfg.strategies),
             "--budget-tokens", str(cfg.budget_tokens), "--seeds", ",".join(map(str, cfg.seeds))]
    for flag, value, default in (("--mutations", mutations, 1), ("--limit", limit, None),
                                 ("--model", cfg.model, None), ("--alpha", cfg.alpha, 4.0),
                                 ("--proposal-temperature", cfg.proposal_temperature, None),
                                 ("--max-attempts", cfg.max_attempts, 100),
                                 ("--test-timeout", cfg.test_timeout, 30.0),
                                 ("--protocol", cfg.protocol, "patch"),
                                 ("--budget-seconds", cfg.budget_seconds, None)):
        if value != default:
            words += [flag, str(value)]
    return shlex.join([*words, "--out", str(out)])


@click.command()
@click.argument("suite")
@click.option("--strategies", default=",".join(BENCH_STRATEGIES), show_default=True,
              help="Comma-separated strategies to compare (default: `fix`'s run, then "
              "others): a strategy or `default` (`fix`'s run), then +KEY=VALUE options as "
              "`fix -o` takes them or shorthands: +local, +mixed (moves), +uniform, +argmax, "
              "+code, +surprise (cuts), +defline, +nbtoken, +restartP; e.g. "
              "rewind+local+code, default+alpha=2.")
@click.option("--budget-tokens", type=int, default=600, show_default=True,
              help="Decode tokens per cell (accepted or not), the same for every strategy.")
@click.option("--budget-seconds", type=Duration(), default=None, metavar="DURATION",
              help="Also stop each cell once it has used this much compute (90s, 5m, 1h or "
              "seconds): CPU seconds of the cell's process tree, as `fix --time-limit`.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option("--limit", type=int, default=None,
              help="Only the first K repositories of the suite (real-repos: round-robin over its "
              "projects).")
@click.option("--mutations", type=int, default=1, show_default=True,
              help="humaneval-bugs only: K single-token mutations per case (1..5), each needed "
              "(every version with one of them reverted still fails); cached per K.")
@click.option("--model", default=None, help=f"A catalogue name (default: {DEFAULT_MODEL}, on "
              "llama.cpp), a .gguf file, a model directory, a cached Hugging Face id, "
              "scripted:SCRIPT.json, a server "
              "URL (llamacpp+http://HOST:PORT, vllm+http://HOST:PORT/MODEL), or several server "
              "URLs, comma-separated: replicas, one worker each.")
@click.option("--workers", type=int, default=None,
              help="Worker processes, each loading the model once [default: min(2, CPUs); one "
              "per URL when --model lists several].")
@click.option("--threads", type=int, default=None,
              help="Torch threads per worker [default: CPUs / workers].")
@click.option("--alpha", type=float, default=4.0, show_default=True, help="Target p^alpha.")
@click.option("--proposal-temperature", type=float, default=None,
              help="Temperature of sampled tokens [default: 1/alpha].")
@click.option("--max-attempts", type=int, default=100, show_default=True,
              help="Attempts per cell; high, so that the token budget is what ends a cell.")
@click.option("--test-timeout", type=float, default=30.0, show_default=True,
              help="Seconds before a test run is killed.")
@click.option("--protocol", type=click.Choice(["patch", "tools", "auto"]), default="patch",
              show_default=True, help="The agent's protocol in every cell, as in `fix`: patch "
              "(one turn rewriting the failing function), tools (read_file/edit_function/"
              "run_tests/submit tool calls over several turns; rewinds make suffix moves there) "
              "or auto (patch where a suspect function is found, else tools).")
@click.option("--share-first-attempt/--no-share-first-attempt", default=True, show_default=True,
              help="At one seed every strategy makes the same first attempt: when it passes, "
              "record it for every strategy instead of running it again.")
@click.option("--out", "out", type=click.Path(file_okay=False), default="bench-out/strategies",
              show_default=True, help="Output directory: cells (resumable), traces, report.")
def bench(suite, strategies, budget_tokens, budget_seconds, seeds, limit, mutations, model, workers, threads,
          alpha, proposal_temperature, max_attempts, test_timeout, protocol, share_first_attempt,
          out) -> None:
    """Run `fix` on every repository of SUITE with every strategy and seed at the same budget.

    SUITE is `fixtures` (our repositories), `humaneval-bugs` (HumanEval canonical solutions with
    one verified mutation each, built on first use and cached under --out), `real-repos` (single-
    token bugs in 11 real projects from pinned PyPI sdists, tested by their own suites, built on
    first use), `real-bugs` (developers' bugs from 6 projects' git history, each case a release's
    sdist with the developer's new test and its own .venv, built and verified on first use) or a
    directory whose subdirectories are repositories. `humaneval-bugs --mutations K`
    holds K needed mutations per case instead of one. Finished cells are stored under --out as they finish: a
    rerun skips them. Writes cells.json, results.md and fix_rate.png under --out.

    \b
    Example:
      decision-retry bench fixtures --strategies default,from-end,restart \\
          --budget-tokens 600 --seeds 0,1,2 --out bench-out/strategies
    """
    from decision_retry.agent.runner import signals_as_interrupt
    from decision_retry.bench.harness import BenchConfig, load_cells
    from decision_retry.bench.results import strategy_table, write_report

    # 1) check every input before any work
    names, seed_list = parse_strategies(strategies), parse_seeds(seeds)
    for flag, value in (("--budget-tokens", budget_tokens), ("--limit", limit),
                        ("--workers", workers), ("--threads", threads), ("--alpha", alpha),
                        ("--proposal-temperature", proposal_temperature),
                        ("--max-attempts", max_attempts), ("--test-timeout", test_timeout)):
        _positive(flag, value)
    if not 1 <= mutations <= 5:
        raise BadInput(f"--mutations must be 1..5, got {mutations}")
    if mutations != 1 and suite != "humaneval-bugs":
        raise BadInput(f"--mutations applies only to the humaneval-bugs suite, not {suite!r}")
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"--out {out} is a file, not a directory")
    if model and model.startswith("scripted:") and not Path(model[9:]).is_file():
        raise BadInput(f"script not found: {model[9:]}")
    label = suite if mutations == 1 else f"{suite}-k{mutations}"  # case names carry K as well
    cfg = BenchConfig(suite=label, strategies=names, seeds=seed_list, budget_tokens=budget_tokens,
                      budget_seconds=budget_seconds,
                      model=model, alpha=alpha, proposal_temperature=proposal_temperature,
                      max_attempts=max_attempts, test_timeout=test_timeout, protocol=protocol,
                      workers=workers or _default_workers(model), threads=threads,
                      share_first=share_first_attempt)
    command = canonical_command(suite, cfg, limit, mutations, out)
    err = Console(stderr=True, highlight=False)
    try:  # SIGTERM and SIGHUP stop it as Ctrl-C does: test process groups killed, cells kept
        with signals_as_interrupt():
            cells = _run_cells(suite, cfg, out_dir, limit, mutations, err)
    except KeyboardInterrupt as stop:
        why = f" by {stop.args[0]}" if stop.args else ""
        kept = len(load_cells(out_dir)) if out_dir.is_dir() else 0
        err.print(f"interrupted{why}: {kept} cell(s) stored in {out_dir}; run the same command "
                  "again to continue")
        raise SystemExit(130) from None

    # 4) the report
    rows = write_report(out_dir, cells, cfg, command=command)
    click.echo(strategy_table(rows))
    err.print(f"wrote {out_dir / 'results.md'}, {out_dir / 'cells.json'}, "
              f"{out_dir / 'fix_rate.png'}")


def _run_cells(suite: str, cfg, out_dir: Path, limit: int | None, mutations: int,
               err: Console) -> list:
    """Steps 2 and 3 of `bench`: the suite, then its cells under a progress bar."""
    from decision_retry.bench.harness import run_bench
    from decision_retry.bench.suites import load_suite

    # 2) the suite (humaneval-bugs builds and verifies its repositories on first use)
    cases = load_suite(suite, out_dir, limit=limit, workers=cfg.workers, mutations=mutations,
                       on_build=lambda msg: err.print(f"[dim]{msg}[/dim]"))
    err.print(f"{len(cases)} repos x {len(cfg.strategies)} strategies x {len(cfg.seeds)} seeds, "
              f"{cfg.workers} worker(s): {out_dir}")

    # 3) the cells, with a progress bar
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err) as bar:
        task = bar.add_task("loading model", total=None)
        fixed = [0]

        def on_cell(cell, done, total):
            if cell is not None and cell.fixed:
                fixed[0] += 1
            last = f"  last {cell.repo}/{cell.strategy}/{cell.seed}: {_outcome(cell)}" if cell else ""
            bar.update(task, completed=done, total=total, description=f"fixed {fixed[0]} this run{last}")
            if cell is not None and not err.is_terminal:  # a log file gets one line per cell
                err.print(f"[{done}/{total}]{last} ({cell.decode_tokens} tokens, "
                          f"{cell.wall_s:.0f}s)")

        return run_bench(cases, cfg, out_dir, on_cell=on_cell)


def _outcome(cell) -> str:
    if cell.fixed:
        return "fixed"
    if cell.error_kind == "crash":  # a crash says why (a rerun tries the cell again)
        return f"crash ({cell.error[:100]})"
    return cell.error_kind or "not fixed"
