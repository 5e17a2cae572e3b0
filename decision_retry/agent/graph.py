"""The fix agent as a LangGraph `StateGraph`: model -> act -> verify -> rewind -> model ...

* model:  generates the next turn through the decode engine (fresh, from a cut, or from the end);
* act:    runs the turn's action on the worktree (tools mode loops back to model);
* verify: runs the tests;
* rewind: the MH decision against the chain's current attempt, then the next cut: restores the
          repository snapshot taken before the cut turn and routes back to model. Both are the
          chain's calls (samplers/chain.py, the same code the LangGraph nodes, the LangChain
          middleware and `sample` run); the chain's state (current, tried cuts, spent, attempts)
          lives in the graph state.
A local move (samplers/chain.py, samplers/local.py) whose draw falls outside the support has no attempt to
run: model routes straight to rewind, which records it as a rejected step.
With surprise cut weights or the no-body cut token a reply is also scored under the no-body
context (agent/nobody.py, samplers/surprise.py): one teacher-forced pass from the cut on, counted
as prefill positions; the no-body cut token draws the first new token of a rewind there. The pass
runs when the chain reads the scores (`_complete`): a cut drawn from the reply, or the second
stage of a delayed decision; a reply that passes the tests or that the first stage rejects is
never scored there. Scores computed after a turn was recorded are recorded beside it.
Routers are pure functions of the state. One loop serves every strategy.
"""

from __future__ import annotations

import functools
import math
import operator
import sys
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal, TypedDict

import torch
from langgraph.graph import END, START, StateGraph

from decision_retry import sampling
from decision_retry.agent import nobody
from decision_retry.costs import out_of_time  # COST: fix --time-limit
from decision_retry.errors import BadInput
from decision_retry.lm import DecodeState, Sampling
from decision_retry.repo.testrun import TestResult
from decision_retry.samplers import deferred, local, surprise
from decision_retry.samplers.chain import (
    CUT_STRATEGIES,
    Chain,
    CutPoint,
    RetryConfig,
    Trajectory,
    verdict,
)
from decision_retry.samplers.mh import StepRecord
from decision_retry.trace.models import Branch, Cut, Turn


@dataclass(frozen=True)
class AgentTurn:
    """One model call of an attempt and what its action did."""

    messages: tuple[dict, ...]  # the conversation it was prompted with
    state: DecodeState  # prompt + generated tokens (with its KV cache, for forks)
    snapshot: str  # repository before this turn's action
    observation: str = ""
    trace: Turn | None = None  # the recorded turn
    alt: DecodeState | None = None  # the reply under the no-body context (surprise weights)
    # not yet scored there: (the no-body state of a reply sharing this one's first t tokens, or
    # None, t); FixAgent._complete scores it when the chain reads it (a delayed decision's
    # second stage, or a cut drawn from it)
    alt_from: tuple[DecodeState | None, int] | None = None
    # a local move's kept tail, not yet rescored under the new prefix: (local.LocalProposal,
    # its length); `state` holds the tail as the attempt it was cut from had it until then
    tail_from: tuple[Any, int] | None = None

    @property
    def pending(self) -> bool:
        """Does the chain still have to score something of this turn before it reads it?"""
        return self.alt_from is not None or self.tail_from is not None


@dataclass(frozen=True)
class Attempt:
    """One trajectory: its turns, its test result, r = fraction passing, its trace branch."""

    branch: Branch
    turns: tuple[AgentTurn, ...] = ()
    done: bool = False
    test: TestResult | None = None
    final_sha: str | None = None
    cut: CutPoint | None = None
    span: tuple[int, int] | None = None  # local move: (s, m) in flattened positions
    decoded: int | None = None  # local move: decode tokens its draw cost (look-ahead included)

    @property
    def tokens(self) -> list[tuple]:
        return [t.state.tokens for t in self.turns]

    @property
    def stops(self) -> list[bool]:
        """Per turn: did it end at a stop string (its last token only closes the reply)?"""
        return [t.state.finish == "stop" for t in self.turns]

    @property
    def r(self) -> float:
        return 0.0 if self.test is None else verdict(self.test.ok, self.test.fraction_passed)

    @property
    def trajectory(self) -> Trajectory:
        """What the chain reads of this attempt."""
        return Trajectory(self.tokens, self.r, self.stops, self.span,
                          passed=self.test is not None and self.test.ok)


