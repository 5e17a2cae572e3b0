"""Block-wise power sampling: grow the answer B tokens at a time, N MH steps after each block.

Samplers (`SamplerConfig.sampler`), `fix`'s vocabulary:
  plain       draw from the model at `temperature`, no MH;
  low-temp    draw from the proposal (temperature 1/alpha), no MH;
  rewind      MH targeting p^alpha: cut from the cut rule's weights (`cut`: entropy-jump or
              softmax over entropies, or uniform), mixed with eps-uniform, reverse-cut corrected;
  egps        entropy cuts + K tries in one batch (multiple-try Metropolis) + skipping blocks
              whose entropy mass is below `skip_entropy`.
`argmax=True` (rewind) is a HEURISTIC, not a sampler: cut deterministically at the highest-weight
position not yet tried on the current sequence; the acceptance test has no cut correction. The
former names read as today's: ec-mh is rewind, uniform-mh rewind with a uniform cut rule,
argmax-cut rewind with argmax.

Moves (`SamplerConfig.move`), for the single-try samplers: `suffix` regenerates from the cut to the
end; `local` resamples only to the next span boundary and rescores the kept tail (local.py);
`mixed` draws local with probability `local_share`, else suffix. With `restart_share` > 0 a move
is, with that probability, an independent proposal from the prompt (a cut at 0 with no cut
correction). The kernel is drawn with fixed probabilities, so the chain is a mixture of
pi-reversible kernels and targets the same pi.

The cut, the decision and the tried cuts are `fix`'s (samplers/chain.py, `Chain` over a
one-turn trajectory): the exactness tests of this module drive the code `fix` runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from decision_retry import sampling
from decision_retry.choices import FORMER_SAMPLERS, SAMPLERS, SamplerName
from decision_retry.lm import LM, DecodeState, Sampling
from decision_retry.samplers import local
from decision_retry.samplers.chain import Chain, RetryConfig, Trajectory
from decision_retry.samplers.cuts import CutRule
from decision_retry.samplers.local import SpanRule
from decision_retry.samplers.mh import StepRecord


class SamplerConfig(BaseModel):
    """Every knob of a sampling run; recorded with the run. Defaults follow the papers."""

    model_config = ConfigDict(frozen=True)

    sampler: SamplerName = "rewind"
    argmax: bool = Field(False, description="cut at the highest-weight position not yet tried "
                         "(a heuristic, not a sampler: no cut correction)")
    alpha: float = Field(4.0, gt=0, description="target exponent: pi ~ p^alpha")
    proposal_temperature: float | None = Field(None, gt=0, description="default 1/alpha")
    temperature: float = Field(1.0, ge=0, description="for the plain sampler")
    top_k: int | None = Field(None, ge=1)
    max_tokens: int = Field(3072, ge=1, description="T")
    block: int = Field(192, ge=1, description="B")
    steps: int = Field(10, ge=0, description="MH steps after each block")
    cut: CutRule = CutRule()
    tries: int = Field(8, ge=1, description="K tries per multiple-try move (egps)")
    skip_entropy: float = Field(0.0, ge=0, description="egps: skip blocks below this entropy mass")
    verifier_weight: float = Field(0.0, ge=0, description="lambda of the verifier tilt")
    stop_on_pass: bool = True
    stop: tuple[str, ...] = ()
    alternatives: int = Field(5, ge=0)
    move: Literal["suffix", "local", "mixed"] = "suffix"
    span: SpanRule = SpanRule()
    local_share: float = Field(0.5, ge=0, le=1, description="mixed: probability of a local move")
    restart_share: float = Field(0.0, ge=0, le=1, description="probability of a restart move")
    exclude: bool = Field(False, description="cut moves ban the current cut token (no null moves)")

    @model_validator(mode="before")
    @classmethod
    def _former_names(cls, data):
        """ec-mh is rewind, uniform-mh rewind with uniform cuts, argmax-cut rewind with argmax."""
        if not isinstance(data, dict) or data.get("sampler") not in FORMER_SAMPLERS:
            return data
        sampler, kind, argmax = FORMER_SAMPLERS[data["sampler"]]
        data = {**data, "sampler": sampler, "argmax": argmax or bool(data.get("argmax"))}
        if kind is not None:
            cut = data.get("cut") or CutRule()
            cut = cut if isinstance(cut, CutRule) else CutRule(**cut)
            data["cut"] = cut.model_copy(update={"kind": kind})
        return data

    @model_validator(mode="after")
    def _single_try_moves(self) -> SamplerConfig:
        if self.move != "suffix" and self.sampler == "egps":
            raise ValueError(f"move={self.move!r}: local moves are single-try; use rewind, "
                             "or move='suffix' for egps")
        if self.argmax and self.sampler != "rewind":
            raise ValueError("argmax is a rewind's cut rule: use it with sampler='rewind'")
        if self.argmax and self.cut.kind == "uniform":
            raise ValueError("argmax ranks by the cut weights: uniform weights have no maximum")
        return self

    @property
    def q_temperature(self) -> float:
        return self.proposal_temperature or 1.0 / self.alpha

    @property
    def retry(self) -> RetryConfig:
        """The chain's configuration (`fix`'s): one turn, entropy cut weights."""
        return RetryConfig(
            strategy="egps" if self.sampler == "egps" else "rewind", alpha=self.alpha,
            argmax=self.argmax,
            proposal_temperature=self.proposal_temperature, verifier_weight=self.verifier_weight,
            cut=self.cut, tries=self.tries, skip_entropy=0.0,  # blocks are skipped in `run`
            move=self.move, span=self.span, local_share=self.local_share,
            restart_share=self.restart_share, exclude=self.exclude)


class SampleResult(BaseModel):
    """The final sequence, every MH step, and the decode tokens spent (accepted or not)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    config: SamplerConfig
    state: DecodeState = Field(exclude=True)
    steps: list[StepRecord] = []
    decode_tokens: int = 0
    prefill_positions: int = 0  # teacher-forced positions of kept tails (local moves)
    passed: bool = False

    @property
    def text(self) -> str:
        return self.state.text

    @property
    def acceptance_rate(self) -> float:
        return sum(s.accepted for s in self.steps) / len(self.steps) if self.steps else 0.0

    @property
    def log_likelihood(self) -> float:
        return sum(t.logp for t in self.state.tokens)


