"""The MH chain over attempts, written once: where to cut, whether to accept, what was tried.

`fix` (agent/graph.py), the LangGraph nodes, the LangChain middleware and `sample`
(samplers/power.py) are adapters over `Chain` and its two calls, `decide` (current, proposals,
cut) and `next_cut`. The chain's state (the current attempt, the cuts tried from it, tokens
spent, attempts) lives in the caller's state (graph state, agent state) as plain values: no node
keeps any outside it. The functions below them (`choose_cut`, `accept`,
`multiple_try`) are the maths the chain calls.

A trajectory's model tokens come from one or more turns; the cut distribution ranges over all of
them (flattened in order). Observations between turns are deterministic results of actions and
never enter the acceptance ratio. The target is p^alpha * exp(lam * r), r = fraction of tests
passing, so log A gains lam * (r' - r) (design.md §2, §3).

Moves (`RetryConfig.move`): `suffix` regenerates the cut turn from the cut on; `local` resamples
only to the next span boundary (end of the line, at most `span.max_span` tokens) and keeps the
rest of the turn, rescored under the new prefix (samplers/local.py, patch protocol only); `mixed`
picks local with probability `local_share`. With `restart_share` > 0 a move is, with that
probability, a fresh attempt from the prompt, accepted by the same MH rule with no cut correction
(a way out of a wrong start). Kernels are drawn with fixed probabilities: a valid mixture.
With `new_chain_after` = N (`fix`'s run: 4), once N proposals in a row left the state where it
was, the next attempt is a fresh reply that starts a new chain, taken without an MH decision: a
run that stops at the first pass is then a sequence of exact chains (design.md §2).
`auto` (`fix`'s default) becomes local where local moves apply, suffix elsewhere
(`RetryConfig.resolved`, before a run starts). With `span.opening` (`fix -o def_line=suffix`), a
local move cut in the reply's opening (imports, the def line) is a suffix move instead
(`fix`'s default; `RetryConfig`'s own default keeps `span.opening` unset).

Strategies (`strategy`, choices.py): `rewind` cuts the attempt and makes one proposal a cut;
`egps` makes K (`tries`) and picks one by the multiple-try rule; `from-end` and `restart` do not
cut. Former names (entropy-cut, uniform-cut, argmax-cut) are read as rewinds with their cut rule
(`choices.upgrade`), so stored configs load and resume. `argmax` cuts at the highest-weight
position not yet tried instead of drawing one: a heuristic, not a sampler (no reverse move, so
no cut correction; its tried list is run-wide).

Cut weights (`cut_weights`): `uniform` draws every position alike; `entropy` uses the
entropies alone; `code` multiplies w_t by the
token's class in the reply (samplers/codeweights.py: docstrings/comments down, the defined name
up), computed for current and proposal alike so the correction stays exact. `surprise` uses each
token's -log p under the no-body context instead of its entropy (samplers/surprise.py: every
reply, current and proposal, is scored under that fixed context, so c stays a function of the
sequence); the cut rule's entropy-jump kind becomes "level" (w_t = s_t^beta) there, because a
jump of surprises means nothing. `surprise+code` multiplies it by the code classes. `auto`
(`fix`'s default) becomes surprise where every reply can be scored under the no-body context
(patch protocol, an engine with teacher forcing, a cut strategy), entropy elsewhere
(`RetryConfig.resolved`); left unresolved it reads as entropy.

No null moves (`exclude`, on in `fix` where the engine can ban a token): a cut move draws the
cut token with the current one banned, so every proposal differs from the state it starts from
at the cut (mh.py's exclusion term keeps the ratio exact), and the cut distribution is
restricted to the positions where another token exists under the proposal (`movable`; computed
for x and the proposal alike, so the cut correction stays exact). Before, at a calm cut token the
proposal redrew the same token, rebuilt the same code, was tested again and accepted (log A = 0):
86% of the default's proposals on humaneval-bugs K = 2. A state with no movable position at all
(every token certain under the proposal) makes a restart move: the one place where the mixture's
weights depend on the state (such a state has no cut move to mix with).

Cut token (`cut_token`): `patch` draws the first new token at the cut from the usual proposal;
`nobody` draws it from the no-body context at the proposal temperature and the rest as usual, so
a copied bug token can actually change; position t's proposal terms then read the no-body logq
for both directions (samplers/surprise.py derives it). It needs every reply scored, as surprise
weights do, and works with any cut weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from decision_retry import sampling
from decision_retry.choices import (
    CUT_STRATEGIES,
    SINGLE_TRY_CUTS,
    STRATEGIES,
    CutWeights,
    Move,
    Strategy,
    upgrade,
)
from decision_retry.choices import describe as describe_values
from decision_retry.samplers import codeweights, cuts, lineweights, mh, moves, surprise
from decision_retry.samplers.cuts import CutRule
from decision_retry.samplers.local import SpanRule
from decision_retry.samplers.mh import StepRecord
from decision_retry.tokens import Token


class RetryConfig(BaseModel):
    """How to retry after a failed attempt; recorded with every run."""

    model_config = ConfigDict(frozen=True)

    strategy: Strategy = "rewind"
    alpha: float = Field(4.0, gt=0, description="target p^alpha")
    proposal_temperature: float | None = Field(None, gt=0, description="default 1/alpha")
    verifier_weight: float = Field(4.0, ge=0, description="lambda: tilt by fraction passing")
    cut: CutRule = CutRule()
    tries: int = Field(4, ge=1, description="egps: tries per multiple-try move")
    skip_entropy: float = Field(0.5, ge=0, description="egps: turns below this entropy mass are not cut")
    move: Move = "suffix"
    span: SpanRule = SpanRule()
    local_share: float = Field(0.5, ge=0, le=1, description="mixed: probability of a local move")
    restart_share: float = Field(0.0, ge=0, le=1, description="probability of a restart move")
    new_chain_after: int | None = Field(
        None, ge=1, description="after this many proposals in a row from one state did not move "
        "the chain (argmax: this many cuts tried in the chain), the next attempt is a fresh one "
        "that starts a new chain (a restart schedule for runs that stop at a pass; None: one "
        "chain)")
    cut_weights: CutWeights = "entropy"
    argmax: bool = Field(False, description="cut at the highest-weight position not yet tried "
                         "instead of drawing one (a heuristic: no cut correction)")
    prose_weight: float = Field(0.1, ge=0, description="code weights: strings and comments")
    name_weight: float = Field(4.0, ge=0, description="code weights: the name a def defines")
    walk_fresh: bool | None = Field(
        None, description="a fresh reply walks the run's earlier fresh replies while it draws "
        "their tokens, decoding only where it leaves them (LM.extend_along: the same law, fewer "
        "decode tokens; false: decode every token, to measure what it saves); None: `resolved` "
        "turns it on for new runs, unresolved it reads as off (stored runs resume as run)")
    line_weight: float = Field(1.0, gt=0, description="the cut weight of a token on a line the "
                               "coverage spectrum finds most suspicious in its function (1: off; "
                               "samplers/lineweights.py)")
    suspicious_lines: tuple[str, ...] = Field(
        (), description="those lines' stripped texts, fixed for the run (the agent fills them "
        "from the localisation where line_weight is not 1)")
    cut_token: Literal["patch", "nobody"] = Field(
        "patch", description="where the cut's first new token is drawn from")
    exclude: bool | None = Field(None, description="cut moves ban the current cut token (no "
                                 "null moves); None: `resolved` decides (on where the engine "
                                 "can ban a token), unresolved it reads as off")
    delayed: bool | None = Field(None, description="single-try cut moves decide in two stages, "
                                 "the cut correction (and the scoring it needs) only after the "
                                 "rest of log A accepts; None: `resolved` turns it on for new "
                                 "runs, unresolved it reads as off (stored runs resume as run)")
    nobody_scoring: Literal["exact", "bulk"] | None = Field(
        None, description="how replies are scored under the no-body context: exact (decoding's "
        "numbers, each proposal from its cut) or bulk (one cheaper pass per reply, for cut "
        "weights only); None: `resolved` picks bulk unless the cut token is drawn there, "
        "unresolved it reads as exact (stored runs resume as run)")

    @model_validator(mode="before")
    @classmethod
    def _former_names(cls, data):
        """A stored config (or caller) naming a former strategy: the same run, named today."""
        return upgrade(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _single_try_local(self) -> RetryConfig:
        if self.move in ("local", "mixed") and self.strategy == "egps":
            raise ValueError(f"move {self.move!r} is single-try: use it with rewind")
        if self.cut_token == "nobody" and self.strategy not in SINGLE_TRY_CUTS:
            raise ValueError("cut_token 'nobody' is a single-try cut move: use it with rewind")
        if self.argmax and self.strategy not in SINGLE_TRY_CUTS:
            raise ValueError("argmax is a rewind's cut rule: use it with rewind")
        if self.new_chain_after is not None and self.strategy not in CUT_STRATEGIES:
            raise ValueError("new_chain_after counts the proposals tried from one state: use it "
                             "with rewind or egps (else new_chain_after=none)")
        if self.argmax and self.rule.kind == "uniform":
            raise ValueError("argmax ranks by the cut weights: uniform weights have no maximum")
        if self.nobody_scoring == "bulk" and self.cut_token == "nobody":
            raise ValueError("cut_token 'nobody' draws from the no-body scores: they must be "
                             "exact (nobody_scoring=exact)")
        return self

    def resolved(self, *, patch: bool, teacher_forcing: bool,
                 excludes: bool = False) -> RetryConfig:
        """`move="auto"` and `cut_weights="auto"` made concrete for one run (docs/benchmarks.md:
        what won where). Moves: local where local moves apply (the patch protocol, an engine
        that can score a kept tail, a single-try cut strategy), suffix elsewhere. Cut weights:
        surprise where the no-body context exists and can be scored (the patch protocol, an
        engine that scores, a cut strategy), entropy elsewhere. Exclusion: on where the engine
        can ban a token (`excludes`) and the strategy makes single-try cut moves. Delayed
        acceptance: on (`Chain.decide`). Walking earlier fresh replies: on (`LM.extend_along`).
        No-body scoring: bulk (cut weights need only a function of the sequence) unless the cut
        token is drawn from it. Other values are kept."""
        update: dict = {}
        if self.exclude is None:
            update["exclude"] = excludes and self.strategy in SINGLE_TRY_CUTS
        if self.delayed is None:
            update["delayed"] = True
        if self.walk_fresh is None:
            update["walk_fresh"] = True
        if self.nobody_scoring is None:
            update["nobody_scoring"] = "exact" if self.cut_token == "nobody" else "bulk"
        if self.move == "auto":
            local = patch and teacher_forcing and self.strategy in SINGLE_TRY_CUTS
            update["move"] = "local" if local else "suffix"
        if self.cut_weights == "auto":
            scored = patch and teacher_forcing and self.strategy in CUT_STRATEGIES
            update["cut_weights"] = "surprise" if scored else "entropy"
        return self.model_copy(update=update) if update else self

    @property
    def surprise(self) -> bool:
        """Do the cut weights read the no-body scores (every reply scored under it)?"""
        return self.cut_weights.startswith("surprise")

    @property
    def scored(self) -> bool:
        """Is every reply scored under the no-body context (surprise weights or cut token)?"""
        return self.surprise or self.cut_token == "nobody"

    @property
    def nobody_exact(self) -> bool:
        """Are replies scored under the no-body context with decoding's numbers (surprise.py)?"""
        return self.nobody_scoring != "bulk"

    @property
    def excluding(self) -> bool:
        """Do cut moves ban the current cut token (egps's K tries and fresh attempts do not)?"""
        return bool(self.exclude) and self.strategy in SINGLE_TRY_CUTS

    @property
    def q_temperature(self) -> float:
        return self.proposal_temperature or 1.0 / self.alpha

    @property
    def kernel(self) -> moves.Mixture:
        """The moves, as objects (samplers/moves.py)."""
        return moves.parse(self.move, span=self.span, restart_share=self.restart_share,
                           local_share=self.local_share)

    @property
    def first(self) -> moves.Patch:
        """Where the cut's first new token is drawn from."""
        return moves.first_token(self.cut_token)

    @property
    def rule(self) -> CutRule:
        if self.cut_weights == "uniform":
            return self.cut.model_copy(update={"kind": "uniform"})
        if self.surprise and self.cut.kind == "entropy-jump":
            return self.cut.model_copy(update={"kind": "level"})
        return self.cut

    @property
    def corrected(self) -> bool:
        """argmax is a heuristic: its cut is deterministic, so there is no reverse move."""
        return not self.argmax


