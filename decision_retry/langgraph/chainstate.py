"""The MH chain of `fix` (samplers/chain.py) as the integrations keep it: plain values in a state.

The LangGraph nodes and the LangChain middleware store the chain's current attempt, its tried
cuts and the next cut as JSON-able dicts in the user's state (so any checkpointer stores them and
no node keeps anything outside the state) and read them back here as `Trajectory` and `CutPoint`
values for `Chain.decide` and `Chain.next_cut`: the code `fix` runs, called the same way.

What runs is `fix`'s run (choices.DEFAULT_RUN) made concrete by `RetryConfig.resolved` for what
the model can do (`resolve`):

* local moves where the model is an in-process decision-retry engine (it forks a reply, draws the
  span and teacher-forces the kept tail); suffix moves elsewhere;
* no null moves (exclusion) where the engine can ban a token;
* surprise cuts where, besides, the user gives a second context to score every reply under
  (`nobody=`: the conversation without what the model copies from, docs/langgraph.md); entropy
  cuts elsewhere, as the graph alone does not say what the model should not have seen;
* the no-body cut token (`cut_token="nobody"`, never a default) where surprise cuts can run: the
  cut's new token drawn under the second context;
* delayed acceptance always, and as in `fix` the scoring a decision reads beyond decoding and
  the verdict (a local move's kept tail, the second context's pass) waits until the chain reads
  the reply (samplers/deferred.py): the model that wrote the reply keeps that work in memory
  and `Completion` asks it for a turn when `Chain.decide` reaches the second stage or a cut is
  drawn from the reply, so a proposal the first stage rejects, or one that passes, is never
  scored;
* the second context's pass in bulk (`nobody_scoring="bulk"`, `Engine.score(exact=False)`)
  unless the cut token is drawn from it.

A value set explicitly that the model cannot run is refused with one line (`refuse`).

A local move's attempt keeps `span` = (s, m, e) in flattened positions: the cut turn's span
[t, s) became [t, t + m) and its tail of e tokens was kept; the calls after the cut call are new
draws of the agent, and `moves.Local.record` counts them as proposal terms.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from decision_retry.errors import BadInput
from decision_retry.samplers import moves
from decision_retry.samplers.chain import Chain, CutPoint, Decision, RetryConfig, Trajectory
from decision_retry.samplers.mh import StepRecord
from decision_retry.tokens import Token

CUT_FIELDS = tuple(f.name for f in dataclasses.fields(CutPoint) if f.name != "kernel")
TokensOf = Callable[[dict], Sequence[Token]]  # a turn record's tokens


def abilities(engine: Any) -> tuple[bool, bool]:
    """(scores, excludes): can the model teacher-force given ids (`Engine.teacher_forcing`), and
    ban a token at a draw (`excludes`)? None (a chat model that is not ours): neither."""
    if engine is None:
        return False, False
    return bool(getattr(engine, "teacher_forcing", False)), bool(getattr(engine, "excludes", False))


def resolve(retry: RetryConfig, *, engine: Any, second_context: bool) -> RetryConfig:
    """`retry` made concrete for this model (module docstring): `RetryConfig.resolved` with the
    patch protocol's role played by the in-process engine (local moves) and by a second context
    given by the user (surprise cuts)."""
    scores, excludes = abilities(engine)
    weights = retry.resolved(patch=second_context, teacher_forcing=scores).cut_weights
    out = retry.resolved(patch=True, teacher_forcing=scores, excludes=excludes)
    return out.model_copy(update={"cut_weights": weights}) if weights != out.cut_weights else out


def refuse(retry: RetryConfig, *, engine: Any, second_context: bool, model: str) -> None:
    """One clear line (BadInput) for a resolved value the model cannot run."""
    scores, excludes = abilities(engine)
    if retry.kernel.base.local and not scores:
        raise BadInput(f"RetryConfig move={retry.move!r} needs a model that can teacher-force the "
                       f"kept tail (an in-process decision-retry engine); {model} cannot: use "
                       "move='suffix'")
    need = "a second context to score every reply under (nobody=...)" if scores else \
        f"a model that can score a reply (teacher forcing); {model} cannot"
    if retry.surprise and not (scores and second_context):
        raise BadInput(f"RetryConfig cut_weights={retry.cut_weights!r} needs {need}: use "
                       "cut_weights='entropy'")
    if retry.first.scored and not (scores and second_context):
        raise BadInput(f"RetryConfig cut_token={retry.cut_token!r} needs {need}: use "
                       "cut_token='patch'")
    if retry.excluding and not excludes:
        raise BadInput(f"RetryConfig exclude=True needs a model that can ban a token at a draw; "
                       f"{model} cannot: use exclude=False")


# -- values in the state, read back -------------------------------------------------------------
def cut_dict(point: CutPoint, turns: Sequence[dict]) -> dict:
    """A cut as the state keeps it: CutPoint's fields, the move's name, the cut call's message."""
    return {**{f: getattr(point, f) for f in CUT_FIELDS}, "move": point.move,
            "message_id": turns[point.turn]["message_id"]}


