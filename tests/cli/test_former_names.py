"""A run stored under a former strategy name (entropy-cut, uniform-cut, argmax-cut) still loads:
`logs` and `logs show` say today's name and what ran, and `fix --resume` replays every recorded
turn (no divergence) and finishes it under the name it was recorded with. The run is a real
scripted `fix` in a real git repository, its trace a real SQLite store written as a release
before the rename wrote it (the name in the run, its config and every branch)."""

from __future__ import annotations

import json

import pytest

from decision_retry.agent.runner import FixConfig, drive
from decision_retry.repo import sandbox as sandboxes
from decision_retry.retry import RetryConfig
from decision_retry.testing import scripted_lm
from decision_retry.trace.recorder import Recorder
from decision_retry.trace.store import TraceStore
from tests.helpers import UNITS_SCRIPT, first_failing_seed, fixture_repo, run_cli

# former name -> (the run as it is configured today, what the former release stored instead)
FORMER = {
    "entropy-cut": ({}, {}),
    "argmax-cut": ({"argmax": True}, {}),
    "uniform-cut": ({"cut_weights": "uniform"}, {"cut_weights": "entropy"}),
}


class FormerRecorder(Recorder):
    """The recorder of a release before the rename: every attempt labelled with the former name
    (resume records with today's Recorder)."""

    def __init__(self, store, listeners, name: str) -> None:
        super().__init__(store, listeners)
        self.name = name

    def start_branch(self, *, strategy: str = "", **kw):
        return super().start_branch(strategy=self.name if strategy == "rewind" else strategy, **kw)


class InterruptInRewind:
    """A trace listener that stops the run (Ctrl-C) at the first turn of its second attempt."""

    def __init__(self) -> None:
        self.branches: list[str] = []

    def start_branch(self, branch) -> None:
        self.branches.append(branch.id)

    def record_turn(self, turn) -> None:
        if turn.branch_id != self.branches[0]:
            raise KeyboardInterrupt

    def __getattr__(self, name):
        return lambda *a, **k: None


def record_former_run(tmp_path, name: str, script_name: str) -> tuple[str, int]:
    """An interrupted run of the units fixture stored under `name`; its id and recorded turns."""
    repo = fixture_repo(tmp_path, "units")
    lm = scripted_lm(UNITS_SCRIPT, name=script_name)
    today, stored = FORMER[name]
    cfg = FixConfig(retry=RetryConfig(proposal_temperature=1.0, **today), seed=first_failing_seed(lm),
                    budget_tokens=200, max_attempts=12, test_timeout=300.0)
    cfg = cfg.model_copy(update={"retry": cfg.retry.resolved(patch=True, teacher_forcing=True,
                                                             excludes=True)})
    retry = cfg.retry.model_dump(mode="json")
    former = {k: v for k, v in retry.items() if k != "argmax"} | stored | {"strategy": name}
    assert RetryConfig.model_validate(former) == cfg.retry  # the stored config reads as this run
    with TraceStore(tmp_path / "home" / "traces.db") as store:
        recorder = FormerRecorder(store, [InterruptInRewind()], name)
        run = recorder.start_run(model=lm.name, strategy=name, seed=cfg.seed, repo=str(repo),
                                 config={**cfg.model_dump(mode="json"), "retry": former})
        with pytest.raises(KeyboardInterrupt):
            drive(repo, cfg, lm=lm, recorder=recorder, sandbox=sandboxes.resolve("auto"))
        tree = store.load(run.id)
    assert tree.run.outcome == "interrupted" and len(tree.branches) == 2
    assert {b.strategy for b in tree.branches} == {name}  # as the former release labelled them
    return run.id, len(tree.turns)


@pytest.mark.parametrize("name", sorted(FORMER))
@pytest.mark.slow
def test_a_run_under_a_former_name_loads_and_resumes(tmp_path, script_file, name):
    home = tmp_path / "home"
    run_id, turns = record_former_run(tmp_path, name, f"scripted:{script_file.name}")

    listed = run_cli("logs", home=home)
    assert listed.returncode == 0 and " rewind " in listed.stdout and name not in listed.stdout
    shown = run_cli("logs", "show", run_id, home=home)
    assert shown.returncode == 0, shown.stderr
    head = shown.stdout.splitlines()[0]
    assert "· rewind (" in head and name not in shown.stdout
    assert ("argmax " in head) == (name == "argmax-cut")
    assert ("uniform cuts" in head) == (name == "uniform-cut")

    proc = run_cli("fix", "--resume", run_id[:10], "--model", f"scripted:{script_file}",
                   "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["fixed"] and result["resumed"] == turns and not result["diverged"]
    with TraceStore(home / "traces.db") as store:
        tree = store.load(run_id)
    assert tree.run.outcome == "fixed" and not store.skipped
    assert {b.strategy for b in tree.branches} == {name}  # the replayed branches are the recorded