@dataclass(frozen=True)
class CutPoint:
    """A cut: regenerate turn `turn` from token `position` on (and every later turn)."""

    turn: int
    position: int
    entropy: float
    token: str
    index: int  # position in the flattened model tokens of the trajectory
    kernel: moves.Move = moves.SUFFIX  # the move that runs from this cut
    surprise: float | None = None  # -log p of the token under the no-body context, if scored
    ban: int | None = None  # the id the proposal's cut token may not be (an excluding move)

    @property
    def move(self) -> str:
        """The move's name, as recorded."""
        return self.kernel.name


def flatten(turns: Sequence[Sequence[Token]]) -> tuple[list[Token], list[tuple[int, int]]]:
    """All model tokens in order, and (turn, position) of each."""
    flat, where = [], []
    for k, tokens in enumerate(turns):
        for i, tok in enumerate(tokens):
            flat.append(tok)
            where.append((k, i))
    return flat, where


def cut_entropies(
    turns: Sequence[Sequence[Token]], config: RetryConfig, stops: Sequence[bool] | None = None
) -> list[float]:
    """Entropies (surprises, with surprise weights) seen by the cut rule.

    A turn that ended at a stop string has its last token zeroed: that token only closes the
    reply (what comes after the function), so resampling it alone changes nothing that matters.
    egps zeroes whole turns whose entropy mass is below the skip level.
    """
    out = []
    for k, tokens in enumerate(turns):
        h = [t.entropy for t in tokens]
        skip = config.strategy == "egps" and sum(h[:-1] if stops is not None and stops[k] else h) \
            < config.skip_entropy
        if config.surprise:  # the values the rule reads: surprises under the no-body context
            h = surprise.surprises(tokens)
        if stops is not None and stops[k] and h:
            h[-1] = 0.0
        if skip:
            h = [0.0] * len(h)
        out.extend(h)
    return out


