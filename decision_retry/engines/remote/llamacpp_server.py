"""The llama.cpp server's API (`llama-server`, or the one in the xllamacpp wheel).

* `/completion` with the prompt as token ids, `cache_prompt` (the slot keeps the prefix),
  `n_cmpl` completions of one prompt, `seed`, and `n_probs`: per token the raw log-probability
  (softmax of the logits at temperature 1, before the sampler chain) and the top candidates.
* The sampler chain is pinned to `top_k, temperature` with every other sampler neutral, so the
  proposal is exactly softmax(logits / T) (cut to the top-k when asked).
* Tokenizer and chat template from `/apply-template`, `/tokenize`, `/detokenize`; the
  vocabulary size from `/v1/models`.

Banning a token (`Request.ban`, an excluding move's first draw: samplers/mh.py): `logit_bias`
[[id, false]], read from llama.cpp's source (`tools/server/server-task.cpp`
`params_from_json_cmpl`: a `false` bias is -INFINITY, ids outside the vocabulary are dropped;
`common/sampling.cpp` puts the logit-bias sampler first in the chain, before `top_k` and
`temperature`) and checked against the pinned build (xllamacpp 2026.10.11549: llama.cpp
b11549) in tests/engines/test_remote_llamacpp_ban.py. So the banned id gets no mass at all and
with no top-k the draw is exactly q(.) / (1 - q(ban)). The listing (`n_probs` without
`post_sampling_probs`) is the softmax of the raw logits (`get_token_probabilities`), untouched
by the bias, so the drawn token keeps the unrestricted log-probs the exclusion term reads. With
a top-k proposal the ban acts before the cut and the (k+1)-th token enters: the engine draws
from the listed top k itself (banned.py `first`), as on vLLM.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from decision_retry.engines.remote.http import Http
from decision_retry.engines.remote.wire import Candidate, End, ModelInfo, Request, Step, Usage

# every sampler that could reshape the distribution, set to do nothing
NEUTRAL = {
    "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0,
    "presence_penalty": 0.0, "frequency_penalty": 0.0, "dry_multiplier": 0.0,
    "xtc_probability": 0.0, "mirostat": 0, "top_n_sigma": -1.0,
    "samplers": ["top_k", "temperature"],
}


class LlamaCppServer:
    """`Dialect` for a llama.cpp server at `http.base`; `model` selects one of a router's models."""

    kind = "llamacpp"
    bans = True  # `Request.ban`: logit_bias [[id, false]] (module docstring)

    def __init__(self, http: Http, model: str | None = None) -> None:
        self.http, self.model = http, model

    def models(self) -> list[dict]:
        return self.http.get("/v1/models").get("data", [])

    def info(self) -> ModelInfo:
        data = self.models()
        if not data:
            raise ValueError("the server lists no model")
        entry = data[0]
        if self.model is not None:
            entry = next((d for d in data if self.model in _names(d)), None)
            if entry is None:
                have = ", ".join(sorted({n for d in data for n in _names(d)}))
                raise LookupError(f"unknown model {self.model!r}; the server has: {have}")
        props = self.http.get("/props")
        eos = set()
        for key in ("eos_token",):
            text = props.get(key)
            if text:
                eos.update(self._tokenize(text, special=True))
        vocab = int(entry.get("meta", {}).get("n_vocab") or 0)
        if vocab <= 0:
            raise ValueError("the server does not report the vocabulary size (meta.n_vocab)")
        name = self.model or str(entry.get("id", "llama.cpp")).rsplit("/", 1)[-1]
        slots = int(props.get("total_slots") or 1)  # n_cmpl may not exceed the slots
        return ModelInfo(name=name, vocab=vocab, eos_ids=frozenset(eos), max_rows=slots)

    # -- tokenizer -------------------------------------------------------------------------
    def _tokenize(self, text: str, *, special: bool) -> list[int]:
        body = {"content": text, "add_special": special, "parse_special": special}
        return [t if isinstance(t, int) else t["id"] for t in self.http.post("/tokenize", body)["tokens"]]

    def tokenize_chat(self, messages: Sequence[dict]) -> list[int]:
        prompt = self.http.post("/apply-template", {"messages": list(messages)})["prompt"]
        return self._tokenize(prompt, special=True)  # as the server's own chat endpoint does

    def tokenize(self, text: str) -> list[int]:
        return self._tokenize(text, special=False)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.http.post("/detokenize", {"tokens": list(ids)})["content"]

    # -- decoding --------------------------------------------------------------------------
    def body(self, req: Request) -> dict:
        body = {
            **NEUTRAL,
            "prompt": list(req.ids), "n_predict": req.max_new_tokens, "n_probs": req.logprobs,
            "temperature": req.temperature, "top_k": req.top_k or 0, "seed": req.seed,
            "cache_prompt": True, "stream": True, "post_sampling_probs": False,
            "timings_per_token": True,  # cache use in the first event (a stop may come first)
        }
        if req.n > 1:
            body["n_cmpl"] = req.n
        if req.ban is not None:
            body["logit_bias"] = [[req.ban, False]]  # -INFINITY on the server
        if self.model is not None:
            body["model"] = self.model
        return body

    @contextmanager
    def generate(self, req: Request) -> Iterator[Iterator[Step | Usage | End]]:
        with self.http.events("/completion", self.body(req)) as events:
            yield _steps(events)


def _names(entry: dict) -> set[str]:
    ident = str(entry.get("id", ""))
    return {ident, ident.rsplit("/", 1)[-1], *map(str, entry.get("aliases") or [])}


def _piece(item: dict) -> bytes | str:
    raw = item.get("bytes")
    return bytes(raw) if raw is not None else item.get("token", "")


def _steps(events: Iterator[dict]) -> Iterator[Step | Usage | End]:
    """Stream events -> one Usage per row (its first timings), a Step per token, an End per row."""
    seen: set[int] = set()
    for ev in events:
        row = int(ev.get("index", 0))
        timings = ev.get("timings")
        if timings and row not in seen and "cache_n" in timings:
            seen.add(row)
            cached = int(timings["cache_n"])
            yield Usage(row, cached + int(timings.get("prompt_n", 0)), cached)
        for item in ev.get("completion_probabilities") or ():
            top = tuple(
                Candidate(int(c["id"]), float(c["logprob"]), _piece(c))
                for c in item.get("top_logprobs") or ()
            )
            yield Step(row, int(item["id"]), float(item["logprob"]), top, _piece(item))
        if ev.get("stop"):
            yield End(row, {"eos": "eos", "word": "stop"}.get(ev.get("stop_type"), "length"))
