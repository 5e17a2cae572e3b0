"""Neutralised git: every internal git call ignores the configuration that could run programs.

What is switched off, and why (design.md §5): the user's and the system's config files (aliases,
pagers, `diff.external`, credential helpers, `core.excludesFile` is passed in explicitly where the
user's view of ignored files matters), global attribute files, hooks, fsmonitor, colour, diff
prefixes, replace refs, background gc/maintenance, and every `GIT_*` variable of the caller
(`GIT_DIR`, `GIT_EXTERNAL_DIFF`, `GIT_CONFIG_PARAMETERS`, ...). Filter and diff drivers are only
ever defined in config, so with no config file of the user's read they cannot run; diffs are made
with plumbing (`diff-tree`) and `--no-ext-diff --no-textconv` for good measure.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from decision_retry.errors import BadInput, WorkspaceError

_SETTINGS = {
    "user.name": "decision-retry",
    "user.email": "decision-retry@localhost",
    "core.hooksPath": "/dev/null",
    "core.fsmonitor": "false",
    "core.untrackedCache": "false",
    "core.attributesFile": "/dev/null",
    "core.pager": "cat",
    "core.autocrlf": "false",
    "core.safecrlf": "false",
    "core.quotePath": "false",
    "commit.gpgsign": "false",
    "gc.auto": "0",
    "maintenance.auto": "false",
    "color.ui": "false",
    "diff.noprefix": "false",
    "diff.mnemonicPrefix": "false",
    "diff.renames": "false",
    "log.showSignature": "false",
}
CONFIG = tuple(arg for k, v in _SETTINGS.items() for arg in ("-c", f"{k}={v}"))
# Patches: plumbing with every output knob pinned (the user's config cannot change them anyway).
PATCH_FLAGS = ("-p", "--binary", "--full-index", "--no-color", "--no-ext-diff", "--no-textconv",
               "--no-renames", "--src-prefix=a/", "--dst-prefix=b/")


def neutral_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without any GIT_* variable, and no config file but ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_ATTR_NOSYSTEM="1",
        GIT_NO_REPLACE_OBJECTS="1",
        GIT_TERMINAL_PROMPT="0",
        GIT_OPTIONAL_LOCKS="0",  # status/ls-files never rewrite an index
        GIT_PAGER="cat",
        GIT_ADVICE="0",
    )
    env.update(extra or {})
    return env


def git_bytes(cwd: Path | None, *args: str, git_dir: Path | None = None,
              work_tree: Path | None = None, env: dict[str, str] | None = None,
              input: bytes | None = None, config: tuple[str, ...] = ()) -> bytes:
    """Run one neutralised git command and return its stdout; a failure raises WorkspaceError."""
    where = []
    if git_dir is not None:
        where += ["--git-dir", str(git_dir)]
    if work_tree is not None:
        where += ["--work-tree", str(work_tree)]
    try:
        proc = subprocess.run(
            ["git", *CONFIG, *config, *where, *args], cwd=cwd or git_dir, env=neutral_env(env),
            input=input, capture_output=True, check=False, stdin=None if input else subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise BadInput("git not found: install git to use decision-retry") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise WorkspaceError(f"git {args[0]} failed: {msg[-1] if msg else proc.returncode}")
    return proc.stdout


def git(cwd: Path | None, *args: str, **kw) -> str:
    """`git_bytes` decoded as text (undecodable bytes replaced)."""
    return git_bytes(cwd, *args, **kw).decode(errors="replace")


def commit_date(cwd: Path | None, rev: str, **kw) -> str:
    """The committer date of commit `rev`, raw (`<seconds> <+zone>`), read from the object
    itself: `git show` would parse the tree's `.gitmodules` and stop at a value it refuses
    (`update = !cmd`)."""
    raw = git(cwd, "cat-file", "commit", rev, **kw)
    m = re.search(r"^committer .*> (-?\d+ [+-]\d{4})$", raw.split("\n\n", 1)[0], re.MULTILINE)
    return m.group(1) if m else "0 +0000"


def alternates_line(objects: Path) -> str:
    """One line of `objects/info/alternates` naming `objects`: C-quoted where the path holds a
    newline, a quote or a backslash (git unquotes a line that starts with `"`)."""
    text = str(objects)
    if not any(c in text for c in '\n"\\'):
        return f"{text}\n"
    quoted = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{quoted}"\n'


def user_git_config(repo: Path, key: str) -> str | None:
    """One value of the user's own git config (read only: `git config --get` runs nothing)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    proc = subprocess.run(["git", "config", "--path", "--get", key], cwd=repo, env=env,
                          capture_output=True, check=False, stdin=subprocess.DEVNULL)
    value = proc.stdout.decode(errors="replace").strip()
    return value or None


def show_toplevel(path: Path) -> str | None:
    """`git rev-parse --show-toplevel` as the user's git sees it (their safe.directory applies);
    None when `path` is not inside a working tree."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_OPTIONAL_LOCKS"] = "0"
    try:
        proc = subprocess.run(["git", "-c", "core.fsmonitor=false", "rev-parse", "--show-toplevel"],
                              cwd=path, env=env, capture_output=True, check=False,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise BadInput("git not found: install git to use decision-retry") from None
    if proc.returncode != 0:
        return None
    return proc.stdout.decode(errors="replace").strip() or ""
