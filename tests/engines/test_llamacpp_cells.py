"""Where llama.cpp puts a row's tokens, and why the engine cares (engines/llamacpp/cells.py).

On the real pinned library and the real SmolLM2 GGUF: a token's logits depend on the order of
its row's KV cells in the buffer, not on where they lie; `Cells` mirrors llama.cpp's placement
(checked against llama.cpp's own dump of its cells), so `Memory` knows before a decode whether a
row's cells stay in position order.
"""

import re

import pytest
import torch

from decision_retry import catalogue
from decision_retry.engines.llamacpp import LlamaCppBackend
from decision_retry.engines.llamacpp import lib as L
from decision_retry.engines.llamacpp.cells import Cells

TEXT = ("def mean(xs):\n    return sum(xs) / len(xs)\n\nThe function divides the sum of the "
        "values by their count and raises on an empty list.")


@pytest.fixture(scope="module")
def smol_path():
    return catalogue.resolve("smollm2-135m")


def engine(path, n_seq_max=3, n_ctx=1024):
    return LlamaCppBackend(path, threads=1, n_ctx=n_ctx, n_seq_max=n_seq_max, exact_chunk=32)


def teacher_forced(b, row, ids):
    """Feed ids to row one token per decode: (T, V) logits."""
    out = []
    for i in ids:
        b.memory.feed([row], [i], [len(row.ids)], outputs=True)
        row.ids.append(i)
        out.append(b.memory.logits(1, b.n_vocab))
    return torch.cat(out)


@pytest.mark.parametrize("layout", ["shifted", "foreign cells between", "later tokens first"])
def test_a_rows_logits_depend_on_the_order_of_its_cells_not_their_place(smol_path, layout):
    """The property the engine relies on (flash attention's online softmax visits a row's cells
    in buffer order and skips masked ones): cells moved up or interleaved with another row's
    give bitwise the same logits; later tokens in cells before the prompt's do not."""
    def run(layout):
        b = engine(smol_path)
        m = b.memory
        prompt, ids = b.encode_prompt("Explain this code."), b.encode_text(TEXT)[:24]
        pad = m.prefill(ids[:5]) if layout in ("shifted", "later tokens first") else None
        row = m.prefill(prompt)
        if layout == "foreign cells between":
            pad = m.prefill(ids[:5])
        if layout == "later tokens first":  # cells 0..4 freed (evicted: nothing kept)
            m.release(pad, evict=True)
        got = teacher_forced(b, row, ids)
        cells = m.cells.cells(row.seq)
        return got, [p for _, p in cells] == sorted(p for _, p in cells), m.disordered

    base, in_order, disordered = run(None)
    assert in_order and disordered == 0
    got, in_order, disordered = run(layout)
    if layout == "later tokens first":
        assert not in_order and disordered == 5  # the first 5 tokens took the freed cells
        dlogp = (got.log_softmax(-1) - base.log_softmax(-1)).abs().amax(-1)  # (T,)
        assert dlogp.max() > 1e-3
    else:
        assert in_order and disordered == 0
        assert torch.equal(got, base)


def test_the_mirror_places_tokens_where_llama_cpp_does(smol_path, monkeypatch):
    """LLAMA_KV_CACHE_DEBUG=3 makes llama.cpp log its cells (positions, head, used) before each
    placement; through prefills, forks, batched rows, scoring, evictions and re-prefills the
    mirror holds the same table before every decode."""
    monkeypatch.setenv("LLAMA_KV_CACHE_DEBUG", "3")
    lib = L.load()
    logs = []

    @L.LogCallback
    def keep(level, text, user):
        logs.append(text.decode("utf-8", "replace") if text else "")

    b = engine(smol_path, n_seq_max=3, n_ctx=512)
    m = b.memory
    seen = []

    class Watch:  # the real library; llama_decode also compares llama.cpp's table with the mirror's
        def __getattr__(self, name):
            return getattr(lib, name)

        def llama_decode(self, ctx, batch):
            want = (list(m.cells.pos), m.cells.head, m.cells.used)
            logs.clear()
            rc = lib.llama_decode(ctx, batch)
            text = "".join(logs)
            used, head = map(int, re.search(r"used = +(\d+), head = +(\d+)", text).groups())
            # one dump per sequence in the batch, all alike
            tables = [t for t in (blk.replace("*", " ").split() for blk in text.split("\n\n"))
                      if len(t) == m.cells.size and all(x == "." or x.isdigit() for x in t)]
            assert tables and all(t == tables[0] for t in tables)
            seen.append(([-1 if x == "." else int(x) for x in tables[0]], head, used) == want)
            return rc

    lib.llama_log_set(keep, None)
    try:
        m.lib = Watch()
        prompt, ids = b.encode_prompt("Explain this code."), b.encode_text(TEXT)
        a = b.prefill(prompt)
        two = b.repeat(b.slice(a, len(a)), 2)
        for i in ids[:6]:
            b.forward(two, torch.tensor([i, i + 1]))  # two rows, one decode
        scored = b.slice(a, len(a))
        b.score(scored, ids)  # chunks of 32, then single tokens
        del two  # holes
        others = [b.prefill(b.encode_prompt(f"Count to {k}.")) for k in range(3)]  # evictions
        b.score(b.slice(scored, len(a) + 20), ids[20:])  # re-prefilled, then scored
        b.forward(b.slice(a, len(a)), torch.tensor([ids[0]]))
    finally:
        m.lib = lib
        lib.llama_log_set(L._log_callback, None)
    assert m.evictions > 0 and len(seen) > 20 and all(seen), seen
    assert len(others) == 3


