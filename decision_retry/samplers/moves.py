"""The chain's moves as small objects: each proposes from a cut and gives its log ratio.

    Suffix     regenerate the cut turn from the cut to its end (mh.py);
    Local      resample to the next span boundary, keep and rescore the rest (local.py); its
               opening rule (`SpanRule.opening`) makes a cut in the reply's opening a Suffix move;
    Restart    a fresh attempt from the prompt: a Suffix move at 0 with no cut to reverse;
    NewChain   a fresh attempt that starts a new chain (no MH decision: `new_chain_after`);
    Mixture    which move runs next, drawn with fixed probabilities (a valid MH mixture);
    Patch / NoBody   where the cut's first new token is drawn from (samplers/surprise.py).

The maths stays in mh.py, local.py and surprise.py; these objects only choose which of it runs,
so no caller compares move names. `parse` turns the user's words (RetryConfig.move,
restart_share, local_share, cut_token) into them, once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from decision_retry.samplers import intervals, local, mh, surprise
from decision_retry.samplers.local import SpanRule
from decision_retry.samplers.mh import StepRecord
from decision_retry.tokens import DecodeState, Sampling, Token

ANY_SPAN = SpanRule()  # the span rule's defaults


@dataclass(frozen=True)
class Suffix:
    """Regenerate from the cut to the end of the turn."""

    name = "suffix"
    fresh = False  # a fresh attempt from the prompt (no cut to reverse)
    starts_chain = False  # the proposal becomes the state without an MH decision
    local = False

    def at(self, tokens: Sequence[Token], t: int) -> Suffix | Local:
        return self

    def propose(self, lm, x: DecodeState, t: int, q: Sampling,
                generators: Sequence[torch.Generator], *,
                exclude: int | None = None) -> list[DecodeState]:
        """One proposal per generator (K tries share the prefix's cache); `exclude`: the id the
        first new token may not be (an excluding move: the cut's `ban`)."""
        prefix = lm.fork(x, t)
        ban = {} if exclude is None else {"exclude": exclude}
        if len(generators) == 1:
            return [lm.extend(prefix, q, generators[0], **ban)]
        return lm.extend_many(prefix, q, list(generators), **ban)

    def record(self, x: Sequence[Token], y: Sequence[Token], t: int, *, alpha: float,
               correction: float, verifier_delta: float, u: float, decode_tokens: int,
               span: tuple[int, int] | None = None, exclusion: bool = False) -> StepRecord:
        """The MH decision for y against x, cut at t (log A's parts in the record);
        `exclusion`: y_t was drawn with x_t banned (mh.exclusion_term)."""
        return mh.mh_step_record(x, y, t, alpha=alpha, rule=None, correction=correction,
                                 verifier_delta=verifier_delta, u=u, decode_tokens=decode_tokens,
                                 exclusion=exclusion)


@dataclass(frozen=True)
class Restart(Suffix):
    """A fresh attempt from the prompt: an independent proposal, no cut to reverse."""

    name = "restart"
    fresh = True


@dataclass(frozen=True)
class NewChain(Restart):
    """A fresh attempt that is the first state of a new chain: taken, not decided."""

    name = "new-chain"
    starts_chain = True


@dataclass(frozen=True)
class Local:
    """Resample only to the next span boundary; the rest is kept and rescored."""

    span: SpanRule = ANY_SPAN
    name = "local"
    fresh = False
    starts_chain = False
    local = True

    def at(self, tokens: Sequence[Token], t: int) -> Suffix | Local:
        """The move at cut t: a Suffix move in the reply's opening (`span.opening`), chosen from
        (t, x_<t), which both directions share."""
        return SUFFIX if local.kernel_at(tokens, t, self.span) == "suffix" else self

    def propose(self, lm, x: DecodeState, t: int, q: Sampling, generator: torch.Generator, *,
                cap: int, budget: int | None = None, first=None,
                exclude: int | None = None, defer: bool = False) -> local.LocalProposal:
        """`exclude`: the id the span's first token may not be (with `first`, the first-token
        policy bans it itself); `defer`: the kept tail is scored on demand (local.propose)."""
        return local.propose(lm, x, t, self.span, q, generator, cap=cap, budget=budget,
                             first=first, exclude=None if first is not None else exclude,
                             defer=defer)

    def record(self, x: Sequence[Token], y: Sequence[Token], t: int, *, alpha: float,
               correction: float, verifier_delta: float, u: float, decode_tokens: int,
               span: tuple[int, ...] | None = None, exclusion: bool = False) -> StepRecord:
        """The MH decision for a local proposal: only the spans [t, s) and [t, t + m) enter the
        proposal terms (`span` = (s, m), flattened). `span` = (s, m, e): the cut turn's kept
        tail is e tokens long and the turns after it (an agent's later model calls, drawn
        afresh from q by both directions) enter the proposal terms too: x[s + e:], y[t + m + e:]
        (the LangGraph and LangChain integrations; docs/langgraph.md)."""
        s, m, *kept = span
        target, prop = local.log_weight(x, y, t, s, m, alpha, exclusion=exclusion)
        xs, ys = list(x[t:s]), list(y[t: t + m])  # the tokens in the proposal terms
        if kept and prop != -math.inf:
            e = kept[0]
            prop += sum(k.logq for k in x[s + e:]) - sum(k.logq for k in y[t + m + e:])
            xs, ys = xs + list(x[s + e:]), ys + list(y[t + m + e:])
        log_a = target + prop + correction + verifier_delta
        # estimated log q (a remote engine's top-k): log A's interval and the approximate flag
        b = intervals.proposal_bounds(xs, ys, 0) if prop != -math.inf else None
        if exclusion:  # the exclusion term's own interval (estimated log q at t)
            b = mh.with_exclusion(b, prop, x, y, t)
        return StepRecord(
            cut_position=t, cut_entropy=x[t].entropy, proposal_length=m, log_accept=log_a,
            log_target=target, log_proposal=prop, log_cut_correction=correction,
            log_verifier=verifier_delta, accepted=u == 0 or math.log(u) < log_a,
            decode_tokens=decode_tokens, **intervals.step_fields(log_a, prop, b, u))


Move = Suffix | Local  # Restart is a Suffix
SUFFIX, RESTART, NEW_CHAIN = Suffix(), Restart(), NewChain()


@dataclass(frozen=True)
class Mixture:
    """The next move: Restart with probability `restart_share`, else `base`, where a mixed base
    is Local with probability `local_share` (mh.pick_kernel draws it; nothing is drawn when
    there is no choice, so seeded chains without a mixture keep their cuts)."""

    base: Move = SUFFIX
    restart_share: float = 0.0
    local_share: float | None = None  # set: Local or Suffix at each move ("mixed")

    def pick(self, generator: torch.Generator) -> Move:
        mixed = self.local_share is not None
        name = mh.pick_kernel("mixed" if mixed else self.base.name, self.restart_share,
                              self.local_share or 0.0, generator)
        return {"restart": RESTART, "suffix": SUFFIX}.get(name, self.base)


@dataclass(frozen=True)
class Patch:
    """The cut's first new token comes from the usual proposal."""

    name = "patch"
    scored = False  # needs every reply scored under the no-body context

    def first(self, ctx, alt_x, lm, t: int, q: Sampling, generator, *,
              exclude: int | None = None) -> Callable | None:
        return None

    def view(self, x: Sequence[Token], t: int) -> Sequence[Token]:
        """x as the decision reads it at cut t."""
        return x


@dataclass(frozen=True)
class NoBody(Patch):
    """The cut's first new token comes from the no-body context at the proposal temperature, so
    a copied bug token can change; position t's proposal terms read the no-body log q."""

    name = "nobody"
    scored = True

    def first(self, ctx, alt_x, lm, t: int, q: Sampling, generator, *,
              exclude: int | None = None) -> Callable | None:
        return lambda prefix: surprise.draw_first(ctx(), alt_x, lm, prefix, t, q, generator,
                                                  exclude=exclude)

    def view(self, x: Sequence[Token], t: int) -> Sequence[Token]:
        return surprise.swap_logq(x, t)


def parse(move: str, *, span: SpanRule = ANY_SPAN, restart_share: float = 0.0,
          local_share: float = 0.5) -> Mixture:
    """The user's words (`--move suffix|local|mixed`, the restart share) as a Mixture; `auto`
    must be resolved before (RetryConfig.resolved)."""
    kinds = {"suffix": (SUFFIX, None), "auto": (SUFFIX, None),  # auto unresolved: suffix
             "local": (Local(span), None),
             "mixed": (Local(span), local_share)}
    if move not in kinds:
        raise ValueError(f"move {move!r}: choose suffix, local or mixed")
    base, share = kinds[move]
    return Mixture(base, restart_share, share)


def named(name: str, span: SpanRule = ANY_SPAN) -> Move:
    """The move a stored cut names (a cut kept in a graph or agent state as plain values)."""
    return {"suffix": SUFFIX, "restart": RESTART, "new-chain": NEW_CHAIN,
            "local": Local(span)}[name]


def first_token(name: str) -> Patch:
    """The user's `--cut-token patch|nobody` as a first-token policy."""
    policies = {"patch": Patch(), "nobody": NoBody()}
    if name not in policies:
        raise ValueError(f"cut token {name!r}: choose patch or nobody")
    return policies[name]