Verifier = Callable[[str], float]


class PowerSampler:
    """Runs one chain. `run` is the whole algorithm; `_step` and `_mtm_step` are one move each."""

    def __init__(self, lm: LM, config: SamplerConfig, *, verifier: Verifier | None = None):
        self.lm, self.cfg, self.verifier = lm, config, verifier
        self.kernel = Chain(config.retry)  # the chain's cut and decision (`fix`'s)
        self.spent = 0
        self.prefilled = 0

    def _q(self, max_new: int) -> Sampling:
        c = self.cfg
        temp = c.temperature if c.sampler == "plain" else c.q_temperature
        return Sampling(temperature=temp, top_k=c.top_k, max_new_tokens=max(1, max_new),
                        stop=c.stop, alternatives=c.alternatives)

    def _score(self, state: DecodeState) -> float:
        if self.verifier is None:
            return 0.0
        return self.verifier(state.text)

    def _grow(self, state: DecodeState, cap: int, g: torch.Generator) -> DecodeState:
        out = self.lm.extend(state, self._q(cap - len(state)), g)
        self.spent += len(out) - len(state)
        return out

    def run(self, prompt, generator: torch.Generator, on_step=None) -> SampleResult:
        c = self.cfg
        state, steps, cap = self.lm.prefill(prompt), [], 0
        mh_on = c.sampler not in ("plain", "low-temp") and c.steps > 0
        r = 0.0
        # 1) grow a block; 2) N MH steps over the whole sequence so far; 3) stop at EOS / T / pass
        while cap < c.max_tokens and state.finish not in ("eos", "stop"):
            block_start, cap = len(state), min(cap + c.block, c.max_tokens)
            state = self._grow(state, cap, generator)
            r = self._score(state)
            if self._passed(r) or not mh_on or self._skip(state, block_start):
                if self._passed(r):
                    break
                continue
            state, r, recs = self.chain(state, c.steps, generator, cap=cap, r=r, on_step=on_step)
            steps += recs
            if self._passed(r):
                break
        return SampleResult(config=c, state=state, steps=steps, decode_tokens=self.spent,
                            prefill_positions=self.prefilled, passed=self._passed(r))

    def chain(self, state: DecodeState, steps: int, generator: torch.Generator, *,
              cap: int | None = None, r: float | None = None, on_step=None):
        """`steps` MH moves from `state` (lengths capped at `cap`, default max_tokens); stops
        early at a passing state. Returns (state, r, step records)."""
        cap = cap or self.cfg.max_tokens
        r = self._score(state) if r is None else r
        tried: tuple[int, ...] = ()
        recs: list[StepRecord] = []
        for _ in range(steps):
            state, r, rec, tried = self._move(state, r, cap, tried, generator)
            recs.append(rec)
            if on_step:
                on_step(rec, state)
            if self._passed(r):
                break
        return state, r, recs

    def _passed(self, r: float) -> bool:
        return self.verifier is not None and self.cfg.stop_on_pass and r >= 1.0

    def _skip(self, state: DecodeState, block_start: int) -> bool:
        mass = sum(t.entropy for t in state.tokens[block_start:])
        return self.cfg.sampler == "egps" and mass < self.cfg.skip_entropy

    def _move(self, x: DecodeState, r: float, cap: int, tried: tuple[int, ...],
              g: torch.Generator):
        """One move of the chain: (state, r, step record, tried cuts) after it."""
        # 1) the cut (the chain's kernel: restart, local or suffix, at a cut drawn from x)
        current = Trajectory([x.tokens], r)
        cut = self.kernel.next_cut(current, g, tried)
        t = cut.index
        # 2) the proposals from the cut
        span, decoded = None, None
        if cut.kernel.local:
            p = cut.kernel.propose(self.lm, x, t, self._q(cap), g, cap=cap, exclude=cut.ban)
            self.spent += p.decode_tokens
            self.prefilled += p.prefill_positions
            if p.y is None:  # out of the support: rejected, nothing to score
                rec = local.step_record(x.tokens, p, alpha=self.cfg.alpha, correction=0.0,
                                        verifier_delta=0.0, u=sampling.uniform(g))
                return x, r, rec, self.kernel.tried_after(tried, cut, moved=False)
            ys, span, decoded = [p.y], (p.s, p.m), p.decode_tokens
        else:  # K tries of a multiple-try move (egps), else one
            k = self.cfg.tries if self.cfg.sampler == "egps" and not cut.kernel.fresh else 1
            gens = sampling.child_generators(g, k) if k > 1 else [g]
            ys = cut.kernel.propose(self.lm, x, t, self._q(cap - t), gens, exclude=cut.ban)
        if decoded is None:
            decoded = sum(len(y) - t for y in ys)
            self.spent += decoded
        rs = [self._score(y) for y in ys]
        # 3) the chain's decision (a proposal that passes ends the run, whatever the draw)
        d = self.kernel.decide(current, [Trajectory([y.tokens], ry, span=span,
                                                   passed=self._passed(ry))
                                        for y, ry in zip(ys, rs)],
                              cut, tried=tried, generator=g, decode_tokens=decoded)
        if d.moved_to is None:
            return x, r, d.step, d.tried
        return ys[d.moved_to], rs[d.moved_to], d.step, d.tried


def sample(lm: LM, prompt, config: SamplerConfig | None = None, *, seed: int = 0,
           verifier: Verifier | None = None, on_step=None) -> SampleResult:
    """Run one chain of `config.sampler` on `prompt` with a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return PowerSampler(lm, config or SamplerConfig(), verifier=verifier).run(prompt, g, on_step)


__all__ = ["SAMPLERS", "PowerSampler", "SampleResult", "SamplerConfig", "sample"]
