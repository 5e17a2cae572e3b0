"""A private git worktree where the agent edits, snapshots and rewinds, away from the user's tree.

The user's repository is only ever read (working tree, HEAD) or extended (objects, the private refs
`refs/decision-retry/<run-id>/<n>`, the worktree registration, and on success the branch
`decision-retry/<run-id>`). Its HEAD, index, stash and files change only in `apply_to_user_tree`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path, PurePosixPath
from typing import Self

from decision_retry.errors import BadInput, WorkspaceError

# Every git call: an identity that works without git config, no hooks of the user's, no signing,
# no background gc while we run.
_GIT_SETTINGS = {
    "user.name": "decision-retry",
    "user.email": "decision-retry@localhost",
    "core.hooksPath": "/dev/null",
    "commit.gpgsign": "false",
    "gc.auto": "0",
    "core.fsmonitor": "false",
}
_GIT_CONFIG = tuple(arg for k, v in _GIT_SETTINGS.items() for arg in ("-c", f"{k}={v}"))
# Variables that would point our git calls at another repository or index.
_GIT_ENV_DROP = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_PREFIX")


class PathError(WorkspaceError):
    """A path the agent asked for is unsafe (outside the worktree) or does not exist."""


def git(
    cwd: Path, *args: str, env: dict[str, str] | None = None, input: bytes | None = None
) -> str:
    """Run one git command in `cwd` and return its stdout; a failure raises WorkspaceError."""
    full_env = {k: v for k, v in os.environ.items() if k not in _GIT_ENV_DROP}
    full_env.update(GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0")  # status never rewrites index
    full_env.update(env or {})
    try:
        proc = subprocess.run(
            ["git", *_GIT_CONFIG, *args],
            cwd=cwd,
            env=full_env,
            input=input,
            capture_output=True,
            check=False,
        )
    except FileNotFoundError:
        raise BadInput("git not found: install git to use decision-retry") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise WorkspaceError(f"git {args[0]} failed: {msg[-1] if msg else proc.returncode}")
    return proc.stdout.decode(errors="replace")


def repo_root(path: str | Path) -> Path:
    """The top level of the git working tree containing `path`; BadInput if there is none."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise BadInput(f"no such directory: {path}")
    try:
        top = git(p, "rev-parse", "--show-toplevel").strip()
    except WorkspaceError:
        raise BadInput(f"not a git repository: {path}") from None
    if not top:
        raise BadInput(f"not a git working tree (bare repository?): {path}")
    return Path(top).resolve()


