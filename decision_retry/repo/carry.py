"""Gitignored Python modules the tests may import, carried into the private clone.

A project built with setuptools_scm (or hatch-vcs, versioneer...) imports a generated, gitignored
`version.py`; the clone holds only what the user sees as their tree (tracked and untracked
non-ignored files), so without it every test fails at collection with ImportError. What is
carried, read from the user's repository without writing anything there:
    * `git ls-files --others --ignored --exclude-standard --directory` (the user's ignore rules;
      a wholly ignored directory is one `dir/` entry and is never walked: virtualenvs, build/,
      caches, `*.egg-info`)
    * of those, regular `*.py` files whose directory holds a tracked `.py` file (the project's
      own source directories), outside virtualenv, cache and build directories (by name, or a
      directory with a `pyvenv.cfg`), and whose name does not look like a secret
    * at most MAX_FILES files, MAX_FILE bytes each, MAX_TOTAL bytes together (sorted by path;
      the rest is listed in `Carried.skipped`)
In the clone they stay ignored (anchored lines in its own info/exclude): never in a snapshot,
a diff or the fix branch; a rewind writes them back as they were (Workspace.restore).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from decision_retry.repo.userrepo import UserRepo, UserTree

MAX_FILES = 32
MAX_FILE = 256 * 1024  # bytes
MAX_TOTAL = 1024 * 1024  # bytes
# directories whose ignored files are never the project's own sources
SKIP_DIRS = frozenset({
    "__pycache__", "build", "dist", "node_modules", "site-packages", "venv", ".venv", "env",
    ".env", ".tox", ".nox", ".eggs", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache",
    ".hypothesis", "htmlcov",
})
# an ignored settings module of this name usually holds keys or passwords: it stays out
SECRET_WORDS = ("secret", "credential", "passw", "token", "apikey", "api_key", "private",
                "local_settings", "settings_local")


@dataclass(frozen=True)
class CarriedFile:
    """One ignored file's bytes and permission bits, as read from the user's tree."""

    path: str  # posix, relative to the repository root
    data: bytes
    mode: int  # permission bits (0o644...)


@dataclass(frozen=True)
class Carried:
    """The ignored files copied into the clone, and the candidates left out by the limits."""

    files: tuple[CarriedFile, ...] = ()
    skipped: tuple[str, ...] = ()

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    def note(self) -> str | None:
        """The one line telling the user what was carried (None when nothing was)."""
        if not self.files and not self.skipped:
            return None
        n = len(self.files)
        line = (f"carried {n} ignored file{'s' if n != 1 else ''} the tests may import: "
                f"{', '.join(self.paths) or '-'}")
        if self.skipped:
            line += (f"; left out {len(self.skipped)} over the limits ({MAX_FILES} files, "
                     f"{MAX_FILE // 1024} KiB each, {MAX_TOTAL // 1024} KiB in all): "
                     f"{', '.join(self.skipped[:3])}"
                     f"{', ...' if len(self.skipped) > 3 else ''}")
        return line


def ignored_sources(user: UserRepo, tree: UserTree) -> Carried:
    """The ignored Python sources of `user`'s tree worth carrying (module docstring)."""
    cfg = ("-c", f"core.excludesFile={tree.excludes_file}") if tree.excludes_file else ()
    listed = user.git("ls-files", "-z", "--others", "--ignored", "--exclude-standard",
                      "--directory", config=cfg)
    source_dirs = {PurePosixPath(p).parent for p in tree.tracked if p.endswith(".py")}
    files: list[CarriedFile] = []
    skipped: list[str] = []
    total = 0
    for rel in sorted(filter(None, set(listed.split("\0")))):
        if not _candidate(user.root, rel, source_dirs):
            continue
        found = _read(user.root, rel)
        if found is None:
            continue
        if (len(found.data) > MAX_FILE or len(files) >= MAX_FILES
                or total + len(found.data) > MAX_TOTAL):
            skipped.append(rel)
            continue
        files.append(found)
        total += len(found.data)
    return Carried(tuple(files), tuple(skipped))


def exclude_lines(paths: list[str]) -> str:
    """gitignore lines that match exactly these paths (anchored, special characters escaped)."""
    lines = []
    for p in paths:
        escaped = "".join("\\" + c if c in "\\*?[" else c for c in p)
        if escaped.endswith(" "):
            escaped = escaped[:-1] + "\\ "
        lines.append("/" + escaped)
    return "".join(f"{line}\n" for line in lines)


def _candidate(root: Path, rel: str, source_dirs: set[PurePosixPath]) -> bool:
    """A `.py` file (not a directory entry) in a source directory, outside skipped directories."""
    if rel.endswith("/") or not rel.endswith(".py"):
        return False
    pure = PurePosixPath(rel)
    if pure.parent not in source_dirs:
        return False
    if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in pure.parts[:-1]):
        return False
    if any(word in pure.name.lower() for word in SECRET_WORDS):
        return False
    # a virtualenv by any name: one of the enclosing directories holds a pyvenv.cfg
    return not any(os.path.lexists(root / d / "pyvenv.cfg") for d in pure.parents)


def _read(root: Path, rel: str) -> CarriedFile | None:
    """A regular file's bytes, MAX_FILE + 1 at most (no link, nothing outside `root`)."""
    path = root / rel
    try:
        if path.parent.resolve() != (root / PurePosixPath(rel).parent):
            return None  # a link on the way
        with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                return None
            data = fh.read(MAX_FILE + 1)
    except OSError:  # vanished, unreadable, a link (O_NOFOLLOW)
        return None
    return CarriedFile(rel, data, stat.S_IMODE(st.st_mode))