def cut_scale(turns: Sequence[Sequence[Token]], config: RetryConfig) -> list[float] | None:
    """Per-token multipliers of the cut weight: code weights, suspicious lines (None: neither)."""
    code = "code" in config.cut_weights.split("+")
    lines = config.line_weight != 1 and bool(config.suspicious_lines)
    if not code and not lines:
        return None
    out: list[float] = []
    for tokens in turns:
        texts = [t.text for t in tokens]
        scale = codeweights.scale(texts, prose=config.prose_weight, name=config.name_weight) \
            if code else [1.0] * len(texts)
        if lines:
            by_line = lineweights.scale(texts, config.suspicious_lines, config.line_weight)
            scale = [a * b for a, b in zip(scale, by_line)]
        out += scale
    return out


def movable(turns: Sequence[Sequence[Token]], config: RetryConfig) -> list[bool] | None:
    """Per flattened position: does an excluding move exist there (another token has mass under
    the proposal the cut token is drawn from)? None without exclusion (every position)."""
    if not config.excluding:
        return None
    first = config.first
    return [not mh.null_at(first.view([tok], 0), 0) for tokens in turns for tok in tokens]


def choose_cut(
    turns: Sequence[Sequence[Token]],
    config: RetryConfig,
    generator: torch.Generator,
    tried: frozenset[int] = frozenset(),
    stops: Sequence[bool] | None = None,
) -> CutPoint | None:
    """Where to rewind, or None for strategies that do not cut (from-end, restart)."""
    if config.strategy not in CUT_STRATEGIES:
        return None
    flat, where = flatten(turns)
    if not flat:
        return None
    move = config.kernel.pick(generator)
    if move.fresh:  # a fresh attempt: position 0 of the first turn
        return CutPoint(0, 0, flat[0].entropy, flat[0].text, 0, move)
    ent = cut_entropies(turns, config, stops)
    scale = cut_scale(turns, config)
    allowed = movable(turns, config)
    if allowed is not None and not any(allowed):  # no cut move exists from here: start over
        return CutPoint(0, 0, flat[0].entropy, flat[0].text, 0, moves.RESTART)
    if config.argmax:
        ranked = ent if scale is None else [h * s for h, s in zip(ent, scale)]
        i = cuts.argmax(ranked, set(tried), allowed)
    else:
        i = cuts.draw(ent, config.rule, generator, scale, allowed)
    turn, pos = where[i]
    move = move.at(turns[turn], pos)  # a local cut in the reply's opening: a suffix move
    alt = flat[i].alt_logp
    return CutPoint(turn, pos, flat[i].entropy, flat[i].text, i, move,
                    None if alt is None else -alt, flat[i].id if allowed is not None else None)


