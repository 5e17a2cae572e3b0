"""Packages: decision_retry and its subpackages, plus agents/ shipped as package data.

The top-level `agents/` directory (agent definitions: prompts, action formats, limits, examples)
travels inside the wheel as `decision_retry.agents_data`; it is never a top-level package.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["decision_retry", "decision_retry.*"])
    + ["decision_retry.agents_data"],
    package_dir={"decision_retry.agents_data": "agents"},
    package_data={"decision_retry.agents_data": ["*.toml", "*.md", "examples/*.py"]},
)
