"""`mh.pick_kernel`, the kernel mixture of the fix loop and the sampler: its shares are the
probabilities it draws with, and it draws nothing when there is no choice (so seeded chains without
a mixture keep the cuts they had). That each kernel keeps the target is the job of
tests/samplers/test_samplers_exact.py; this is the mixture's own arithmetic."""

from __future__ import annotations

import collections

import pytest
import torch

from decision_retry.samplers import mh

DRAWS = 20_000


def frequencies(move: str, restart_share: float, local_share: float) -> dict[str, float]:
    g = torch.Generator().manual_seed(7)
    counts = collections.Counter(mh.pick_kernel(move, restart_share, local_share, g) for _ in range(DRAWS))
    return {k: n / DRAWS for k, n in counts.items()}


@pytest.mark.parametrize(("move", "restart", "local", "expected"), [
    ("local", 0.2, 0.5, {"restart": 0.2, "local": 0.8}),
    ("suffix", 0.5, 0.5, {"restart": 0.5, "suffix": 0.5}),
    ("mixed", 0.0, 0.3, {"local": 0.3, "suffix": 0.7}),
    ("mixed", 0.2, 0.5, {"restart": 0.2, "local": 0.4, "suffix": 0.4}),
    ("mixed", 0.1, 1.0, {"restart": 0.1, "local": 0.9}),
])
def test_each_kernel_is_drawn_with_its_share(move, restart, local, expected):
    got = frequencies(move, restart, local)
    assert set(got) == set(expected)
    for kind, p in expected.items():  # 4 standard errors at 20,000 draws is under 0.015
        assert abs(got[kind] - p) < 4 * (p * (1 - p) / DRAWS) ** 0.5 + 1e-9, (kind, got)


@pytest.mark.parametrize("move", ["local", "suffix"])
def test_no_mixture_draws_nothing(move):
    g = torch.Generator().manual_seed(3)
    before = g.get_state().clone()
    assert all(mh.pick_kernel(move, 0.0, 0.5, g) == move for _ in range(10))
    assert torch.equal(g.get_state(), before)