class Workspace:
    """A detached worktree of the user's repository, started from their current working tree.

    `Workspace(repo, run_id)` validates; `open()` (or `with`) captures the user's working tree
    (tracked changes and untracked, non-ignored files included) as the starting commit without
    touching their index, and checks it out in a temporary directory. `snapshot`/`restore` commit
    and rewind that directory; `finish(success=True)` keeps the result as branch
    `decision-retry/<run-id>`.
    Ignored files of the user's tree (virtualenvs, caches, secrets) are not copied.
    """

    def __init__(self, repo: str | Path, run_id: str, *, keep_snapshots: bool = True) -> None:
        self.repo = repo_root(repo)
        self.run_id = run_id
        self.branch = f"decision-retry/{run_id}"
        self.ref_prefix = f"refs/decision-retry/{run_id}/"
        self.keep_snapshots = keep_snapshots
        try:
            git(self.repo, "check-ref-format", f"refs/heads/{self.branch}")
        except WorkspaceError:
            raise BadInput(f"invalid run id for a branch name: {run_id!r}") from None
        if git(self.repo, "for-each-ref", f"refs/heads/{self.branch}", self.ref_prefix).strip():
            raise BadInput(f"run id already used in this repository: {run_id}")
        self.base_sha: str | None = None  # the starting snapshot
        self.fix_sha: str | None = None  # set by finish(success=True)
        self._tmp: Path | None = None
        self._root: Path | None = None
        self._n = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def open(self) -> Self:
        """Capture the user's working tree and check it out in a fresh temporary worktree."""
        if self._root is not None:
            return self
        if self.base_sha is not None:
            raise WorkspaceError("workspace already finished; start a new run id")
        self.base_sha = self._capture_user_tree()
        self._tmp = Path(tempfile.mkdtemp(prefix=f"decision-retry-{self.run_id}-"))
        root = self._tmp / self.repo.name
        try:
            git(self.repo, "worktree", "add", "--detach", "--quiet", str(root), self.base_sha)
        except WorkspaceError:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            raise
        self._root = root.resolve()
        self._save_ref(self.base_sha)
        return self

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self.finish(success=False)

    @property
    def root(self) -> Path:
        """The worktree directory (exists between open() and finish())."""
        if self._root is None:
            raise WorkspaceError("workspace is not open")
        return self._root

    def finish(self, success: bool, sha: str | None = None) -> str | None:
        """Keep the fix as branch `decision-retry/<run-id>` on success; always remove the worktree.

        The fix is the worktree as it is now, or snapshot `sha` when given. Returns the fix commit
        (its parent: the starting snapshot) on success, else None.
        """
        if self._tmp is None:
            return self.fix_sha
        try:
            if success:
                tree = self._write_tree() if sha is None else f"{self._commit(sha)}^{{tree}}"
                message = f"decision-retry {self.run_id}: fix"
                self.fix_sha = git(
                    self.repo, "commit-tree", tree, "-p", str(self.base_sha), "-m", message
                ).strip()
                git(self.repo, "branch", self.branch, self.fix_sha)
        finally:
            if self._root is not None:
                try:
                    git(self.repo, "worktree", "remove", "--force", str(self._root))
                except WorkspaceError:
                    pass  # already gone; prune below forgets it
            shutil.rmtree(self._tmp, ignore_errors=True)
            git(self.repo, "worktree", "prune")
            self._tmp = self._root = None
            if not self.keep_snapshots:
                for ref in git(
                    self.repo, "for-each-ref", "--format=%(refname)", self.ref_prefix
                ).split():
                    git(self.repo, "update-ref", "-d", ref)
        return self.fix_sha

    # -- snapshots ------------------------------------------------------------------------------

    def snapshot(self, label: str) -> str:
        """Commit the worktree as it is now and keep it on `refs/decision-retry/<run-id>/<n>`."""
        tree = self._write_tree()
        sha = git(self.root, "commit-tree", tree, "-p", str(self.base_sha), "-m", label).strip()
        self._save_ref(sha)
        return sha

    def restore(self, sha: str) -> None:
        """Make the worktree exactly snapshot `sha`: later files removed, changed ones reverted."""
        commit = self._commit(sha)
        git(self.root, "read-tree", "--reset", "-u", commit)
        git(self.root, "clean", "-ffdxq")  # only ever inside our own worktree

    def diff(self, base_sha: str | None = None) -> str:
        """Unified diff from `base_sha` (default: the starting snapshot) to the worktree now."""
        base = self._commit(base_sha or self.base_sha or "")
        return git(self.root, "diff", "--binary", base, self._write_tree())

    # -- files ----------------------------------------------------------------------------------

    def resolve(self, rel: str) -> Path:
        """The absolute path of `rel` inside the worktree; PathError if it could escape."""
        if not rel or not rel.strip() or "\0" in rel:
            raise PathError(f"not a valid path: {rel!r}")
        pure = PurePosixPath(rel.replace("\\", "/"))
        if pure.is_absolute() or Path(rel).is_absolute():
            raise PathError(f"absolute paths are not allowed: {rel}")
        if ".." in pure.parts:
            raise PathError(f"'..' is not allowed in paths: {rel}")
        if ".git" in pure.parts:
            raise PathError(f"paths inside .git are not allowed: {rel}")
        target = (self.root / pure).resolve()
        if target != self.root and self.root not in target.parents:
            raise PathError(f"path escapes the repository (symlink?): {rel}")
        if ".git" in target.relative_to(self.root).parts:
            raise PathError(f"paths inside .git are not allowed: {rel}")
        return target

    def read_file(self, rel: str) -> str:
        """The text of a file in the worktree."""
        path = self.resolve(rel)
        if not path.is_file():
            raise PathError(f"no such file: {rel}")
        return path.read_text(encoding="utf-8", errors="replace")

    def write_file(self, rel: str, text: str) -> None:
        """Create or overwrite a file in the worktree (parent directories are created)."""
        path = self.resolve(rel)
        if path.is_dir():
            raise PathError(f"is a directory: {rel}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    def list_files(self, under: str = "") -> list[str]:
        """Tracked and untracked non-ignored files (posix, sorted), optionally below a folder."""
        prefix = ""
        if under:
            rel = self.resolve(under).relative_to(self.root).as_posix()
            prefix = "" if rel == "." else rel + "/"
        out = git(self.root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
        names = {n for n in out.split("\0") if n and n.startswith(prefix)}
        return sorted(n for n in names if (self.root / n).is_file() or (self.root / n).is_symlink())

    # -- the user's tree ------------------------------------------------------------------------

    def apply_to_user_tree(self) -> None:
        """Apply the fix (starting snapshot -> fix commit) to the user's working tree.

        Only when `git status --porcelain` there is empty; touches files, not the index or HEAD.
        """
        if self.fix_sha is None or self.base_sha is None:
            raise WorkspaceError("no fix to apply: finish(success=True) first")
        if git(self.repo, "status", "--porcelain").strip():
            raise BadInput(f"not applying the fix: {self.repo} has uncommitted changes")
        patch = git(self.repo, "diff", "--binary", self.base_sha, self.fix_sha)
        if not patch:
            return
        try:
            git(self.repo, "apply", "--whitespace=nowarn", "-", input=patch.encode())
        except WorkspaceError:
            raise BadInput(
                f"the fix no longer applies to {self.repo}; it is on branch {self.branch}"
            ) from None

    # -- helpers --------------------------------------------------------------------------------

    def _capture_user_tree(self) -> str:
        """Commit the user's working tree through a throw-away index; HEAD itself when clean."""
        head = self._head()
        with tempfile.TemporaryDirectory(prefix="decision-retry-index-") as d:
            env = {"GIT_INDEX_FILE": str(Path(d) / "index")}
            if head:
                git(self.repo, "read-tree", head, env=env)
            git(self.repo, "add", "-A", "--", ".", env=env)
            tree = git(self.repo, "write-tree", env=env).strip()
        if head and tree == git(self.repo, "rev-parse", f"{head}^{{tree}}").strip():
            return head
        parents = ["-p", head] if head else []
        msg = f"decision-retry {self.run_id}: starting point (working tree)"
        return git(self.repo, "commit-tree", tree, *parents, "-m", msg).strip()

    def _head(self) -> str | None:
        """The user's HEAD commit, or None in a repository without commits."""
        try:
            return (
                git(self.repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}").strip() or None
            )
        except WorkspaceError:
            return None

    def _write_tree(self) -> str:
        """Stage everything in the worktree (its own index) and return the tree id."""
        git(self.root, "add", "-A", "--", ".")
        return git(self.root, "write-tree").strip()

    def _commit(self, rev: str) -> str:
        """The full commit id of `rev`; WorkspaceError if it is not a commit."""
        try:
            return git(self.repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
        except WorkspaceError:
            raise WorkspaceError(f"unknown snapshot: {rev}") from None

    def _save_ref(self, sha: str) -> None:
        git(self.repo, "update-ref", f"{self.ref_prefix}{self._n}", sha)
        self._n += 1
