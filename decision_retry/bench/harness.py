"""The benchmark harness: cells = repo x strategy x seed, all at the same decode-token budget.

Cells run in worker processes (each loads the model once) and are appended to `cells.jsonl` under
the output directory as they finish, so an interrupted benchmark resumes where it stopped: a rerun
skips every stored cell (cells that crashed are tried again). Every cell's trace goes to the trace
store under `<out>/traces`, so `decision-retry logs list --home <out>/traces` lists them.

The first attempt is the same for every strategy at one seed (same generator, same prompt; only
what happens after a failure differs), so a worker runs the cells of one (repo, seed) together:
when the first strategy's cell passes on its first attempt, the other strategies' cells are that
cell (`shared_first`), not reruns of it. `first_sha` (the first attempt's diff, hashed) lets the
report check the premise on every group whose first attempt failed, where all strategies run.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from decision_retry.bench.cases import Case
from decision_retry.bench.workers import Died, Raised, imap_unordered
from decision_retry.choices import BENCH_STRATEGIES
from decision_retry.errors import BadInput

CELLS_FILE = "cells.jsonl"
CONFIG_FILE = "bench.json"
_IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "*.pyc",
                                 "FIXTURE.json")  # where the bug is: never in the agent's repo


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


class BenchConfig(BaseModel):
    """One benchmark: what runs (suite, strategies, seeds) and what every cell shares."""

    model_config = ConfigDict(frozen=True)

    suite: str
    strategies: tuple[str, ...] = BENCH_STRATEGIES
    seeds: tuple[int, ...] = (0, 1, 2)
    budget_tokens: int = Field(600, ge=1)
    budget_seconds: float | None = Field(None, gt=0, description="CPU seconds per cell (costs.py)")
    model: str | None = None
    alpha: float = Field(4.0, gt=0)
    proposal_temperature: float | None = Field(None, gt=0)
    max_attempts: int = Field(100, ge=1)
    test_timeout: float = Field(30.0, gt=0)
    protocol: Literal["patch", "tools", "auto"] = "patch"
    workers: int = Field(default_factory=default_workers, ge=1)
    threads: int | None = Field(None, ge=1, description="torch threads per worker")
    share_first: bool = Field(True, description="reuse a first attempt that passed across strategies")

    def shared(self) -> dict:
        """The settings a stored cell depends on: a rerun must match them to reuse cells. The
        protocol and the seconds budget only when set, so directories written before they
        existed stay valid."""
        keys = ({"model", "budget_tokens", "alpha", "proposal_temperature", "max_attempts",
                 "test_timeout"} | ({"protocol"} if self.protocol != "patch" else set())
                | ({"budget_seconds"} if self.budget_seconds is not None else set()))
        return self.model_dump(include=keys)

    def fix_config(self, strategy: str, seed: int):
        from decision_retry.agent.runner import FixConfig
        from decision_retry.choices import parse_variant
        from decision_retry.retry import RetryConfig

        retry = RetryConfig(**{"alpha": self.alpha,  # a variant's +alpha=... overrides
                               "proposal_temperature": self.proposal_temperature,
                               **parse_variant(strategy)})  # e.g. rewind+local+code
        return FixConfig(model=self.model, retry=retry, budget_tokens=self.budget_tokens,
                         max_attempts=self.max_attempts, test_timeout=self.test_timeout, seed=seed,
                         protocol=self.protocol, time_limit_s=self.budget_seconds)


class Cell(BaseModel):
    """One finished cell: `fix` on one repo with one strategy and seed."""

    repo: str
    strategy: str
    seed: int
    fixed: bool = False
    attempts: int = 0
    decode_tokens: int = 0
    prefill_positions: int = 0  # teacher-forced positions (rescoring kept tails, second contexts)
    stop: str | None = None
    rewinds: int = 0  # cuts made (cut strategies only)
    accepted: int = 0  # MH steps accepted
    retries: int = 0  # branches after the first
    changed_strategy: float | None = None  # share of retries that changed the diff or a tool choice
    relative_distance: float | None = None  # mean edit distance of a retry's suffix to its parent's
    distinct_patches: int = 0  # different non-empty diffs among all attempts
    wall_s: float = 0.0
    cpu_s: float | None = None  # CPU seconds of the cell's process tree (costs.py); None: older
    test_runs: int | None = None  # test commands asked for, cached ones included
    cached_runs: int | None = None  # of those, answered from the test cache (nothing ran)
    costs: dict | None = None  # the whole breakdown (FixResult.costs)
    run_id: str | None = None
    first_sha: str | None = None  # sha256 of the first attempt's diff (the same for every strategy)
    shared_first: bool = False  # copied from the first strategy's cell: its first attempt passed
    error: str | None = None
    error_kind: str | None = None  # "bad-input" (the repo cannot be run) or "crash" (retried)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.repo, self.strategy, self.seed)


# -- one cell (in a worker) -------------------------------------------------------------------------
_WORKER: dict = {}


def model_list(model: str | None) -> list[str | None]:
    """`--model URL1,URL2,...`: several replicas of one served model, one worker each."""
    from decision_retry.engines.remote import is_remote

    parts = [m.strip() for m in (model or "").split(",") if m.strip()]
    if len(parts) > 1 and all(is_remote(m) for m in parts):
        return parts
    return [model]


_STOP = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def _stop_on_signals() -> None:
    """In a bench worker (the parent stops it with SIGTERM; Ctrl-C and a hangup reach the whole
    process group): during a cell the signal raises KeyboardInterrupt, as in `fix`, so the
    cell's test process group is killed, its clone removed and its run marked interrupted;
    idle, the worker exits. Either way quietly (SystemExit), and later signals are ignored."""
    from multiprocessing import util

    def stop(signum, frame):
        for s in _STOP:
            signal.signal(s, signal.SIG_IGN)
        if _WORKER.get("busy"):
            raise KeyboardInterrupt(signal.Signals(signum).name)
        if getattr(util, "_exiting", False):
            return  # the worker is already ending (its exit handlers run): let it
        raise SystemExit(130)

    for s in _STOP:
        signal.signal(s, stop)


def _group_in_worker(job) -> list[Cell]:
    """`run_group` in a bench worker; once an interrupted cell has cleaned up, the worker exits
    (the main process stops the benchmark; the cells stored so far stay)."""
    _WORKER["busy"] = True
    try:
        return run_group(job)
    except KeyboardInterrupt:
        raise SystemExit(130) from None  # no traceback per worker
    finally:
        _WORKER["busy"] = False


def _start_worker(model: str | None, threads: int | None, home: str) -> None:
    _stop_on_signals()
    _init_worker(model, threads, home)


def _init_worker(model: str | None, threads: int | None, home: str) -> None:
    """Load the model and open the trace store once per worker process."""
    from decision_retry.loading import load_lm
    from decision_retry.trace.store import TraceStore

    _WORKER.update(lm=load_lm(model, threads=threads), store=TraceStore.open(home))


def git_repo(src: Path, dst: Path) -> Path:
    """A copy of `src` as a fresh git repository with one commit of every file, those its own
    .gitignore names included (an sdist ships generated files such as isodate's version.py, and
    `fix` works on a clone of the commit)."""
    shutil.copytree(src, dst, ignore=_IGNORE)
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
    # (a case's own environment, `.venv`, is copied but never committed: real-bugs)
    for args in (["init", "-q"], ["add", "-A", "--force", "--", ".", ":(exclude).venv"],
                 ["commit", "-q", "--no-gpg-sign", "-m", "bench"]):
        subprocess.run(["git", *args], cwd=dst, env=env, check=True, capture_output=True)
    return dst


def _change(store, run_id: str) -> dict:
    """The strategy-change measures of a run (trace/compare.py) and its distinct patches."""
    from decision_retry.trace.compare import compare_all

    tree = store.load(run_id)
    changes = compare_all(tree)
    patches = {b.final_diff for b in tree.branches if b.final_diff}
    first = tree.branches[0].final_diff if tree.branches else None
    out = {"retries": len(changes), "distinct_patches": len(patches),
           "first_sha": hashlib.sha256((first or "").encode()).hexdigest()[:16]}
    if changes:
        out["changed_strategy"] = sum(c.changed_strategy for c in changes) / len(changes)
        out["relative_distance"] = sum(c.relative_distance for c in changes) / len(changes)
    return out


def first_passed(cell: Cell) -> bool:
    return cell.error is None and cell.fixed and cell.attempts == 1


def shared_copy(cell: Cell, strategy: str) -> Cell:
    """`cell`'s result under another strategy: the same first attempt, which passed."""
    return cell.model_copy(update={"strategy": strategy, "shared_first": True})


