"""Find the project's Python: the interpreter a leading `python` of the test command means.

The first that applies, in this order:
1) `--python PATH` (an interpreter, or a virtualenv directory), else the interpreter the test
   command starts with when it names one by path (`.venv/bin/python -m pytest`);
2) the active `VIRTUAL_ENV` when it lies inside the repository (the user chose it for this project);
3) the repository's `.venv/` or `venv/` (in the user's repository: the private clone has no
   ignored directories);
4) the active `VIRTUAL_ENV` elsewhere, unless it is decision-retry's own environment (activated
   to run decision-retry, not the project);
5) the environment uv, Poetry or Hatch made for the project, where the project uses that tool
   (`uv.lock` and `UV_PROJECT_ENVIRONMENT`; `poetry.lock` with `poetry` on PATH; `[tool.hatch.envs]`
   or `hatch.toml` with `hatch` on PATH), when that environment exists: nothing is created;
6) decision-retry's own interpreter, with pytest's plugin autoload off, so the pytest plugins of
   decision-retry's dependencies do not load into the project's tests (about 3 s a run).

A candidate is checked by running it once (`-c` printing its prefixes and path, 20 s at most);
an explicit or in-repository environment that does not run is BadInput, one line.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from decision_retry.errors import BadInput

PROBE_TIMEOUT_S = 20.0
TOOL_TIMEOUT_S = 20.0  # `poetry env info -p`, `hatch env find`
AUTOLOAD = "PYTEST_DISABLE_PLUGIN_AUTOLOAD"
_PROBE = ("import importlib.util as u, json, sys; print(json.dumps({'prefix': sys.prefix, "
          "'base_prefix': sys.base_prefix, 'path': [p for p in sys.path if p], 'version': "
          "'%d.%d.%d' % sys.version_info[:3], 'coverage': u.find_spec('coverage') is not None}))")


@dataclass(frozen=True)
class ProjectPython:
    """The interpreter the tests run with, where it came from and what the sandbox must show."""

    executable: str  # absolute, not resolved (a venv's python is a link out of the venv)
    origin: str  # how it was found, for the one line: "the repository's .venv", "--python", ...
    prefix: str = ""
    base_prefix: str = ""
    paths: tuple[str, ...] = ()  # its sys.path: read-only in the sandbox
    version: str = ""
    has_coverage: bool = False
    own: bool = False  # decision-retry's own interpreter: the project has no environment
    repo: str = ""  # the user's repository: a relative `.venv/bin/python` resolves there
    hint: str = field(default="", compare=False)  # what would give the project an environment
    extra_path: tuple[str, ...] = ()  # first on PYTHONPATH (covrun: a borrowed `coverage`)

    @property
    def is_venv(self) -> bool:
        return bool(self.prefix) and self.prefix != self.base_prefix

    @property
    def note(self) -> str:
        """The one line a run prints at its start."""
        line = f"python: {self.executable} ({self.origin}"
        if self.own:
            line += "; pytest plugins not autoloaded"
        return line + (f"; {self.hint}" if self.hint else "") + ")"

    def read_paths(self) -> set[str]:
        """Directories a sandboxed test run must be able to read for this interpreter to work."""
        exe = Path(self.executable)
        found = {self.prefix, self.base_prefix, *self.paths, str(exe.parent),
                 str(exe.resolve().parent)}
        return {p for p in found if p and os.path.isabs(p) and os.path.exists(p)}

    def environment(self, inherited: Mapping[str, str], cwd: str | Path) -> dict[str, str]:
        """What a test run in the clone `cwd` adds to its environment: a virtualenv activated
        (VIRTUAL_ENV, its bin/ first on PATH); the clone's copy of every path entry that points
        into the user's repository (an editable install of the project: the tests must import
        the clone, not the user's checkout) and `extra_path` first on PYTHONPATH; for our own
        interpreter, pytest's plugin autoload off unless the user set it."""
        out: dict[str, str] = {}
        if self.own and AUTOLOAD not in inherited:
            out[AUTOLOAD] = "1"
        if self.is_venv and not self.own:
            path = inherited.get("PATH", os.defpath)
            out["VIRTUAL_ENV"] = self.prefix
            out["PATH"] = os.pathsep.join([str(Path(self.executable).parent), path])
        front = [*self.extra_path, *self._in_clone(Path(cwd))]
        if front:
            out["PYTHONPATH"] = os.pathsep.join(
                [*front, *filter(None, [inherited.get("PYTHONPATH")])])
        return out

    def _in_clone(self, clone: Path) -> list[str]:
        """The clone's counterparts of the path entries inside the user's repository."""
        if not self.repo or self.own:
            return []
        repo, out = Path(self.repo).resolve(), []
        for p in self.paths:
            try:
                rel = Path(p).resolve().relative_to(repo)
            except (OSError, ValueError):
                continue
            if (clone / rel).is_dir() and str(clone / rel) not in out:
                out.append(str(clone / rel))
        return out


