"""Local moves and excluding draws through vLLM (engines/remote/engine.py `extend_until`,
banned.py `extend`; samplers/local.py), against a loopback server: `make test`.

The server answers `/v1/completions` as vLLM 0.32 does, streamed or not, over a tiny real Llama
(decision_retry.testing.tiny_llama): raw log-probs listed per token (`--logprobs-mode
raw_logprobs`), `logit_bias` added to the logits before temperature and top-k (vLLM's
`v1/sample/sampler.py` order), `prompt_logprobs` for `score`. Its draw is an inverse-CDF of the
processed distribution at a uniform that is a hash of the prompt and the tokens drawn so far
(and of the request's seed when `seeded`), so two ways of drawing the same span token by token
or in one request give the same tokens: the proposals can be compared exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import Counter
from http.server import ThreadingHTTPServer

import pytest
import torch

from decision_retry import sampling
from decision_retry.engines.remote import connect
from decision_retry.samplers import local, mh
from decision_retry.samplers.local import SpanRule
from decision_retry.testing import tiny_llama
from decision_retry.tokens import Sampling
from tests.helpers import JsonHandler, gen

VOCAB = 64
NEWLINES = {5, 17, 33, 48}  # ids whose piece is "\n": they close a statement (SpanRule.ends)
PROMPT = [1, 7, 30, 12, 9]


def piece(i: int) -> str:
    return "\n" if i in NEWLINES else f"<{i}>"


class Fake:
    """vLLM's completion endpoint over the tiny Llama; `bodies` keeps every completion body."""

    def __init__(self, lm) -> None:
        self.model = lm.backend.model
        self.bodies: list[dict] = []
        self.seeded = False  # the draw's uniform also hashes the request's seed
        self._last: dict[tuple, torch.Tensor] = {}

    @torch.inference_mode()
    def logits(self, ids: list[int]) -> torch.Tensor:
        return self.model(input_ids=torch.tensor([ids])).logits[0].float()  # (P, V)

    def last(self, ids: list[int]) -> torch.Tensor:
        """The logits after `ids` (V,), kept: the draw, the listing and the other way of drawing
        the same span ask for the same prefixes."""
        key = tuple(ids)
        if key not in self._last:
            self._last[key] = self.logits(ids)[-1]
        return self._last[key]

    def draw(self, ids: list[int], body: dict) -> int:
        """The next id after `ids` under the request's sampling, as vLLM's sampler orders it."""
        logits = self.last(ids).clone()  # (V,)
        for tid, bias in (body.get("logit_bias") or {}).items():
            logits[int(tid)] += max(-100.0, min(100.0, float(bias)))
        if body["temperature"] == 0:
            return int(logits.argmax())
        logits = logits / body["temperature"]
        if body.get("top_k", -1) not in (-1, None):
            kth = torch.topk(logits, body["top_k"]).values[-1]
            logits = torch.where(logits < kth, -torch.inf, logits)
        key = json.dumps([ids, body["seed"] if self.seeded else 0]).encode()
        u = int(hashlib.sha256(key).hexdigest()[:13], 16) / 16**13
        cdf = torch.cumsum(torch.softmax(logits.double(), -1), -1)
        return min(int(torch.searchsorted(cdf, torch.tensor(u, dtype=torch.float64))), VOCAB - 1)

    def listing(self, ids: list[int], tid: int, k: int) -> dict:
        lp = torch.log_softmax(self.last(ids), -1)  # raw: before the bias
        order = torch.argsort(lp, descending=True).tolist()[: (VOCAB if k == -1 else k)]
        return {"tokens": [f"token_id:{tid}"], "token_logprobs": [float(lp[tid])],
                "top_logprobs": [{f"token_id:{j}": float(lp[j]) for j in order + [tid]}]}

    def stream(self, body: dict):
        """The events of a streamed completion: one token a chunk, the finish with the last."""
        ids = list(body["prompt"])
        for i in range(body["max_tokens"]):
            tid = self.draw(ids, body)
            ids.append(tid)
            last = tid == 0 or i == body["max_tokens"] - 1  # id 0: the tiny Llama's eos
            yield {"choices": [{"index": 0, "text": piece(tid),
                                "logprobs": self.listing(ids[:-1], tid, body["logprobs"]),
                                "finish_reason": ("stop" if tid == 0 else "length") if last else None}]}
            if last:
                return

    def prompt_logprobs(self, ids: list[int], k: int) -> list:
        lp = torch.log_softmax(self.logits(ids), -1)  # (P, V)
        rows: list = [None]
        for i in range(1, len(ids)):
            row, tid = lp[i - 1], ids[i]
            order = torch.argsort(row, descending=True).tolist()
            entry = {str(tid): (float(row[tid]), order.index(tid) + 1)}
            for r, j in enumerate(order[:k]):
                entry.setdefault(str(j), (float(row[j]), r + 1))
            rows.append({t: {"logprob": v, "rank": rank} for t, (v, rank) in entry.items()})
        return rows


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(vocab=VOCAB, seed=3)


