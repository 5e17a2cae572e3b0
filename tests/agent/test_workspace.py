"""The private worktree: the user's repository stays byte-identical; snapshots restore exactly."""

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from decision_retry.agent.workspace import PathError, Workspace
from decision_retry.errors import BadInput, WorkspaceError


def sh_git(cwd: Path, *args: str) -> str:
    """Plain git as a user would run it (our own identity; no optional index refresh)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    config = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    proc = subprocess.run(
        ["git", *config, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file below root except .git, ignored ones included: path -> sha256 (or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            out[rel] = (
                "link:" + os.readlink(p)
                if p.is_symlink()
                else hashlib.sha256(p.read_bytes()).hexdigest()
            )
    return out


def repo_state(repo: Path) -> dict:
    """Everything of the user's that must survive a run: files, HEAD, index, stash, branches."""
    git_dir = repo / ".git"
    return {
        "files": tree_hashes(repo),
        "HEAD": (git_dir / "HEAD").read_text(),
        "head_sha": sh_git(repo, "rev-parse", "HEAD"),
        "index": hashlib.sha256((git_dir / "index").read_bytes()).hexdigest(),
        "stash": sh_git(repo, "stash", "list", "--format=%H %s"),
        "branches": [
            b
            for b in sh_git(repo, "branch", "--format=%(refname)").split()
            if not b.startswith("refs/heads/decision-retry/")
        ],
        "worktrees": sh_git(repo, "worktree", "list", "--porcelain"),
    }


@pytest.fixture
def user_repo(tmp_path: Path) -> Path:
    """A repository in a messy state: stash entry, staged, modified, untracked and ignored files."""
    repo = tmp_path / "user"
    repo.mkdir()
    sh_git(repo, "init", "-q")
    write(repo / ".gitignore", "*.log\nsecrets/\n")
    write(repo / "calc.py", "def add(a, b):\n    return a - b\n")
    write(repo / "pkg" / "util.py", "X = 1\n")
    write(repo / "README.md", "hello\n")
    sh_git(repo, "add", "-A")
    sh_git(repo, "commit", "-q", "-m", "initial")
    write(repo / "README.md", "stashed change\n")
    sh_git(repo, "stash", "push", "-q", "-m", "user stash")
    write(repo / "pkg" / "util.py", "X = 2\n")  # staged ...
    sh_git(repo, "add", "pkg/util.py")
    write(repo / "pkg" / "util.py", "X = 3\n")  # ... then modified again
    write(repo / "staged_new.py", "Y = 1\n")
    sh_git(repo, "add", "staged_new.py")
    write(repo / "calc.py", "def add(a, b):\n    return a - b  # user edit\n")  # unstaged
    write(repo / "notes.txt", "untracked\n")
    write(repo / "debug.log", "ignored\n")
    write(repo / "secrets" / "key.txt", "ignored secret\n")
    return repo


def test_full_lifecycle_leaves_user_repo_byte_identical(user_repo: Path) -> None:
    before = repo_state(user_repo)
    with Workspace(user_repo, "run1") as ws:
        # the starting point is the user's working tree, not HEAD
        assert ws.read_file("calc.py").endswith("# user edit\n")
        assert ws.read_file("pkg/util.py") == "X = 3\n"
        assert {"notes.txt", "staged_new.py"} <= set(ws.list_files())
        assert not (ws.root / "debug.log").exists() and not (ws.root / "secrets").exists()
        assert user_repo not in ws.root.parents

        s1 = ws.snapshot("before edit")
        ws.write_file("calc.py", "def add(a, b):\n    return a + b\n")
        ws.write_file("new/module.py", "Z = 1\n")
        ws.snapshot("after edit")
        ws.restore(s1)
        ws.write_file("calc.py", "def add(a, b):\n    return a + b\n")
        root = ws.root
        fix = ws.finish(success=True)

    assert repo_state(user_repo) == before
    assert not root.exists()
    assert sh_git(user_repo, "rev-parse", "decision-retry/run1").strip() == fix
    assert "+    return a + b" in sh_git(user_repo, "diff", f"{fix}~1", fix)
    assert len(sh_git(user_repo, "for-each-ref", "refs/decision-retry/run1/").splitlines()) == 3


def test_restore_is_exact(user_repo: Path) -> None:
    with Workspace(user_repo, "run2") as ws:
        start = tree_hashes(ws.root)
        ws.write_file("calc.py", "changed\n")
        snap = ws.snapshot("changed")
        at_snap = tree_hashes(ws.root)

        ws.write_file("calc.py", "changed again\n")
        ws.write_file("deep/dir/extra.py", "new\n")
        ws.write_file("later.log", "ignored but new\n")
        (ws.root / "README.md").unlink()
        (ws.root / "pkg").rename(ws.root / "pkg_moved")

        ws.restore(snap)
        assert tree_hashes(ws.root) == at_snap
        ws.restore(ws.base_sha)
        assert tree_hashes(ws.root) == start


def test_diff_from_start_and_from_a_snapshot(user_repo: Path) -> None:
    with Workspace(user_repo, "run3") as ws:
        ws.write_file("calc.py", "def add(a, b):\n    return a + b\n")
        snap = ws.snapshot("fixed add")
        ws.write_file("extra.py", "E = 1\n")
        full = ws.diff()
        assert "-    return a - b  # user edit" in full and "+    return a + b" in full
        assert "+E = 1" in full
        since = ws.diff(snap)
        assert "extra.py" in since and "calc.py" not in since


@pytest.mark.parametrize(
    "bad", ["../escape.txt", "a/../../escape.txt", "/etc/passwd", ".git/config", "", "pkg/../.."]
)
def test_unsafe_paths_are_rejected(user_repo: Path, bad: str) -> None:
    with Workspace(user_repo, "run4") as ws:
        with pytest.raises(PathError):
            ws.write_file(bad, "x")
        with pytest.raises(PathError):
            ws.read_file(bad)


