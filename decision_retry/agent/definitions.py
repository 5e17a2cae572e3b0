"""Agent definitions (prompts, action format, limits) loaded from the `agents/` data files."""

from __future__ import annotations

import importlib.resources
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
    """Installed wheels carry agents/ as `decision_retry.agents_data`; a checkout has it at the root."""
    try:
        return Path(str(importlib.resources.files("decision_retry.agents_data")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "agents"


def load(name: str) -> AgentDefinition:
    """The definition `agents/<name>.toml`."""
    path = agents_dir() / f"{name}.toml"
    if not path.is_file():
        raise BadInput(f"unknown agent protocol {name!r} (no {path})")
    return AgentDefinition.model_validate(tomllib.loads(path.read_text()))
