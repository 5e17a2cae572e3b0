"""ChatDecisionRetry: token records, tool calls, streaming, continuations; top-k bounds."""

from __future__ import annotations

import math

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from decision_retry.langchain import ChatDecisionRetry, scripted_turns_lm, toolcalls
from decision_retry.langchain.chat_model import PREFIX_KEY
from decision_retry.langchain.logprobs import reply_tokens
from decision_retry.lm import Sampling
from decision_retry.testing import scripted_lm, tiny_llama

CHOICE = {"<": 0.5, "<=": 0.3, "==": 0.2}
SCRIPT = ["def lt(a, b):\n    return a ", {"choice": CHOICE}, " b\n"]
TOOL_SCRIPT = ['On it.\n<tool_call>\n{"name": "add", "arguments": {"a": ', {"choice": {"1": 0.5, "2": 0.5}},
               ', "b": 3}}\n</tool_call>']


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_reply_carries_exact_token_records():
    model = ChatDecisionRetry(engine=scripted_lm(SCRIPT), seed=1)
    msg = model.invoke("write lt")
    meta = msg.response_metadata["decision_retry"]
    assert msg.content == "".join(meta["pieces"]) and msg.id == meta["message_id"]
    chosen = meta["pieces"].index(next(p for p in meta["pieces"] if p in CHOICE))
    h = -sum(p * math.log(p) for p in CHOICE.values())
    assert meta["entropy"][chosen] == pytest.approx(h, abs=1e-5)
    assert meta["logp"][chosen] == pytest.approx(math.log(CHOICE[meta["pieces"][chosen]]), abs=1e-5)
    assert {t for t, p in meta["top"][chosen] if p > 0} == set(CHOICE)
    assert all(h == pytest.approx(0, abs=1e-6) for i, h in enumerate(meta["entropy"]) if i != chosen)
    # the OpenAI-shaped copy says the same
    content = msg.response_metadata["logprobs"]["content"]
    assert [c["token"] for c in content] == meta["pieces"]
    assert [c["logprob"] for c in content] == meta["logp"]
    assert msg.usage_metadata["output_tokens"] == len(meta["ids"])


def test_same_seed_same_reply_and_seeds_differ():
    model = ChatDecisionRetry(engine=scripted_lm(SCRIPT))
    texts = {model.invoke("x", seed=s).content for s in range(12)}
    assert len(texts) == 3  # every choice appears over a dozen seeds
    assert model.invoke("x", seed=5).content == model.invoke("x", seed=5).content


def test_tool_calls_in_the_hermes_format():
    model = ChatDecisionRetry(engine=scripted_lm(TOOL_SCRIPT)).bind_tools([add])
    msg = model.invoke("add 1 and 3")
    assert msg.content == "On it."
    (call,) = msg.tool_calls
    assert call["name"] == "add" and call["args"]["b"] == 3 and call["args"]["a"] in (1, 2)
    assert msg.response_metadata["finish_reason"] == "tool_calls"


def test_render_lists_tools_and_wraps_tool_results():
    schemas = toolcalls.tool_schemas([add])
    call = {"name": "add", "args": {"a": 1, "b": 3}, "id": "c1", "type": "tool_call"}
    chat = toolcalls.render([HumanMessage("add"), AIMessage("", tool_calls=[call]),
                             ToolMessage("4", tool_call_id="c1")], schemas)
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"]
    assert '"name": "add"' in chat[0]["content"] and "<tools>" in chat[0]["content"]
    assert toolcalls.parse(chat[2]["content"])[1][0]["args"] == {"a": 1, "b": 3}
    assert chat[3]["content"] == "<tool_response>\n4\n</tool_response>"


def test_invalid_tool_call_is_reported_not_raised():
    model = ChatDecisionRetry(engine=scripted_lm(["<tool_call>\n{not json}\n</tool_call>"]))
    msg = model.invoke("x")
    assert msg.tool_calls == [] and len(msg.invalid_tool_calls) == 1


