"""The LangGraph nodes' and the LangChain middleware's defaults are `fix`'s, defined once
(choices.py): the run as far as they run it, the budget's decision-point threshold."""

from __future__ import annotations

import inspect

from decision_retry.choices import DEFAULT_RUN, SPIKE_THRESHOLD
from decision_retry.langgraph.model import DEFAULT_RETRY, DEFAULT_SPIKE, model_node
from decision_retry.langgraph.rewind import rewind_node
from decision_retry.samplers.chain import RetryConfig, describe


def test_the_default_run_is_fix_run_where_the_nodes_run_it():
    resolved = RetryConfig(**DEFAULT_RUN).resolved(patch=False, teacher_forcing=False)
    assert DEFAULT_RETRY.strategy == DEFAULT_RUN["strategy"] == "rewind"
    assert (DEFAULT_RETRY.move, DEFAULT_RETRY.cut_weights) == (resolved.move, resolved.cut_weights)
    assert DEFAULT_RETRY.span == resolved.span and DEFAULT_RETRY.alpha == resolved.alpha
    assert not DEFAULT_RETRY.excluding and not DEFAULT_RETRY.delayed  # not run by the nodes yet
    assert describe(DEFAULT_RETRY) == "rewind (entropy cuts, suffix moves)"
    assert DEFAULT_SPIKE.threshold == SPIKE_THRESHOLD


def test_every_entry_point_reads_it():
    from decision_retry.langchain.middleware import DecisionRetryMiddleware

    for entry in (model_node, rewind_node, DecisionRetryMiddleware.__init__):
        assert inspect.signature(entry).parameters["retry"].default is DEFAULT_RETRY
