"""The rewind logic shared by `fix` and the LangGraph nodes: where to cut, and whether to accept.

A trajectory's model tokens come from one or more turns; the cut distribution ranges over all of
them (flattened in order). Observations between turns are deterministic results of actions and
never enter the acceptance ratio. The target is p^alpha * exp(lam * r), r = fraction of tests
passing, so log A gains lam * (r' - r) (design.md §2, §3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import torch
from pydantic import BaseModel, ConfigDict, Field

from decision_retry.samplers import cuts, mh
from decision_retry.samplers.cuts import CutRule
from decision_retry.samplers.mh import StepRecord
from decision_retry.tokens import Token

from decision_retry.choices import STRATEGIES, Strategy  # noqa: F401 (re-exported)

CUT_STRATEGIES = ("entropy-cut", "uniform-cut", "egps", "argmax-cut")


class RetryConfig(BaseModel):
    """How to retry after a failed attempt; recorded with every run."""

    model_config = ConfigDict(frozen=True)

    strategy: Strategy = "entropy-cut"
    alpha: float = Field(4.0, gt=0, description="target p^alpha")
    proposal_temperature: float | None = Field(None, gt=0, description="default 1/alpha")
    verifier_weight: float = Field(4.0, ge=0, description="lambda: tilt by fraction passing")
    cut: CutRule = CutRule()
    tries: int = Field(4, ge=1, description="egps: tries per multiple-try move")
    skip_entropy: float = Field(0.5, ge=0, description="egps: turns below this entropy mass are not cut")

    @property
    def q_temperature(self) -> float:
        return self.proposal_temperature or 1.0 / self.alpha

    @property
    def rule(self) -> CutRule:
        if self.strategy == "uniform-cut":
            return self.cut.model_copy(update={"kind": "uniform"})
        return self.cut

    @property
    def corrected(self) -> bool:
        """argmax-cut is a heuristic: its cut is deterministic, so there is no reverse move."""
        return self.strategy != "argmax-cut"


@dataclass(frozen=True)
class CutPoint:
    """A cut: regenerate turn `turn` from token `position` on (and every later turn)."""

    turn: int
    position: int
    entropy: float
    token: str
    index: int  # position in the flattened model tokens of the trajectory


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
    """Entropies seen by the cut rule.

    A turn that ended at a stop string has its last token zeroed: that token only closes the
    reply (what comes after the function), so resampling it alone changes nothing that matters.
    egps zeroes whole turns whose entropy mass is below the skip level.
    """
    out = []
    for k, tokens in enumerate(turns):
        h = [t.entropy for t in tokens]
        if stops is not None and stops[k] and h:
            h[-1] = 0.0
        if config.strategy == "egps" and sum(h) < config.skip_entropy:
            h = [0.0] * len(h)
        out.extend(h)
    return out


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
    ent = cut_entropies(turns, config, stops)
    if config.strategy == "argmax-cut":
        i = cuts.argmax(ent, set(tried))
    else:
        i = cuts.draw(ent, config.rule, generator)
    turn, pos = where[i]
    return CutPoint(turn, pos, flat[i].entropy, flat[i].text, i)


def _log_c(turns, config: RetryConfig, i: int, stops=None) -> float:
    return cuts.log_prob(cut_entropies(turns, config, stops), i, config.rule)


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
) -> StepRecord:
    """The MH decision for replacing `current` by `proposal`, both cut at `cut`.

    `stops`: (current's, proposal's) per-turn stop flags, as given to `choose_cut`."""
    x, _ = flatten(current)
    y, _ = flatten(proposal)
    sx, sy = stops or (None, None)
    corr = None
    if config.corrected:
        corr = _log_c(proposal, config, cut.index, sy) - _log_c(current, config, cut.index, sx)
    return mh.mh_step_record(
        x, y, cut.index, alpha=config.alpha, rule=None, correction=corr,
        verifier_delta=config.verifier_weight * (r_proposal - r_current), u=u,
        decode_tokens=decode_tokens,
    )


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
