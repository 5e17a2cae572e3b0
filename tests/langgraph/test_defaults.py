"""The LangGraph nodes' and the LangChain middleware's defaults are `fix`'s, defined once
(choices.py), resolved for the model as `fix` resolves them (langgraph/chainstate.py)."""

from __future__ import annotations

import inspect

import pytest

from decision_retry.choices import DEFAULT_RUN, SPIKE_THRESHOLD
from decision_retry.errors import BadInput
from decision_retry.langgraph import chainstate
from decision_retry.langgraph.model import DEFAULT_RETRY, DEFAULT_SPIKE, model_node
from decision_retry.langgraph.rewind import rewind_node
from decision_retry.samplers.chain import RetryConfig, describe
from decision_retry.testing import scripted_lm

FIX = RetryConfig(**DEFAULT_RUN).resolved(patch=True, teacher_forcing=True, excludes=True)


def test_the_default_run_is_fix_run():
    assert DEFAULT_RETRY == RetryConfig(**DEFAULT_RUN)
    assert DEFAULT_SPIKE.threshold == SPIKE_THRESHOLD


def test_an_in_process_engine_runs_fix_default_and_surprise_cuts_with_a_second_context():
    lm = scripted_lm(["a", {"choice": {"b": 0.5, "c": 0.5}}])
    with_second = model_node(lm, nobody=lambda state: "the request without the code")
    assert with_second.run == FIX  # what `fix` runs on the patch protocol, field by field
    assert describe(FIX) == ("rewind (surprise cuts, local moves, def-line suffix moves, "
                             "no null moves)")
    assert FIX.delayed and FIX.excluding
    alone = model_node(lm)  # no second context: entropy cuts, everything else as `fix`
    assert alone.run == FIX.model_copy(update={"cut_weights": "entropy"})
    assert with_second._config()["retry"] == FIX.model_dump(mode="json")


def test_a_model_that_cannot_score_or_ban_runs_suffix_moves_and_entropy_cuts():
    run = chainstate.resolve(DEFAULT_RETRY, engine=None, second_context=True)
    assert (run.move, run.cut_weights, run.excluding, run.delayed) == (
        "suffix", "entropy", False, True)
    assert run == RetryConfig(**DEFAULT_RUN).resolved(patch=False, teacher_forcing=False)


@pytest.mark.parametrize("retry, message", [
    (RetryConfig(move="local"), "move='local' needs a model that can teacher-force"),
    (RetryConfig(cut_weights="surprise"), "cut_weights='surprise' needs a model that can score"),
    (RetryConfig(exclude=True), "exclude=True needs a model that can ban a token"),
    (RetryConfig(cut_token="nobody"), "cut_token='nobody' needs a model that can score"),
])
def test_a_lever_the_model_cannot_run_is_one_clear_line(retry, message):
    run = chainstate.resolve(retry, engine=None, second_context=False)
    with pytest.raises(BadInput, match=message) as err:
        chainstate.refuse(run, engine=None, second_context=False, model="ChatOpenAI")
    assert "\n" not in str(err.value)


def test_surprise_cuts_without_a_second_context_are_refused_by_the_node():
    with pytest.raises(BadInput, match=r"needs a second context to score every reply under"):
        model_node(scripted_lm(["a"]), retry=RetryConfig(cut_weights="surprise"))


def test_every_entry_point_reads_it():
    from decision_retry.langchain.middleware import DecisionRetryMiddleware

    for entry in (model_node, rewind_node, DecisionRetryMiddleware.__init__):
        assert inspect.signature(entry).parameters["retry"].default is DEFAULT_RETRY
