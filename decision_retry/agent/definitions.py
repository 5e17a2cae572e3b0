"""Agent definitions (prompts, action format, limits) loaded from the `agents/` data files."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from decision_retry.errors import BadInput


class AgentDefinition(BaseModel):
    """One agent protocol as data: prompt templates, output format, limits."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    limits: dict[str, int]
    format: dict[str, Any]
    prompt: dict[str, str]

    @property
    def stop(self) -> tuple[str, ...]:
        return tuple(self.format.get("stop", ()))

    @property
    def stop_regex(self) -> str | None:
        return self.format.get("stop_regex")


def agents_dir() -> Path:
    """A wheel carries agents/ as decision_retry/agents_data/ (setup.py copies it); a checkout
    or an editable install reads the top-level agents/ in place."""
    packaged = Path(__file__).resolve().parents[1] / "agents_data"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "agents"


def load(name: str) -> AgentDefinition:
    """The definition `agents/<name>.toml`."""
    path = agents_dir() / f"{name}.toml"
    if not path.is_file():
        raise BadInput(f"unknown agent protocol {name!r} (no {path})")
    return AgentDefinition.model_validate(tomllib.loads(path.read_text()))