def test_the_mirrors_bookkeeping():
    """find_slot's rules, as b11549 has them: the first free cells from the head, the head back
    to the lowest freed cell, and to 0 when it is past used + 2 n; a shared cell stays used."""
    c = Cells(16)
    c.apply(c.slot(4), range(4), [0] * 4)  # cells 0..3
    assert (c.head, c.used) == (4, 4)
    c.cp(0, 1, 0, 2)  # seq 1 shares positions 0, 1
    c.apply(c.slot(3), [2, 3, 4], [1] * 3)  # cells 4..6
    assert c.cells(1) == [(0, 0), (1, 1), (4, 2), (5, 3), (6, 4)] and c.top(1) == 6
    c.rm(0)  # cells 2, 3 freed (0, 1 are seq 1's too)
    assert (c.head, c.used) == (2, 5) and c.pos[:4] == [0, 1, -1, -1]
    assert c.slot(1) == [2] and not c.ordered(1, [2])  # seq 1's next token would land before 4..6
    assert c.ordered(1, [2], below=2)  # after its first two positions only, it is in order
    c.apply(c.slot(2), [9, 9], [2, 2])  # cells 2, 3
    c.apply(c.slot(5), range(5), [3] * 5)  # cells 7..11
    c.rm(3)
    assert c.head == 7 and c.slot(1) == [7]
    c.rm(2)  # cells 2, 3 freed: the head goes back to 2
    assert c.head == 2 and c.slot(1) == [2]
    c.apply(c.slot(9), range(9), [4] * 9)  # cells 2, 3, 7..13
    assert c.slot(3) is None  # 14, 15: two free cells left


def decode_from(b, cache, ids):
    """Teacher-force ids one per decode (`forward`, as decoding does): (T, V) logits."""
    return torch.cat([b.forward(cache, torch.tensor([i])) for i in ids])


def test_an_accepted_proposal_keeps_its_next_fork_in_order(smol_path):
    """The MH step's shape: a proposal forks the state, decodes above it, is accepted and the
    old state dropped. Freed, the old state's own cells would be a hole below the proposal's,
    where the next proposal's tokens land (up to 1.8 nats off). Kept in the grave until no live
    row lies above them, they are not: the next fork decodes bitwise as in a fresh cache."""
    b = engine(smol_path, n_seq_max=8)
    prompt, ids = b.encode_prompt("Explain this code."), b.encode_text(TEXT)[:36]
    base = b.prefill(prompt)
    state = b.slice(base, len(base))
    decode_from(b, state, ids[:20])  # the state: 20 tokens
    proposal = b.slice(state, len(base) + 5)
    decode_from(b, proposal, ids[5:25])  # cut at 5, 20 new tokens (the same ids: any ids do)
    del state  # accepted: the old state goes
    assert (b.memory.buried, b.memory.reclaimed, b.memory.seqs.in_use) == (1, 0, 2)  # no id kept
    nxt = b.slice(proposal, len(base) + 15)
    got = decode_from(b, nxt, ids[15:36])
    assert b.memory.disordered == 0
    fresh = engine(smol_path, n_seq_max=2)
    want = decode_from(fresh, fresh.slice(fresh.prefill(prompt), len(base)), ids[:36])[15:]
    assert torch.equal(got, want)
    del nxt, proposal
    assert b.memory.buried == 0 and b.memory.seqs.in_use == 1  # nothing lies above the grave


def test_the_grave_gives_its_cells_when_the_memory_needs_them(smol_path):
    """Known, not covered: with no free cell left, the grave is emptied before any live row is
    evicted; its cells become holes below the live rows above them, whose next tokens land out
    of order when the holes outnumber what the decode that needed the room took, and
    `disordered` says so."""
    b = engine(smol_path, n_seq_max=4, n_ctx=256)
    m = b.memory
    prompt, ids = b.encode_prompt("Explain this code."), b.encode_text(TEXT)[:30]
    base = b.prefill(prompt)
    state = b.slice(base, len(base))
    decode_from(b, state, ids[:20])
    proposal = b.slice(state, len(base) + 5)
    decode_from(b, proposal, ids[5:25])
    del state  # its 15 own cells go to the grave
    assert m.buried == 1
    filler = b.prefill((ids * 20)[:m.cells.size - m.cells.used - 6])  # all but 6 cells
    other = b.prefill(ids[::-1][:10])  # 10 > 6: the grave is emptied, 10 of its 15 cells reused
    assert (m.reclaimed, m.evictions, m.buried, m.disordered) == (1, 0, 0, 0)
    decode_from(b, b.slice(proposal, len(base) + 15), ids[15:18])
    assert m.disordered == 3  # into the 5 holes left below the proposal's cells
    assert len(filler.rows) == len(other.rows) == 1
