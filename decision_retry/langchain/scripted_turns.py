"""The scripted model for agents: one script per model call, picked by the conversation so far.

`decision_retry.engines.scripted` writes the same script on every call, whatever the prompt. An
agent needs call n to write something else than call n-1 (first a tool call, then the answer), so
here the n-th script is written when the prompt holds n assistant messages (the last script
repeats). Segments are as in the scripted model: a string is written with certainty, a
`{"choice": {...}}` is one token drawn from those probabilities (a real entropy spike).

The turn travels in the prompt ids: n + 1 `<prompt>` tokens for turn n, so forks, batching and
teacher forcing work exactly as for the scripted model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from decision_retry.engines.scripted import EOS, PROMPT, Script, ScriptedBackend
from decision_retry.lm import LM


class ScriptedTurnsBackend(ScriptedBackend):
    """A `Backend` writing script n when the prompt holds n assistant messages."""

    def __init__(self, turns: Sequence[Script | dict | list]) -> None:
        if not turns:
            raise ValueError("give at least one script")
        scripts = [t if isinstance(t, Script) else Script.model_validate(
            {"segments": t} if isinstance(t, list) else t) for t in turns]
        # one vocabulary over all scripts; the steps of script n start at offsets[n]
        super().__init__(Script(segments=[s for sc in scripts for s in sc.segments]))
        steps, self.offsets, self.lengths = [], [], []
        for sc in scripts:
            self.offsets.append(len(steps))
            for seg in sc.segments:
                options = {seg: 1.0} if isinstance(seg, str) else seg.choice
                z = sum(options.values())
                steps.append({self._id(t): p / z for t, p in options.items()})
            steps.append({EOS: 1.0})
            self.lengths.append(len(sc.segments) + 1)
        self._steps = steps

    def turn_of(self, prompt) -> int:
        """Assistant messages in the prompt (a plain-text prompt is turn 0), capped at the last."""
        n = 0 if isinstance(prompt, str) else sum(m.get("role") == "assistant" for m in prompt)
        return min(n, len(self.offsets) - 1)

    def encode_prompt(self, prompt) -> list[int]:
        return [PROMPT] * (self.turn_of(prompt) + 1)

    def forward(self, cache: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        out = []
        for r in self.append(cache, ids):
            prompts = [i for i, t in enumerate(r) if t == PROMPT]
            turn = min(len(prompts) - 1, len(self.offsets) - 1) if prompts else 0
            step = len(r) - 1 - (prompts[-1] if prompts else -1)
            out.append(self.logits_at(self.offsets[turn] + min(step, self.lengths[turn] - 1)))
        return torch.stack(out)  # (B, V)


def scripted_turns_lm(turns: Sequence[Script | dict | list], name: str = "scripted") -> LM:
    """A decode engine writing `turns[n]` on the n-th model call of a conversation."""
    return LM(ScriptedTurnsBackend(turns), name=name)
