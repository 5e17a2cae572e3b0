"""Text <-> ids through the GGUF's own tokenizer and chat template (llama.cpp's vocab).

Token texts are built from each token's raw bytes (`llama_token_to_piece`, special tokens
rendered), because byte-level tokens split UTF-8 characters: `piece(ids)` is the text the last
id adds after ids[:-1], where a character counts once it is complete. So the pieces of a
sequence always join to its text, and a token that only starts a character adds "".

Chat prompts go through `llama_chat_apply_template` with the GGUF's template, which llama.cpp
matches to a built-in format (ChatML for SmolLM2 and Qwen2.5) rather than running the Jinja
source: so no default system message is inserted when the chat has none, where transformers'
Jinja rendering inserts the template's ("You are a helpful AI assistant named SmolLM, ...").
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from decision_retry.engines.llamacpp import lib as L

_WINDOW = 4  # a UTF-8 character spans at most 4 bytes, so at most 4 tokens


class Vocab:
    """The vocabulary and chat template of one loaded model."""

    def __init__(self, lib, model: int) -> None:
        self.lib, self.model = lib, model
        self.ptr = lib.llama_model_get_vocab(model)
        self.n_vocab = lib.llama_vocab_n_tokens(self.ptr)
        self.template = lib.llama_model_chat_template(model, None)  # bytes, or None
        self._bytes: dict[int, bytes] = {}
        self._clean: dict[int, str | None] = {}  # id -> its text when its bytes are valid alone

    # -- metadata --------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self.lib.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else None

    def meta_int(self, suffix: str) -> int | None:
        """An integer hyperparameter `<arch>.<suffix>` (e.g. context_length), or None."""
        arch = self.meta("general.architecture")
        value = self.meta(f"{arch}.{suffix}") if arch else None
        return int(value) if value and value.isdigit() else None

    def eog_ids(self) -> frozenset[int]:
        """Every end-of-generation id (EOS, EOT, <|im_end|>, ...), as llama.cpp marks them."""
        is_eog, v = self.lib.llama_vocab_is_eog, self.ptr
        ids = {i for i in range(self.n_vocab) if is_eog(v, i)}
        for tok in (self.lib.llama_vocab_eos(v), self.lib.llama_vocab_eot(v)):
            if tok >= 0:
                ids.add(tok)
        return frozenset(ids)

    # -- ids -------------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool, add_bos: bool = False) -> list[int]:
        """Ids of text; `special` parses control tokens like <|im_start|> in it."""
        raw = text.encode()
        cap = len(raw) + 8
        while True:
            buf = (L.llama_token * cap)()
            n = self.lib.llama_tokenize(self.ptr, raw, len(raw), buf, cap, add_bos, special)
            if n >= 0:
                return list(buf[:n])
            cap = -n  # too small: llama.cpp says how many it needs

    def encode_prompt(self, prompt: str | Sequence[dict]) -> list[int]:
        """A chat through the GGUF's template (or a plain string as a single user turn)."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        text = self.apply_template(messages)
        if text is None:  # no template llama.cpp knows: the contents, as plain text
            text = "\n\n".join(m["content"] for m in messages)
            return self.tokenize(text, special=False, add_bos=self.lib.llama_vocab_get_add_bos(self.ptr))
        return self.tokenize(text, special=True)

    def apply_template(self, messages: Sequence[dict]) -> str | None:
        if not self.template:
            return None
        keep = [(m["role"].encode(), m["content"].encode()) for m in messages]
        chat = (L.ChatMessage * len(keep))(*(L.ChatMessage(r, c) for r, c in keep))
        cap = 2 * sum(len(r) + len(c) for r, c in keep) + 256
        for _ in range(2):
            buf = ctypes.create_string_buffer(cap)
            n = self.lib.llama_chat_apply_template(self.template, chat, len(keep), True, buf, cap)
            if n < 0:
                return None  # a template llama.cpp does not support
            if n <= cap:
                return buf.raw[:n].decode("utf-8", "replace")
            cap = n
        return None

    # -- text ------------------------------------------------------------------------------
    def token_bytes(self, tid: int) -> bytes:
        b = self._bytes.get(tid)
        if b is None:
            buf = ctypes.create_string_buffer(64)
            n = self.lib.llama_token_to_piece(self.ptr, tid, buf, 64, 0, True)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self.lib.llama_token_to_piece(self.ptr, tid, buf, -n, 0, True)
            b = self._bytes[tid] = buf.raw[:n]
        return b

    def _alone(self, tid: int) -> str | None:
        """The token's text when its bytes are valid UTF-8 by themselves, else None."""
        try:
            return self._clean[tid]
        except KeyError:
            try:
                text = self.token_bytes(tid).decode("utf-8")
            except UnicodeDecodeError:
                text = None
            self._clean[tid] = text
            return text

    def piece(self, ids: Sequence[int]) -> str:
        # fast path: both tokens valid alone, so the last one starts a fresh character
        last = self._alone(ids[-1])
        if last is not None and (len(ids) == 1 or self._alone(ids[-2]) is not None):
            return last
        window = list(ids[-_WINDOW:])
        head = b"".join(self.token_bytes(i) for i in window[:-1])
        full, before = _complete(head + self.token_bytes(window[-1])), _complete(head)
        return full[len(before):] if full.startswith(before) else _complete(self.token_bytes(ids[-1]))

    def detokenize(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", "replace")


def _complete(data: bytes) -> str:
    """`data` decoded, without a trailing character still waiting for its last bytes."""
    cut = len(data)
    for back in range(1, min(4, len(data)) + 1):  # find the lead byte of the last character
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            if byte >= 0x80 and need > back and byte >> 3 != 0b11111:
                cut = len(data) - back  # incomplete: wait for the rest
            break
    return data[:cut].decode("utf-8", "replace")
