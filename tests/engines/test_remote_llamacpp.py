"""The remote engine against a real llama.cpp server on 127.0.0.1 (the xllamacpp wheel, SmolLM2).

The reference is the same model in this process: the llama.cpp engine when it is importable
(same kernels: per-token logp within 1e-3 nats), else transformers on the dequantised GGUF
(Q4_1 weights in fp32 against llama.cpp's quantised dot products: within 0.05 nats on average,
0.5 at worst). Exact entropies and log q come from the server itself in exact mode (the whole
vocabulary), so the bounds are checked against the same numbers they bound.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from typing import Annotated

import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from decision_retry import catalogue, loading
from decision_retry.engines.remote import connect, parse
from decision_retry.engines.remote.serve import LocalServer
from decision_retry.errors import ModelLoadError
from decision_retry.langgraph import (
    DecisionRetryState,
    attempts,
    invoke,
    model_node,
    progress,
    rewind_node,
    route_after_rewind,
)
from decision_retry.retry import RetryConfig
from decision_retry.tokens import Sampling, stop_reason
from tests.helpers import fixture_repo, gen

CLI = [sys.executable, "-m", "decision_retry.cli"]
PROMPT = "Write a Python function that reverses a string."


@pytest.fixture(scope="module")
def server():
    with LocalServer("smollm2-135m", parallel=4, alias="smollm2") as srv:
        yield srv


@pytest.fixture(scope="module")
def engine(server):
    return connect(server.url)


@pytest.fixture(scope="module")
def local():
    """The same GGUF in this process: (engine, max |d logp| allowed, mean allowed)."""
    path = catalogue.resolve("smollm2-135m")
    if importlib.util.find_spec("decision_retry.engines.llamacpp") is not None:
        try:
            return loading.load_llamacpp(path, name="local", threads=1), 1e-3, 1e-3
        except Exception:  # noqa: BLE001 - the in-process engine still being built: fall back
            pass
    return loading.load_transformers(path, str(path), name="local", threads=1), 0.5, 0.05


class GraphState(DecisionRetryState):
    messages: Annotated[list, add_messages]



# -- --model URL forms ------------------------------------------------------------------------
def test_url_forms():
    t = parse("llamacpp+http://127.0.0.1:8080")
    assert (t.kind, t.base, t.model, t.exact, t.top) == ("llamacpp", "http://127.0.0.1:8080", None,
                                                         False, 20)
    t = parse("vllm+https://gpu-box:8000/Qwen/Qwen2.5-Coder-1.5B?exact=1&timeout=5&retries=0")
    assert (t.kind, t.base, t.model, t.exact, t.timeout, t.retries) == (
        "vllm", "https://gpu-box:8000", "Qwen/Qwen2.5-Coder-1.5B", True, 5.0, 0)
    assert parse("llamacpp+http://[::1]:9/m?api_key_env=MY_KEY").api_key_env == "MY_KEY"
    for bad, words in (("ollama+http://h:1", "unknown server kind"),
                       ("vllm+ftp://h:1/m", "expected vllm+http"),
                       ("vllm+http://user:secret@h:1/m", "not in the --model URL"),
                       ("llamacpp+http://h:1?colour=red", "unknown option 'colour'"),
                       ("llamacpp+http://h:1?timeout=soon", "soon"),
                       ("llamacpp+http://h:1?top=0", "top >= 1")):
        with pytest.raises(ModelLoadError, match=re.escape(words)):
            parse(bad)


# -- the contract over HTTP -------------------------------------------------------------------
def test_tokenizer_and_model_facts_come_from_the_server(engine, local):
    assert engine.name == "llamacpp:smollm2" and engine.info.vocab == 49152
    text = "def add(a, b):\n    return a + b  # é ✓"
    ids = engine.encode_text(text)
    assert ids == local[0].encode_text(text)
    assert engine.decode(ids) == text
    chat = engine.encode(PROMPT)  # the GGUF's chat template, rendered by the server
    assert chat == engine.encode([{"role": "user", "content": PROMPT}])
    assert f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n" in engine.decode(chat)
    assert chat[0] == 1 and chat.count(1) == chat.count(2) + 1  # special tokens parsed, not text
    assert engine.eos_ids & local[0].eos_ids


def test_per_token_logp_matches_the_in_process_engine(engine, local):
    lm, worst, mean = local
    out = engine.extend(engine.prefill(PROMPT), Sampling(temperature=0.7, max_new_tokens=40), gen(1))
    assert len(out.tokens) >= 10
    ids = [t.id for t in out.tokens]
    ref = lm.score(lm.prefill(list(out.prompt_ids)), ids, Sampling(temperature=0.7))
    d = [abs(a.logp - b.logp) for a, b in zip(out.tokens, ref.tokens)]
    assert max(d) <= worst and sum(d) / len(d) <= mean
    assert "".join(t.text for t in out.tokens) == engine.decode(ids)  # pieces join to the text


@pytest.mark.slow
def test_bounds_contain_the_exact_values(server, engine):
    """Same prefix, same seed: top-20 answers against the whole vocabulary (exact mode)."""
    exact = connect(server.url + "?exact=1")
    s = Sampling(temperature=0.5, max_new_tokens=12)
    approx = engine.extend(engine.prefill(PROMPT), s, gen(3))
    truth = exact.extend(exact.prefill(PROMPT), s, gen(3))
    assert [t.id for t in approx.tokens] == [t.id for t in truth.tokens]
    for a, b in zip(approx.tokens, truth.tokens):
        assert b.logq_bounds is None and b.entropy_bounds is None  # exact mode: points
        assert a.logp == pytest.approx(b.logp, abs=1e-5)
        lo, hi = a.entropy_bounds
        assert lo - 1e-5 <= b.entropy <= hi + 1e-5
        lo, hi = a.logq_bounds or (a.logq, a.logq)
        assert lo - 1e-5 <= b.logq <= hi + 1e-5


def test_k_tries_are_one_seeded_request_each_row_its_own(engine):
    state = engine.prefill("Name a colour.")
    s = Sampling(temperature=1.0, max_new_tokens=8)
    before = engine.stats.requests
    outs = engine.extend_many(state, s, [gen(i) for i in range(3)])
    assert engine.stats.requests - before == 1
    again = engine.extend_many(state, s, [gen(i) for i in range(3)])
    assert [o.text for o in outs] == [o.text for o in again]  # seeded: reproducible
    assert len({o.text for o in outs}) > 1  # rows differ
    six = engine.extend_many(state, s, [gen(i) for i in range(6)])  # more rows than slots (4)
    assert len(six) == 6 and engine.stats.requests - before == 4


def test_a_fork_is_a_prefix_request_served_from_the_cache(engine):
    s = Sampling(temperature=0.7, max_new_tokens=30)
    out = engine.extend(engine.prefill(PROMPT), s, gen(5))
    sent, reported, cached = (engine.stats.prompt_tokens_sent, engine.stats.reported_prompt_tokens,
                              engine.stats.cached_tokens)
    fork = engine.fork(out, 10)
    assert fork.tokens == out.tokens[:10] and out.tokens[10:]  # the original is untouched
    y = engine.extend(fork, s, gen(6))
    assert y.tokens[:10] == out.tokens[:10]
    assert engine.stats.prompt_tokens_sent - sent == len(out.prompt_ids) + 10
    # the server reports the prompt it saw and how much of it came from its prefix cache
    assert engine.stats.reported_prompt_tokens - reported == len(out.prompt_ids) + 10
    assert engine.stats.cached_tokens - cached >= len(out.prompt_ids)


def test_stop_strings_end_a_row_and_stop_the_server(engine):
    s = Sampling(temperature=0.0, max_new_tokens=120, stop=("\n",))
    out = engine.extend(engine.prefill(PROMPT), s, gen(0))
    assert out.finish == "stop" and "\n" in out.text and out.text.count("\n") == 1
    # the one stop rule (tokens.stop_reason, as lm.LM and the local moves): here, and not before
    rule = [stop_reason(out.tokens, i, s, engine.eos_ids) for i in range(len(out.tokens))]
    assert rule == [None] * (len(out.tokens) - 1) + ["stop"]
    # the argmax cannot be excluded at temperature 0 (test_remote_llamacpp_ban.py: the ban)
    with pytest.raises(ValueError, match="temperature 0"):
        engine.extend(engine.prefill(PROMPT), s, gen(0), exclude=out.tokens[0].id)


# -- through the CLI --------------------------------------------------------------------------
def run(args, **kw):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=900, **kw)


def test_sample_marks_approximate_mh_decisions(server):
    r = run(["sample", "def reverse(s):", "--model", server.url, "--sampler", "rewind",
             "--max-tokens", "24", "--block", "12", "--steps", "3", "--json"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model"] == "llamacpp:smollm2" and out["steps"]
    for st in out["steps"]:  # every step knows its interval and whether log u fell inside it
        assert isinstance(st["approximate"], bool)
        assert st["log_accept_lo"] <= st["log_accept"] <= st["log_accept_hi"]
    assert all(t["entropy_bounds"] for t in out["tokens"])


@pytest.mark.slow
def test_fix_a_fixture_through_the_server(tmp_path):
    """A server of its own: seeded draws depend on the server's cache state too (which slot,
    which prefix it reuses), so on the module's server, after the other tests, seed 0 took
    another path (9 rewinds, not fixed in 600 tokens); on a fresh one it fixes."""
    repo = fixture_repo(tmp_path, "units")
    home = tmp_path / "home"
    with LocalServer("smollm2-135m", parallel=4, alias="smollm2") as server:
        r = run(["fix", str(repo), "--model", server.url, "--proposal-temperature", "0.7",
                 "--budget-tokens", "600", "--seed", "0", "--test-timeout", "600", "--home",
                 str(home), "--json"])
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert result["fixed"] and "+ 32" in result["diff"]
    show = subprocess.run(["git", "show", f"{result['branch']}:units.py"], cwd=repo,
                          capture_output=True, text=True, check=True).stdout
    assert "+ 32" in show
    # the trace: the model name is the server's, tokens carry their bounds, steps their interval
    from decision_retry.trace.store import TraceStore

    with TraceStore.open(home) as store:
        tree = store.load(result["run_id"])
    assert tree.run.model == "llamacpp:smollm2"
    assert "no null moves" in tree.run.config["runs"]  # the server bans the cut token
    tokens = [t for turn in tree.turns for t in turn.tokens]
    assert tokens and all(t.entropy_bounds is not None for t in tokens)
    assert all(s.approximate is not None for s in tree.mh_steps)
    logs = run(["logs", "show", result["run_id"], "--home", str(home)])
    assert logs.returncode == 0 and "llamacpp:smollm2" in logs.stdout
    for s in tree.mh_steps:
        assert ("approximate" if s.approximate else "certain") in logs.stdout


@pytest.mark.parametrize("kv_states", [8, 0])  # forks of live states; prefixes from checkpoints
def test_langgraph_nodes_rewind_through_the_server(engine, kv_states):
    retry = RetryConfig(strategy="entropy-cut")
    g = StateGraph(GraphState)
    g.add_node("model", model_node(engine, retry=retry, seed=2, kv_states=kv_states,
                                   sampling=Sampling(temperature=0.7, max_new_tokens=24)))
    g.add_node("rewind", rewind_node(verifier=lambda s: False, retry=retry, max_attempts=3))
    g.add_edge(START, "model")
    g.add_edge("model", "rewind")
    g.add_conditional_edges("rewind", route_after_rewind, {"passed": END, END: END})
    graph = g.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": f"remote-{kv_states}"}}
    final = invoke(graph, {"messages": [HumanMessage("Write is_adult(age) in Python.")]}, config)
    assert progress(final)["status"] == "exhausted"
    done = attempts(graph, config)
    assert len(done) == 3
    for before, after in zip(done, done[1:]):  # each retry kept the tokens before its cut
        cut = before["next_cut"]
        assert after["cut"] == cut
        conf = {**config["configurable"], "checkpoint_id": after["checkpoint_id"]}
        again = progress(graph.get_state({"configurable": conf}).values)["turns"][0]
        conf = {**config["configurable"], "checkpoint_id": before["checkpoint_id"]}
        turn = progress(graph.get_state({"configurable": conf}).values)["turns"][0]
        assert again["kept"] == cut["position"]
        assert again["ids"][: cut["position"]] == turn["ids"][: cut["position"]]
