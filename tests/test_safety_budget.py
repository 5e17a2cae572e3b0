"""The tools protocol never spends more decode tokens than the budget (it overspent by up to 7:
one token per remaining turn once the budget was gone)."""

from __future__ import annotations

import pytest

from decision_retry.agent.runner import fix
from decision_retry.hermes import call_text
from decision_retry.testing import scripted_lm
from decision_retry.trace.store import TraceStore
from tests.helpers import fix_config, fixture_repo, repo_state


@pytest.mark.parametrize("budget", [7, 23])
def test_tools_turns_stop_at_the_budget(tmp_path, budget):
    repo = fixture_repo(tmp_path, "units")
    before = repo_state(repo)
    cfg = fix_config(protocol="tools").model_copy(update={"budget_tokens": budget})
    with TraceStore(tmp_path / "traces.db") as store:
        result = fix(repo, cfg, lm=scripted_lm([call_text("read_file", {"path": "units.py"})]), store=store)
        tree = store.load(result.run_id)
    spent = sum(len(t.tokens) for t in tree.turns)
    assert result.decode_tokens == spent <= budget
    assert not result.fixed and result.stop == "budget"
    assert repo_state(repo) == before