def _log_c(turns, config: RetryConfig, i: int, stops=None) -> float:
    return cuts.log_prob(cut_entropies(turns, config, stops), i, config.rule,
                         cut_scale(turns, config), movable(turns, config))


def accept(
    current: Sequence[Sequence[Token]],
    proposal: Sequence[Sequence[Token]],
    cut: CutPoint,
    *,
    config: RetryConfig,
    r_current: float,
    r_proposal: float,
    u: float,
    decode_tokens: int,
    stops: tuple[Sequence[bool], Sequence[bool]] | None = None,
    span: tuple[int, int] | None = None,
    corrected: bool = True,
) -> StepRecord:
    """The MH decision for replacing `current` by `proposal`, both cut at `cut`.

    `stops`: (current's, proposal's) per-turn stop flags, as given to `choose_cut`.
    `span`: for a local move, (s, m) in flattened positions: current's span [t, s) was replaced
    by the proposal's [t, t + m) and the rest kept (only the spans enter the proposal terms).
    `corrected=False`: log A without the cut correction (the first stage of `Chain.decide`)."""
    x, _ = flatten(current)
    y, _ = flatten(proposal)
    if not cut.kernel.fresh:  # the first-token policy's view (no-body: y_t was drawn from q_B)
        x, y = config.first.view(x, cut.index), config.first.view(y, cut.index)
    sx, sy = stops or (None, None)
    corr = 0.0  # restart: an independent proposal, no cut to reverse; argmax: uncorrected
    if not cut.kernel.fresh and config.corrected and corrected:
        corr = _log_c(proposal, config, cut.index, sy) - _log_c(current, config, cut.index, sx)
    return cut.kernel.record(x, y, cut.index, alpha=config.alpha, correction=corr,
                             verifier_delta=config.verifier_weight * (r_proposal - r_current),
                             u=u, decode_tokens=decode_tokens, span=span,
                             exclusion=cut.ban is not None)


