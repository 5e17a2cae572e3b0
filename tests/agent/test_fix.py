"""`fix` end to end on real git repositories with the scripted model (and once the real one)."""

from __future__ import annotations

import json

import pytest

from decision_retry.agent.runner import FixConfig, fix
from decision_retry.errors import BadInput
from decision_retry.hermes import call_text
from decision_retry.retry import STRATEGIES, RetryConfig
from decision_retry.testing import scripted_lm
from decision_retry.trace.store import TraceStore
from tests.helpers import (
    UNITS_SCRIPT,
    first_failing_seed,
    fix_config,
    fixture_repo,
    git,
    repo_state,
    run_cli,
    write,
)


@pytest.mark.slow
def test_entropy_cut_rewinds_to_the_choice_and_fixes(tmp_path, store):
    repo = fixture_repo(tmp_path, "units")
    write(repo / "notes.txt", "untracked, must survive\n")
    before = repo_state(repo)
    lm = scripted_lm(UNITS_SCRIPT)
    seed = first_failing_seed(lm)
    result = fix(repo, fix_config(seed=seed), lm=lm, store=store)
    assert result.fixed and result.attempts >= 2
    # every rewind cut at the one uncertain token (eps = 0.1 may pick another; the choice dominates)
    assert result.rewinds and result.rewinds[0].token == "-"
    assert result.rewinds[0].file == "units.py" and result.rewinds[0].line == 6
    assert "+    return celsius * 9 / 5 + 32" in result.diff
    # the user's repository is untouched; the fix lives on its branch
    assert repo_state(repo) == before
    show = git(repo, "show", f"{result.branch}:units.py")
    assert "celsius * 9 / 5 + 32" in show
    # the trace round-trips: branches, the cut, MH steps, decisions, test runs
    tree = store.load(result.run_id)
    assert tree.run.outcome == "fixed"
    retry_branches = [b for b in tree.branches if b.cut is not None]
    assert retry_branches and all(b.cut.position == 1 for b in retry_branches)
    assert len(tree.mh_steps) == len(result.steps) == result.attempts - 2  # a pass ends the run
    assert any(d.token == "-" or d.token == "+" for d in tree.decisions)
    assert any(t.passed == 5 for t in tree.test_runs)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_fixes_with_the_scripted_model(tmp_path, store, strategy):
    repo = fixture_repo(tmp_path, "units")
    lm = scripted_lm(UNITS_SCRIPT)
    seed = first_failing_seed(lm)
    result = fix(repo, fix_config(strategy, seed=seed), lm=lm, store=store)
    assert result.fixed, result
    assert 0 < result.decode_tokens <= 200
    kinds = {b.cut is not None for b in store.load(result.run_id).branches}
    if strategy == "restart":
        assert kinds == {False}  # independent attempts: no cuts
    else:
        assert True in kinds


def test_a_fresh_reply_walks_the_last_one_and_decodes_only_where_it_leaves_it(tmp_path, store):
    """restart: every attempt is a fresh reply from one prompt. The scripted model writes the
    same text up to its choice, so a reply after the first decodes nothing there, and from the
    choice on only where it draws the other token (LM.extend_along; its law is extend's:
    tests/test_lm_along.py)."""
    repo = fixture_repo(tmp_path, "units")
    lm = scripted_lm(UNITS_SCRIPT)
    result = fix(repo, fix_config("restart", seed=first_failing_seed(lm)), lm=lm, store=store)
    tree = store.load(result.run_id)
    written = sum(len(t.tokens) for t in tree.turns)
    assert result.fixed and result.attempts >= 2
    assert len(UNITS_SCRIPT) <= result.decode_tokens < written
    # the fix (the other token at the choice) was decoded from the choice on: 3 of its 4 tokens
    assert result.decode_tokens - len(UNITS_SCRIPT) >= 3
    # -o walk_fresh=false: the same run, every token decoded
    cfg = fix_config("restart", seed=first_failing_seed(lm))
    cfg = cfg.model_copy(update={"retry": cfg.retry.model_copy(update={"walk_fresh": False})})
    full = fix(fixture_repo(tmp_path / "again", "units"), cfg, lm=lm, store=store)
    assert full.decode_tokens == sum(len(t.tokens) for t in store.load(full.run_id).turns)


def test_budget_is_respected_and_unfixable_output_is_not_a_crash(tmp_path, store):
    repo = fixture_repo(tmp_path, "units")
    lm = scripted_lm(["this is not python at all ", {"choice": {"(": 0.5, "[": 0.5}}, "```"])
    before = repo_state(repo)
    result = fix(repo, fix_config(), lm=lm, store=store)
    assert not result.fixed and result.stop in ("attempts", "budget")
    assert result.decode_tokens <= 200
    tree = store.load(result.run_id)
    assert any("not applied" in c.observation for c in tree.tool_calls)
    assert repo_state(repo) == before


