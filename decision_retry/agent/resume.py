"""`fix --resume RUN`: continue an interrupted run (or one whose engine was lost) from its trace
store.

The store holds everything a run depends on: its config (strategy, budget, seed, test command,
sandbox), its repository and every node recorded before it stopped. Resuming replays the run
from the start with the same seed in the same run: the model's turns are decoded again and,
because a node's id is a hash of its content and parent, each one that matches the recorded
node adds nothing; the recorded test results are reused, not run again, and so is the fault
localisation the first turn recorded (no coverage run: a new one could rank differently, and the
prompt and tool arguments built from it would differ; a run stopped before its first turn was
recorded measures it again, as nothing recorded depends on it yet). So the chain state,
the spent budget, the random state and the next cut are exactly where the run stopped, and the
run goes on to the same result an uninterrupted run with that seed reaches. A replayed turn
that differs from the recorded one (other weights, another engine) is reported as `diverged`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pydantic import ValidationError

from decision_retry.agent.runner import ENGINE_LOST, FixConfig, FixResult, drive
from decision_retry.errors import BadInput
from decision_retry.localise.replay import recorded
from decision_retry.repo import leftovers
from decision_retry.repo import sandbox as sandboxes
from decision_retry.repo.userrepo import repo_root
from decision_retry.trace.recorder import Recorder
from decision_retry.trace.store import TraceStore

# unfinished (killed), interrupted (Ctrl-C, SIGTERM, SIGHUP) or engine-lost (its server stopped
# answering): each stopped before its end, with every node recorded so far in the store
RESUMABLE = (None, "interrupted", ENGINE_LOST)


def resume(run_ref: str, *, store: TraceStore, lm=None, listeners=(), on_event=None,
           apply: bool = False, sandbox: sandboxes.Sandbox | None = None) -> FixResult:
    """Continue run `run_ref` (an id, a unique prefix, or `latest`) to its end."""
    leftovers.sweep(store)  # a killed run's clone goes, and the run is marked interrupted
    run_id = store.resolve(run_ref)
    outcome = store.outcome(run_id)
    live = list(_live_clones(run_id))
    if outcome is None and live:
        raise BadInput(f"run {run_id[:12]} is still running (its clone {live[0]} is in use)")
    if outcome not in RESUMABLE:
        raise BadInput(f"run {run_id[:12]} already ended ({outcome}): nothing to resume")
    tree = store.load(run_id)
    try:
        cfg = FixConfig.model_validate(tree.run.config)
    except ValidationError as err:
        first = err.errors()[0]
        raise BadInput(f"run {run_id[:12]} cannot be resumed: its stored config is not valid "
                       f"({'.'.join(map(str, first['loc']))}: {first['msg']})") from None
    if not tree.run.repo:
        raise BadInput(f"run {run_id[:12]} cannot be resumed: it names no repository")
    root = repo_root(tree.run.repo)
    if lm is None:
        from decision_retry.loading import load_lm

        lm = load_lm(cfg.model)
    if lm.name != tree.run.model:
        raise BadInput(f"run {run_id[:12]} was made with model {tree.run.model!r}, "
                       f"not {lm.name!r}: resume it with the same --model")
    sandbox = sandbox or sandboxes.resolve(cfg.sandbox, pass_env=cfg.pass_env)

    replay: dict[str, list] = {}
    for t in tree.test_runs:  # in the order they were recorded
        replay.setdefault(t.branch_id, []).append(t)
    recorded_turns = {t.id for t in tree.turns}
    store.reopen_run(run_id)
    recorder = Recorder(store, listeners)
    recorder.run = tree.run
    seen: set[str] = set()
    recorder.listeners.append(_TurnIds(seen))
    result = drive(root, cfg, lm=lm, recorder=recorder, sandbox=sandbox, on_event=on_event,
                   apply=apply, replay=replay, expect_base=_recorded_base(tree),
                   localisation=recorded(tree.turns, tree.branches))
    return result.model_copy(update={"resumed": len(recorded_turns & seen),
                                     "diverged": bool(recorded_turns - seen)})


def _recorded_base(tree) -> str | None:
    """The starting snapshot the run recorded: that of the first turn's decision points."""
    first = next((b for b in tree.branches if b.parent_id is None), None)
    turns = {t.id for t in tree.turns if first and t.branch_id == first.id and t.index == 0}
    return next((d.snapshot for d in tree.decisions if d.turn_id in turns and d.snapshot), None)


def _live_clones(run_id: str):
    """Our temporary directories of this run whose process still runs."""
    for d in Path(tempfile.gettempdir()).glob(f"{leftovers.TMP_PREFIX}{run_id[:12]}-*"):
        try:
            owner = json.loads((d / "owner.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(owner, dict) and leftovers.is_alive(owner):
            yield d


class _TurnIds:
    """A trace listener that collects the ids of the turns recorded."""

    def __init__(self, seen: set[str]) -> None:
        self.seen = seen

    def record_turn(self, turn) -> None:
        self.seen.add(turn.id)

    def __getattr__(self, name: str):
        return lambda *a, **k: None  # every other listener method: nothing to do