def multiple_try(
    current: Sequence[Sequence[Token]],
    proposals: Sequence[Sequence[Sequence[Token]]],
    cut: CutPoint,
    *,
    config: RetryConfig,
    r_current: float,
    r_proposals: Sequence[float],
    generator: torch.Generator,
    decode_tokens: int,
    stops: tuple[Sequence[bool], Sequence[Sequence[bool]]] | None = None,
) -> tuple[int, StepRecord]:
    """egps: pick one of K tries by importance weight and accept it by the MTM rule."""
    x, _ = flatten(current)
    ys = [flatten(p)[0] for p in proposals]
    sx, sy = stops or (None, [None] * len(proposals))
    base = _log_c(current, config, cut.index, sx)
    return mh.mtm_choose(
        x, ys, cut.index, alpha=config.alpha, rule=None,
        verifier_deltas=[config.verifier_weight * (r - r_current) for r in r_proposals],
        generator=generator, decode_tokens=decode_tokens,
        correction=lambda j: _log_c(proposals[j], config, cut.index, sy[j]) - base,
    )


def describe(config: RetryConfig) -> str:
    """What a run does, in words (the progress line, the trace, `logs`): the strategy, where it
    cuts and which moves run (choices.describe). `fix`'s default reads "rewind (surprise cuts,
    local moves, def-line suffix moves)" once resolved."""
    return describe_values(config.model_dump())


