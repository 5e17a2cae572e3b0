"""Everything decision-retry does to the user's repository: read it, and at the end add one branch.

Reads: HEAD, the index, the list of tracked and untracked non-ignored files, their bytes. Writes:
the objects of the fix commit and the branch `decision-retry/<run-id>` (created, never moved),
and with `--apply` the changed files of the working tree. Nothing else: no index write, no
maintenance command (`worktree prune`, `gc`), no per-attempt refs. Every git call here is
neutralised (gitexec) and none runs a filter, a hook or an external diff.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from decision_retry.errors import BadInput, WorkspaceError
from decision_retry.repo.gitexec import git, git_bytes, show_toplevel, user_git_config


def repo_root(path: str | Path) -> Path:
    """The top level of the git working tree containing `path`; BadInput if there is none."""
    p = Path(path).expanduser()
    try:
        if not p.is_dir():
            raise BadInput(f"no such directory: {path}")
    except OSError as err:  # a name too long, a loop of links
        raise BadInput(f"not a usable directory: {path} ({err.strerror})") from None
    top = show_toplevel(p)
    if top is None:
        raise BadInput(f"not a git repository: {path}")
    if not top:
        raise BadInput(f"not a git working tree (bare repository?): {path}")
    return Path(top).resolve()


@dataclass(frozen=True)
class UserTree:
    """What the user's repository looked like when the run started."""

    head: str | None  # HEAD commit, None before the first commit
    tracked: frozenset[str]  # paths in HEAD or in the index
    files: tuple[str, ...]  # tracked and untracked non-ignored paths that exist now
    objects: Path  # the object directory (borrowed by the clone as an alternate)
    shallow: Path | None  # the `shallow` file of a shallow clone
    exclude: Path | None  # .git/info/exclude
    excludes_file: str | None  # the user's core.excludesFile


class UserRepo:
    """The user's repository at `root`, seen through neutralised git."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # git accepted this repository with the user's own config (safe.directory included)
        self.config = ("-c", f"safe.directory={root}")

    def git(self, *args: str, config: tuple[str, ...] = (), **kw) -> str:
        return git(self.root, *args, config=self.config + config, **kw)

    def git_bytes(self, *args: str, **kw) -> bytes:
        return git_bytes(self.root, *args, config=self.config, **kw)

    def head(self) -> str | None:
        try:
            return self.git("rev-parse", "--verify", "--quiet", "HEAD^{commit}").strip() or None
        except WorkspaceError:
            return None

    def branch_exists(self, *names: str) -> bool:
        return bool(self.git("for-each-ref", "--format=%(refname)", *names).strip())

    def capture(self) -> UserTree:
        """The list of the user's files as they see it (their ignore rules, tracked changes)."""
        excludes = user_git_config(self.root, "core.excludesFile")
        cfg = ("-c", f"core.excludesFile={excludes}") if excludes else ()
        listed = self.git("ls-files", "-z", "--cached", "--others", "--exclude-standard",
                          config=cfg)
        head = self.head()
        tracked = set(self.git("ls-files", "-z", "--cached").split("\0"))
        if head:
            tracked |= set(self.git("ls-tree", "-r", "-z", "--name-only", "--full-tree",
                                    head).split("\0"))
        files = tuple(p for p in dict.fromkeys(listed.split("\0"))
                      if p and os.path.lexists(self.root / p))
        common = Path(self.git("rev-parse", "--path-format=absolute", "--git-common-dir").strip())
        shallow, exclude = common / "shallow", common / "info" / "exclude"
        return UserTree(head=head, tracked=frozenset(tracked - {""}), files=files,
                        objects=common / "objects", shallow=shallow if shallow.is_file() else None,
                        exclude=exclude if exclude.is_file() else None, excludes_file=excludes)

    # -- the one write at the end -----------------------------------------------------------
    def add_branch(self, branch: str, sha: str, pack: bytes) -> None:
        """Store the objects of `pack` and create `refs/heads/<branch>` at `sha` (never moves one)."""
        if pack:
            self.git_bytes("unpack-objects", "-q", input=pack)
        self.git("update-ref", "-m", "decision-retry: fix", f"refs/heads/{branch}", sha, "")

    # -- --apply --------------------------------------------------------------------------------
    def dirty_reason(self) -> str | None:
        """Why the working tree is not exactly HEAD (None when it is), without running filters:
        the index against HEAD, untracked files, then every file's bytes against its blob."""
        head = self.head()
        if head is None:
            return "it has no commits"
        index = self.git("ls-files", "-z", "-s").split("\0")
        tree = self.git("ls-tree", "-r", "-z", "--full-tree", head).split("\0")
        entries = {}
        for line in filter(None, tree):  # "<mode> blob <sha>\t<path>"
            meta, path = line.split("\t", 1)
            mode, _, sha = meta.split(" ")
            entries[path] = (mode, sha)
        staged = {}
        for line in filter(None, index):  # "<mode> <sha> <stage>\t<path>"
            meta, path = line.split("\t", 1)
            mode, sha, _ = meta.split(" ")
            staged[path] = (mode, sha)
        if staged != entries:
            return "the index differs from HEAD"
        if self.git("ls-files", "-z", "--others", "--exclude-standard").strip("\0"):
            return "it has untracked files"
        algo = self.git("rev-parse", "--show-object-format").strip() or "sha1"
        for path, (mode, sha) in entries.items():
            if mode == "160000":
                continue  # a submodule: its own repository
            p = self.root / path
            try:
                data = os.readlink(p).encode() if p.is_symlink() else p.read_bytes()
            except OSError:
                return f"{path} is missing"
            if blob_id(data, algo) != sha or (mode == "120000") != p.is_symlink():
                return f"{path} has uncommitted changes"
        return None

    def apply(self, old: str, new: str) -> list[str]:
        """Write the files that differ between commits `old` (= the working tree) and `new`."""
        raw = self.git("diff-tree", "-r", "-z", "--raw", "--no-renames", "--no-ext-diff", old, new)
        fields = raw.split("\0")
        changed = []
        for meta, path in zip(fields[0::2], fields[1::2]):  # ":old new oldsha newsha S" path
            if not meta.startswith(":"):
                continue
            _, mode, _, sha, status = meta[1:].split(" ")
            target = self._safe_target(path)
            # never write through a link: a changed link, a removed or retyped file goes first
            if (status in ("D", "T") or target.is_symlink()) and os.path.lexists(target):
                target.unlink()
            if status != "D":
                data = self.git_bytes("cat-file", "blob", sha)
                target.parent.mkdir(parents=True, exist_ok=True)
                if mode == "120000":
                    os.symlink(data.decode(errors="surrogateescape"), target)
                else:
                    target.write_bytes(data)
                    target.chmod(0o755 if mode == "100755" else 0o644)
            changed.append(path)
        return changed

    def _safe_target(self, rel: str) -> Path:
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts or ".git" in parts:
            raise WorkspaceError(f"refusing to write {rel!r} in your repository")
        parent = (self.root / rel).parent.resolve()
        if parent != self.root and self.root not in parent.parents:
            raise WorkspaceError(f"refusing to write {rel!r}: it leads outside your repository")
        return self.root / rel


def blob_id(data: bytes, algo: str = "sha1") -> str:
    """The git object id of a blob with these bytes."""
    return hashlib.new(algo, b"blob %d\0" % len(data) + data).hexdigest()