@pytest.fixture(scope="module")
def fake(lm):
    state = Fake(lm)

    class Handler(JsonHandler):

        def do_GET(self):
            if self.path == "/v1/models":
                self.reply(200, {"data": [{"id": "tiny"}]})
            elif self.path == "/tokenizer_info":
                self.reply(200, {"eos_token": "<0>"})
            else:
                self.reply(404, {"error": {"message": "Not Found"}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/tokenize" and "prompt" in body:
                self.reply(200, {"tokens": [int(body["prompt"].strip("<>"))]})
            elif self.path == "/detokenize":
                self.reply(200, {"prompt": "".join(piece(i) for i in body["tokens"])})
            elif self.path == "/v1/completions" and body.get("prompt_logprobs") is not None:
                state.bodies.append(body)
                self.reply(200, {"choices": [{"index": 0, "text": "", "finish_reason": "length",
                                              "prompt_logprobs": state.prompt_logprobs(
                                                  body["prompt"], body["prompt_logprobs"])}],
                                 "usage": {"prompt_tokens": len(body["prompt"])}})
            elif self.path == "/v1/completions" and body.get("stream"):
                state.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for event in state.stream(body):
                        self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                        self.wfile.flush()
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client closed the stream at its stop: as vLLM, stop generating
            else:
                self.reply(404, {"error": {"message": "Not Found"}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"vllm+http://127.0.0.1:{server.server_address[1]}/tiny?vocab={VOCAB}&retries=0&top=8"
    yield state
    server.shutdown()
    server.server_close()


def requests(fake, before: int) -> tuple[int, int]:
    """(decode requests, scoring requests) since body number `before`."""
    new = fake.bodies[before:]
    return (sum(1 for b in new if b.get("stream")),
            sum(1 for b in new if b.get("prompt_logprobs") is not None))


def summary(p: local.LocalProposal) -> tuple:
    y = p.y.tokens if p.y is not None else ()
    return (p.t, p.s, p.m, p.ended, p.decode_tokens, p.reason, [t.id for t in y],
            [(t.logp, t.logq, t.entropy, t.logq_bounds, t.entropy_bounds, t.text) for t in y])


def test_a_local_span_is_one_streamed_request_with_the_same_proposals(fake):
    streamed, stepped = connect(fake.url), connect(fake.url)
    stepped.extend_until = None  # local.propose falls back to one request per token
    assert streamed.eos_ids == {0}
    q = Sampling(temperature=0.7, max_new_tokens=30)
    x = streamed.extend(streamed.prefill(PROMPT), q, gen(0))
    assert len(x) >= 20 and x.finish == "length"
    rule = SpanRule(decision=sorted(t.entropy for t in x.tokens)[-4], ends=("\n",), max_span=6)
    counts, ended = [], Counter()
    for t in range(1, len(x) - 2, 2):
        got = []
        for engine in (streamed, stepped):
            before = len(fake.bodies)
            p = local.propose(engine, x, t, rule, q, gen(t), cap=30)
            got.append((summary(p), requests(fake, before)))
        (a, (dec_a, sc_a)), (b, (dec_b, sc_b)) = got
        assert a == b  # the same span, tokens, log-probs, bounds and decode-token count
        ended[a[3]] += 1
        assert dec_a == 1  # the whole span in one streamed request
        assert dec_b == a[4]  # token by token: one request per drawn token (a look-ahead too)
        assert sc_a == sc_b == (1 if a[6] and a[1] < len(x) else 0)  # the kept tail, one pass
        counts.append((dec_a + sc_a, dec_b + sc_b))
    assert ended["boundary"] and ended["max_span"]  # both ways a span ends were exercised
    per_move = [sum(c[i] for c in counts) / len(counts) for i in (0, 1)]
    print(f"requests per local move over {len(counts)} cuts: streamed {per_move[0]:.2f}, "
          f"token by token {per_move[1]:.2f}")


def test_a_budget_that_runs_out_inside_the_span(fake):
    engine = connect(fake.url)
    q = Sampling(temperature=0.7, max_new_tokens=30)
    x = engine.extend(engine.prefill(PROMPT), q, gen(1))
    rule = SpanRule(ends=(), max_span=10)
    before = len(fake.bodies)
    p = local.propose(engine, x, 3, rule, q, gen(2), cap=30, budget=4)
    assert (p.y, p.ended, p.decode_tokens) == (None, "budget", 4)
    assert fake.bodies[before]["max_tokens"] == 4  # the request asks for no more than the budget


def test_an_excluding_first_token_then_the_span_in_a_second_request(fake):
    engine = connect(fake.url)
    q = Sampling(temperature=0.7, max_new_tokens=30)
    x = engine.extend(engine.prefill(PROMPT), q, gen(3))
    t, rule = 4, SpanRule(ends=(), max_span=5)
    before = len(fake.bodies)
    p = local.propose(engine, x, t, rule, q, gen(4), cap=30, exclude=x.tokens[t].id)
    first, rest = fake.bodies[before: before + 2]
    assert first["logit_bias"] == {str(x.tokens[t].id): -100.0} and first["max_tokens"] == 1
    assert "logit_bias" not in rest and rest["prompt"] == [*x.ids[: len(PROMPT) + t], p.y.tokens[t].id]
    assert p.y.tokens[t].id != x.tokens[t].id and p.m == 5 and p.ended == "max_span"
    # the drawn token keeps the unrestricted log-probs: those an unbanned draw records
    free = engine.score(engine.fork(x, t), [p.y.tokens[t].id], q).tokens[t]
    got = p.y.tokens[t]
    assert [got.logp, got.logq, *got.logq_bounds] == pytest.approx(
        [free.logp, free.logq, *free.logq_bounds], abs=1e-6)


@pytest.mark.parametrize("top_k", [None, 4], ids=["logit-bias", "top-k-drawn-here"])
def test_a_banned_draw_follows_q_renormalised_without_the_banned_id(fake, lm, top_k):
    """Over 400 seeds, the first token drawn with the most likely id banned against
    q(.) / (1 - q(ban)) computed in process (sampling.without): a chi-square test. With a top-k
    proposal the server's bias would let the (k+1)-th token in, so the engine draws from the
    listed top k itself."""
    engine = connect(fake.url)
    fake.seeded = True
    try:
        state = engine.prefill(PROMPT)
        q = Sampling(temperature=1.5, top_k=top_k, max_new_tokens=1)
        with torch.inference_mode():
            logits = lm.backend.model(input_ids=torch.tensor([PROMPT])).logits[0, -1:].float()
        logq = sampling.proposal_logprobs(logits, q.temperature, top_k)  # (1, V)
        ban = int(logq.argmax())
        want = sampling.without(logq, [ban]).exp()[0]  # (V,)
        n = 400
        seen = Counter(engine.extend(state, q, gen(i), exclude=ban).tokens[0].id for i in range(n))
    finally:
        fake.seeded = False
    assert ban not in seen
    if top_k:
        assert set(seen) <= set(torch.topk(logq[0], top_k).indices.tolist())
    # chi-square over the ids expected 5 times or more, the rest pooled in one cell
    big = [i for i in range(VOCAB) if n * float(want[i]) >= 5]
    cells = [(seen[i], n * float(want[i])) for i in big]
    rest = [i for i in range(VOCAB) if i not in big and float(want[i]) > 0]
    if rest:
        cells.append((sum(seen[i] for i in rest), n * float(sum(want[i] for i in rest))))
    chi2, df = sum((o - e) ** 2 / e for o, e in cells if e > 0), len(cells) - 1
    print(f"banned draw ({'top-k ' + str(top_k) if top_k else 'logit_bias'}): chi2 {chi2:.1f}, "
          f"df {df}, n {n}")
    assert chi2 < df + 4 * math.sqrt(2 * df)  # mean df, sd sqrt(2 df): 4 sd


def test_the_exclusion_term_interval_holds_the_exact_term(fake, lm):
    """Remote tokens carry log q intervals; the exclusion term's interval
    (mh.exclusion_bounds) must contain the term computed from the in-process exact log q."""
    engine = connect(fake.url)
    q = Sampling(temperature=0.7)
    x = engine.extend(engine.prefill(PROMPT), q.model_copy(update={"max_new_tokens": 12}), gen(5))
    exact_x = lm.score(lm.prefill(PROMPT), [tok.id for tok in x.tokens], q)
    checked = 0
    for t in range(len(x)):
        if mh.null_at(x.tokens, t):
            continue
        y = engine.extend(engine.fork(x, t), q.model_copy(update={"max_new_tokens": 1}), gen(t),
                          exclude=x.tokens[t].id)
        exact_y = lm.score(lm.fork(exact_x, t), [y.tokens[t].id], q)
        lo, hi = mh.exclusion_bounds(x.tokens, y.tokens, t)
        truth = mh.exclusion_term(exact_x.tokens, exact_y.tokens, t)
        assert lo - 1e-5 <= truth <= hi + 1e-5 and lo <= mh.exclusion_term(x.tokens, y.tokens, t) <= hi
        checked += 1
    assert checked >= 8
    # a record with exclusion carries log A's interval widened by it
    rec = mh.mh_step_record(x.tokens, y.tokens, t, alpha=4.0, rule=None, verifier_delta=0.0,
                            u=0.5, decode_tokens=1, correction=0.0, exclusion=True)
    plain = mh.mh_step_record(x.tokens, y.tokens, t, alpha=4.0, rule=None, verifier_delta=0.0,
                              u=0.5, decode_tokens=1, correction=0.0)
    assert rec.log_accept_lo <= rec.log_accept <= rec.log_accept_hi
    assert rec.log_accept_hi - rec.log_accept_lo > plain.log_accept_hi - plain.log_accept_lo
    assert not math.isinf(rec.log_accept)