# -- the chain ----------------------------------------------------------------------------------
def verdict(ok: bool, fraction_passed: float) -> float:
    """r of a test run: 1 when every test passed, else the fraction passing (a run with no failure
    that still did not pass, e.g. a timeout, is not a pass: passing is `ok`, never r alone)."""
    return 1.0 if ok else fraction_passed


@dataclass(frozen=True)
class Trajectory:
    """What the chain reads of an attempt: its model tokens per turn, r, and how it was made."""

    turns: Sequence[Sequence[Token]]
    r: float
    stops: Sequence[bool] | None = None  # per turn: ended at a stop string
    span: tuple[int, int] | None = None  # local move: (s, m) in flattened positions
    passed: bool = False  # a passing proposal ends the run, whatever the draw
    # the trajectory with what the cut correction reads that is computed on demand (the no-body
    # scores: agent/graph.py), or None when it has it all already
    complete: Callable[[], Trajectory] | None = field(default=None, compare=False, repr=False)

    def completed(self) -> Trajectory:
        return self if self.complete is None else self.complete()


@dataclass(frozen=True)
class Decision:
    """One decision: the step record (None when nothing was compared), the index of the proposal
    the chain moved to (None: it stayed), and the chain's next tried cuts."""

    step: StepRecord | None
    moved_to: int | None
    tried: tuple[int, ...] = field(default=())

    @property
    def accepted(self) -> bool:
        return self.moved_to is not None