def own(repo: str | Path = "", hint: str = "") -> ProjectPython:
    """decision-retry's own interpreter (no probe: it is the one running)."""
    import importlib.util

    return ProjectPython(sys.executable, "decision-retry's own: no project environment found",
                         sys.prefix, sys.base_prefix, tuple(p for p in sys.path if p),
                         platform.python_version(),
                         importlib.util.find_spec("coverage") is not None, own=True,
                         repo=str(repo), hint=hint)


def find(repo: str | Path, explicit: str | None = None, *, test_cmd: str | None = None,
         environ: Mapping[str, str] | None = None) -> ProjectPython:
    """The project's Python for the repository `repo` (the user's, not the clone); BadInput
    when `explicit` or the repository's own environment is missing or does not run. A
    `test_cmd` that starts with an interpreter's path (`/x/venv/bin/python -m pytest`) names it
    when `explicit` does not: the coverage run then uses it too."""
    repo = Path(repo).resolve()
    environ = os.environ if environ is None else environ
    if explicit:  # 1) --python
        given = Path(explicit).expanduser().absolute()
        exe = _env_python(given) if given.is_dir() else given
        if exe is None or not (exe.is_file() and os.access(exe, os.X_OK)):
            raise BadInput(f"--python {explicit}: no such interpreter")
        return probe(exe, "--python", repo, what=f"--python {explicit}")
    if (named := _command_python(test_cmd, repo)) is not None:  # 1b) --test-cmd names one
        return probe(named, "named by --test-cmd", repo, what=f"--test-cmd's {named}")
    active = environ.get("VIRTUAL_ENV")
    active_dir = Path(active).absolute() if active else None
    if active_dir and active_dir.resolve().is_relative_to(repo):  # 2) activated, in the repo
        return _venv(active_dir, f"the active VIRTUAL_ENV, {_rel(active_dir, repo)}", repo)
    for name in (".venv", "venv"):  # 3) the repository's own
        if (repo / name / "pyvenv.cfg").is_file() or _env_python(repo / name):
            return _venv(repo / name, f"the repository's {name}", repo)
    if active_dir and active_dir.is_dir() and not _same(active_dir, sys.prefix):  # 4)
        return _venv(active_dir, "the active VIRTUAL_ENV", repo)
    found, hint = _tool_env(repo, environ)  # 5) uv, Poetry, Hatch
    if found:
        return found
    return own(repo, hint)  # 6)


