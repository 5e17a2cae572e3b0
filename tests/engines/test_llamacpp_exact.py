"""Exact scoring on llama.cpp: `score` and re-prefills reproduce one-token decoding bitwise.

On the real pinned library and the real SmolLM2 GGUF (Q4_1). Measured on this build (b11549,
x86-64 AVX2, 1 thread): chunks of up to 62 tokens equal one-token decodes, 64 do not (up to
1.3 nats), so the probe picks 32 of (32, 16, ...) and rejects 64 when offered; the tests that
force 64 show what the measurement protects against.
"""

import json

import pytest
import torch

from decision_retry import catalogue
from decision_retry.engines.llamacpp import LlamaCppBackend, exact
from decision_retry.engines.llamacpp.memory import spans
from decision_retry.errors import BadInput

TEXT = (
    "def fizzbuzz(n):\n    out = []\n    for i in range(1, n + 1):\n        if i % 15 == 0:\n"
    "            out.append('FizzBuzz')\n        elif i % 3 == 0:\n            out.append('Fizz')\n"
    "        elif i % 5 == 0:\n            out.append('Buzz')\n        else:\n"
    "            out.append(str(i))\n    return out\n\nThe loop tests 15 first, because a multiple "
    "of 15 is a multiple of 3 and of 5, and"
)
NOT_EXACT = 64  # a chunk size this build gets wrong on SmolLM2 (see the module docstring)


@pytest.fixture(scope="module")
def smol_path():
    return catalogue.resolve("smollm2-135m")


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("exact-chunk")


@pytest.fixture(scope="module")
def backend(smol_path, probe_dir):
    return LlamaCppBackend(smol_path, threads=1, n_ctx=1024, n_seq_max=4, exact_cache=probe_dir)


@pytest.fixture(autouse=True)
def no_forced_size(monkeypatch):
    monkeypatch.delenv(exact.ENV, raising=False)


def decoded_and_scored(backend, prompt, ids):
    """The logits of ids teacher-forced one token per decode (`forward`, as decoding does) and
    by `score` from the same prompt: two (T, V) tensors."""
    fed = [prompt[-1], *ids[:-1]]
    cache = backend.prefill(prompt[:-1])
    decoded = torch.cat([backend.forward(cache, torch.tensor([i])) for i in fed])
    scored = backend.score(backend.prefill(prompt[:-1]), fed)
    return decoded, scored


def test_spans_are_full_chunks_then_single_tokens():
    assert spans(10, 4) == [(0, 4), (4, 8), (8, 9), (9, 10)]
    assert spans(8, 4) == [(0, 4), (4, 8)] and spans(3, 1) == [(0, 1), (1, 2), (2, 3)]
    assert spans(0, 32) == [] and spans(5, 32) == [(i, i + 1) for i in range(5)]


def test_the_probe_picks_the_largest_candidate_equal_to_one_token_decoding(backend):
    found = backend.exact
    assert found.source == "probe" and found.seconds > 0
    verdicts = dict(found.tried)
    assert verdicts[found.size] and not any(verdicts[c] for c in verdicts if c > found.size)
    assert [c for c, _ in found.tried] == [c for c in exact.CANDIDATES if c >= found.size]
    assert backend.memory.chunk == found.size == 32  # measured on this build (module docstring)
    # offered a size this build gets wrong, the probe rejects it and takes the next
    ids = backend.encode_text(TEXT)
    again = exact.measure(backend.memory.model, ids, n_vocab=backend.n_vocab, threads=1,
                          candidates=(NOT_EXACT, 32))
    assert again.tried == ((NOT_EXACT, False), (32, True)) and again.size == 32


def test_score_equals_one_token_decoding_bitwise(backend):
    prompt, ids = backend.encode_prompt("Explain this code."), backend.encode_text(TEXT)
    size = backend.exact.size
    assert len(ids) > 2 * size and len(ids) % size  # full chunks, and single tokens after them
    decoded, scored = decoded_and_scored(backend, prompt, ids)
    assert scored.shape == decoded.shape == (len(ids), backend.n_vocab)
    assert torch.equal(scored, decoded)


def test_a_chunk_the_probe_rejects_does_not_score_exactly(smol_path, probe_dir):
    forced = LlamaCppBackend(smol_path, threads=1, n_ctx=1024, exact_chunk=NOT_EXACT,
                             exact_cache=probe_dir)
    assert forced.exact == exact.ExactChunk(NOT_EXACT, "forced") and forced.memory.chunk == NOT_EXACT
    prompt, ids = forced.encode_prompt("Explain this code."), forced.encode_text(TEXT)
    decoded, scored = decoded_and_scored(forced, prompt, ids)
    # the chunk's own logits differ, and so do those of the single tokens after it, which
    # attend to the chunk's (different) keys and values
    dlogp = (scored.log_softmax(-1) - decoded.log_softmax(-1)).abs().amax(-1)  # (T,)
    assert dlogp[:NOT_EXACT].max() > 1e-3 and dlogp[NOT_EXACT:].max() > 1e-3


