"""The benchmark's outputs: `cells.json` (every cell), `results.md` (tables), `fix_rate.png` (plot)."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from decision_retry.bench.harness import BenchConfig, Cell
from decision_retry.costs import COUNTERS

Z95 = 1.959964


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion k/n (0, 1 when n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


class StrategySummary(BaseModel):
    """One row of the results table."""

    strategy: str
    cells: int  # cells that ran (errors excluded)
    errors: int
    fixed: int
    fix_rate: float
    ci_low: float
    ci_high: float
    retry_fixed: int  # fixed after the first attempt failed (the first attempt is the same for
    retry_cells: int  # every strategy at a given seed: only retries tell strategies apart)
    tokens_mean: float
    tokens_median: float
    tokens_to_fix_median: float | None
    prefill_mean: float  # teacher-forced positions per cell (not decode tokens)
    attempts_mean: float
    wall_mean_s: float
    cpu_mean_s: float | None = None  # CPU seconds of the process tree per cell (cells with it)
    test_runs_mean: float | None = None
    cached_runs_mean: float | None = None
    rewinds_mean: float
    accepted_mean: float
    changed_strategy: float | None  # pooled over all retries of the strategy's cells
    relative_distance: float | None
    distinct_patches_mean: float


def _mean(xs: Sequence[float]) -> float:
    return statistics.fmean(xs) if xs else 0.0


def _pooled(cells: Sequence[Cell], field: str) -> float | None:
    pairs = [(getattr(c, field), c.retries) for c in cells if getattr(c, field) is not None]
    n = sum(r for _, r in pairs)
    return sum(v * r for v, r in pairs) / n if n else None


def _known_mean(cells: Sequence[Cell], field: str) -> float | None:
    """The mean of `field` over the cells that recorded it (None: none did)."""
    xs = [getattr(c, field) for c in cells if getattr(c, field) is not None]
    return statistics.fmean(xs) if xs else None


def summarize(cells: Sequence[Cell], strategies: Sequence[str]) -> list[StrategySummary]:
    """Per strategy: fix rate with its 95% Wilson interval, tokens, time, rewinds, change."""
    rows = []
    for s in strategies:
        mine = [c for c in cells if c.strategy == s]
        ok = [c for c in mine if c.error is None]
        fixed = [c for c in ok if c.fixed]
        lo, hi = wilson(len(fixed), len(ok))
        retried = [c for c in ok if not (c.fixed and c.attempts == 1)]
        tokens = [c.decode_tokens for c in ok]
        rows.append(StrategySummary(
            strategy=s, cells=len(ok), errors=len(mine) - len(ok), fixed=len(fixed),
            fix_rate=len(fixed) / len(ok) if ok else 0.0, ci_low=lo, ci_high=hi,
            retry_fixed=sum(c.fixed for c in retried), retry_cells=len(retried),
            tokens_mean=_mean(tokens), tokens_median=statistics.median(tokens) if tokens else 0.0,
            tokens_to_fix_median=statistics.median([c.decode_tokens for c in fixed]) if fixed else None,
            prefill_mean=_mean([c.prefill_positions for c in ok]),
            attempts_mean=_mean([c.attempts for c in ok]), wall_mean_s=_mean([c.wall_s for c in ok]),
            rewinds_mean=_mean([c.rewinds for c in ok]), accepted_mean=_mean([c.accepted for c in ok]),
            changed_strategy=_pooled(ok, "changed_strategy"),
            relative_distance=_pooled(ok, "relative_distance"),
            distinct_patches_mean=_mean([c.distinct_patches for c in ok]),
            cpu_mean_s=_known_mean(ok, "cpu_s"), test_runs_mean=_known_mean(ok, "test_runs"),
            cached_runs_mean=_known_mean(ok, "cached_runs"),
        ))
    return rows


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def strategy_table(rows: Sequence[StrategySummary]) -> str:
    head = ("| strategy | fixed | fix rate (95% CI) | fixed by a retry | decode tokens mean / median"
            " | tokens to fix "
            "(median) | prefill positions | attempts | CPU s / cell | wall s / cell | "
            "test runs (cached) | rewinds (accepted) | changed strategy | "
            "suffix edit dist | distinct patches |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r.strategy} | {r.fixed}/{r.cells}{f' ({r.errors} err)' if r.errors else ''} | "
            f"{r.fix_rate:.0%} ({r.ci_low:.0%}-{r.ci_high:.0%}) | {r.retry_fixed}/{r.retry_cells} | "
            f"{r.tokens_mean:.0f} / "
            f"{r.tokens_median:.0f} | {_f(r.tokens_to_fix_median, '.0f')} | {r.prefill_mean:.0f} | "
            f"{r.attempts_mean:.1f} | "
            f"{_f(r.cpu_mean_s, '.0f')} | {r.wall_mean_s:.0f} | "
            f"{_f(r.test_runs_mean, '.1f')} ({_f(r.cached_runs_mean, '.1f')}) | "
            f"{r.rewinds_mean:.1f} ({r.accepted_mean:.1f}) | "
            f"{_f(r.changed_strategy)} | {_f(r.relative_distance)} | {r.distinct_patches_mean:.1f} |")
    return "\n".join(lines)


def repo_table(cells: Sequence[Cell], strategies: Sequence[str]) -> str:
    """Seeds fixed per repo and strategy (`err` where the repo could not be run)."""
    repos = list(dict.fromkeys(c.repo for c in cells))
    lines = ["| repo | " + " | ".join(strategies) + " |", "|---|" + "---|" * len(strategies)]
    for repo in repos:
        row = []
        for s in strategies:
            mine = [c for c in cells if c.repo == repo and c.strategy == s]
            ok = [c for c in mine if c.error is None]
            row.append(f"{sum(c.fixed for c in ok)}/{len(ok)}" if ok else ("err" if mine else "-"))
        lines.append(f"| {repo} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def sign_test(win: int, loss: int) -> float:
    """Two-sided exact sign test (McNemar's exact test) on the discordant pairs."""
    n = win + loss
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(win, loss) + 1)) / 2**n
    return min(1.0, 2 * tail)


