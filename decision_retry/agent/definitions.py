"""Agent definitions (prompts, action format, limits) loaded from the package data in
`decision_retry/prompts/`."""

from __future__ import annotations

import tomllib
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from pydantic import BaseModel, ConfigDict

from decision_retry.errors import BadInput


class AgentDefinition(BaseModel):
    """One agent protocol as data: prompt templates, output format, limits."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    limits: dict[str, int | float]  # counts; fit_shown is a ratio
    format: dict[str, Any]
    prompt: dict[str, str]

    @property
    def stop(self) -> tuple[str, ...]:
        return tuple(self.format.get("stop", ()))

    @property
    def stop_regex(self) -> str | None:
        return self.format.get("stop_regex")


def prompts_dir() -> Traversable:
    """The package data directory `decision_retry/prompts/` (in a checkout, a wheel or a zip)."""
    return resources.files("decision_retry.prompts")


def load(name: str) -> AgentDefinition:
    """The definition `decision_retry/prompts/<name>.toml`."""
    path = prompts_dir() / f"{name}.toml"
    if not path.is_file():
        raise BadInput(f"unknown agent protocol {name!r} (no {name}.toml in decision_retry/prompts)")
    return AgentDefinition.model_validate(tomllib.loads(path.read_text()))