@pytest.mark.parametrize("size", [None, NOT_EXACT])
def test_an_evicted_row_is_re_prefilled_as_decoding_made_it(smol_path, probe_dir, size):
    """n_seq_max=2: two other prompts evict the decoded row; its re-prefill (the prompt in
    n_batch chunks, the decoded ids in exact chunks) gives the logits it gave before."""
    b = LlamaCppBackend(smol_path, threads=1, n_ctx=1024, n_seq_max=2, exact_chunk=size,
                        exact_cache=probe_dir)
    prompt, ids = b.encode_prompt("Explain this code."), b.encode_text(TEXT)
    cache = b.prefill(prompt[:-1])
    for i in [prompt[-1], *ids[:-1]]:
        b.forward(cache, torch.tensor([i]))
    expect = b.forward(b.slice(cache, len(cache)), torch.tensor([ids[-1]]))
    others = [b.prefill(b.encode_prompt(f"Count to {n}.")) for n in range(2)]
    assert cache.rows[0].seq is None and b.memory.evictions > 0
    got = b.forward(cache, torch.tensor([ids[-1]]))
    if size is None:  # the measured size: exact
        assert torch.equal(got, expect)
    else:  # a size the probe rejects: the re-prefilled cells differ, so do the logits
        assert not torch.equal(got, expect)
    assert len(others) == 2


def test_the_measured_size_is_cached_on_disk_and_a_bad_file_is_measured_again(smol_path, tmp_path):
    def load(where=tmp_path):
        return LlamaCppBackend(smol_path, threads=1, n_ctx=512, n_seq_max=2, exact_cache=where).exact

    first = load()
    (file,) = tmp_path.glob("*.json")
    assert first.source == "probe" and json.loads(file.read_text())["size"] == first.size
    second = load()  # no probe: the file's result
    assert second == exact.ExactChunk(first.size, "cache", first.tried, first.seconds)
    key = exact.cache_key(smol_path, threads=1)
    assert exact.cache_file(tmp_path, key) == file
    bad = [
        "{not json",
        "",
        json.dumps([1, 2]),
        json.dumps({"key": key, "size": 7, "tried": []}),  # not a candidate
        json.dumps({"key": key, "size": "32"}),
        json.dumps({"key": {**key, "threads": 2}, "size": first.size}),  # another key's
    ]
    for text in bad:
        file.write_text(text)
        again = load()
        assert again.source == "probe" and again.size == first.size, text
        assert json.loads(file.read_text())["size"] == first.size  # measured and rewritten
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert load(blocked / "sub").source == "probe"  # the cache cannot be written: skipped
    assert load(blocked / "sub").source == "probe"


def test_a_forced_size_skips_the_probe_and_a_bad_one_is_one_line(smol_path, tmp_path, monkeypatch):
    monkeypatch.setenv(exact.ENV, "4")
    b = LlamaCppBackend(smol_path, threads=1, n_ctx=512, exact_cache=tmp_path)
    assert b.exact == exact.ExactChunk(4, "forced") and b.memory.chunk == 4
    assert list(tmp_path.iterdir()) == []
    prompt, ids = b.encode_prompt("Explain this code."), b.encode_text(TEXT)[:10]
    decoded, scored = decoded_and_scored(b, prompt, ids)  # chunks of 4, 4, then 2 single tokens
    assert torch.equal(scored, decoded)
    b = LlamaCppBackend(smol_path, threads=1, n_ctx=512, exact_chunk=1, exact_cache=tmp_path)
    assert b.exact.size == 1  # the argument wins over the environment
    for raw in ("four", "0", "513", "-3"):
        monkeypatch.setenv(exact.ENV, raw)
        with pytest.raises(BadInput, match=rf"^\$DECISION_RETRY_EXACT_CHUNK='{raw}': need a whole number"):
            LlamaCppBackend(smol_path, threads=1, n_ctx=512, exact_cache=tmp_path)
    with pytest.raises(ValueError, match="exact_chunk=0: need 1..512"):
        LlamaCppBackend(smol_path, threads=1, n_ctx=512, exact_chunk=0, exact_cache=tmp_path)
