"""llama.cpp in this process (the pinned `xllamacpp` wheel's libllama, through ctypes).

`lib` declares the foreign functions, `seqs` hands out sequence ids, `memory` owns the KV
cells (forks, batched decodes, eviction), `text` the tokenizer and chat template, and `engine`
puts them behind the `Backend` protocol.
"""

from decision_retry.engines.llamacpp.engine import LlamaCppBackend

__all__ = ["LlamaCppBackend"]