def cut_point(cut: dict, config: RetryConfig) -> CutPoint:
    """The CutPoint a stored cut names (its move rebuilt with the run's span rule)."""
    return CutPoint(**{f: cut.get(f) for f in CUT_FIELDS},
                    kernel=moves.named(cut.get("move", "suffix"), config.span))


class Completion:
    """An attempt's turns completed on demand by the model that wrote them (`complete_turn`:
    a turn record -> (the record completed, positions scored); None: no model to ask, so a
    record marked `unscored` is an error). Memoised per message; `positions` sums the work."""

    def __init__(self, complete_turn: Callable[[dict], tuple[dict, int]] | None) -> None:
        self.complete_turn = complete_turn
        self.done: dict[str, dict] = {}
        self.positions = 0

    def __call__(self, attempt: dict) -> dict:
        """`attempt` with every turn complete."""
        turns = []
        for t in attempt["turns"]:
            if t.get("unscored") and t["message_id"] not in self.done:
                if self.complete_turn is None:
                    raise BadInput("a reply's scoring was left to the decision, but no model "
                                   "to score it was given: rewind_node(model=<the model node>)")
                self.done[t["message_id"]], n = self.complete_turn(t)
                self.positions += n
            turns.append(self.done.get(t["message_id"], t))
        return {**attempt, "turns": turns}

    def known(self, attempt: dict) -> dict:
        """`attempt` with the turns completed so far (no scoring)."""
        return {**attempt, "turns": [self.done.get(t["message_id"], t) for t in attempt["turns"]]}

    def pending(self, attempt: dict) -> bool:
        """Does `attempt` hold a turn whose scoring still waits?"""
        return any(t.get("unscored") and t["message_id"] not in self.done
                   for t in attempt["turns"])


def trajectory(attempt: dict, tokens_of: TokensOf, passed: bool = False,
               complete: Completion | None = None) -> Trajectory:
    """What the chain reads of an attempt: its calls' tokens, r, stop flags, a local move's span;
    with `complete`, completed when the chain reads what its scoring waits for."""
    turns = attempt["turns"]
    span = attempt.get("span")
    later = None
    if complete is not None and complete.pending(attempt):
        def later() -> Trajectory:
            return trajectory(complete(attempt), tokens_of, passed)
    return Trajectory([tokens_of(t) for t in turns], attempt["r"],
                      [t.get("finish") == "stop" for t in turns],
                      None if span is None else tuple(span), passed=passed, complete=later)


def decide(config: RetryConfig, chain: dict | None, attempt: dict, cut: dict | None, *,
           tokens_of: TokensOf, passed: bool, generator: torch.Generator, decode_tokens: int,
           span: Sequence[int] | None = None, rejected: bool = False,
           complete: Completion | None = None) -> Decision:
    """`Chain.decide` between the chain's current attempt (complete) and `attempt`, made from
    `cut` (`span`: a local move's (s, m, e)); a local draw outside the support (`rejected`) is
    no proposal; `complete` completes the proposal where the decision reads it."""
    proposal = {**attempt, "span": span}
    return Chain(config).decide(
        None if chain is None else trajectory(chain, tokens_of),
        [] if rejected else [trajectory(proposal, tokens_of, passed, complete)],
        None if cut is None else cut_point(cut, config),
        tried=tuple((chain or {}).get("tried", ())), generator=generator,
        decode_tokens=decode_tokens)


def next_cut(config: RetryConfig, chain: dict, *, tokens_of: TokensOf,
             generator: torch.Generator) -> dict | None:
    """`Chain.next_cut` of the chain's current attempt, as the state keeps it (None: no cut)."""
    point = Chain(config).next_cut(trajectory(chain, tokens_of), generator,
                                   tuple(chain.get("tried", ())))
    return None if point is None else cut_dict(point, chain["turns"])


def rejected_step(tokens: Sequence[Token], cut: dict, *, m: int, decode_tokens: int) -> StepRecord:
    """The step of a local draw outside the support: log A = -inf, nothing ran (local.py)."""
    return StepRecord(cut_position=cut["index"], cut_entropy=tokens[cut["position"]].entropy,
                      proposal_length=m, log_accept=-math.inf, log_target=0.0,
                      log_proposal=0.0, log_cut_correction=0.0, log_verifier=0.0,
                      accepted=False, decode_tokens=decode_tokens)


def stored(step: StepRecord) -> dict:
    """A step's fields as the trace store keeps them: finite numbers (-inf as the most negative
    float, as `fix` stores it)."""
    fields = step.model_dump(exclude={"tries"})
    for k in ("log_accept", "log_proposal", "log_cut_correction"):
        if fields[k] == -math.inf:
            fields[k] = -sys.float_info.max
    return fields