def first_solved(cells: Sequence[Cell]) -> set[tuple[str, int]]:
    """(repo, seed) pairs whose first attempt passed (it is the same for every strategy)."""
    return {(c.repo, c.seed) for c in cells if c.error is None and c.fixed and c.attempts == 1}


def first_agreement(cells: Sequence[Cell]) -> tuple[int, int]:
    """(pairs whose strategies' first attempts made the same diff, pairs where two or more
    strategies ran a first attempt): the check of the premise of `shared_first`."""
    shas: dict[tuple[str, int], set[str]] = {}
    runs: dict[tuple[str, int], int] = {}
    for c in cells:
        if c.error is None and not c.shared_first and c.first_sha is not None:
            shas.setdefault((c.repo, c.seed), set()).add(c.first_sha)
            runs[(c.repo, c.seed)] = runs.get((c.repo, c.seed), 0) + 1
    checked = [k for k, n in runs.items() if n > 1]
    return sum(len(shas[k]) == 1 for k in checked), len(checked)


def paired(cells: Sequence[Cell], strategies: Sequence[str], baseline: str) -> list[str]:
    """For each strategy, the (repo, seed) pairs it fixed and `baseline` did not, and the reverse,
    on the pairs whose first attempt failed, with the sign test's p value."""
    by = {c.key: c for c in cells if c.error is None}
    first = first_solved(cells)
    out = []
    for s in strategies:
        if s == baseline:
            continue
        keys = [(r, sd) for (r, st, sd) in by if st == s and (r, baseline, sd) in by
                and (r, sd) not in first]
        win = sum(by[(r, s, sd)].fixed and not by[(r, baseline, sd)].fixed for r, sd in keys)
        loss = sum(by[(r, baseline, sd)].fixed and not by[(r, s, sd)].fixed for r, sd in keys)
        out.append(f"- {s} vs {baseline}: fixed {win} that {baseline} did not, missed {loss} that "
                   f"{baseline} fixed ({len(keys)} paired cells whose first attempt failed; "
                   f"sign test p = {sign_test(win, loss):.3g})")
    return out


