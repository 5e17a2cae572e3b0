"""A scripted model: writes given text, with choice points where it hesitates.

For tests and for users without weights (`--model scripted:script.json`; build one in code with
`decision_retry.testing.scripted_lm`). A script is a list of
segments; a string is written with certainty (entropy 0), a choice `{"choice": {"<": 0.5, "<=": 0.5}}`
is one token drawn from those probabilities (a real entropy spike the sampler can cut at).
Every segment is one token of its vocabulary. The model ignores what the prompt says: after the
last prompt token it walks the script from the start, so every turn writes the same script.

    {"segments": ["def f(a, b):\\n    return a ", {"choice": {"<": 0.6, "<=": 0.4}}, " b\\n```"]}
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from pydantic import BaseModel, Field

from decision_retry.engines.toy import IdRowsCache

EOS, PROMPT = 0, 1


class Choice(BaseModel):
    choice: dict[str, float] = Field(min_length=1)


class Script(BaseModel):
    """The segments, in order; a choice's probabilities are normalised."""

    segments: list[str | Choice] = Field(min_length=1)


class ScriptedBackend(IdRowsCache):
    """A `Backend` whose next-token distribution is the script's at the current position."""

    def __init__(self, script: Script | dict | list) -> None:
        if isinstance(script, list):
            script = {"segments": script}
        self.script = script if isinstance(script, Script) else Script.model_validate(script)
        self.names = ["<eos>", "<prompt>"]
        self._ids: dict[str, int] = {}
        self._steps: list[dict[int, float]] = []  # next-token probabilities per step
        for seg in self.script.segments:
            options = {seg: 1.0} if isinstance(seg, str) else seg.choice
            z = sum(options.values())
            self._steps.append({self._id(t): p / z for t, p in options.items()})
        self._steps.append({EOS: 1.0})
        self.eos_ids = frozenset({EOS})

    def _id(self, text: str) -> int:
        if text not in self._ids:
            self._ids[text] = len(self.names)
            self.names.append(text)
        return self._ids[text]

    @property
    def vocab(self) -> int:
        return len(self.names)

    def logits_at(self, step: int) -> torch.Tensor:
        """Logits (V,) after `step` generated tokens: log-probabilities, -inf off the script."""
        out = torch.full((self.vocab,), -math.inf)
        for i, p in self._steps[min(step, len(self._steps) - 1)].items():
            out[i] = math.log(p) if p > 0 else -math.inf
        return out

    # -- Backend protocol ------------------------------------------------------------------
    def encode_prompt(self, prompt) -> list[int]:
        return [PROMPT]

    def encode_text(self, text: str) -> list[int]:
        return [PROMPT] if text else []  # an empty assistant prefix adds no token

    def piece(self, ids: Sequence[int]) -> str:
        return "" if ids[-1] in (PROMPT, EOS) else self.names[ids[-1]]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.piece([i]) for i in ids)

    def forward(self, cache: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        out = []
        for r in self.append(cache, ids):
            last = max(i for i, t in enumerate(r) if t == PROMPT) if PROMPT in r else -1
            out.append(self.logits_at(len(r) - 1 - last))
        return torch.stack(out)  # (B, V)
