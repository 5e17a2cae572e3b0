"""Stand-ins that ship with the package, for tests and for users without weights.

* `table_lm`: a toy autoregressive model small enough to enumerate p(x) exactly.
* `decision_tree_lm`: the toy of known truth (T tokens, k decisions) with its verifier.
* `tiny_llama`: a randomly initialised Llama built from a config (no download), in the real
  transformers backend.
* `scripted_lm`: a scripted model that writes given text with designated decision points, for
  driving the real agent without weights.

Each is the decode loop (`decision_retry.lm.LM`) over a backend from `decision_retry.engines`.
"""

from __future__ import annotations

import torch

from decision_retry.engines.scripted import Script, ScriptedBackend
from decision_retry.engines.toy import DecisionTreeBackend, TableBackend
from decision_retry.lm import LM

__all__ = [
    "DecisionTreeBackend",
    "Script",
    "ScriptedBackend",
    "TableBackend",
    "decision_tree_lm",
    "scripted_lm",
    "table_lm",
    "tiny_llama",
]


def table_lm(vocab: int = 4, *, seed: int = 0, sharpness: float = 2.0, spread: float = 0.0) -> LM:
    """A decode engine over a `TableBackend`."""
    return LM(TableBackend(vocab, seed=seed, sharpness=sharpness, spread=spread), name="table")


def tiny_llama(*, vocab: int = 64, seed: int = 0, layers: int = 2, hidden: int = 32) -> LM:
    """A randomly initialised Llama from a config, in the real transformers backend."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from decision_retry.engines.hf import HFBackend

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=0,
        bos_token_id=1,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    return LM(HFBackend(model, tokenizer=None), name="tiny-llama")


def decision_tree_lm(length: int, decisions: int, **kwargs) -> LM:
    """A decode engine over a `DecisionTreeBackend`; `lm.backend.verify` is its verifier."""
    return LM(DecisionTreeBackend(length, decisions, **kwargs), name="decision-tree")


def scripted_lm(script: Script | dict | list, name: str = "scripted") -> LM:
    """A decode engine over a `ScriptedBackend`."""
    return LM(ScriptedBackend(script), name=name)
