"""Packages: decision_retry and its subpackages; agents/ copied into the wheel as data.

The top-level `agents/` directory (agent definitions: prompts, action formats, limits, examples)
is data, not an importable package. A wheel carries a copy at `decision_retry/agents_data/`
(copied by the build_py below, so setuptools sees no package mapping); an editable install or a
checkout reads `agents/` in place (decision_retry.agent.definitions.agents_dir).
"""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

AGENTS = Path(__file__).parent / "agents"


class build_py_with_agents(build_py):
    """build_py, then agents/ -> <build_lib>/decision_retry/agents_data/ (not for editable)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "decision_retry" / "agents_data"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(AGENTS, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(
    packages=find_packages(include=["decision_retry", "decision_retry.*"]),
    cmdclass={"build_py": build_py_with_agents},
)