@pytest.mark.parametrize("script", [SCRIPT, TOOL_SCRIPT])
def test_stream_gives_the_reply_invoke_gives(script):
    model = ChatDecisionRetry(engine=scripted_lm(script)).bind_tools([add])
    whole = model.invoke("x", seed=7)
    chunks = list(model.stream("x", seed=7))
    merged = chunks[0]
    for c in chunks[1:]:
        merged += c
    assert len(chunks) > 1
    assert merged.content == whole.content
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [
        (c["name"], c["args"]) for c in whole.tool_calls]
    keys = ("pieces", "logp", "entropy", "ids")
    assert {k: merged.response_metadata["decision_retry"][k] for k in keys} == {
        k: whole.response_metadata["decision_retry"][k] for k in keys}
    assert "<tool_call" not in "".join(c.content for c in chunks)  # held back, never streamed


@pytest.mark.parametrize("kv_states", [8, 0])
def test_continuation_keeps_the_prefix(kv_states):
    model = ChatDecisionRetry(engine=scripted_lm(SCRIPT), kv_states=kv_states)
    first = model.invoke("x", seed=0)
    meta = first.response_metadata["decision_retry"]
    t = next(i for i, p in enumerate(meta["pieces"]) if p in CHOICE)
    prefix = {"message_id": first.id, "position": t, "ids": meta["ids"][:t]}
    texts = set()
    for seed in range(12):
        again = model.invoke("x", seed=seed, **{PREFIX_KEY: prefix})
        m = again.response_metadata["decision_retry"]
        assert m["kept"] == t and m["ids"][:t] == meta["ids"][:t]
        assert m["logp"][:t] == pytest.approx(meta["logp"][:t])
        texts.add(m["pieces"][t])
    assert texts == set(CHOICE)
    assert model.stats["forks" if kv_states else "rescored"] == 12


@pytest.mark.slow
def test_a_real_transformers_model_reports_the_entropies_it_scores():
    lm = tiny_llama(vocab=64, seed=0)
    model = ChatDecisionRetry(engine=lm, max_tokens=12, temperature=1.0)
    msg = model.invoke([HumanMessage("hello")], seed=3)
    meta = msg.response_metadata["decision_retry"]
    prompt = lm.encode(toolcalls.render([HumanMessage("hello")]))
    scored = lm.score(lm.prefill(prompt), meta["ids"], Sampling(temperature=1.0))
    assert [t.entropy for t in scored.tokens] == pytest.approx(meta["entropy"], abs=1e-4)
    assert [t.logp for t in scored.tokens] == pytest.approx(meta["logp"], abs=1e-4)


def test_topk_bounds_contain_the_exact_entropy():
    """A reply in OpenAI's logprobs shape, from a known distribution over 50 tokens."""
    rest = [0.9**i for i in range(47)]
    probs = [0.4, 0.2, 0.1] + [0.3 * r / sum(rest) for r in rest]  # the tail below 0.1 each
    exact = -sum(p * math.log(p) for p in probs)
    top = [{"token": f"t{i}", "logprob": math.log(p)} for i, p in enumerate(probs[:5])]
    msg = AIMessage("t1", response_metadata={"logprobs": {"content": [
        {"token": "t1", "logprob": math.log(0.2), "top_logprobs": top}]}})
    (tok,) = reply_tokens(msg, temperature=0.25, vocab=50).tokens
    lo, hi = tok.entropy_bounds
    assert lo <= exact <= hi and lo < hi
    z = sum(p**4 for p in probs)
    assert tok.logq_bounds[0] <= 4 * math.log(0.2) - math.log(z) <= tok.logq_bounds[1]
    # all the mass listed: exact
    full = [{"token": f"t{i}", "logprob": math.log(p)} for i, p in enumerate([0.5, 0.5])]
    msg = AIMessage("t0", response_metadata={"logprobs": {"content": [
        {"token": "t0", "logprob": math.log(0.5), "top_logprobs": full}]}})
    (tok,) = reply_tokens(msg, vocab=2).tokens
    assert tok.entropy == pytest.approx(math.log(2)) and tok.entropy_bounds[0] == tok.entropy_bounds[1]


def test_no_logprobs_is_one_clear_error():
    from decision_retry.errors import BadInput

    with pytest.raises(BadInput, match="logprobs=True"):
        reply_tokens(AIMessage("hi"))


def test_scripted_turns_follow_the_conversation():
    model = ChatDecisionRetry(engine=scripted_turns_lm([["first"], ["second"]]))
    assert model.invoke([HumanMessage("a")]).content == "first"
    assert model.invoke([HumanMessage("a"), AIMessage("first"), HumanMessage("b")]).content == "second"
