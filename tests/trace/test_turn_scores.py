"""Tokens scored after their turn was recorded (a delayed decision scores a reply only when it
reads it): stored beside the turn, put in it on load, the turn's id unchanged; a step's stage."""

from __future__ import annotations

import math

from decision_retry.tokens import Token
from decision_retry.trace.recorder import Recorder
from decision_retry.trace.store import TraceStore


def _tokens(n: int) -> list[Token]:
    return [Token(id=i, text=f"t{i}", logp=-0.5, logq=-0.4, entropy=0.3) for i in range(n)]


def test_scores_recorded_after_a_turn_load_into_its_tokens(tmp_path):
    with TraceStore(tmp_path / "traces.db") as store:
        rec = Recorder(store)
        rec.start_run(model="m", strategy="rewind", config={}, seed=0)
        branch = rec.start_branch(parent=None, cut=None, strategy="rewind")
        plain = rec.record_turn(branch, tokens=_tokens(3))
        other = rec.record_turn(rec.start_branch(parent=branch, cut=None, strategy="rewind"),
                                tokens=_tokens(2))
        scored = [t.model_copy(update={"alt_logp": -1.0 - t.id, "alt_logq": -2.0 - t.id,
                                       "logp": -0.25})  # e.g. a kept tail, rescored
                  for t in _tokens(3)]
        rec.record_scores(plain, scored)
        rec.record_scores(plain, scored)  # idempotent, as every node (a resumed run records again)
        assert rec.record_scores(None, scored) is None  # an unrecorded turn: nothing to attach to
        rec.record_mh_step(current=branch, proposal=None, cut_turn=0, cut_position=1,
                           cut_entropy=0.3, proposal_length=1, log_accept=-2.5,
                           log_cut_correction=0.0, accepted=False, decode_tokens=1, stage=1)
        rec.finish_run("not fixed")
        tree = store.load(rec.run.id)
    assert not store.skipped
    by_id = {t.id: t for t in tree.turns}
    assert set(by_id) == {plain.id, other.id}  # ids as recorded
    assert [k.alt_logp for k in by_id[plain.id].tokens] == [-1.0, -2.0, -3.0]
    assert [k.alt_logq for k in by_id[plain.id].tokens] == [-2.0, -3.0, -4.0]
    assert [k.logp for k in by_id[plain.id].tokens] == [-0.25] * 3
    assert all(k.alt_logp is None for k in by_id[other.id].tokens)  # never scored
    [step] = tree.mh_steps
    assert step.stage == 1 and math.isclose(step.log_accept, -2.5)


def test_a_one_stage_step_keeps_the_id_it_had_before_stages(tmp_path):
    with TraceStore(tmp_path / "traces.db") as store:
        rec = Recorder(store)
        rec.start_run(model="m", strategy="rewind", config={}, seed=0)
        fields = {"cut_turn": 0, "cut_position": 1, "cut_entropy": 0.3, "proposal_length": 1,
                  "log_accept": -1.0, "accepted": False, "decode_tokens": 1}
        one = rec.record_mh_step(**fields)
        two = rec.record_mh_step(**fields, stage=2)
    assert "stage" not in one.model_dump() and two.model_dump()["stage"] == 2
    assert one.id != two.id