def test_tools_protocol_reads_edits_and_submits(tmp_path, store):
    repo = fixture_repo(tmp_path, "units")
    script = [call_text("edit_function", {
        "path": "units.py", "function": "celsius_to_fahrenheit",
        "code": "def celsius_to_fahrenheit(celsius: float) -> float:\n    return celsius * 9 / 5 + 32\n"})]
    result = fix(repo, fix_config(protocol="tools"), lm=scripted_lm(script), store=store)
    # the scripted model repeats its edit every turn; the attempt ends at max_turns, then tests pass
    assert result.fixed


def test_bad_input_already_passing(tmp_path, store):
    repo = fixture_repo(tmp_path, "units")
    text = (repo / "units.py").read_text().replace("- 32\n", "+ 32\n", 1)
    (repo / "units.py").write_text(text)
    git(repo, "commit", "-qam", "fixed")
    with pytest.raises(BadInput, match="already pass"):
        fix(repo, fix_config(), lm=scripted_lm(UNITS_SCRIPT), store=store)


@pytest.mark.slow
def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, script_file):
    repo = fixture_repo(tmp_path, "units")
    before = repo_state(repo)
    model = f"scripted:{script_file}"
    cases = [
        (tmp_path / "missing", [], "no such directory"),
        (tmp_path, [], "not a git repository"),
        (repo, ["--test-cmd", "definitely-not-a-command-xyz"], "not found"),
        (repo, ["--test-cmd", "python -m pytest -q -k nothing_matches_this"], "no tests"),
        (repo, ["--budget-tokens", "-5"], "budget-tokens"),
        (repo, ["--strategy", "sideways"], "strategy"),
    ]
    for path, extra, needle in cases:
        proc = run_cli("fix", path, "--model", model, *extra, home=tmp_path / "home")
        assert proc.returncode == 2, (extra, proc.stderr)
        assert needle in proc.stderr.lower(), proc.stderr
    assert repo_state(repo) == before
    # a missing model is one line, exit 2
    proc = run_cli("fix", repo, "--model", tmp_path / "nope.gguf", home=tmp_path / "home")
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_fix_then_logs_and_apply(tmp_path, script_file):
    repo = fixture_repo(tmp_path, "units")
    home = tmp_path / "home"
    write(repo / "scratch.txt", "dirty\n")
    proc = run_cli("fix", repo, "--model", f"scripted:{script_file}", "--apply", home=home)
    assert proc.returncode == 2 and "clean" in proc.stderr  # --apply refuses a dirty tree
    (repo / "scratch.txt").unlink()
    proc = run_cli("fix", repo, "--model", f"scripted:{script_file}", "--proposal-temperature",
                   "1", "--seed", "3", "--max-attempts", "12", "--apply", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["fixed"] and "celsius * 9 / 5 + 32" in (repo / "units.py").read_text()
    runs = json.loads(run_cli("logs", "--json", home=home).stdout)
    assert result["run_id"] in [r["id"] for r in runs]
    shown = run_cli("logs", "show", result["run_id"][:8], home=home)
    assert shown.returncode == 0 and "passed" in shown.stdout.lower()
    with TraceStore(home / "traces.db") as s:  # the defaults, as the run recorded them
        retry = s.load(result["run_id"]).run.config["retry"]
    assert retry["move"] == "local" and retry["span"]["opening"]  # --move auto, --def-line suffix


@pytest.mark.slow
def test_embedded_model_end_to_end(tmp_path, store):
    """The real SmolLM2-135M drives one fix run: real tokens, entropies, tests, a rewind."""
    from decision_retry.loading import load_lm

    repo = fixture_repo(tmp_path, "units")
    before = repo_state(repo)
    cfg = FixConfig(retry=RetryConfig(proposal_temperature=0.7), seed=0, budget_tokens=160,
                    max_attempts=3)
    result = fix(repo, cfg, lm=load_lm("smollm2-135m"), store=store)
    tree = store.load(result.run_id)
    assert tree.turns and all(t.tokens for t in tree.turns)
    assert any(tok.entropy > 0.5 for t in tree.turns for tok in t.tokens)
    assert tree.test_runs and result.decode_tokens <= 160
    if not result.fixed:
        assert result.attempts >= 2 and result.rewinds  # it rewound at least once
    assert repo_state(repo) == before


@pytest.mark.slow
def test_default_model_fixes_the_demo_bug(tmp_path, store):
    """The catalogue's default model, on llama.cpp, fixes `make demo`'s bug end to end."""
    from decision_retry import catalogue
    from decision_retry.loading import load_lm

    repo = fixture_repo(tmp_path, "units")
    before = repo_state(repo)
    cfg = FixConfig(retry=RetryConfig(proposal_temperature=0.7), seed=0, budget_tokens=300,
                    max_attempts=4)
    lm = load_lm()
    assert lm.name == catalogue.entry(catalogue.DEFAULT).title
    result = fix(repo, cfg, lm=lm, store=store)
    assert result.fixed, result
    assert "celsius * 9 / 5 + 32" in result.diff
    assert repo_state(repo) == before  # the fix is on its branch; the checkout is untouched
