"""Token text from a server's pieces: the llama.cpp server sends each token's bytes, and a UTF-8
character may span tokens, so a token's text is what its bytes complete after the ones before.

A remote engine's `DecodeState.cache` is the tuple of its tokens' pieces (bytes or str), prefix
tokens included; `of` reads it back (or the tokens' text, for a state of another engine).
"""

from __future__ import annotations

from collections.abc import Sequence

from decision_retry.tokens import DecodeState


def of(state: DecodeState) -> tuple:
    """The per-token pieces a state of this engine keeps (its tokens' text for a foreign state)."""
    cache = state.cache
    if isinstance(cache, tuple) and len(cache) == len(state.tokens):
        return cache
    return tuple(t.text for t in state.tokens)


def complete(b: bytes) -> int:
    """Length of the longest prefix of `b` that does not end inside a UTF-8 character."""
    for back in range(1, min(4, len(b)) + 1):
        c = b[-back]
        if c & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for the lead
        need = 2 if c & 0xE0 == 0xC0 else 3 if c & 0xF0 == 0xE0 else 4 if c & 0xF8 == 0xF0 else 1
        return len(b) - back if need > back else len(b)
    return len(b)


def text(prev: Sequence, piece: bytes | str) -> str:
    """The text `piece` completes after `prev`: bytes left over from an unfinished character
    before it come first; its own unfinished tail waits for the next token."""
    if isinstance(piece, str):
        return piece
    carry = b""
    for p in reversed(prev[-3:]):  # at most 3 bytes of a character can be pending
        if not isinstance(p, bytes):
            break
        carry = p + carry
    carry = carry[complete(carry):]
    data = carry + piece
    return data[: complete(data)].decode("utf-8", errors="replace")


def loose(piece: bytes | str) -> str:
    """A piece read on its own (an alternative's text), unfinished bytes replaced."""
    return piece.decode("utf-8", errors="replace") if isinstance(piece, bytes) else piece
