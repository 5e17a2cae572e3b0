"""What a killed run leaves behind, found and removed: by the next `fix` and by `logs gc`.

A run that ends in any way but SIGKILL (or a power cut) cleans up after itself. After SIGKILL:
* its private clone stays in the temporary directory (`decision-retry-<run-id>-*/owner.json`
  names the process; a clone whose process is gone is garbage);
* its run stays unfinished in the trace store: it is marked `interrupted` (resumable).
Older versions of decision-retry also left per-attempt refs `refs/decision-retry/<run-id>/*` and
worktree registrations in the user's repository; only those, exactly, are removed there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from decision_retry.errors import BadInput, WorkspaceError
from decision_retry.repo.gitexec import git

TMP_PREFIX = "decision-retry-"
_LEGACY_AGE_S = 3600  # an old version's worktree without an owner file, untouched this long
# a test run's report directory, a coverage run's data: a run's scratch, which names no owner
SCRATCH = ("decision-retry-report-", "decision-retry-spectrum-")
_SCRATCH_AGE_S = 3600  # removed by `logs gc` once untouched this long, while no run of ours lives


def process_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_stamp(run_id: str, repo: Path) -> str:
    """The owner.json of a clone made by this process."""
    pid = os.getpid()
    return json.dumps({"pid": pid, "start": process_start(pid), "run_id": run_id,
                       "repo": str(repo)})


def is_alive(owner: dict) -> bool:
    """Whether the process an owner record names still runs (the same process, not a reused pid)."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    start = owner.get("start")
    return start is None or process_start(pid) in (None, start)


@dataclass
class Found:
    """What gc found; `removed` lists what was (or, with dry_run, would be) removed."""

    clones: list[Path] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)  # run ids marked interrupted
    deleted_runs: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)  # "<repo> <ref>"
    worktrees: list[str] = field(default_factory=list)  # "<repo> <registration>"
    branches: list[str] = field(default_factory=list)  # kept: the user's fix branches
    scratch: list[Path] = field(default_factory=list)  # test reports a killed run left


def stale_clones(tmp_root: Path | None = None) -> list[tuple[Path, dict]]:
    """Our temporary directories whose process is gone, with their owner record."""
    root = Path(tmp_root or tempfile.gettempdir())
    out = []
    try:
        entries = sorted(root.glob(f"{TMP_PREFIX}*"))
    except OSError:
        return out
    for d in entries:
        if not d.is_dir() or d.is_symlink() or d.name.startswith(SCRATCH):
            continue
        try:
            owner = json.loads((d / "owner.json").read_text())
        except (OSError, ValueError):
            owner = None
        if owner is None:  # an older version's worktree (other directories are not ours to judge)
            try:
                if _legacy_worktree(d) and time.time() - d.stat().st_mtime > _LEGACY_AGE_S:
                    out.append((d, {}))
            except OSError:
                pass
        elif isinstance(owner, dict) and not is_alive(owner):
            out.append((d, owner))
    return out


def stale_scratch(tmp_root: Path | None = None) -> list[Path]:
    """Report and coverage directories of runs: untouched for an hour while no process of ours
    owns a clone (a run in progress keeps its own, however old)."""
    root = Path(tmp_root or tempfile.gettempdir())
    try:
        entries = sorted(root.glob(f"{TMP_PREFIX}*"))
        owners = [d / "owner.json" for d in entries if not d.name.startswith(SCRATCH)]
    except OSError:
        return []
    for path in owners:
        try:
            if is_alive(json.loads(path.read_text())):
                return []
        except (OSError, ValueError, AttributeError):
            continue
    out = []
    for d in entries:
        try:
            if (d.name.startswith(SCRATCH) and d.is_dir() and not d.is_symlink()
                    and time.time() - d.stat().st_mtime > _SCRATCH_AGE_S):
                out.append(d)
        except OSError:
            continue
    return out


def _legacy_worktree(d: Path) -> bool:
    """`decision-retry-<run>-*/<name>/.git` a file pointing into a repository's worktrees."""
    for child in d.iterdir():
        dot_git = child / ".git"
        if dot_git.is_file() and dot_git.read_text(errors="replace").startswith("gitdir:"):
            return True
    return False


