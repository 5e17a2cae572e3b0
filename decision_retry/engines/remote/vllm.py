"""vLLM's OpenAI-compatible server (`vllm serve` / `python -m vllm.entrypoints.openai.api_server`).

What the engine needs from the deployment (docs/scaling.md):
* `--logprobs-mode raw_logprobs`: log-probs of the raw logits (temperature 1), whatever the
  request's sampling settings; the default mode reports the *processed* distribution;
* `--max-logprobs N` (default 20) bounds the candidates per token; `-1` allows the whole
  vocabulary (our exact mode, `?exact=1`);
* automatic prefix caching (on by default) makes a fork cheap; `--enable-prompt-tokens-details`
  lets the server report the cached prompt tokens.

Requests: `/v1/completions` with the prompt as token ids, `n` rows, `seed`, `logprobs`,
streamed, ids as `token_id:N` (`return_tokens_as_token_ids`). Tokenizer: `/tokenize` (chat
messages through the model's template) and `/detokenize`.

Teacher forcing (`score`): the same endpoint, not streamed, with `prompt_logprobs` (read from
vLLM 0.32's source: `v1/worker/gpu_model_runner.py` `_get_prompt_logprobs_dict`, which the CPU
runner inherits, and `sampling_params.py`):
* the prompt path skips the sampling processors: its log-probs are the raw logits'
  log-softmax whatever `--logprobs-mode` (raw_* and processed_* give the same numbers);
* each position lists the prompt token and the top k (rank <= k), or all V with -1;
* a request with `prompt_logprobs` does not read the prefix cache (`skip_reading_prefix_cache`
  defaults to True, and the OpenAI endpoint cannot change it): cached positions would have no
  log-probs. So a scoring pass prefills the whole prompt, prefix included (it still writes the
  cache), and the answer lists every prompt position: its cost grows with the prefix, not only
  with the scored span (docs/scaling.md has the measurement).

Banning a token (`Request.ban`, an excluding move's first draw: samplers/mh.py): `logit_bias`
{id: -100} (read from 0.32's source: `SamplingParams` clamps a bias to [-100, 100], so no -inf;
`v1/sample/sampler.py` adds it to the logits before temperature and top-k, and the raw log-probs
are taken before it). At temperature T the banned id keeps at most e^(-100/T) q(x) / (1 - q(x))
of the mass; the chain bans only where 1 - q(x) >= mh.NULL_MASS = 1e-6, so that is below 4e-38
for T <= 1 (2e-16 at T = 2): the draw is q(.) / (1 - q(x)) far below fp32 resolution, and the
reported log-probs stay the unrestricted ones the exclusion term reads. `allowed_token_ids` (all V ids but one, a ~1 MB
request) is exact but no better in fp32; `bad_words` bans strings, not ids. A bias moves the
banned id out of the top-k before the cut, so with a top-k proposal the engine draws from the
listed top-k itself (banned.py `first`) instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from decision_retry.engines.remote.http import Http, HttpStatusError
from decision_retry.engines.remote.wire import Candidate, End, ModelInfo, Request, Step, Usage

BAN = -100.0  # vLLM clamps logit_bias to [-100, 100]: the strongest ban its API takes
NEUTRAL = {"top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
           "frequency_penalty": 0.0}


class VllmServer:
    """`Dialect` for a vLLM server at `http.base` serving `model` (default: the first listed)."""

    kind = "vllm"
    bans = True  # `Request.ban`: logit_bias (module docstring)

    def __init__(self, http: Http, model: str | None = None, *, vocab: int | None = None) -> None:
        self.http, self.model, self.vocab = http, model, vocab
        self._pieces: dict[int, str] = {}

    def info(self) -> ModelInfo:
        data = self.http.get("/v1/models").get("data", [])
        ids = [str(d.get("id")) for d in data]
        if not ids:
            raise ValueError("the server lists no model")
        if self.model is None:
            self.model = ids[0]
        elif self.model not in ids:
            raise LookupError(f"unknown model {self.model!r}; the server has: {', '.join(ids)}")
        self.vocab = vocab = self.vocab or self._probe_vocab()
        eos = self._eos()
        return ModelInfo(name=self.model, vocab=vocab, eos_ids=eos)

    def _probe_vocab(self) -> int:
        """The vocabulary size: the length of one whole-vocabulary log-prob list (needs
        --max-logprobs -1); else ask for `?vocab=N`."""
        body = {**self._sampling(1, 1.0, None, 0, -1), "prompt": [0], "stream": False}
        try:
            out = self.http.post("/v1/completions", body)
        except HttpStatusError as err:
            raise ValueError(f"cannot learn the vocabulary size ({err}); start vLLM with "
                             "--max-logprobs -1 or add ?vocab=N to --model") from None
        return len(out["choices"][0]["logprobs"]["top_logprobs"][0])

    def _eos(self) -> frozenset[int]:
        """End-of-generation ids, from what the server shows: the tokenizer's `eos_token` where
        `/tokenizer_info` answers (vLLM's `--enable-tokenizer-info-endpoint`), and the marker the
        chat template writes after an assistant reply (`/tokenize`, always there). vLLM keeps
        the generation config's stop ids to itself; when neither source names an id the set is
        empty and rows still end where the server stops them (finish "stop" reads as eos)."""
        eos: set[int] = set()
        with contextlib.suppress(HttpStatusError):  # 404: the endpoint is off
            token = self.http.get("/tokenizer_info").get("eos_token")
            text = token.get("content") if isinstance(token, dict) else token
            if isinstance(text, str) and text and len(ids := self.tokenize(text)) == 1:
                eos.update(ids)
        eos.update(self._end_of_turn())
        return frozenset(eos)

    def _end_of_turn(self) -> list[int]:
        """The id right after a one-word assistant reply in the rendered chat, when the template
        renders the reply's own ids after the generation prompt and that id reads as a marker
        (`<|im_end|>`, `<|eot_id|>`, `</s>`, `<end_of_turn>`), not as text."""
        user, reply = [{"role": "user", "content": "Hi"}], "OK"
        try:
            head, ids = self.tokenize_chat(user), self.tokenize(reply)
            whole = self.http.post("/tokenize", {
                "model": self.model, "add_generation_prompt": False,
                "messages": [*user, {"role": "assistant", "content": reply}]})["tokens"]
        except HttpStatusError:
            return []
        n = len(head) + len(ids)
        if len(whole) <= n or list(whole[:n]) != head + ids:
            return []
        marker = self.piece(int(whole[n])).strip()
        return [int(whole[n])] if marker.startswith("<") and marker.endswith(">") else []

    # -- tokenizer -------------------------------------------------------------------------
    def tokenize_chat(self, messages: Sequence[dict]) -> list[int]:
        body = {"model": self.model, "messages": list(messages), "add_generation_prompt": True}
        return list(self.http.post("/tokenize", body)["tokens"])

    def tokenize(self, text: str) -> list[int]:
        body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        return list(self.http.post("/tokenize", body)["tokens"])

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.http.post("/detokenize", {"model": self.model, "tokens": list(ids)})["prompt"]

    def piece(self, tid: int) -> str:
        """One token's text, asked once per id (vLLM lists alternatives by id only)."""
        if tid not in self._pieces:
            self._pieces[tid] = self.detokenize([tid])
        return self._pieces[tid]

    # -- decoding --------------------------------------------------------------------------
    def _sampling(self, n: int, temperature: float, top_k: int | None, seed: int,
                  logprobs: int) -> dict:
        return {
            **NEUTRAL, "model": self.model, "max_tokens": 1, "n": n, "temperature": temperature,
            "top_k": top_k or -1, "seed": seed, "logprobs": logprobs,
            "return_tokens_as_token_ids": True, "skip_special_tokens": False,
        }

    def body(self, req: Request) -> dict:
        body = self._sampling(req.n, req.temperature, req.top_k, req.seed, req.logprobs)
        body.update(prompt=list(req.ids), max_tokens=req.max_new_tokens, stream=True,
                    stream_options={"include_usage": True, "continuous_usage_stats": True})
        if req.ban is not None:
            body["logit_bias"] = {str(req.ban): BAN}
        return body

    @contextmanager
    def generate(self, req: Request) -> Iterator[Iterator[Step | Usage | End]]:
        with self.http.events("/v1/completions", self.body(req)) as events:
            yield self._steps(events, req.logprobs)

    def _steps(self, events: Iterator[dict], k: int) -> Iterator[Step | Usage | End]:
        for ev in events:
            # the cached prompt tokens come with the request's last usage (one prompt, n rows)
            usage = ev.get("usage") or {}
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            if cached is not None:
                yield Usage(0, int(usage["prompt_tokens"]), int(cached))
            for choice in ev.get("choices") or ():
                row, lp = int(choice.get("index", 0)), choice.get("logprobs") or {}
                ids = [_id(t) for t in lp.get("tokens") or []]
                for i, (tid, text) in enumerate(zip(ids, self._split(choice.get("text", ""), ids))):
                    ranked = sorted((lp.get("top_logprobs") or [{}])[i].items(), key=lambda kv: -kv[1])
                    top = tuple(Candidate(_id(t), float(v), "") for t, v in ranked[:k])
                    yield Step(row, tid, float(lp["token_logprobs"][i]), top, text)
                if choice.get("finish_reason"):
                    yield End(row, "eos" if choice["finish_reason"] == "stop" else "length")

    # -- teacher forcing (score) ----------------------------------------------------------
    def score(self, ids: Sequence[int], start: int, logprobs: int) -> tuple[list[Step], Usage | None]:
        """Log-probs (temperature 1) of ids[start:], each after the ids before it, with the top
        `logprobs` candidates at each position: one request's `prompt_logprobs` (module
        docstring). The whole vocabulary (`logprobs` >= V) is asked position by position."""
        if self.vocab is not None and logprobs >= self.vocab:
            return self._score_whole(ids, start, logprobs), None
        body = {**self._sampling(1, 1.0, None, 0, 0), "prompt": list(ids), "stream": False,
                "prompt_logprobs": logprobs}
        del body["logprobs"]  # none for the one token the request must generate
        out = self.http.post("/v1/completions", body)
        rows = out["choices"][0].get("prompt_logprobs") or []
        if len(rows) != len(ids):
            raise ValueError(f"prompt_logprobs lists {len(rows)} positions for a prompt of "
                             f"{len(ids)} tokens")
        steps = [_prompt_step(ids[i], rows[i], logprobs) for i in range(start, len(ids))]
        usage = out.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return steps, Usage(0, int(usage.get("prompt_tokens", len(ids))), int(cached))

    def _score_whole(self, ids: Sequence[int], start: int, logprobs: int) -> list[Step]:
        """Exact mode: a one-token decode per position, listing all V log-probs (the decode
        path reads the prefix cache; a prompt_logprobs answer of V per prompt position would
        be V times the prompt's length)."""
        steps = []
        for i in range(start, len(ids)):
            body = {**self._sampling(1, 1.0, None, 0, logprobs), "prompt": list(ids[:i]),
                    "stream": False}
            out = self.http.post("/v1/completions", body)
            listed = out["choices"][0]["logprobs"]["top_logprobs"][0]
            top = tuple(Candidate(_id(t), float(v), "") for t, v in listed.items())
            steps.append(Step(0, int(ids[i]), float(listed[f"token_id:{int(ids[i])}"]), top, ""))
        return steps

    def texts(self, ids: Sequence[int]) -> list[str]:
        """Each token's text in the run `ids`: its own piece where the pieces join to the run's
        text (one /detokenize more), else the growth of the text token by token (a character
        split over tokens, or a tokenizer that drops a piece's leading space)."""
        pieces = [self.piece(t) for t in ids]
        if "".join(pieces) == self.detokenize(ids):
            return pieces
        out, prev = [], ""
        for i in range(len(ids)):
            cur = self.detokenize(ids[: i + 1]).rstrip("\ufffd")  # an unfinished character waits
            same = len(prev) if cur.startswith(prev) else _common(prev, cur)
            out.append(cur[same:])
            prev = cur
        return out

    def _split(self, text: str, ids: list[int]) -> list[str]:
        """A chunk's text over its tokens: one token takes it all; several take their own
        pieces, the last one the rest (so the pieces always join to the server's text)."""
        if len(ids) <= 1:
            return [text] * len(ids)
        head = [self.piece(t) for t in ids[:-1]]
        joined = "".join(head)
        return [*head, text[len(joined):]] if text.startswith(joined) else [""] * (len(ids) - 1) + [text]


def _prompt_step(tid: int, row: dict | None, k: int) -> Step:
    """One prompt position of `prompt_logprobs`: {"id": {"logprob", "rank", ...}} holding the
    prompt token and the top k (rank <= k); the token is listed outside them when its rank > k."""
    if not row or str(tid) not in row:
        raise ValueError(f"prompt_logprobs has no entry for token {tid}")
    ranked = [(int(t), float(v["logprob"])) for t, v in row.items()
              if v.get("rank") is None or int(v["rank"]) <= k]
    top = tuple(Candidate(t, lp, "") for t, lp in sorted(ranked, key=lambda c: -c[1])[:k])
    return Step(0, int(tid), float(row[str(tid)]["logprob"]), top, "")


def _common(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _id(name: str) -> int:
    """`token_id:123` -> 123."""
    return int(str(name).rsplit(":", 1)[-1])
