"""A private clone where the agent edits, snapshots, rewinds and runs the tests.

Layout of one run, in a fresh temporary directory `decision-retry-<run-id>-*`:
    owner.json    who made it (pid, run id, repository): `logs gc` removes it once that pid is gone
    git/          the clone's repository: its own refs and index, the user's objects borrowed
                  read-only (objects/info/alternates); never inside the sandbox
    <name>/       the working tree: a copy of the user's tree as they see it (tracked changes and
                  untracked non-ignored files), plus the small ignored Python modules the tests
                  may import (carry.py: a generated `version.py`); the only directory the
                  sandboxed tests can write

Nothing of the user's repository is written until `finish(success=True)` adds the fix branch,
which is the user's HEAD plus the fix only (userrepo.py): a fix to a file that is untracked in the
user's repository stays out of the branch and is listed in `left_out`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Self

from decision_retry import costs
from decision_retry.errors import BadInput, WorkspaceError
from decision_retry.repo import sandbox as sandboxes
from decision_retry.repo.carry import Carried, exclude_lines, ignored_sources
from decision_retry.repo.gitexec import PATCH_FLAGS, alternates_line, commit_date, git, git_bytes
from decision_retry.repo.leftovers import TMP_PREFIX, owner_stamp
from decision_retry.repo.testcache import TestCache, ignored_files, test_key
from decision_retry.repo.userrepo import UserRepo, UserTree, repo_root

__all__ = ["TMP_PREFIX", "PathError", "Workspace", "git", "repo_root"]

IGNORED_MAX = 32 << 20  # bytes of ignored files hashed into a test key; beyond: no caching
NAME_MAX = 255  # bytes of one path component (Linux, macOS)
PATH_MAX = 4096


class PathError(WorkspaceError):
    """A path the agent asked for is unsafe (outside the clone) or does not exist."""


class Workspace:
    """A private clone of the user's repository, started from their current working tree.

    `Workspace(repo, run_id)` validates; `open()` (or `with`) copies the user's tree into a fresh
    clone; `snapshot`/`restore` commit and rewind its working tree; `run_tests` runs the test
    command there in the sandbox; `finish(success=True)` adds branch `decision-retry/<run-id>` to
    the user's repository (HEAD plus the fix); `apply_to_user_tree` writes the fix into a clean
    working tree. Ignored files of the user's tree (virtualenvs, caches, secrets) are not copied,
    except small Python modules in the project's source directories (`carried`, carry.py). An
    identical tree is tested once per run (`test_cache`, testcache.py).
    """

    def __init__(self, repo: str | Path, run_id: str, *,
                 sandbox: sandboxes.Sandbox | None = None,
                 test_cache: TestCache | None = None) -> None:
        self.repo = repo_root(repo)
        self.user = UserRepo(self.repo)
        self.run_id = run_id
        self.branch = f"decision-retry/{run_id}"
        self.sandbox = sandbox
        self.python = None  # the project's interpreter (pyenv.ProjectPython); None: ours
        self.replay: dict[str, list] = {}  # branch id -> recorded TestRuns, oldest first
        self.test_cache = test_cache if test_cache is not None else TestCache()
        try:
            self.user.git("check-ref-format", f"refs/heads/{self.branch}")
        except WorkspaceError:
            raise BadInput(f"invalid run id for a branch name: {run_id!r}") from None
        if self.user.branch_exists(f"refs/heads/{self.branch}"):
            raise BadInput(f"run id already used in this repository: {run_id}")
        self.base_sha: str | None = None  # the starting snapshot (in the clone)
        self.fix_sha: str | None = None  # the branch commit in the user's repository
        self.result_sha: str | None = None  # the fix as a snapshot of the clone
        self.left_out: list[str] = []  # fixed files that are untracked in the user's repository
        # fixed files whose change does not apply to HEAD's version (it touches lines the user
        # changed and did not commit): then no branch, and `fix_diff` is against the working tree
        self.unseparated: list[str] = []
        self.fix_diff = ""  # what the fix is, as finish(success=True) left it (see _add_branch)
        self.carried = Carried()  # ignored files copied in for the tests (never in a snapshot)
        self._user_tree: UserTree | None = None
        self._tmp: Path | None = None
        self._root: Path | None = None
        self._n = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def open(self) -> Self:
        """Copy the user's working tree into a fresh private clone."""
        if self._root is not None:
            return self
        if self.base_sha is not None:
            raise WorkspaceError("workspace already finished; start a new run id")
        tree = self._user_tree = self.user.capture()
        self._tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{self.run_id}-")).resolve()
        try:
            (self._tmp / "owner.json").write_text(owner_stamp(self.run_id, self.repo))
            self._root = self._tmp / self.repo.name
            self._init_clone(tree)
            self._copy_files(tree)
            self.carried = ignored_sources(self.user, tree)
            self._carry(exclude=True)
            self.base_sha = self._capture(tree.head)
            self._save_ref(self.base_sha)
        except BaseException:
            self._remove()
            raise
        return self

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self.finish(success=False)

    @property
    def root(self) -> Path:
        """The clone's working tree (exists between open() and finish())."""
        if self._root is None:
            raise WorkspaceError("workspace is not open")
        return self._root

    @property
    def git_dir(self) -> Path:
        if self._tmp is None:
            raise WorkspaceError("workspace is not open")
        return self._tmp / "git"

    def finish(self, success: bool, sha: str | None = None) -> str | None:
        """On success add branch `decision-retry/<run-id>` (HEAD plus the fix) to the user's
        repository; always remove the clone. The fix is the working tree now, or snapshot `sha`.
        Returns the branch commit, or None (failure, or nothing of the fix fits on HEAD)."""
        if self._tmp is None:
            return self.fix_sha
        try:
            if success:
                self.result_sha = self._commit(sha) if sha else self.snapshot("fix")
                self._add_branch(self.result_sha)
        finally:
            self._remove()
        return self.fix_sha

    def _remove(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = self._root = None

    # -- snapshots ------------------------------------------------------------------------------

    def snapshot(self, label: str) -> str:
        """Commit the working tree as it is now (a commit of the clone, child of the start)."""
        tree = self._write_tree()
        sha = self._git("commit-tree", tree, "-p", str(self.base_sha), "-m", label or "-").strip()
        self._save_ref(sha)
        return sha

    def restore(self, sha: str) -> None:
        """Make the working tree exactly snapshot `sha`: later files removed, changed ones reverted."""
        commit = self._commit(sha)
        self._git("read-tree", "--reset", "-u", commit)
        self._git("clean", "-ffdxq")  # only ever inside the clone
        self._carry()  # the ignored files the tests import, as they were at the start

    def diff(self, base_sha: str | None = None, sha: str | None = None) -> str:
        """Unified diff from `base_sha` (default: the start) to snapshot `sha` (default: now)."""
        base = self._commit(base_sha or self.base_sha or "")
        target = self._commit(sha) if sha else self._write_tree()
        return self._git("diff-tree", *PATCH_FLAGS, base, target)

    def changed(self, which, sha: str) -> list[str]:
        """The paths snapshot `sha` changes from the start for which `which(path)` holds."""
        raw = self._git("diff-tree", "-r", "-z", "--name-only", "--no-renames",
                        self._commit(str(self.base_sha)), self._commit(sha))
        return [p for p in raw.split("\0") if p and which(p)]

    def run_tests(self, cmd: str, timeout: float, *, branch: str | None = None, **kw):
        """The test command run in the working tree, in this workspace's sandbox; for a
        `branch` whose result `replay` holds (a resumed run), that recorded result; for files
        tested before in this run with the same command (`test_cache`), that result, `cached`.
        Counted as tests in the run's cost meter (costs.py)."""
        from decision_retry.repo.testrun import TestResult, run_tests

        meter = costs.current()
        recorded = self.replay.get(branch) if branch else None
        if recorded:
            t = recorded.pop(0)
            if meter:
                meter.test_run(cached=True)  # no sandbox started
            return TestResult(command=tuple(cmd.split()), exit_code=None if t.exit_code == -1
                              else t.exit_code, timed_out=t.exit_code == -1, passed=t.passed,
                              failed=t.failed, errors=t.errors, output_tail=t.output_tail,
                              duration_s=t.duration_s, cached=t.cached, evidence="recorded",
                              no_tests=t.exit_code == 5 and not (t.passed or t.failed))
        with costs.timed("tests"):
            key = self._test_key(cmd, timeout) if self.test_cache.enabled and not kw else None
            result = self.test_cache.get(key) if key else None
            if result is None:
                result = run_tests(cmd, self.root, timeout, sandbox=self.sandbox,
                                   python=self.python, **kw)
                if key:
                    self.test_cache.put(key, result)
        if meter:
            meter.test_run(cached=result.cached)
        return result

    def _test_key(self, cmd: str, timeout: float) -> str | None:
        """The test cache key of the working tree as it is now (testcache.py); None when its
        ignored files are too big to hash."""
        names = [n for n in self._git("ls-files", "-z", "--others", "--ignored",
                                      "--exclude-standard").split("\0") if n]
        if sum((self.root / n).lstat().st_size for n in names) > IGNORED_MAX:
            return None
        return test_key(self._write_tree(), ignored_files(self.root, names), cmd, timeout,
                        self.sandbox)

    # -- files ----------------------------------------------------------------------------------

    def resolve(self, rel: str) -> Path:
        """The absolute path of `rel` inside the working tree; PathError if it could escape."""
        if not isinstance(rel, str) or not rel.strip() or "\0" in rel:
            raise PathError(f"not a valid path: {rel!r}")
        try:
            raw = rel.encode("utf-8")
        except UnicodeEncodeError:
            raise PathError(f"not a valid path (not UTF-8): {rel!r}") from None
        pure = PurePosixPath(rel.replace("\\", "/"))
        if len(raw) > PATH_MAX or any(len(p.encode()) > NAME_MAX for p in pure.parts):
            raise PathError(f"path too long: {rel[:80]!r}...")
        if pure.is_absolute() or Path(rel).is_absolute():
            raise PathError(f"absolute paths are not allowed: {rel}")
        if ".." in pure.parts:
            raise PathError(f"'..' is not allowed in paths: {rel}")
        if ".git" in pure.parts:
            raise PathError(f"paths inside .git are not allowed: {rel}")
        try:
            target = (self.root / pure).resolve()
        except (OSError, RuntimeError) as err:  # a loop of links
            raise PathError(f"cannot resolve {rel}: {err}") from None
        if target != self.root and self.root not in target.parents:
            raise PathError(f"path escapes the repository (symlink?): {rel}")
        if ".git" in target.relative_to(self.root).parts:
            raise PathError(f"paths inside .git are not allowed: {rel}")
        return target

    def read_file(self, rel: str) -> str:
        """The text of a file in the working tree (undecodable bytes replaced)."""
        path = self.resolve(rel)
        try:
            if not path.is_file():
                raise PathError(f"no such file: {rel}")
            return path.read_bytes().decode("utf-8", errors="replace")
        except OSError as err:
            raise PathError(f"cannot read {rel}: {err.strerror}") from None

    def write_file(self, rel: str, text: str) -> None:
        """Create or overwrite a file in the working tree (parent directories are created)."""
        path = self.resolve(rel)
        data = text.encode("utf-8", errors="replace")  # a lone surrogate of the model's: "?"
        try:
            if path.is_dir():
                raise PathError(f"is a directory: {rel}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        except OSError as err:
            raise PathError(f"cannot write {rel}: {err.strerror}") from None

    def list_files(self, under: str = "") -> list[str]:
        """Tracked and untracked non-ignored files (posix, sorted), optionally below a folder."""
        prefix = ""
        if under:
            rel = self.resolve(under).relative_to(self.root).as_posix()
            prefix = "" if rel == "." else rel + "/"
        out = self._git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
        names = {n for n in out.split("\0") if n and n.startswith(prefix)}
        return sorted(n for n in names if (self.root / n).is_file() or (self.root / n).is_symlink())

    # -- the user's tree ------------------------------------------------------------------------

    def apply_to_user_tree(self) -> list[str]:
        """Write the fix into the user's working tree (only when it is exactly HEAD); touches
        files, never the index or HEAD. Returns the paths written."""
        if self.fix_sha is None or self._user_tree is None or self._user_tree.head is None:
            raise WorkspaceError("no fix to apply: finish(success=True) first")
        reason = self.user.dirty_reason()
        if reason:
            raise BadInput(f"not applying the fix: {self.repo} is not clean ({reason}); "
                           f"the fix is on branch {self.branch}")
        return self.user.apply(self._user_tree.head, self.fix_sha)

    # -- helpers --------------------------------------------------------------------------------

    def _git(self, *args: str, **kw) -> str:
        return git(self._tmp, *args, git_dir=self.git_dir, work_tree=self.root, **kw)

    def _init_clone(self, tree: UserTree) -> None:
        """An empty repository borrowing the user's objects; our config only."""
        git(self._tmp, "init", "-q", "--bare", str(self.git_dir))
        self.root.mkdir()
        info = self.git_dir / "objects" / "info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "alternates").write_text(alternates_line(tree.objects))
        if tree.shallow:
            shutil.copyfile(tree.shallow, self.git_dir / "shallow")
        if tree.exclude:
            (self.git_dir / "info").mkdir(exist_ok=True)
            shutil.copyfile(tree.exclude, self.git_dir / "info" / "exclude")
        settings = {"core.bare": "false", "core.logAllRefUpdates": "false"}
        if tree.excludes_file:
            settings["core.excludesFile"] = tree.excludes_file
        for key, value in settings.items():
            git(self._tmp, "config", key, value, git_dir=self.git_dir)

    def _copy_files(self, tree: UserTree) -> None:
        """The user's files as they are on disk (links as links, modes kept; submodules skipped)."""
        for rel in tree.files:
            src, dst = self.repo / rel, self.root / rel
            try:
                if src.is_symlink():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(os.readlink(src), dst)
                elif src.is_file():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
            except OSError as err:
                raise BadInput(f"cannot copy {rel} of {self.repo}: {err.strerror}") from None

    def _carry(self, exclude: bool = False) -> None:
        """Write the carried files into the working tree; with `exclude`, first make the clone
        ignore exactly them (a rule of the user's that ignored them may not have come along)."""
        if not self.carried.files:
            return
        if exclude:
            info = self.git_dir / "info" / "exclude"
            info.parent.mkdir(exist_ok=True)
            old = info.read_bytes() if info.is_file() else b""
            sep = b"" if not old or old.endswith(b"\n") else b"\n"
            info.write_bytes(old + sep + b"# carried by decision-retry (carry.py)\n"
                             + exclude_lines(self.carried.paths).encode())
        for f in self.carried.files:
            dst = self.root / f.path
            parent = dst.parent.resolve()  # what exists of it
            if parent != self.root and self.root not in parent.parents:
                continue  # a snapshot made a link of a directory on the way: never write through it
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.is_dir() and not dst.is_symlink():  # what a test put there instead
                shutil.rmtree(dst)
            elif os.path.lexists(dst):
                dst.unlink()
            dst.write_bytes(f.data)
            dst.chmod(f.mode)

    def _capture(self, head: str | None) -> str:
        """The starting snapshot: HEAD itself when the copy equals it, else a commit on top,
        dated as HEAD (the epoch without one), so that the same tree in the same run gives
        the same commit: `--resume` checks the repository by it."""
        if head:
            self._git("read-tree", head)
        tree = self._write_tree()
        if head and tree == self._git("rev-parse", f"{head}^{{tree}}").strip():
            return head
        parents = ["-p", head] if head else []
        raw = commit_date(self._tmp, head, git_dir=self.git_dir) if head else "0 +0000"
        when = f"@{raw}"  # @: seconds since the epoch, however small
        msg = f"decision-retry {self.run_id}: starting point (working tree)"
        return self._git("commit-tree", tree, *parents, "-m", msg,
                         env={"GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}).strip()

    def _write_tree(self) -> str:
        """Stage everything in the working tree (the clone's own index) and return the tree id."""
        self._git("add", "-A", "--", ".")
        return self._git("write-tree").strip()

    def _commit(self, rev: str) -> str:
        """The full commit id of `rev`; WorkspaceError if it is not a commit of the clone."""
        try:
            return self._git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
        except WorkspaceError:
            raise WorkspaceError(f"unknown snapshot: {rev}") from None

    def _save_ref(self, sha: str) -> None:
        self._git("update-ref", f"refs/decision-retry/{self._n}", sha)
        self._n += 1

    def _add_branch(self, result: str) -> None:
        """HEAD plus the fix (base -> result), as a commit in the user's repository.

        Each tracked file's change is applied to HEAD's version with plumbing, so uncommitted
        edits of the user's elsewhere in the file stay out of the branch. Where a change does not
        apply (it overlaps those edits) there is no branch: `unseparated` names the files and
        `fix_diff` is the fix against the working tree, for the user to apply. Otherwise
        `fix_diff` is the branch against HEAD (exactly what it holds), followed by the fix's
        files that are untracked in the user's repository (`left_out`: never on the branch).
        """
        tree = self._user_tree
        assert tree is not None and self.base_sha is not None
        literal = {"GIT_LITERAL_PATHSPECS": "1"}  # a file named `*.py` is that file
        raw = self._git("diff-tree", "-r", "-z", "--raw", "--no-renames", self.base_sha, result)
        fields = raw.split("\0")
        changes = [path for meta, path in zip(fields[0::2], fields[1::2]) if meta.startswith(":")]
        copied_untracked = set(tree.files) - tree.tracked
        self.left_out = [p for p in changes if p in copied_untracked]
        self.fix_diff = self.diff(sha=result)
        index = str(self._tmp / "branch-index")
        env = {"GIT_INDEX_FILE": index, **literal}
        if tree.head:
            self._git("read-tree", tree.head, env=env)
        else:
            self._git("read-tree", "--empty", env=env)
        for path in changes:
            if path in copied_untracked:
                continue
            patch = self._git("diff-tree", *PATCH_FLAGS, self.base_sha, result, "--", path,
                              env=literal)
            try:
                git_bytes(self._tmp, "apply", "--cached", "--whitespace=nowarn", "-",
                          git_dir=self.git_dir, env=env, input=patch.encode())
            except WorkspaceError:  # the change touches the user's uncommitted lines
                self.unseparated.append(path)
        if self.unseparated:
            return
        new_tree = self._git("write-tree", env=env).strip()
        head_tree = self._git("rev-parse", f"{tree.head}^{{tree}}").strip() if tree.head else None
        if new_tree == head_tree:
            return  # nothing of the fix lands on HEAD (it only touched untracked files)
        parents = ["-p", tree.head] if tree.head else []
        fix = self._git("commit-tree", new_tree, *parents,
                        "-m", f"decision-retry {self.run_id}: fix").strip()
        old = tree.head or self._git("mktree", input=b"").strip()  # unborn: the empty tree
        self.fix_diff = self._git("diff-tree", *PATCH_FLAGS, old, fix)
        if self.left_out:
            self.fix_diff += self._git("diff-tree", *PATCH_FLAGS, self.base_sha, result, "--",
                                       *self.left_out, env=literal)
        revs = f"{fix}\n" + (f"^{tree.head}\n" if tree.head else "")
        pack = git_bytes(self._tmp, "pack-objects", "--stdout", "--revs", "-q",
                         git_dir=self.git_dir, input=revs.encode())
        self.user.add_branch(self.branch, fix, pack)
        self.fix_sha = fix