def run_group(job: tuple[Case, int, tuple[str, ...], BenchConfig, Cell | None]) -> list[Cell]:
    """The missing cells of one (repo, seed), strategy by strategy; once one passes on its first
    attempt (or `known` did), the rest are copies of it (BenchConfig.share_first)."""
    case, seed, strategies, cfg, known = job
    out: list[Cell] = []
    for s in strategies:
        if known is not None and cfg.share_first:  # known: a cell whose first attempt passed
            out.append(shared_copy(known, s))
            continue
        cell = run_cell((case, s, seed, cfg))
        out.append(cell)
        if known is None and first_passed(cell):
            known = cell
    return out


def run_cell(job: tuple[Case, str, int, BenchConfig]) -> Cell:
    """Run `fix` on a fresh git copy of the case; every failure becomes a cell with an error."""
    from decision_retry.agent.runner import fix

    case, strategy, seed, cfg = job
    cell = Cell(repo=case.name, strategy=strategy, seed=seed)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="decision-retry-bench-") as tmp:
        try:
            repo = git_repo(case.path, Path(tmp) / case.name)
            fix_cfg = cfg.fix_config(strategy, seed)
            if case.test_cmd:  # a real project's own test command: search on the failing tests,
                # then the whole command once on a fix (FixConfig.narrow)
                fix_cfg = fix_cfg.model_copy(update={"test_cmd": case.test_cmd, "narrow": True})
            res = fix(repo, fix_cfg, lm=_WORKER["lm"], store=_WORKER["store"])
            update = {"fixed": res.fixed, "attempts": res.attempts, "decode_tokens": res.decode_tokens,
                      "prefill_positions": res.prefill_positions, "stop": res.stop, "rewinds": len(res.rewinds), "run_id": res.run_id,
                      "accepted": sum(1 for s in res.steps if s.accepted)}
            if res.costs:
                update.update(cpu_s=res.costs["cpu_s"], test_runs=res.costs["test_runs"],
                              cached_runs=res.costs["cached_runs"], costs=res.costs)
            update.update(_change(_WORKER["store"], res.run_id))
        except BadInput as err:
            update = {"error": str(err), "error_kind": "bad-input"}
        except Exception as err:  # noqa: BLE001 - one broken cell must not end the benchmark
            update = {"error": f"{type(err).__name__}: {err}"[:500], "error_kind": "crash"}
    update["wall_s"] = round(time.monotonic() - start, 2)
    return cell.model_copy(update=update)