def test_symlink_escape_is_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside / "secret.txt", "outside\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    sh_git(repo, "init", "-q")
    write(repo / "inside.txt", "inside\n")
    (repo / "out").symlink_to(outside, target_is_directory=True)
    (repo / "out_file").symlink_to(outside / "secret.txt")
    (repo / "in_link").symlink_to("inside.txt")
    (repo / "git_link").symlink_to(".git")
    sh_git(repo, "add", "-A")
    sh_git(repo, "commit", "-q", "-m", "links")

    with Workspace(repo, "run5") as ws:
        for bad in ("out/secret.txt", "out/new.txt", "out_file"):
            with pytest.raises(PathError, match="escapes"):
                ws.write_file(bad, "pwned\n")
        with pytest.raises(PathError, match=".git"):
            ws.write_file("git_link", "gitdir: /elsewhere\n")
        with pytest.raises(PathError, match="escapes"):
            ws.read_file("out_file")
        assert ws.read_file("in_link") == "inside\n"  # a link that stays inside is fine
    assert (outside / "secret.txt").read_text() == "outside\n"
    assert not (outside / "new.txt").exists()


def test_apply_to_a_clean_user_tree(tmp_path: Path) -> None:
    repo = tmp_path / "clean"
    repo.mkdir()
    sh_git(repo, "init", "-q")
    write(repo / "calc.py", "def add(a, b):\n    return a - b\n")
    sh_git(repo, "add", "-A")
    sh_git(repo, "commit", "-q", "-m", "initial")
    head = sh_git(repo, "rev-parse", "HEAD")

    with Workspace(repo, "run6") as ws:
        assert ws.base_sha == head.strip()  # a clean tree starts from HEAD itself
        ws.write_file("calc.py", "def add(a, b):\n    return a + b\n")
        ws.finish(success=True)
        ws.apply_to_user_tree()

    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert sh_git(repo, "rev-parse", "HEAD") == head
    assert sh_git(repo, "diff", "--cached") == ""  # the index still matches HEAD


def test_apply_refuses_a_dirty_user_tree(user_repo: Path) -> None:
    with Workspace(user_repo, "run7") as ws:
        ws.write_file("calc.py", "fixed\n")
        ws.finish(success=True)
        before = repo_state(user_repo)
        with pytest.raises(BadInput, match="uncommitted changes") as err:
            ws.apply_to_user_tree()
    assert err.value.exit_code == 2 and "\n" not in str(err.value)
    assert repo_state(user_repo) == before


def test_finish_with_an_earlier_snapshot(user_repo: Path) -> None:
    ws = Workspace(user_repo, "run13").open()
    ws.write_file("calc.py", "good\n")
    good = ws.snapshot("")  # an empty label is fine
    ws.write_file("calc.py", "worse\n")
    fix = ws.finish(success=True, sha=good)
    assert sh_git(user_repo, "show", f"{fix}:calc.py") == "good\n"
    assert sh_git(user_repo, "rev-parse", f"{fix}^").strip() == ws.base_sha
    with pytest.raises(WorkspaceError, match="already finished"):
        ws.open()


def test_failed_run_leaves_no_branch_and_no_worktree(user_repo: Path) -> None:
    with pytest.raises(RuntimeError), Workspace(user_repo, "run8", keep_snapshots=False) as ws:
        ws.write_file("calc.py", "broken\n")
        ws.snapshot("one")
        root = ws.root
        raise RuntimeError("agent crashed")
    assert not root.exists()
    assert sh_git(user_repo, "branch", "--list", "decision-retry/*") == ""
    assert sh_git(user_repo, "for-each-ref", "refs/decision-retry/") == ""
    assert len(sh_git(user_repo, "worktree", "list").splitlines()) == 1


def test_repository_without_commits(tmp_path: Path) -> None:
    repo = tmp_path / "fresh"
    repo.mkdir()
    sh_git(repo, "init", "-q")
    write(repo / "main.py", "print('hi')\n")
    before = tree_hashes(repo)
    with Workspace(repo, "run9") as ws:
        assert ws.read_file("main.py") == "print('hi')\n"
        ws.write_file("main.py", "print('bye')\n")
        fix = ws.finish(success=True)
    assert tree_hashes(repo) == before
    assert sh_git(repo, "show", f"{fix}:main.py") == "print('bye')\n"
    assert sh_git(repo, "rev-list", "--count", fix).strip() == "2"  # starting point + fix


def test_bad_inputs_are_one_line(tmp_path: Path, user_repo: Path) -> None:
    (tmp_path / "plain").mkdir()
    for path, message in [
        (tmp_path / "plain", "not a git repository"),
        (tmp_path / "missing", "no such directory"),
    ]:
        with pytest.raises(BadInput, match=message) as err:
            Workspace(path, "run10")
        assert err.value.exit_code == 2 and "\n" not in str(err.value)
    with pytest.raises(BadInput, match="invalid run id"):
        Workspace(user_repo, "bad..id")
    with Workspace(user_repo, "run11") as ws:
        ws.finish(success=True)
    with pytest.raises(BadInput, match="already used"):
        Workspace(user_repo, "run11")


def test_list_files_below_a_folder(user_repo: Path) -> None:
    with Workspace(user_repo, "run12") as ws:
        ws.write_file("pkg/sub/new.py", "N = 1\n")
        (ws.root / "README.md").unlink()
        assert ws.list_files("pkg") == ["pkg/sub/new.py", "pkg/util.py"]
        assert "README.md" not in ws.list_files()
        with pytest.raises(PathError):
            ws.list_files("..")
