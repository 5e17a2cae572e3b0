"""What several test modules share: real git repositories in tmp dirs, the `decision-retry`
command in a subprocess, the scripted `fix` run on the units fixture, processes found in /proc,
and the DOM a headless chromium serialises. Test modules import from here, never from each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import torch

from decision_retry.agent.runner import FixConfig
from decision_retry.bench.harness import BenchConfig
from decision_retry.lm import Sampling
from decision_retry.samplers.chain import RetryConfig

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"

# 1) Files and git repositories.


def git(cwd: Path, *args: str, input_text: str | None = None) -> str:
    """Plain git as a user would run it: our own identity, branch main, none of the caller's
    GIT_* variables, no optional index refresh. Returns stdout; a failure raises."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_OPTIONAL_LOCKS"] = "0"
    config = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    proc = subprocess.run(["git", *config, *args], cwd=cwd, env=env, input=input_text,
                          capture_output=True, text=True, check=True)
    return proc.stdout


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_files(root: Path, files: Mapping[str, str], dedent: bool = False) -> Path:
    """`files` (relative path -> text, dedented if asked) written under root; returns root."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        write(root / rel, textwrap.dedent(text) if dedent else text)
    return root


def make_repo(root: Path, files: Mapping[str, str] | None = None, message: str = "initial") -> Path:
    """A git repository at root (created if missing) holding `files` and whatever root already
    held, all committed on main; returns root."""
    write_files(root, files or {})
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", message)
    return root


def fixture_repo(parent: Path, name: str, message: str = "initial") -> Path:
    """A committed copy of fixtures/NAME at parent/NAME, without its answer key (FIXTURE.json)."""
    repo = parent / name
    shutil.copytree(FIXTURES / name, repo, ignore=shutil.ignore_patterns("FIXTURE.json"))
    return make_repo(repo, message=message)


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
        "head_sha": git(repo, "rev-parse", "HEAD"),
        "index": hashlib.sha256((git_dir / "index").read_bytes()).hexdigest(),
        "stash": git(repo, "stash", "list", "--format=%H %s"),
        "branches": [
            b
            for b in git(repo, "branch", "--format=%(refname)").split()
            if not b.startswith("refs/heads/decision-retry/")
        ],
        "worktrees": git(repo, "worktree", "list", "--porcelain"),
        "refs": [r for r in git(repo, "for-each-ref", "--format=%(refname) %(objectname)")
                 .splitlines() if not r.startswith("refs/heads/decision-retry/")],
        "config": (git_dir / "config").read_bytes(),
    }


# 2) The command line and the scripted `fix` run.

# test commands started by the code under test load no third-party pytest plugins
NO_PLUGINS = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


def run_cli(*args, home: Path, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`decision-retry ARGS` in a subprocess with its own home (DECISION_RETRY_HOME)."""
    full = {**os.environ, **NO_PLUGINS, "DECISION_RETRY_HOME": str(home), **(env or {})}
    return subprocess.run([sys.executable, "-m", "decision_retry.cli", *map(str, args)],
                          capture_output=True, text=True, env=full, cwd=cwd, timeout=timeout,
                          check=False)


# The units fixture's bug is `- 32`; one choice point whose other branch is the fix.
UNITS_SCRIPT = [
    ('def celsius_to_fahrenheit(celsius: float) -> float:\n    """Degrees Celsius to degrees '
     'Fahrenheit."""\n    return celsius * 9 / 5 '),
    {"choice": {"-": 0.5, "+": 0.5}},
    " 32\n",
    "```",
]
# the bug written again every time: every attempt's tree is the starting tree
SAME_REPLY = [UNITS_SCRIPT[0], "- 32\n", "```"]


def fix_config(strategy="entropy-cut", seed=0, **kw) -> FixConfig:
    """The scripted runs' FixConfig: proposal temperature 1, 200 tokens, 12 attempts."""
    retry = RetryConfig(strategy=strategy, proposal_temperature=1.0)
    return FixConfig(retry=retry, seed=seed, budget_tokens=200, max_attempts=12, **kw)


def first_failing_seed(lm) -> int:
    """A seed whose first attempt at UNITS_SCRIPT writes the bug again, so the run rewinds."""
    state = lm.prefill([1])
    for seed in range(50):
        out = lm.extend(state, Sampling(temperature=1.0, max_new_tokens=10), gen(seed))
        if "- 32" in out.text:
            return seed
    raise AssertionError("no failing seed")