def within_seconds(cells: Sequence[Cell], strategies: Sequence[str], baseline: str,
                   budgets: Sequence[float]) -> list[str]:
    """Each strategy against `baseline` under hard CPU budgets: a cell counts as fixed within B
    when its passing test run ended by B CPU seconds of its process tree (`cpu_s` of a fixed cell
    is the time to fix: the run stops there). A run's limit changes nothing before it is reached,
    so one run at the largest budget answers every smaller one exactly. Paired over every
    (repo, seed) both ran (a first attempt that passed within B counts for both), exact sign
    test on the discordant pairs. A Markdown table; no lines when no cell has `cpu_s`."""
    by = {c.key: c for c in cells if c.error is None and c.cpu_s is not None}
    if not by or baseline not in strategies:
        return []

    def fixed(c: Cell, b: float) -> bool:
        return c.fixed and c.cpu_s <= b

    out = ["| strategy | CPU s | fixed | " + f"{baseline} fixed | paired | sign test p |",
           "|---|---|---|---|---|---|"]
    for s in strategies:
        if s == baseline:
            continue
        keys = [(r, sd) for (r, st, sd) in by if st == s and (r, baseline, sd) in by]
        for b in budgets:
            mine = [fixed(by[(r, s, sd)], b) for r, sd in keys]
            base = [fixed(by[(r, baseline, sd)], b) for r, sd in keys]
            win = sum(m and not o for m, o in zip(mine, base))
            loss = sum(o and not m for m, o in zip(mine, base))
            out.append(f"| {s} | {b:g} | {sum(mine)} / {len(keys)} | {sum(base)} | "
                       f"+{win} / -{loss} | {sign_test(win, loss):.3g} |")
    return out


def budget_grid(limit: float, steps: int = 4) -> list[float]:
    """`steps` budgets evenly up to `limit` CPU seconds (the run's own limit last)."""
    return [round(limit * i / steps, 1) for i in range(1, steps + 1)]


def plot(cells: Sequence[Cell], strategies: Sequence[str], budget: int, path: Path) -> None:
    """Fraction of cells fixed within x decode tokens, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for s in strategies:
        ok = [c for c in cells if c.strategy == s and c.error is None]
        if not ok:
            continue
        spent = sorted(c.decode_tokens for c in ok if c.fixed)
        xs, ys = [0], [0.0]
        for i, x in enumerate(spent, 1):
            xs.append(x)
            ys.append(i / len(ok))
        xs.append(budget)
        ys.append(len(spent) / len(ok))
        ax.step(xs, ys, where="post", label=f"{s} ({len(spent)}/{len(ok)})")
    ax.set_xlabel("decode tokens spent")
    ax.set_ylabel("fraction of cells fixed")
    ax.set_xlim(0, budget)
    ax.set_ylim(bottom=0)
    ax.set_title("Fix rate against decode tokens (same budget for every strategy)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def git_commit() -> str | None:
    """The checkout's commit (with `+dirty` for local changes), when run from a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               text=True, capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


def first_attempts(cells: Sequence[Cell]) -> str:
    """How many (repo, seed) pairs the first attempt solved, how many cells copy one, and whether
    the strategies' own first attempts agreed: the premise of the paired comparisons."""
    pairs = {(c.repo, c.seed) for c in cells if c.error is None}
    same, checked = first_agreement(cells)
    shared = sum(c.shared_first for c in cells)
    return (f"First attempt solved {len(first_solved(cells))} of {len(pairs)} (repo, seed) pairs; "
            "the paired comparisons below count only the rest. "
            f"{shared} cells are copies of a first attempt that passed (`shared_first`). "
            f"Where every strategy ran its own first attempt, they made the same diff in {same} of "
            f"{checked} pairs.")


def engine_counts(cells: Sequence[Cell]) -> str:
    """The engine's counters summed over the cells that recorded them (costs.Meter), e.g. the
    llama.cpp decodes whose KV cells came out of order: nonzero, decoding's numbers there are
    not those `score` reproduces; "" when no cell recorded any."""
    totals: dict[str, int] = {}
    for c in cells:
        for k, v in ((c.costs or {}).get("engine") or {}).items():
            totals[k] = totals.get(k, 0) + v
    if not totals:
        return ""
    return "Engine counters over all cells: " + ", ".join(
        f"{COUNTERS.get(k, k)} {v}" for k, v in totals.items()) + "."


