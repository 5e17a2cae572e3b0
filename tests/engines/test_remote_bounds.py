"""Bounds from the top-k (engines/remote/bounds.py) and the interval of log A (samplers/intervals.py).

The exact values come from whole distributions: random ones here, and the llama.cpp server's
own whole-vocabulary answers (exact mode) in test_remote_llamacpp.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from decision_retry.engines.remote import bounds
from decision_retry.samplers import intervals, mh
from decision_retry.tokens import Token

TOL = 1e-9  # float64 rounding of sums over at most 200 terms


def distributions(seed: int, vocab: int, n: int):
    """Log-probabilities of n random distributions, from flat to very peaked."""
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        scale = [0.3, 1.0, 3.0, 8.0][i % 4]
        yield torch.log_softmax(torch.randn(vocab, generator=g, dtype=torch.float64) * scale, -1)


def exact(logp: torch.Tensor, a: float) -> tuple[float, float]:
    """(entropy, log sum p^a) of a whole distribution."""
    p = logp.exp()
    return float(-(p * logp).sum()), float(torch.logsumexp(a * logp, -1))


@pytest.mark.parametrize("k", [1, 3, 10, 40])
@pytest.mark.parametrize("a", [0.25, 0.5, 2.0, 4.0])
def test_entropy_and_log_z_lie_inside_their_bounds(k, a):
    vocab = 200
    for logp in distributions(k * 7 + int(a * 4), vocab, 24):
        top = bounds.listed(sorted(logp.tolist(), reverse=True)[:k], vocab)
        h, log_z = exact(logp, a)
        h_lo, h_hi = bounds.entropy_bounds(top)
        z_lo, z_hi = bounds.log_z_bounds(top, a)
        assert h_lo - TOL <= h <= h_hi + TOL
        assert z_lo - TOL <= log_z <= z_hi + TOL
        assert h_lo < h_hi and z_lo <= z_hi  # mass is missing: H is uncertain (Z may round to a point)


def test_the_whole_vocabulary_gives_points():
    vocab = 50
    logp = next(distributions(1, vocab, 1))
    top = bounds.listed(logp.tolist(), vocab)
    h, log_z = exact(logp, 4.0)
    assert bounds.entropy_bounds(top) == pytest.approx((h, h), abs=TOL)
    lo, hi = bounds.log_z_bounds(top, 4.0)
    assert lo == hi == pytest.approx(log_z, abs=TOL)


@pytest.mark.parametrize("temperature", [0.25, 0.7, 1.0, 1.5])
def test_logq_of_a_drawn_token_lies_inside_its_bounds(temperature):
    vocab, k = 300, 20
    for i, logp in enumerate(distributions(int(temperature * 100), vocab, 16)):
        order = torch.argsort(logp, descending=True).tolist()
        logq = torch.log_softmax(logp / temperature, -1)  # the proposal, no truncation
        top = [float(logp[j]) for j in order[:k]]
        for token in (order[0], order[k // 2], order[k + 5]):  # listed, and one that is not
            rank = order.index(token) if order.index(token) < k else None
            extra = () if rank is not None else (float(logp[token]),)
            listed = bounds.listed(top, vocab, extra)
            lo, hi = bounds.logq_bounds(float(logp[token]), listed, temperature, None, rank)
            assert lo - TOL <= float(logq[token]) <= hi + TOL
            assert lo <= bounds.middle((lo, hi)) <= hi


def test_a_top_k_proposal_within_the_listed_candidates_is_exact():
    vocab = 100
    logp = next(distributions(3, vocab, 1))
    order = torch.argsort(logp, descending=True).tolist()
    listed = bounds.listed([float(logp[j]) for j in order[:20]], vocab)
    keep = logp.clone()
    keep[order[8:]] = -math.inf
    logq = torch.log_softmax(keep / 0.5, -1)
    lo, hi = bounds.logq_bounds(float(logp[order[3]]), listed, 0.5, 8, 3)
    assert lo == hi == pytest.approx(float(logq[order[3]]), abs=TOL)
    assert bounds.logq_bounds(float(logp[order[9]]), listed, 0.5, 8, 9) == (-math.inf, -math.inf)
    with pytest.raises(ValueError, match="top_k 30"):
        bounds.logq_bounds(float(logp[order[3]]), listed, 0.5, 30, 3)


def test_greedy_is_exact():
    listed = bounds.listed([-0.1, -2.5], 10)
    assert bounds.logq_bounds(-0.1, listed, 0.0, None, 0) == (0.0, 0.0)
    assert bounds.logq_bounds(-2.5, listed, 0.0, None, 1) == (-math.inf, -math.inf)


# -- the MH step with estimated log q ----------------------------------------------------------
def tok(i: int, logp: float, logq: float, width: float = 0.0) -> Token:
    b = None if width == 0 else (logq - width, logq + width)
    return Token(id=i, text=str(i), logp=logp, logq=logq, entropy=1.0, logq_bounds=b)


def test_exact_tokens_leave_the_step_as_it_was():
    x = [tok(1, -1.0, -0.5), tok(2, -2.0, -1.0)]
    y = [tok(1, -1.0, -0.5), tok(3, -1.5, -0.7)]
    rec = mh.mh_step_record(x, y, 1, alpha=4.0, rule=None, verifier_delta=0.0, u=0.5,
                            decode_tokens=1)
    assert rec.approximate is None and rec.log_accept_lo is None
    assert "approximate" not in rec.model_dump(exclude_none=True)


def test_the_interval_of_log_a_and_the_approximate_flag():
    x = [tok(1, -1.0, -0.5), tok(2, -2.0, -1.0, 0.1)]
    y = [tok(1, -1.0, -0.5), tok(3, -1.5, -0.7, 0.2)]
    # point log A = 4 * (-1.5 + 2.0) + (-1.0 + 0.7) = 1.7; the proposal part spans +-0.3
    for u, approximate in ((math.exp(1.6), True), (math.exp(1.3), False), (math.exp(2.1), False)):
        rec = mh.mh_step_record(x, y, 1, alpha=4.0, rule=None, verifier_delta=0.0, u=min(u, 1.0),
                                decode_tokens=1)
        assert rec.log_accept == pytest.approx(1.7)
        assert (rec.log_accept_lo, rec.log_accept_hi) == pytest.approx((1.4, 2.0))
        assert rec.approximate is (approximate and u < 1.0)
    # u inside the interval, below 1: log u = -0.05 against log A in [-0.2, 0.4]
    y2 = [tok(1, -1.0, -0.5), tok(3, -1.95, -0.9, 0.2)]
    rec = mh.mh_step_record(x, y2, 1, alpha=4.0, rule=None, verifier_delta=0.0,
                            u=math.exp(-0.05), decode_tokens=1)
    assert rec.log_accept_lo < math.log(math.exp(-0.05)) < rec.log_accept_hi
    assert rec.approximate is True


def test_a_local_move_bounds_its_spans_not_its_kept_tail():
    """moves.Local.record: the spans [t, s) and [t, t + m) are the proposal terms, so only their
    log q intervals widen log A; the kept tail (rescored by `score`) enters the target only."""
    from decision_retry.samplers.moves import Local

    x = [tok(1, -1.0, -0.5), tok(2, -2.0, -1.0, 0.1), tok(5, -0.3, -0.2, 5.0)]
    y = [tok(1, -1.0, -0.5), tok(3, -1.5, -0.7, 0.2), tok(5, -0.4, -0.3, 5.0)]
    # log A = 4 * ((-1.5 - 0.4) - (-2.0 - 0.3)) + (-1.0 + 0.7) = 1.3, the spans +-0.3
    rec = Local().record(x, y, 1, alpha=4.0, correction=0.0, verifier_delta=0.0,
                         u=math.exp(1.2), decode_tokens=1, span=(2, 1))
    assert rec.log_accept == pytest.approx(1.3)
    assert (rec.log_accept_lo, rec.log_accept_hi) == pytest.approx((1.0, 1.6))
    assert rec.approximate is True and rec.accepted
    exact = [t.model_copy(update={"logq_bounds": None}) for t in x]
    rec = Local().record(exact, [*y[:1], exact[1], y[2]], 1, alpha=4.0, correction=0.0,
                         verifier_delta=0.0, u=0.5, decode_tokens=1, span=(2, 1))
    assert rec.approximate is None  # exact spans: the tail's interval does not count
    # (s, m, e): the turns after the kept tail (drawn afresh by both) count too
    later_x, later_y = tok(7, -1.0, -1.0, 0.5), tok(8, -1.0, -1.0, 0.25)
    rec = Local().record([*x, later_x], [*y, later_y], 1, alpha=4.0, correction=0.0,
                         verifier_delta=0.0, u=0.5, decode_tokens=1, span=(2, 1, 1))
    assert rec.log_accept_hi - rec.log_accept_lo == pytest.approx(2 * (0.3 + 0.75))


def test_mtm_interval_contains_log_a_for_any_log_q_inside_the_bounds():
    g = torch.Generator().manual_seed(0)
    x = [tok(0, -1.0, -0.5, 0.05), tok(1, -2.0, -1.2, 0.1)]
    tries = [[tok(0, -1.0, -0.5, 0.05), tok(2 + j, -1.0 - 0.3 * j, -0.8, 0.15)] for j in range(4)]
    j, rec = mh.mtm_choose(x, tries, 1, alpha=4.0, rule=None, verifier_deltas=[0.0] * 4,
                           generator=g, decode_tokens=4)
    lo, hi = rec.log_accept_lo, rec.log_accept_hi
    assert lo < rec.log_accept < hi
    rng = torch.Generator().manual_seed(1)
    for _ in range(200):  # every choice of the true log q inside the bounds gives log A inside
        def draw(t: Token) -> Token:
            b0, b1 = t.logq_bounds
            v = b0 + (b1 - b0) * float(torch.rand((), generator=rng))
            return Token(id=t.id, text=t.text, logp=t.logp, logq=v, entropy=1.0)
        xs = [draw(t) for t in x]
        lam = []
        for y in tries:
            target, proposal = mh.log_weight(xs, [draw(t) for t in y], 1, 4.0)
            lam.append(target + proposal)
        log_a = mh.logsumexp(lam) - mh.logsumexp([v for k, v in enumerate(lam) if k != j] + [0.0])
        assert lo - 1e-9 <= log_a <= hi + 1e-9


def test_straddles_needs_u_inside():
    assert intervals.straddles((-1.0, 1.0), math.exp(0.5))
    assert not intervals.straddles((-1.0, 1.0), math.exp(-1.5))
    assert not intervals.straddles((-1.0, 1.0), 0.0)


def test_bounds_fields_are_omitted_from_exact_tokens_and_kept_in_json():
    exact_tok = tok(1, -1.0, -0.5)
    assert "logq_bounds" not in exact_tok.model_dump()
    est = Token.model_validate_json(tok(1, -1.0, -0.5, 0.1).model_dump_json())
    assert est.logq_bounds == pytest.approx((-0.6, -0.4))


# -- where an approximate decision shows: the store, `logs show`, spans ------------------------
def test_approximate_steps_are_stored_shown_and_exported(tmp_path):
    import subprocess
    import sys

    from decision_retry.otel.attributes import mh_step_attributes
    from decision_retry.trace import Recorder, TraceStore

    home = tmp_path / "home"
    with TraceStore.open(home) as store:
        rec = Recorder(store)
        run = rec.start_run(model="llamacpp:smollm2", strategy="entropy-cut")
        a, b = rec.start_branch(), rec.start_branch()
        common = dict(cut_turn=0, cut_position=3, cut_entropy=1.2, proposal_length=5,
                      log_accept=0.1, log_target=0.3, log_proposal=-0.2, accepted=True,
                      decode_tokens=5)
        approx = rec.record_mh_step(current=a, proposal=b, log_accept_lo=-0.2, log_accept_hi=0.4,
                                    approximate=True, **common)
        exact = rec.record_mh_step(current=a, proposal=b, **common)
        loaded = store.load(run.id).mh_steps
    assert [s.approximate for s in loaded] == [True, None]
    assert (loaded[0].log_accept_lo, loaded[0].log_accept_hi) == (-0.2, 0.4)
    assert loaded[1].id == exact.id and loaded[0].id == approx.id  # ids survive the round trip
    attrs = mh_step_attributes(approx)
    assert attrs["decision_retry.mh.approximate"] is True
    assert attrs["decision_retry.mh.log_accept_lo"] == -0.2
    assert "decision_retry.mh.approximate" not in mh_step_attributes(exact)
    # two root branches and steps between them: a shape only the whole tree shows (`--full`)
    out = subprocess.run([sys.executable, "-m", "decision_retry.cli", "logs", "show", run.id,
                          "--full", "--home", str(home)], capture_output=True, text=True,
                         check=True).stdout
    assert "approximate: log A in [-0.20, 0.40]" in out
    assert out.count("approximate") == 1  # the exact engine's step says nothing of the kind