@dataclass(frozen=True)
class Chain:
    """The MH chain of one run: `decide`, then `next_cut`, over `Trajectory` views."""

    config: RetryConfig

    @property
    def compares(self) -> bool:
        """Does the strategy compare proposals with the current attempt (from-end and restart
        move on to every new attempt)?"""
        return self.config.strategy not in ("from-end", "restart")

    def decide(self, current: Trajectory | None, proposals: Sequence[Trajectory],
               cut: CutPoint | None, *, tried: tuple[int, ...] = (),
               generator: torch.Generator, decode_tokens: int) -> Decision:
        """Does the chain move from `current` to one of `proposals` (made from `cut`)? A first
        attempt, a strategy without a chain and a passing proposal always move. `current` must
        be complete (`Trajectory.completed`); a proposal is completed only where the decision
        reads its cut correction."""
        if current is None or cut is None or not self.compares or cut.kernel.starts_chain:
            return Decision(None, 0, self.tried_after(tried, cut, moved=True))
        if not proposals:  # a local draw outside the support: nothing ran
            return Decision(None, None, self.tried_after(tried, cut, moved=False))
        if len(proposals) > 1:
            proposals = [p.completed() for p in proposals]
            j, rec = multiple_try(
                current.turns, [p.turns for p in proposals], cut, config=self.config,
                stops=(current.stops, [p.stops for p in proposals]), r_current=current.r,
                r_proposals=[p.r for p in proposals], generator=generator,
                decode_tokens=decode_tokens)
        else:
            j, rec = 0, self._accept(current, proposals[0], cut, generator, decode_tokens)
        winner = next((k for k, p in enumerate(proposals) if p.passed), None)
        moved = winner if winner is not None else (j if rec.accepted else None)
        return Decision(rec, moved, self.tried_after(tried, cut, moved=moved is not None))

    def _accept(self, current: Trajectory, p: Trajectory, cut: CutPoint,
                generator: torch.Generator, decode_tokens: int) -> StepRecord:
        """One proposal's MH decision. Delayed (`config.delayed`, a corrected cut move): stage 1
        accepts with min(1, r1), r1 = log A without the cut correction, read from what decoding
        and the tests gave (a local move whose kept tail is not scored yet carries x's tail
        there, so r1 holds the span's target only); only then is the proposal completed (the
        tail rescored, the no-body scoring pass) and stage 2 accepts with min(1, r2), r2 = A /
        r1: the tail's target and the cut correction. Each stage's ratio inverts when x and y
        swap, so the product of the two is pi-reversible (delayed acceptance, Christen and Fox
        2005): exact, with a lower acceptance rate, and the scoring is skipped for every
        proposal stage 1 rejects."""
        delayed = bool(self.config.delayed) and not cut.kernel.fresh and self.config.corrected
        kw = {"config": self.config, "r_current": current.r, "r_proposal": p.r,
              "decode_tokens": decode_tokens, "span": p.span}
        if not delayed:
            return accept(current.turns, p.completed().turns, cut, stops=(current.stops, p.stops),
                          u=sampling.uniform(generator), **kw)
        first = accept(current.turns, p.turns, cut, stops=(current.stops, p.stops),
                       u=sampling.uniform(generator), corrected=False, **kw)
        if not first.accepted:
            return first.model_copy(update={"stage": 1})
        y = p.completed()
        full = accept(current.turns, y.turns, cut, stops=(current.stops, y.stops), u=1.0, **kw)
        u = sampling.uniform(generator)
        return full.model_copy(update={
            "accepted": u == 0 or math.log(u) < full.log_accept - first.log_accept,
            "approximate": first.approximate, "stage": 2})

    def tried_after(self, tried: tuple[int, ...], cut: CutPoint | None, *, moved: bool) -> tuple[int, ...]:
        """The tried cuts after a decision: a new current attempt starts with none, except for
        the argmax heuristic, whose list is run-wide (else an accepted but failing proposal
        would send it back to the same token)."""
        if cut is None:
            return tried if self.config.argmax else ()
        if moved and not self.config.argmax:
            return ()
        return (*tried, cut.index)

    def next_cut(self, current: Trajectory, generator: torch.Generator,
                 tried: tuple[int, ...] = ()) -> CutPoint | None:
        """Where the next proposal starts: a cut of `current`, a restart (the first token, move
        "restart"; "new-chain" once `new_chain_after` proposals in a row left `current` where
        it was), or None for from-end (it appends to the end)."""
        after = self.config.new_chain_after
        if self.config.strategy == "restart" or (after is not None and len(tried) >= after):
            flat, _ = flatten(current.turns)
            if not flat:
                return None
            k = next(i for i, t in enumerate(current.turns) if t)
            first = current.turns[k][0]
            kernel = moves.RESTART if self.config.strategy == "restart" else moves.NEW_CHAIN
            return CutPoint(k, 0, first.entropy, first.text, 0, kernel)
        return choose_cut(current.turns, self.config, generator, frozenset(tried),
                          stops=current.stops)


__all__ = ["CUT_STRATEGIES", "SINGLE_TRY_CUTS", "STRATEGIES", "Chain", "CutPoint",
           "Decision", "RetryConfig", "Strategy", "Trajectory", "accept", "choose_cut",
           "cut_entropies", "cut_scale", "describe", "flatten", "movable", "multiple_try", "verdict"]
