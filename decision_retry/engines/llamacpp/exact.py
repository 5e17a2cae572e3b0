"""The largest chunk whose logits equal one-token decoding bitwise: measured per model, cached.

A scoring pass feeds a row's tokens in chunks; the MH ratio compares those log-probs with the
ones decoding recorded, one token per `llama_decode`, so both must be the same numbers. Which
chunk sizes give them depends on the model's tensor types, the library build, the CPU's
instruction set and the thread count (memory.py, "Exactness"), so the engine measures it:

1) a probe context over the loaded model (the engine's batch size, threads and unified KV
   cache; 256 cells, 3 sequences), a fixed text's first PREFIX ids prefilled in one decode;
2) the reference: the next 2 x max(candidates) ids decoded one per `llama_decode`;
3) each candidate from the largest: the same ids in chunks of that size from the same prefix
   (a fork of it), each chunk's logits compared with the reference's by `torch.equal`; the
   first candidate whose every chunk is equal wins (1 if none is: one token per decode).

About 2 s on SmolLM2-135M and 10 s on Qwen2.5-Coder-1.5B (1 thread), so the result is cached
in `<models cache>/exact-chunk/`, one JSON file per key: the model file (path, size, mtime),
the library (version, size of its .so), the thread count, the CPU (model name, a hash of its
flags) and the probe itself. A file that cannot be read, parsed or does not match is measured
again; a cache that cannot be written is skipped. `$DECISION_RETRY_EXACT_CHUNK` (or the
engine's `exact_chunk=`) forces a size and skips both, e.g. to trade exactness for speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from decision_retry.engines.llamacpp import lib as L
from decision_retry.engines.llamacpp.memory import N_BATCH, Memory, new_context
from decision_retry.errors import BadInput, ModelLoadError

ENV = "DECISION_RETRY_EXACT_CHUNK"
CANDIDATES = (32, 16, 8, 4, 3, 2, 1)
PREFIX = 24  # ids prefilled before the probed ones
PROBE = 1  # the probe's version, part of the cache key: bump when the measurement changes
# any text works (only the arithmetic path is probed); code and prose, like a reply
TEXT = '''def mean(xs):
    """The arithmetic mean of a non-empty sequence of numbers."""
    if not xs:
        raise ValueError("mean() of an empty sequence")
    return sum(xs) / len(xs)

The function above divides the sum of the values by their count; it raises on an empty list
instead of dividing by zero, and returns a float even when every value is an integer.
'''


@dataclass(frozen=True)
class ExactChunk:
    """The chunk size a scoring pass uses, where it came from ("probe", "cache" or "forced"),
    and what the probe found: (candidate, equal to one-token decoding) from the largest, and
    how long it took (seconds of wall time)."""

    size: int
    source: str
    tried: tuple[tuple[int, bool], ...] = ()
    seconds: float | None = None


def forced(value: int | None) -> int | None:
    """The size forced by the constructor argument, else by $DECISION_RETRY_EXACT_CHUNK, else None."""
    if value is not None:
        if not 1 <= value <= N_BATCH:
            raise ValueError(f"exact_chunk={value}: need 1..{N_BATCH}")
        return value
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= N_BATCH:
        raise BadInput(f"${ENV}={raw!r}: need a whole number of tokens, 1..{N_BATCH}")
    return int(raw)


def measure(model: int, ids: Sequence[int], *, n_vocab: int, threads: int,
            candidates: Sequence[int] = CANDIDATES) -> ExactChunk:
    """Probe the loaded model (the steps in the module docstring); `ids`: any token ids."""
    t0 = time.perf_counter()
    order = sorted(set(candidates), reverse=True)
    if not order or order[-1] < 1 or order[0] > N_BATCH or not ids:
        raise ValueError(f"candidates {list(candidates)} must lie in 1..{N_BATCH}, with ids to feed")
    k = 2 * order[0]  # probed ids: two chunks of the largest candidate
    text = list(ids) * (1 + (PREFIX + k) // len(ids))
    prefix, probe = text[:PREFIX], text[PREFIX:PREFIX + k]
    n_ctx = -(-(PREFIX + 2 * k) // 256) * 256  # the prefix, the reference and one candidate
    ctx = new_context(model, n_ctx=n_ctx, n_seq_max=3, chunk=order[0], threads=threads)
    if ctx is None:
        raise ModelLoadError(f"llama.cpp could not create a probe context (n_ctx={n_ctx}): {L.last_error()}")
    # three sequences: the prefix, the reference, a candidate (so nothing is ever evicted)
    memory = Memory(None, ctx, n_seq=3, n_batch=N_BATCH, chunk=order[0])  # frees ctx, not model
    try:
        # 1) the prefix, in one decode
        base = memory.prefill(prefix)
        # 2) the reference, one token per decode, computed as far as a comparison needs it
        line, ref = memory.fork(base, PREFIX), []  # ref[i]: (V,) logits after probe[i]

        def reference(start: int, stop: int) -> torch.Tensor:
            while len(ref) < stop:
                i = len(ref)
                memory.feed([line], [probe[i]], [PREFIX + i], outputs=True)
                ref.append(memory.logits(1, n_vocab)[0])
            return torch.stack(ref[start:stop])  # (stop - start, V)

        # 3) each candidate in chunks from the same prefix, until its first unequal chunk
        tried = []
        for c in order:
            row, equal = memory.fork(base, PREFIX), True
            for start in range(0, k - k % c, c):
                want = reference(start, start + c)  # first: it decodes too
                memory.feed([row] * c, probe[start:start + c], range(PREFIX + start, PREFIX + start + c),
                            outputs=True)
                if not torch.equal(memory.logits(c, n_vocab), want):
                    equal = False
                    break
            del row  # its cells go back before the next candidate's
            tried.append((c, equal))
            if equal:
                break
    finally:
        memory.close()
    size = next((c for c, equal in tried if equal), 1)
    return ExactChunk(size, "probe", tuple(tried), round(time.perf_counter() - t0, 3))


# -- the cache on disk ---------------------------------------------------------------------
def cpu() -> dict:
    """The CPU as its arithmetic sees it: model name and a hash of its feature flags."""
    name = flags = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key == "model name" and name is None:
                    name = value
                elif key in ("flags", "Features") and flags is None:  # x86, Arm
                    flags = value
    except OSError:  # not Linux: the names platform gives
        pass
    return {"name": name or platform.processor() or platform.machine(),
            "flags": hashlib.sha256((flags or "").encode()).hexdigest()[:16]}


def cache_key(path: Path, *, threads: int, candidates: Sequence[int] = CANDIDATES) -> dict:
    """What the measured size depends on (see the module docstring)."""
    model, library = path.stat(), L.library_path().stat()
    return {
        "probe": PROBE,
        "candidates": sorted(set(candidates), reverse=True),
        "model": {"path": str(path.resolve()), "size": model.st_size, "mtime_ns": model.st_mtime_ns},
        "library": {"version": L.VERSION, "build": L.LLAMA_BUILD, "size": library.st_size},
        "threads": threads,
        "cpu": cpu(),
    }


def cache_file(directory: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return directory / f"{digest}.json"


def read(file: Path, key: dict) -> ExactChunk | None:
    """The cached result for key, or None (missing, unreadable, corrupt or another key's)."""
    try:
        data = json.loads(file.read_text())
        size, tried = data["size"], tuple((int(c), bool(e)) for c, e in data.get("tried", ()))
        seconds = data.get("seconds")
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if data.get("key") != key or type(size) is not int or size not in key["candidates"]:
        return None
    return ExactChunk(size, "cache", tried, seconds if isinstance(seconds, (int, float)) else None)


def write(file: Path, key: dict, found: ExactChunk) -> None:
    """Store a probe's result atomically (a reader sees the old file or the new one); a cache
    that cannot be written is skipped: the next load measures again."""
    data = {"key": key, "size": found.size, "tried": [list(t) for t in found.tried],
            "seconds": found.seconds}
    tmp = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=file.stem, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, file)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def chunk_for(model: int, path: Path, ids: Sequence[int], *, n_vocab: int, threads: int,
              force: int | None, cache_dir: Path) -> ExactChunk:
    """The size to use: forced, else cached for this key, else measured now (and cached)."""
    size = forced(force)
    if size is not None:
        return ExactChunk(size, "forced")
    key = cache_key(path, threads=threads)
    file = cache_file(cache_dir, key)
    found = read(file, key)
    if found is None:
        found = measure(model, ids, n_vocab=n_vocab, threads=threads)
        write(file, key, found)
    return found