def sweep(store=None, *, dry_run: bool = False, tmp_root: Path | None = None) -> Found:
    """Remove the clones of dead processes and mark their unfinished runs interrupted."""
    found = Found()
    for d, owner in stale_clones(tmp_root):
        found.clones.append(d)
        if not dry_run:
            shutil.rmtree(d, ignore_errors=True)
        run_prefix = owner.get("run_id")
        if store is None or not isinstance(run_prefix, str) or not run_prefix:
            continue
        for run_id, _, _, outcome in store.run_rows():
            if run_id.startswith(run_prefix) and outcome is None:
                found.interrupted.append(run_id)
                if not dry_run:
                    _mark_interrupted(store, run_id)
    return found


def _mark_interrupted(store, run_id: str) -> None:
    store.end_run(run_id, "interrupted", datetime.now(UTC))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s`, `2w`, or a plain number of days; BadInput otherwise."""
    m = _DURATION.match(text or "")
    if not m:
        raise BadInput(f"not a duration: {text!r} (use e.g. 30d, 12h, 90m)")
    n, unit = float(m.group(1)), m.group(2) or "d"
    return timedelta(seconds=n * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit])


def gc(store, *, older_than: timedelta | None = None, dry_run: bool = False,
       tmp_root: Path | None = None) -> Found:
    """`logs gc`: stale clones, interrupted runs, runs older than `older_than` (deleted from the
    store), and in each recorded repository the refs and worktree registrations older versions
    left. The user's fix branches are listed, never deleted."""
    found = sweep(store, dry_run=dry_run, tmp_root=tmp_root)
    found.scratch = stale_scratch(tmp_root)
    for d in [] if dry_run else found.scratch:
        shutil.rmtree(d, ignore_errors=True)
    cutoff = datetime.now(UTC) - older_than if older_than is not None else None
    repos: dict[str, list[str]] = {}
    for run_id, created, repo, outcome in store.run_rows():
        if repo:
            repos.setdefault(repo, []).append(run_id)
        if cutoff is None or outcome is None and run_id not in found.interrupted:
            continue  # unfinished and not known to be dead: perhaps running now
        try:
            when = datetime.fromisoformat(created)
        except (TypeError, ValueError):
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if when < cutoff:
            found.deleted_runs.append(run_id)
            if not dry_run:
                store.delete_run(run_id)
    for repo, run_ids in repos.items():
        _clean_repo(Path(repo), run_ids, found, dry_run)
    return found


def _clean_repo(repo: Path, run_ids: list[str], found: Found, dry_run: bool) -> None:
    """Legacy refs and registrations of these runs in `repo`; fix branches are only listed."""
    if not (repo / ".git").exists():
        return
    cfg = ("-c", f"safe.directory={repo}")
    try:
        refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/decision-retry/",
                   "refs/heads/decision-retry/", config=cfg).split()
    except WorkspaceError:
        return
    prefixes = {rid[:12] for rid in run_ids}
    for ref in refs:
        if ref.startswith("refs/heads/"):
            found.branches.append(f"{repo} {ref.removeprefix('refs/heads/')}")
        elif ref.split("/")[2] in prefixes:
            found.refs.append(f"{repo} {ref}")
            if not dry_run:
                git(repo, "update-ref", "-d", ref, config=cfg)
    tmp = str(Path(tempfile.gettempdir()).resolve())
    worktrees = repo / ".git" / "worktrees"
    for reg in sorted(worktrees.iterdir()) if worktrees.is_dir() else []:
        try:
            target = Path((reg / "gitdir").read_text().strip())
        except OSError:
            continue
        ours = str(target).startswith(f"{tmp}/{TMP_PREFIX}")
        if ours and not target.exists():  # a worktree of ours whose directory is gone
            found.worktrees.append(f"{repo} {reg.name}")
            if not dry_run:
                shutil.rmtree(reg, ignore_errors=True)