# -- the benchmark ----------------------------------------------------------------------------------
def load_cells(out: Path) -> dict[tuple[str, str, int], Cell]:
    """Stored cells by key (the last record of a key wins); a torn last line is ignored."""
    cells = {}
    path = Path(out) / CELLS_FILE
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                cell = Cell.model_validate_json(line)
            except ValueError:
                continue
            cells[cell.key] = cell
    return cells


def check_out_dir(out: Path, cfg: BenchConfig) -> None:
    """Record the shared settings in `out`, or refuse when stored cells used other ones."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_FILE
    if path.is_file():
        before = json.loads(path.read_text()).get("shared")
        if before is not None and before != cfg.shared() and (out / CELLS_FILE).is_file():
            now = cfg.shared()
            diff = ", ".join(f"{k} {before.get(k)} -> {now.get(k)}" for k in sorted(before | now)
                             if before.get(k) != now.get(k))
            raise BadInput(f"{out} holds cells run with other settings ({diff}); use another --out")
    path.write_text(json.dumps({"shared": cfg.shared(), "config": cfg.model_dump(mode="json")},
                               indent=2) + "\n")


def plan(cases: Sequence[Case], cfg: BenchConfig) -> list[tuple[Case, str, int]]:
    """Every cell in run order: seed by seed, so that a partial run covers all strategies evenly."""
    return [(c, s, seed) for seed in cfg.seeds for c in cases for s in cfg.strategies]


def groups(cells: Sequence[tuple[Case, str, int]], stored: dict, cfg: BenchConfig) -> list[tuple]:
    """The jobs of `run_group`: per (repo, seed), in plan order, the strategies not stored yet and
    a stored cell whose first attempt passed (None when there is none)."""
    by: dict[tuple[str, int], tuple[Case, list[str]]] = {}
    for case, s, seed in cells:
        by.setdefault((case.name, seed), (case, []))[1].append(s)
    jobs = []
    for (name, seed), (case, strategies) in by.items():
        mine = [stored.get((name, s, seed)) for s in strategies]
        known = next((c for c in mine if c is not None and first_passed(c)), None)
        missing = tuple(s for s, c in zip(strategies, mine) if c is None)
        if missing:
            jobs.append((case, seed, missing, cfg, known))
    return jobs


def run_bench(cases: Sequence[Case], cfg: BenchConfig, out: str | Path, *,
              on_cell: Callable[[Cell, int, int], None] | None = None) -> list[Cell]:
    """Run every cell not stored yet; return all cells of this plan (stored and new), in plan order.

    `on_cell(cell, done, total)` is called as each cell finishes (the progress bar hooks in here).
    """
    out = Path(out)
    check_out_dir(out, cfg)
    stored = {k: c for k, c in load_cells(out).items() if c.error_kind != "crash"}
    cells = plan(cases, cfg)
    todo = groups(cells, stored, cfg)
    done, total = len(cells) - sum(len(g[2]) for g in todo), len(cells)
    if on_cell:
        on_cell(None, done, total)
    home = str(out / "traces")
    with (out / CELLS_FILE).open("a") as sink, closing(_run(todo, cfg, home)) as finished:
        for group in finished:  # closing: an error here (or on_cell's) stops the workers too
            for cell in group:
                sink.write(cell.model_dump_json() + "\n")
                sink.flush()
                stored[cell.key] = cell
                done += 1
                if on_cell:
                    on_cell(cell, done, total)
    return [stored[(case.name, s, seed)] for case, s, seed in cells]


def _run(todo: list, cfg: BenchConfig, home: str):
    """Finished groups of cells, in completion order: in this process for one worker, else in
    worker processes (bench/workers.py: a worker that dies fails only its own group). A group that
    raises outside its cells (a harness bug, a clone that fails) is stored as crash cells naming
    the error, in either case, and the benchmark goes on."""
    if not todo:
        return
    workers = min(cfg.workers, len(todo))  # todo: run_group jobs
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // workers)
    models = model_list(cfg.model)
    if workers == 1:
        _init_worker(models[0], threads, home)
        for job in todo:
            try:
                group = run_group(job)
            except Exception as err:  # noqa: BLE001 - as in a worker: this group only
                group = crashed(job, Raised.of(err).reason())
            yield group
        return
    ctx = mp.get_context("spawn")  # a fresh interpreter: no forked torch threads or SQLite handles
    slots = [(models[i % len(models)], threads, home) for i in range(workers)]  # replicas: URL i
    for job, result in imap_unordered(_group_in_worker, todo, init=_start_worker, slots=slots, ctx=ctx):
        yield crashed(job, result.reason()) if isinstance(result, (Died, Raised)) else result


def crashed(job: tuple, why: str) -> list[Cell]:
    """The cells of a group whose worker died or that raised: crashes, which a rerun tries again."""
    case, seed, strategies, _, _ = job
    return [Cell(repo=case.name, strategy=s, seed=seed, error=why, error_kind="crash")
            for s in strategies]