class FixState(TypedDict, total=False):
    current: Attempt | None  # the chain's accepted attempt
    pending: list[Attempt]  # attempts in progress (K of them for a multiple-try move)
    cut: CutPoint | None  # where the next proposal starts (None: fresh or from the end)
    tried: tuple[int, ...]  # cuts tried from `current` (run-wide for argmax-cut)
    rewinds: tuple[dict, ...]  # runner.Rewind per cut, in order (with its MH verdict)
    spent: int  # decode tokens, accepted or not
    prefilled: int  # positions teacher-forced (kept tails of local moves, no-body scoring)
    rejected: tuple[StepRecord, str] | None  # a local draw outside the support, and why
    attempts: int
    solved: Attempt | None
    wide: dict | None  # the latest run of FixAgent.wide_cmd: command, ok, passed, failed, errors
    steps: Annotated[list[StepRecord], operator.add]
    stop: str | None


# -- routers (pure) ------------------------------------------------------------------------
def after_model(state: FixState) -> Literal["act", "rewind"]:
    return "act" if state.get("pending") else "rewind"


def after_act(state: FixState) -> Literal["model", "verify"]:
    return "verify" if all(a.done for a in state["pending"]) else "model"


def after_verify(state: FixState) -> Literal["rewind", "__end__"]:
    return END if state.get("solved") is not None else "rewind"


def after_rewind(state: FixState) -> Literal["model", "__end__"]:
    return END if state.get("stop") else "model"


def build_graph(agent: FixAgent):
    """The compiled graph; `agent` supplies the nodes."""
    g = StateGraph(FixState)
    g.add_node("model", agent.model)
    g.add_node("act", agent.act)
    g.add_node("verify", agent.verify)
    g.add_node("rewind", agent.rewind)
    g.add_edge(START, "model")
    g.add_conditional_edges("model", after_model)
    g.add_conditional_edges("act", after_act)
    g.add_conditional_edges("verify", after_verify)
    g.add_conditional_edges("rewind", after_rewind)
    return g.compile()


WALKED = 8  # fresh replies a new one may walk (each keeps its KV cells alive)


