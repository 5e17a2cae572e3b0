"""Where to cut: the cut distribution c(t | x) over the generated positions of a sequence.

c(t | x) = (1 - eps) * w_t / Z(x) + eps / L(x), where w_t is a function of the entropies:

* "uniform":       w_t = 1 (then c is uniform, whatever eps);
* "entropy-jump":  w_t = max(0, H_t - H_{t-1}) ** beta, with H_{-1} = 0;
* "softmax":       w_t = exp(H_t / tau);
* "level":         w_t = max(0, H_t) ** beta.

The values need not be entropies: with surprise cut weights (surprise.py) they are each token's
-log p under a second context, and "level" is the rule the localisation probe measured.

An optional per-position `scale` multiplies w_t (e.g. code vs docstring, samplers/codeweights.py);
it must be a function of the sequence, computed for x and for x' alike. An optional `allowed`
mask restricts c to the positions where a move exists (the excluding moves of mh.py: no cut
where the proposal has no token but x_t): c(t | x) = 0 off the mask and, on it,
(1 - eps) * w_t / Z + eps / |allowed|, again a function of the sequence alone.

H_t is the entropy of p(. | prefix_<t), so it depends on the prefix only: a proposal that keeps
x_<t has the same w_0..w_t, but different later weights and a different Z. The reverse move
therefore needs c(t | x') computed on the proposal's own entropies (see `mh.py`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

CutKind = Literal["uniform", "entropy-jump", "softmax", "level"]


class CutRule(BaseModel):
    """The cut distribution's shape; eps > 0 keeps every position reachable."""

    model_config = ConfigDict(frozen=True)

    kind: CutKind = "entropy-jump"
    beta: float = Field(4.0, gt=0)
    tau: float = Field(1.0, gt=0)
    eps: float = Field(0.1, ge=0, le=1)


def weights(entropies: Sequence[float], rule: CutRule,
            scale: Sequence[float] | None = None) -> list[float]:
    """Unnormalised w_t for t = 0..L-1 (times scale_t when given)."""
    if rule.kind == "uniform":
        out = [1.0] * len(entropies)
    elif rule.kind == "softmax":
        m = max(entropies)
        out = [math.exp((h - m) / rule.tau) for h in entropies]
    elif rule.kind == "level":
        out = [max(0.0, h) ** rule.beta for h in entropies]
    else:
        prev, out = 0.0, []
        for h in entropies:
            out.append(max(0.0, h - prev) ** rule.beta)
            prev = h
    return out if scale is None else [w * s for w, s in zip(out, scale)]


def log_probs(entropies: Sequence[float], rule: CutRule,
              scale: Sequence[float] | None = None,
              allowed: Sequence[bool] | None = None) -> list[float]:
    """log c(t | x) for every position t of a sequence with these entropies (-inf off
    `allowed`; all -inf when nothing is allowed)."""
    if allowed is not None:
        if all(allowed):
            allowed = None
        else:
            scale = [float(a) for a in allowed] if scale is None else \
                [s * a for s, a in zip(scale, allowed)]
    n = len(entropies) if allowed is None else sum(map(bool, allowed))
    if n == 0:
        return [-math.inf] * len(entropies)
    w = weights(entropies, rule, scale)
    z = sum(w)
    off = (lambda t: False) if allowed is None else (lambda t: not allowed[t])
    if z <= 0 or (rule.kind == "uniform" and scale is None):
        return [-math.inf if off(t) else -math.log(n) for t in range(len(entropies))]
    eps = rule.eps
    return [
        -math.inf if off(t) or (1 - eps) * wt + eps <= 0 else math.log((1 - eps) * wt / z + eps / n)
        for t, wt in enumerate(w)
    ]


def log_prob(entropies: Sequence[float], t: int, rule: CutRule,
             scale: Sequence[float] | None = None, allowed: Sequence[bool] | None = None) -> float:
    """log c(t | x) for one position."""
    return log_probs(entropies, rule, scale, allowed)[t]


def draw(entropies: Sequence[float], rule: CutRule, generator: torch.Generator,
         scale: Sequence[float] | None = None, allowed: Sequence[bool] | None = None) -> int:
    """t ~ c(. | x); ValueError when no position is allowed."""
    lp = torch.tensor(log_probs(entropies, rule, scale, allowed), dtype=torch.float64)
    if not torch.isfinite(lp).any():
        raise ValueError("no position to cut at")
    return int(torch.multinomial(lp.exp(), 1, generator=generator))


def argmax(entropies: Sequence[float], exclude: set[int] = frozenset(),
           allowed: Sequence[bool] | None = None) -> int:
    """The highest-entropy position not in `exclude` (a heuristic, not a sampler), among the
    `allowed` ones when given (ValueError when none is)."""
    pool = [t for t in range(len(entropies)) if allowed is None or allowed[t]]
    if not pool:
        raise ValueError("no position to cut at")
    candidates = [t for t in pool if t not in exclude] or pool
    return max(candidates, key=lambda t: (entropies[t], -t))
