"""Shared fixtures: tiny models built from configs, never downloads."""

import pytest
import torch

from decision_retry.testing import table_lm, tiny_llama


@pytest.fixture(scope="session")
def tiny():
    return tiny_llama(vocab=64, seed=0)


@pytest.fixture(scope="session")
def table():
    return table_lm(vocab=4, seed=0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
