"""The decode loop on torch and the toys: one full forward pass as the oracle, cache shapes, stops.

The engine contract itself (forks, batching, seeds, scoring) runs on every engine in
tests/test_engine_contract.py."""

import pytest
import torch

from decision_retry.lm import Sampling
from decision_retry.sampling import child_generators
from tests.helpers import gen

PROMPT = "def add(a, b):"


def full_forward(lm, ids):
    """log p and entropies of every position from one forward over the whole sequence."""
    with torch.inference_mode():
        logits = lm.backend.model(input_ids=torch.tensor([ids])).logits[0].float()  # (L, V)
    logp = torch.log_softmax(logits, -1)
    ent = -(logp.exp() * logp).sum(-1)
    return logp, ent


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.7, 5), (0.0, None)])
def test_recorded_logprobs_and_entropy_match_one_full_forward(tiny, temperature, top_k):
    state = tiny.prefill(PROMPT)
    out = tiny.extend(state, Sampling(temperature=temperature, top_k=top_k, max_new_tokens=12), gen(3))
    ids = out.ids
    logp, ent = full_forward(tiny, ids)
    p = len(out.prompt_ids)
    for i, tok in enumerate(out.tokens):
        row = p + i - 1  # logits at row predict position row + 1
        assert tok.logp == pytest.approx(float(logp[row, tok.id]), abs=1e-4)
        assert tok.entropy == pytest.approx(float(ent[row]), abs=1e-4)
        if temperature == 0:
            assert tok.logq == 0.0 and tok.id == int(logp[row].argmax())
        else:
            scores = torch.log_softmax(full_logits_at(tiny, ids, row) / temperature, -1)
            if top_k:
                kth = torch.topk(scores, top_k).values[-1]
                scores = torch.log_softmax(torch.where(scores < kth, -torch.inf, scores), -1)
            assert tok.logq == pytest.approx(float(scores[tok.id]), abs=1e-4)
        assert tok.top[0].prob == pytest.approx(float(logp[row].exp().max()), abs=1e-5)


def full_logits_at(lm, ids, row):
    with torch.inference_mode():
        return lm.backend.model(input_ids=torch.tensor([ids])).logits[0, row].float()


def test_fork_does_not_rerun_prefix(table):
    """Forks slice the cache: the toy backend's cache is the id tensor, so its length tells."""
    state = table.prefill("abcab")
    out = table.extend(state, Sampling(max_new_tokens=4), gen(1))
    forked = table.fork(out, 2)
    assert forked.cache.shape[1] == len(out.prompt_ids) + 2 - 1
    assert out.cache.shape[1] == len(out.prompt_ids) + len(out.tokens) - 1


def test_batched_rows_stop_independently(table):
    s = Sampling(max_new_tokens=6)
    outs = table.extend_many(table.prefill("ab"), s, child_generators(gen(5), 8))
    lengths = {len(o.tokens) for o in outs}
    assert len(lengths) > 1  # some rows hit EOS earlier than others
    for o in outs:
        assert (o.finish == "eos") == (o.tokens[-1].id == 0)
        assert o.cache.shape[1] == len(o.prompt_ids) + len(o.tokens) - 1


def test_stop_strings_and_eos(table):
    s = Sampling(max_new_tokens=50, stop=("ab",))
    for seed in range(20):
        out = table.extend(table.prefill("c"), s, gen(seed))
        if out.finish == "stop":
            assert out.text.endswith("ab")
        else:
            assert out.finish == "eos" and "ab" not in out.text


def test_length_finish_can_grow_again(table):
    s = Sampling(max_new_tokens=2)
    out = table.extend(table.prefill("b"), s, gen(4))
    if out.finish == "length":
        more = table.extend(out, s, gen(4))
        assert more.tokens[:2] == out.tokens and len(more.tokens) > 2


def test_bad_arguments_are_rejected(tiny):
    with pytest.raises(ValueError, match="fork position"):
        tiny.fork(tiny.prefill(PROMPT), 3)
    with pytest.raises(ValueError):
        Sampling(temperature=-1)


# -- one stop rule (tokens.stop_reason) -------------------------------------------------------
LETTERS = [chr(ord("a") + i) for i in range(20)]  # one certain token each, then EOS


@pytest.mark.parametrize("regex,fork,stops_at", [
    ("b.*q", 0, 16),  # b..q is 16 tokens: inside the window
    ("a.*q", 0, None),  # a..q is 17: never seen in one window
    ("b.*q", 2, None),  # an extend from t = 2 never sees b: its window starts at t
    ("d.*g", 2, 6),
])
def test_the_loop_and_the_local_moves_stop_by_one_rule(regex, fork, stops_at):
    """lm.LM and samplers/local.py both call tokens.stop_reason (the remote engine too:
    tests/engines/test_remote_llamacpp.py), with its STOP_WINDOW and the window starting
    where the generation began; so a local move's support is what the loop can produce."""
    from decision_retry.samplers import local
    from decision_retry.testing import scripted_lm
    from decision_retry.tokens import STOP_WINDOW, stop_reason

    assert STOP_WINDOW == 16
    lm = scripted_lm(LETTERS)
    full = lm.extend(lm.prefill("x"), Sampling(max_new_tokens=30), gen(0))
    assert full.text == "".join(LETTERS) and full.finish == "eos"
    s = Sampling(max_new_tokens=30, stop_regex=regex)
    out = lm.extend(lm.fork(full, fork), s, gen(0))
    rule = [stop_reason(full.tokens, i, s, lm.eos_ids, start=fork) for i in range(fork, 21)]
    local_rule = [local.stop_kind(full.tokens, i, s, lm.eos_ids, start=fork)
                  for i in range(fork, 21)]
    assert rule == local_rule
    first = next(fork + k for k, why in enumerate(rule) if why is not None)
    assert len(out.tokens) == first + 1
    if stops_at is None:
        assert out.finish == "eos" and first == 20
    else:
        assert out.finish == "stop" and first == stops_at


# -- exclusion: the first drawn token may not be a given id -------------------------------------
@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.7, 5)])
def test_an_excluded_id_is_never_drawn_and_logq_stays_the_proposals(tiny, temperature, top_k):
    """On the torch engine: rows that would redraw the banned id draw another, every row's
    first token records the unrestricted log q (one full forward is the oracle), later
    positions are drawn as usual (the ban is for the first position only)."""
    s = Sampling(temperature=temperature, top_k=top_k, max_new_tokens=3)
    start = tiny.prefill(PROMPT)
    ids = [*start.ids]
    scores = torch.log_softmax(full_logits_at(tiny, ids, len(ids) - 1) / temperature, -1)
    if top_k:
        kth = torch.topk(scores, top_k).values[-1]
        scores = torch.log_softmax(torch.where(scores < kth, -torch.inf, scores), -1)
    plain = tiny.extend_many(start, s, child_generators(gen(2), 16))
    ban = plain[0].tokens[0].id  # drawn without the ban
    outs = tiny.extend_many(start, s, child_generators(gen(2), 16), exclude=ban)
    assert all(o.tokens[0].id != ban for o in outs)
    for o in outs:
        assert o.tokens[0].logq == pytest.approx(float(scores[o.tokens[0].id]), abs=1e-4)
    with pytest.raises(ValueError, match="temperature 0"):
        tiny.extend(start, Sampling(temperature=0, max_new_tokens=1), gen(0),
                    exclude=int(scores.argmax()))