def bench_config(script: Path, **kw) -> BenchConfig:
    """A one-seed, one-worker bench of the fixtures suite on a scripted model; `kw` overrides."""
    base = {"suite": "fixtures", "seeds": (0,), "budget_tokens": 30,
            "model": f"scripted:{script}", "proposal_temperature": 1.0, "max_attempts": 4,
            "workers": 1}
    return BenchConfig(**{**base, **kw})


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# 3) Localisation: a small shop whose bug is in `a.normalise` (write it with dedent=True).

TEST_CMD = "python -m pytest -q -p no:cacheprovider"
# The bug is in `a.normalise`; `b.normalise` has the same name; the failing test asserts on the
# result (no library frame in the traceback) and calls a helper and the class first.
SHOP = {
    "pyproject.toml": "[tool.pytest.ini_options]\npythonpath = ['.']\n",
    "shop/__init__.py": "",
    "shop/a.py": """
        def normalise(prices):
            total = sum(prices)
            return [p / (total + 1) for p in prices]


        def label(x):
            return f"{x:.2f}"
    """,
    "shop/b.py": """
        def normalise(names):
            return [n.strip().lower() for n in names]
    """,
    "shop/cart.py": """
        from shop.a import label, normalise
        from shop.b import normalise as clean


        class Cart:
            def __init__(self, prices, names=()):
                self.prices = list(prices)
                self.names = clean(names)

            def shares(self):
                return normalise(self.prices)

            def labels(self):
                return [label(p) for p in self.prices]
    """,
    "tests/test_cart.py": """
        from shop.cart import Cart


        def test_labels():
            assert Cart([1, 2], [" A "]).labels() == ["1.00", "2.00"]


        def test_names():
            assert Cart([], [" A "]).names == ["a"]


        def test_shares():
            cart = Cart([1, 3], [" x "])
            assert cart.labels()
            assert cart.shares() == [0.25, 0.75]
    """,
}


# 4) Processes (Linux /proc): what a benchmark left behind.


def no_bwrap_path(tmp: Path, more: tuple[str, ...] = ()) -> str:
    """A PATH with the programs a bench needs (git, unshare), `more`, and no bubblewrap."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for prog in ("git", "unshare", *more):
        found = shutil.which(prog)
        if found:
            (bin_dir / prog).symlink_to(found)
    return str(bin_dir)


def ours(marker: str, tmpdir: Path, session: int | None = None) -> list[int]:
    """Live processes whose command line carries `marker`, whose cwd lies under `tmpdir`, or
    that belong to `session` (the bench and its pool workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            state, sid = fields[0], int(fields[3])  # state ppid pgrp session ...
            cwd = os.readlink(entry / "cwd") if marker not in cmdline else ""
        except OSError:  # gone, or not ours to read
            continue
        if state == "Z":
            continue
        if marker in cmdline or cwd.startswith(str(tmpdir)) or sid == session:
            found.append(int(entry.name))
    return found


def wait_for(check, limit_s: float, what: str):
    """Poll `check` until it returns something true (a safety limit, not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting for {what}")


# 5) A page as headless chromium renders it: the DOM after its scripts ran.

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class Element:
    def __init__(self, tag: str, attrs: dict[str, str], ancestors: list[Element]) -> None:
        self.tag, self.attrs, self.ancestors = tag, attrs, ancestors
        self.classes = set(attrs.get("class", "").split())
        self.text = ""


class DomCollector(HTMLParser):
    """Every element of a serialised DOM with its attributes, ancestors and own text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.stack: list[Element] = []

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {k: v or "" for k, v in attrs}, list(self.stack))
        self.elements.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_endtag(self, tag):
        while self.stack:  # tolerate implied closes
            if self.stack.pop().tag == tag:
                break

    def handle_data(self, data):
        if self.stack:
            self.stack[-1].text += data

    def select(
        self, tag: str | None = None, cls: str | None = None, inside: str | None = None
    ) -> list[Element]:
        return [
            e
            for e in self.elements
            if (tag is None or e.tag == tag)
            and (cls is None or cls in e.classes)
            and (inside is None or any(a.attrs.get("id") == inside for a in e.ancestors))
        ]


def dump_dom(page: Path, profile: Path) -> DomCollector:
    """Load `page` in headless chromium and parse the DOM it serialises after scripts ran."""
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    dom = DomCollector()
    dom.feed(out.stdout)
    return dom


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet loopback request handler that answers JSON (`reply`): the base of the fake
    servers the remote-engine tests run on 127.0.0.1."""

    def log_message(self, *a):
        pass

    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