def cpu_model() -> str:
    """The processor's name (`model name` in /proc/cpuinfo; the platform's where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def decode_speed(cells: Sequence[Cell]) -> float | None:
    """CPU seconds of decode per decode token over the cells that record both (None: none do).
    A CPU-seconds budget buys a machine-dependent amount of work: this is that machine's rate."""
    timed = [(c.costs["decode"]["cpu_s"], c.decode_tokens) for c in cells
             if c.costs and "decode" in c.costs and c.decode_tokens]
    tokens = sum(n for _, n in timed)
    return round(sum(s for s, _ in timed) / tokens, 4) if tokens else None


def write_report(out: str | Path, cells: Sequence[Cell], cfg: BenchConfig, *,
                 command: str = "") -> list[StrategySummary]:
    """Write cells.json, results.md and fix_rate.png under `out`; return the summary rows."""
    out = Path(out)
    rows = summarize(cells, cfg.strategies)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = {"cpus": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
               "load_avg": [round(x, 2) for x in os.getloadavg()], "commit": git_commit(),
               "decode_cpu_s_per_token": decode_speed(cells)}
    (out / "cells.json").write_text(json.dumps({
        "command": command, "written": when, "machine": machine,
        "config": cfg.model_dump(mode="json"), "summary": [r.model_dump() for r in rows],
        "cells": [c.model_dump() for c in cells],
    }, indent=1) + "\n")
    plot(cells, cfg.strategies, cfg.budget_tokens, out / "fix_rate.png")
    q = cfg.proposal_temperature or 1 / cfg.alpha
    from decision_retry.loading import default_model

    setup = (f"{when}; model {cfg.model or default_model()}; budget {cfg.budget_tokens} decode tokens "
             f"per cell; alpha {cfg.alpha:g}, proposal temperature {q:g}; seeds "
             f"{', '.join(map(str, cfg.seeds))}; {machine['cpus']} CPUs ({machine['cpu']}), load "
             f"average {machine['load_avg'][0]} at the end; commit {machine['commit'] or 'unknown'}."
             + (f" Decode cost {machine['decode_cpu_s_per_token']:.3f} CPU s a token: what a CPU "
                "second buys on this machine (compare CPU-second budgets across runs only at "
                "one such speed)." if machine["decode_cpu_s_per_token"] else ""))
    legend = ("*fix rate*: cells whose tests all pass, with a 95% Wilson interval. *fixed by a "
              "retry*: of the cells whose first attempt failed (that attempt is the same for every "
              "strategy at one seed), those a retry fixed. *changed "
              "strategy*: share of retry branches whose final diff or tool choice differs from "
              "their parent's (trace/compare.py). *suffix edit dist*: token edit distance of a "
              "retry's suffix after the cut to its parent's, over the longer one. *distinct "
              "patches*: different non-empty diffs among a cell's attempts. *prefill positions*: "
              "teacher-forced positions per cell (the kept tail a local move rescores, the "
              "second context of surprise cuts), not counted as decode tokens; prompt prefills "
              "are not counted.")
    md = [
        f"# Strategy benchmark: {cfg.suite}", "", f"`{command}`" if command else "", "",
        setup, "", strategy_table(rows), "", legend, "",
        "## Per repository (seeds fixed)", "", repo_table(cells, cfg.strategies), "",
    ]
    md += [first_attempts(cells), ""]
    if counts := engine_counts(cells):
        md += [counts, ""]
    for base in ("restart", "from-end"):
        if base in cfg.strategies:
            md += [f"## Paired with {base} (same repo and seed)", "",
                   *paired(cells, cfg.strategies, base), ""]
            if cfg.budget_seconds:
                md += [f"### Fixed within B CPU seconds, paired with {base}", "",
                       ("A cell counts only if its passing test run ended by B CPU seconds (a "
                        "hard limit; `--budget-seconds` itself is checked between attempts)."), "",
                       *within_seconds(cells, cfg.strategies, base,
                                       budget_grid(cfg.budget_seconds)), ""]
    errors = [c for c in cells if c.error]
    if errors:
        md += ["## Errors", "", *[f"- {c.repo} / {c.strategy} / seed {c.seed}: {c.error}"
                                  for c in errors[:30]], ""]
    (out / "results.md").write_text("\n".join(md))
    return rows