def probe(exe: Path, origin: str, repo: Path, *, what: str, advice: str = "") -> ProjectPython:
    """Run `exe` once to learn its prefixes and path; BadInput (naming `what`) if it cannot."""
    try:
        proc = subprocess.run([str(exe), "-c", _PROBE], cwd="/", stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired:
        raise BadInput(f"{what} does not run: no answer within {PROBE_TIMEOUT_S:g}s"
                       f"{advice}") from None
    except OSError as err:
        raise BadInput(f"{what} does not run: {err.strerror or err}{advice}") from None
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise BadInput(f"{what} does not run: {why[:200]}{advice}") from None
    return ProjectPython(str(exe), origin, info["prefix"], info["base_prefix"],
                         tuple(info["path"]), info["version"], info["coverage"], repo=str(repo))


def _venv(root: Path, origin: str, repo: Path) -> ProjectPython:
    """The environment at `root`, probed; BadInput when it has no interpreter that runs."""
    exe = _env_python(root)
    if exe is None:
        link = root / "bin" / "python"
        why = (f"bin/python points to {os.readlink(link)}, which is gone" if link.is_symlink()
               else "it has no bin/python")
        raise BadInput(f"{origin} ({root}) is broken: {why}; recreate it, or pass --python")
    return probe(exe, origin, repo, what=f"{origin} ({exe})",
                 advice="; recreate it, or pass --python")


def _command_python(test_cmd: str | None, repo: Path) -> Path | None:
    """The interpreter a test command starts with when given as a path (`.venv/bin/python`,
    relative to the repository, or absolute), if it exists; None for `python`, `pytest`, ..."""
    try:
        words = shlex.split(test_cmd or "")
    except ValueError:
        return None
    if not words or "/" not in words[0] or not Path(words[0]).name.startswith("python"):
        return None
    exe = repo / Path(words[0]).expanduser()  # an absolute path stays itself
    return exe if exe.is_file() and os.access(exe, os.X_OK) else None


def _env_python(root: Path) -> Path | None:
    """The `bin/python` (or `bin/python3`) of the environment directory `root`, if executable."""
    for exe in (root / "bin" / "python", root / "bin" / "python3"):
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe
    return None


def _tool_env(repo: Path, environ: Mapping[str, str]) -> tuple[ProjectPython | None, str]:
    """(the environment uv, Poetry or Hatch made for this project, or None; a hint when the
    project uses one of them but its environment does not exist yet)."""
    pyproject = (repo / "pyproject.toml").read_text(errors="replace") \
        if (repo / "pyproject.toml").is_file() else ""
    if (repo / "uv.lock").is_file():  # uv's environment: UV_PROJECT_ENVIRONMENT, else .venv
        target = environ.get("UV_PROJECT_ENVIRONMENT")
        if target and _env_python(repo / target):
            return _venv(repo / target, "uv's UV_PROJECT_ENVIRONMENT", repo), ""
        return None, "uv.lock but no environment: `uv sync` makes one"
    if (repo / "poetry.lock").is_file() and shutil.which("poetry"):
        path = _ask(["poetry", "env", "info", "-p"], repo)
        if path and _env_python(Path(path)):
            return _venv(Path(path), "Poetry's environment", repo), ""
        return None, "poetry.lock but no environment: `poetry install` makes one"
    if ((repo / "hatch.toml").is_file() or "[tool.hatch.envs" in pyproject) \
            and shutil.which("hatch"):
        path = _ask(["hatch", "env", "find"], repo)
        if path and _env_python(Path(path)):
            return _venv(Path(path), "Hatch's default environment", repo), ""
        return None, "Hatch environments configured but none created: `hatch env create`"
    return None, ""


def _ask(argv: list[str], repo: Path) -> str | None:
    """The last line a project tool prints, or None when it fails or takes too long."""
    try:
        proc = subprocess.run(argv, cwd=repo, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=TOOL_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = proc.stdout.strip().splitlines()
    return lines[-1].strip() if proc.returncode == 0 and lines else None


def _same(a: Path, b: str) -> bool:
    try:
        return a.resolve() == Path(b).resolve()
    except OSError:
        return False


def _rel(path: Path, repo: Path) -> str:
    try:
        return str(path.resolve().relative_to(repo))
    except ValueError:
        return str(path)