@dataclass
class FixAgent:
    """The nodes, over one model, one workspace, one recorder."""

    lm: Any
    ws: Any
    recorder: Any
    protocol: Any
    config: Any  # FixConfig
    base_sha: str
    generator: torch.Generator
    on_event: Any = None
    wide_cmd: str | None = None  # FixConfig.narrow: the whole test command, run on a narrow pass
    _prompt_cache: dict = field(default_factory=dict)
    _alt: surprise.AltContext | None = None
    _completed: dict = field(default_factory=dict)  # branch id -> (attempt scored, positions)
    _fresh: list[DecodeState] = field(default_factory=list)  # the last fresh replies (`_along`)

    def __post_init__(self) -> None:
        tools = hasattr(self.protocol, "observation_message")
        scores = getattr(self.lm, "teacher_forcing", False)  # engines older than the attribute: no
        local = self.rc.kernel.base.local  # (runner.fix has made `auto` concrete)
        if local and tools:
            raise BadInput(f"-o move={self.rc.move} needs --protocol patch (one turn per attempt)")
        if local and not scores:
            raise BadInput(f"-o move={self.rc.move} needs an engine that can score the kept "
                           f"tail (teacher forcing); {self.lm.name} cannot: use -o move=suffix")
        what = (f"--cut-weights {self.rc.cut_weights}" if self.rc.surprise
                else "-o cut_token=nobody")
        if self.rc.scored and tools:
            raise BadInput(f"{what} needs --protocol patch (the no-body context shows the "
                           "suspect functions without their bodies)")
        if self.rc.scored and not scores:
            raise BadInput(f"{what} needs an engine that can score a reply (teacher forcing); "
                           f"{self.lm.name} cannot")

    # -- helpers -----------------------------------------------------------------------------
    @property
    def rc(self) -> RetryConfig:
        return self.config.retry

    @property
    def chain(self) -> Chain:
        return Chain(self.rc)

    @functools.cached_property
    def reply_cap(self) -> int:
        """The tokens one reply may take, fixed for the run (the protocol's `reply_cap`)."""
        return self.protocol.reply_cap(self.lm.encode_text)

    def _event(self, kind: str, **data) -> None:
        if self.on_event:
            self.on_event(kind, data)

    def _along(self, prompt: DecodeState) -> list[DecodeState]:
        """The last fresh replies from `prompt` (at most WALKED), for the next fresh one to walk
        while it draws their tokens (`extend_along`: extend's law, no decode there); none where
        the engine cannot (a server)."""
        if not self.rc.walk_fresh or not hasattr(self.lm, "extend_along"):
            return []
        return [r for r in self._fresh if r.prompt_ids == prompt.prompt_ids]

    def _prefill(self, messages: tuple[dict, ...]) -> DecodeState:
        key = repr(messages)
        if key not in self._prompt_cache:  # one prefill per distinct conversation
            prefix = self.lm.encode_text(self.protocol.defn.format["assistant_prefix"])
            self._prompt_cache = {key: self.lm.prefill(self.lm.encode(list(messages)) + prefix)}
        return self._prompt_cache[key]

    def _unscored(self, turn: AgentTurn, base: AgentTurn | None = None, t: int = 0) -> AgentTurn:
        """`turn`, marked to be scored under the no-body context when the chain reads it (from
        `base`'s scores, which share the reply's first t tokens)."""
        if not self.rc.scored or self.rc.strategy not in CUT_STRATEGIES:
            return turn
        return replace(turn, alt_from=(base.alt if base else None, t))

    def _complete(self, a: Attempt) -> Attempt:
        """`a` with every kept tail rescored and every reply scored under the no-body context
        (memoised with the positions that pass teacher-forced, which `rewind` collects); the
        scored tokens are recorded beside each turn."""
        if not any(turn.pending for turn in a.turns):
            return a
        if a.branch.id in self._completed:
            return self._completed[a.branch.id][0]
        q = Sampling(temperature=self.rc.q_temperature, max_new_tokens=1, alternatives=0)
        turns, n = [], 0
        for turn in a.turns:
            if not turn.pending:
                turns.append(turn)
                continue
            base, t = turn.alt_from or (None, 0)  # the kept tail, then the no-body pass
            d = deferred.Deferred(tail=turn.tail_from[0] if turn.tail_from else None,
                                  nobody=turn.alt_from is not None, base=base, t=t)
            c = deferred.complete(turn.state, d, context=self._alt_context, q=q,
                                  exact=self.rc.nobody_exact)
            turn = replace(turn, state=c.y, alt=c.alt if d.nobody else turn.alt, alt_from=None,
                           tail_from=None)
            n += c.positions
            self.recorder.record_scores(turn.trace, turn.state.tokens)
            turns.append(turn)
        done = replace(a, turns=tuple(turns))
        self._completed[a.branch.id] = (done, n)
        return done

    def _scored_in(self, attempts: list[Attempt]) -> int:
        """The no-body positions `_complete` scored for `attempts`, each counted once."""
        n = 0
        for a in attempts:
            if a.branch.id in self._completed:
                done, k = self._completed[a.branch.id]
                self._completed[a.branch.id], n = (done, 0), n + k
        return n

    def _trajectory(self, a: Attempt) -> Trajectory:
        """What the chain reads of `a`: scored under the no-body context on demand."""
        if not any(turn.pending for turn in a.turns):
            return a.trajectory
        return replace(a.trajectory, complete=lambda: self._complete(a).trajectory)

    def _alt_context(self) -> surprise.AltContext:
        if self._alt is None:  # built once per run, from what the patch prompt shows
            p = self.protocol
            msgs = nobody.messages(p.defn, p.shown, p.task.test_src, p.task.result)
            prefix = self.lm.encode_text(p.defn.format["assistant_prefix"])
            self._alt = surprise.AltContext(self.lm, self.lm.prefill(self.lm.encode(msgs) + prefix))
        return self._alt

    def _first_token(self, current: Attempt, cut: CutPoint, q: Sampling):
        """The no-body cut token's draw (or None for the usual one): y_t from the no-body
        context, scored in the patch context (samplers/surprise.py)."""
        if cut.kernel.fresh:
            return None
        return self.rc.first.first(self._alt_context, current.turns[cut.turn].alt, self.lm,
                                   cut.position, q, self.generator, exclude=cut.ban)

    def _sampling(self, spent: int, tries: int = 1) -> Sampling:
        left = (self.config.budget_tokens - spent) // tries  # K tries share what is left
        cap = min(self.reply_cap, max(1, left))
        defn = self.protocol.defn
        return Sampling(temperature=self.rc.q_temperature, max_new_tokens=cap, stop=defn.stop,
                        stop_regex=defn.stop_regex)

    def _branch(self, parent: Attempt | None, cut: Cut | None) -> Branch:
        return self.recorder.start_branch(
            parent=parent.branch if parent else None, cut=cut, strategy=self.rc.strategy)

    # -- nodes ---------------------------------------------------------------------------------
    def model(self, state: FixState) -> dict:
        spent, pending = state.get("spent", 0), state.get("pending") or []
        if pending:  # tools mode: next turn of the attempts in progress
            new = []
            for a in pending:
                last = a.turns[-1]
                msgs = (*last.messages, {"role": "assistant", "content": self._reply(last)},
                        self.protocol.observation_message(last.observation))
                out = self.lm.extend(self._prefill(msgs), self._sampling(spent), self.generator)
                spent += len(out.tokens)
                new.append(self._with_turn(a, AgentTurn(msgs, out, a.final_sha)))
            return {"pending": new, "spent": spent}
        current, cut = state.get("current"), state.get("cut")
        if cut is not None and cut.kernel.local:
            return self._local(state, current, cut, spent)
        k = self.rc.tries if (cut is not None and self.rc.strategy == "egps") else 1
        k = max(1, min(k, self.config.budget_tokens - spent))  # each try gets a token at least
        if cut is not None:  # rewind: keep turns before the cut turn, fork that turn at the token
            base = current.turns[cut.turn]
            prefix = self.lm.fork(base.state, cut.position)
            kept = current.turns[: cut.turn]
            messages, snap = base.messages, base.snapshot
            c = Cut(turn=cut.turn, position=cut.position, entropy=cut.entropy)
            parent = current
        elif current is not None and self.rc.strategy == "from-end":
            last = current.turns[-1]
            messages = tuple(self.protocol.retry_messages(
                [*last.messages, {"role": "assistant", "content": self._reply(last)}], current.test))
            prefix, kept, snap = self._prefill(messages), current.turns, current.final_sha
            c, parent = Cut(turn=len(current.turns), position=0, entropy=0.0), current
        else:  # first attempt, or restart
            messages = tuple(self.protocol.first_messages())
            prefix, kept, snap, c, parent = self._prefill(messages), (), self.base_sha, None, None
        gens = sampling.child_generators(self.generator, k) if k > 1 else [self.generator]
        q, prefilled = self._sampling(spent, k), state.get("prefilled", 0)
        first = self._first_token(current, cut, q) if cut is not None else None
        along = self._along(prefix) if c is None and k == 1 else []  # a fresh reply
        if first is not None:  # y_t from the no-body context, the rest as usual
            out, more = surprise.first_then_extend(self.lm, first(prefix), cut.position, q,
                                                   self.generator)
            outs, decoded, prefilled = [out], 1 + more, prefilled + 1
        elif along:
            out, decoded = self.lm.extend_along(prefix, along, q, self.generator)
            outs = [out]
        else:
            ban = {} if cut is None or cut.ban is None else {"exclude": cut.ban}  # no null move
            outs, decoded = self.lm.extend_many(prefix, q, gens, **ban), None
        if c is None:  # a fresh reply: one the next ones walk
            self._fresh = [*self._fresh[1 - WALKED:], outs[-1]]
        new = []
        for out in outs:
            spent += decoded if decoded is not None else len(out.tokens) - len(prefix.tokens)
            att = Attempt(branch=self._branch(parent, c), turns=kept, cut=cut, decoded=decoded)
            turn = self._unscored(AgentTurn(messages, out, snap),
                                  *((current.turns[cut.turn], cut.position) if cut else ()))
            new.append(self._with_turn(att, turn))
        self._event("model", attempt=state.get("attempts", 0) + 1, spent=spent, cut=cut,
                    **({"prefilled": prefilled} if self.rc.scored else {}))
        return {"pending": new, "spent": spent, "attempts": state.get("attempts", 0) + 1,
                "prefilled": prefilled}

    def _local(self, state: FixState, current: Attempt, cut: CutPoint, spent: int) -> dict:
        """A local move: resample the cut turn from the cut to the next span boundary, keep and
        rescore the rest (samplers/local.py; in a delayed decision only once its first stage
        accepts)."""
        base = current.turns[cut.turn]
        q = self._sampling(spent)
        first = self._first_token(current, cut, q)
        p = cut.kernel.propose(self.lm, base.state, cut.position, q, self.generator,
                               cap=self.reply_cap,
                               budget=self.config.budget_tokens - spent, first=first,
                               exclude=cut.ban, defer=bool(self.rc.delayed))
        spent += p.decode_tokens
        out = {"spent": spent, "attempts": state.get("attempts", 0) + 1,  # + y_t's patch score
               "prefilled": state.get("prefilled", 0) + p.prefill_positions + (first is not None)}
        self._event("model", attempt=out["attempts"], spent=spent, cut=cut,
                    prefilled=out["prefilled"])
        if p.y is None:
            rec = local.step_record(base.state.tokens, p, alpha=self.rc.alpha, correction=0.0,
                                    verifier_delta=0.0, u=1.0)
            return {**out, "pending": [], "rejected": (rec, p.reason)}
        offset = cut.index - cut.position  # flattened position of the cut turn's first token
        c = Cut(turn=cut.turn, position=cut.position, entropy=cut.entropy)
        att = Attempt(branch=self._branch(current, c), turns=current.turns[: cut.turn], cut=cut,
                      span=(offset + p.s, p.m), decoded=p.decode_tokens)
        tail = (p, len(p.y) - cut.position - p.m) if p.rescore is not None else None
        turn = self._unscored(AgentTurn(base.messages, p.y, base.snapshot, tail_from=tail), base,
                              cut.position)
        new = self._with_turn(att, turn)
        return {**out, "pending": [new], "rejected": None}

    def _reply(self, turn: AgentTurn) -> str:
        return self.protocol.defn.format["assistant_prefix"] + turn.state.text

    def _with_turn(self, att: Attempt, turn: AgentTurn) -> Attempt:
        params = {"model": self.lm.name, "temperature": self.rc.q_temperature,
                  "input_tokens": len(turn.state.prompt_ids), "finish_reason": turn.state.finish,
                  "max_new_tokens": self.reply_cap}
        if att.branch.index == 0 and not att.turns and self.protocol.task.localisation:
            # the run's first turn keeps what its prompt was built from: resume replays it
            params["localisation"] = self.protocol.task.localisation
        rec = self.recorder.record_turn(att.branch, tokens=turn.state.tokens,
                                        prompt=turn.messages[-1]["content"], params=params,
                                        index=len(att.turns))
        return replace(att, turns=(*att.turns, replace(turn, trace=rec)))

    def act(self, state: FixState) -> dict:
        done = []
        for a in state["pending"]:
            turn = a.turns[-1]
            self.ws.restore(turn.snapshot)
            out = self.protocol.act(self.ws, turn.state.text, len(a.turns) - 1,
                                    cut_short=turn.state.finish == "length")
            self.recorder.record_decisions(turn.trace, self.config.spike, out.spans,
                                           snapshot=turn.snapshot)
            self.recorder.record_tool_call(turn.trace, action=out.action, arguments=out.arguments,
                                           observation=out.observation)
            turn = replace(turn, observation=out.observation)
            sha = self.ws.snapshot("after-turn")
            spent_all = state.get("spent", 0) >= self.config.budget_tokens  # no token left for
            done.append(replace(a, turns=(*a.turns[:-1], turn), done=out.done or spent_all,
                                final_sha=sha))  # another turn: test what there is
        return {"pending": done}

    def verify(self, state: FixState) -> dict:
        """Test each finished attempt. With `wide_cmd` (FixConfig.narrow) the search's command is
        the failing tests only, and an attempt that passes them runs `wide_cmd` once: that result
        is the attempt's, so a narrow pass that breaks other tests is a failing state (r its
        fraction passing under `wide_cmd`, a function of the code as r must be) and the chain goes
        on from it."""
        checked, solved, wide = [], None, state.get("wide")
        for a in state["pending"]:
            self.ws.restore(a.final_sha)
            r = self._tested(a, self.config.test_cmd)
            if r.ok and self.wide_cmd:
                r = self._tested(a, self.wide_cmd)
                wide = {"command": self.wide_cmd, "ok": r.ok, "passed": r.passed,
                        "failed": r.failed, "errors": r.errors}
                if not r.ok:
                    self._event("wide", note=f"  wide check  the failing tests pass, "
                                f"`{self.wide_cmd}` does not ({r.failed + r.errors} failed)")
            a = replace(a, test=r)
            checked.append(a)
            self._event("test", passed=r.passed, failed=r.failed + r.errors, ok=r.ok)
            self._finish(a, "passed" if r.ok else "failed")  # MH verdicts live in the MH steps
            if r.ok and solved is None:
                solved = a
        if solved is not None:
            self.ws.restore(solved.final_sha)
        return {"pending": checked, "solved": solved, "wide": wide}

    def _tested(self, a: Attempt, cmd: str):
        """`cmd` on the working tree (`a`'s code), judged and recorded on `a`'s branch."""
        r = self.ws.run_tests(cmd, self.config.test_timeout,
                              branch=a.branch.id)  # --resume replays a recorded result
        r = r.judged(self.protocol.task.result.required_tests)  # SANDBOX: evidence
        self.recorder.record_test_run(
            a.branch, command=cmd, exit_code=-1 if r.exit_code is None else r.exit_code,
            passed=r.passed, failed=r.failed, errors=r.errors, output_tail=r.output_tail,
            duration_s=r.duration_s, cached=r.cached)  # COST: cached
        return r

    def _finish(self, a: Attempt, outcome: str) -> None:
        diff = self.ws.diff(self.base_sha, a.final_sha) if a.final_sha else ""
        self.recorder.finish_branch(a.branch, outcome=outcome, passed=a.test.ok if a.test else None,
                                    final_diff=diff)

    def rewind(self, state: FixState) -> dict:
        current, proposals, cut = state.get("current"), state["pending"], state.get("cut")
        # 1) the chain's decision: does it move to a proposal? (a first attempt always does)
        decoded = sum(a.decoded if a.decoded is not None else
                      sum(len(t) for t in a.tokens) - cut.index for a in proposals) if cut else 0
        d = self.chain.decide(current.trajectory if current else None,
                              [self._trajectory(a) for a in proposals], cut,
                              tried=state.get("tried", ()), generator=self.generator,
                              decode_tokens=decoded)
        new_current = current if d.moved_to is None else proposals[d.moved_to]
        rewinds = [dict(r) for r in state.get("rewinds", ())]
        step: list[StepRecord] = []
        if not proposals:  # a local draw outside the support: rejected, nothing ran
            rec, why = state["rejected"]
            step.append(rec)
            self.recorder.record_mh_step(current=current.branch, proposal=None, cut_turn=cut.turn,
                                         **_stored(rec))
            self._decided(rewinds, False, rec.log_accept, reason=why)
        elif d.step is not None:
            step.append(d.step)
            self.recorder.record_mh_step(
                current=current.branch, proposal=proposals[d.moved_to or 0].branch,
                cut_turn=cut.turn, **_stored(d.step))
            self._decided(rewinds, d.step.accepted, d.step.log_accept)
        out = {"current": new_current, "pending": [], "steps": step, "tried": d.tried,
               "rewinds": tuple(rewinds),
               "prefilled": state.get("prefilled", 0) + self._scored_in(proposals)}

        # 2) what next: out of budget, out of attempts, or the chain's next cut
        spent, attempts = state.get("spent", 0), state.get("attempts", 0)
        if spent >= self.config.budget_tokens:
            return {**out, "stop": "budget"}
        if out_of_time(self.config.time_limit_s):  # COST: fix --time-limit (CPU seconds)
            return {**out, "stop": "time limit"}
        if attempts >= self.config.max_attempts:
            return {**out, "stop": "attempts"}
        out["current"] = new_current = self._complete(new_current)  # the next cut reads it
        out["prefilled"] += self._scored_in([new_current])
        self._completed.clear()  # a later decision reads the current one only (complete now)
        next_cut = self.chain.next_cut(new_current.trajectory, self.generator, d.tried)
        if next_cut is not None and next_cut.kernel.starts_chain:
            self._event("new-chain", note=f"  new chain  {len(d.tried)} proposals in a row left "
                        "the attempt as it was: a fresh reply starts a new chain")
            out["tried"] = ()  # the new chain's (argmax keeps a list per chain, not per run)
        if next_cut is not None and next_cut.kernel.fresh and (
                self.rc.strategy == "restart" or next_cut.kernel.starts_chain):
            next_cut = None  # a fresh attempt that is a new root: no parent, no cut to show
        if next_cut is not None:
            turn = new_current.turns[next_cut.turn]
            self.ws.restore(turn.snapshot)
            where = self.protocol.where(turn.state.text, next_cut.position, turn.state.tokens)
            out["rewinds"] += ({"file": where[0], "line": where[1], "token": next_cut.token,
                                "entropy": next_cut.entropy, "surprise": next_cut.surprise},)
            self._event("rewind", cut=next_cut, file=where[0], line=where[1])
        return {**out, "cut": next_cut}

    def _decided(self, rewinds: list[dict], accepted: bool, log_accept: float, **extra) -> None:
        if rewinds:  # the verdict on the latest cut
            rewinds[-1]["accepted"] = accepted
        self._event("mh", accepted=accepted, log_accept=log_accept, **extra)


def _stored(rec: StepRecord) -> dict:
    """A step's fields as the store keeps them: finite numbers (-inf, a move that cannot happen
    or cannot be reversed, as the most negative float)."""
    fields = rec.model_dump(exclude={"tries"})
    for k in ("log_accept", "log_proposal", "log_cut_correction"):
        if fields[k] == -math.inf:
            fields[k] = -sys.float_info.max
    return fields
