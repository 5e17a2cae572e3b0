"""ctypes declarations of the few llama.h functions we use: all foreign code in this one module.

Pinned library: the PyPI wheel `xllamacpp==2026.10.11549` (llama.cpp build b11549), a single
`xllamacpp/xllamacpp.abi3.so` that exports the llama_* C symbols. We locate it with
`importlib.util.find_spec` and load it with `ctypes.CDLL`; its Python package is never imported.
It needs Debian's `libgomp1` (OpenMP).

Struct layouts are those of b11549, checked against the binary itself (the disassembly of
`llama_model_default_params` / `llama_context_default_params`, and the defaults they return,
which `tests/engines/test_llamacpp.py` guards). They differ from the public header at
ggml-org/llama.cpp@0011438 in three places:
* `llama_model_params`: `enum llama_load_mode load_mode` and `enum llama_lazy_mode lazy_mode`
  replace the `use_mmap` / `use_direct_io` / `use_mlock` booleans; `load_mtp` closes the struct
  (80 bytes);
* `llama_context_params`: `n_outputs_max_per_seq` after `n_outputs_max`, one more pointer-sized
  field before the booleans (zero by default; we never set it), and `ctx_other` at the end
  (168 bytes).
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections import deque
from ctypes import POINTER, c_bool, c_char_p, c_float, c_int8, c_int32, c_size_t, c_uint32, c_void_p
from pathlib import Path

PACKAGE = "xllamacpp"
VERSION = "2026.10.11549"  # the pinned wheel (pyproject.toml); llama.cpp build b11549
LLAMA_BUILD = "b11549"
LIBRARY = "xllamacpp.abi3.so"

LLAMA_MAX_SEQ = 256  # src/llama-cparams.h: the most sequence ids one context can hold
GGML_LOG_LEVEL_ERROR = 4  # enum ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
GGML_LOG_LEVEL_CONT = 5

llama_token = c_int32
llama_pos = c_int32
llama_seq_id = c_int32


class ModelParams(ctypes.Structure):
    """struct llama_model_params (b11549, 80 bytes)."""

    _fields_ = [
        ("devices", c_void_p),
        ("tensor_buft_overrides", c_void_p),
        ("n_gpu_layers", c_int32),
        ("split_mode", c_int32),
        ("load_mode", c_int32),  # enum llama_load_mode: AUTO -1, NONE 0, MMAP 1, ...
        ("lazy_mode", c_int32),  # enum llama_lazy_mode
        ("main_gpu", c_int32),
        ("tensor_split", c_void_p),
        ("progress_callback", c_void_p),
        ("progress_callback_user_data", c_void_p),
        ("kv_overrides", c_void_p),
        ("vocab_only", c_bool),
        ("check_tensors", c_bool),
        ("use_extra_bufts", c_bool),
        ("no_host", c_bool),
        ("no_alloc", c_bool),
        ("load_mtp", c_bool),
    ]


class ContextParams(ctypes.Structure):
    """struct llama_context_params (b11549, 168 bytes)."""

    _fields_ = [
        ("n_ctx", c_uint32),
        ("n_batch", c_uint32),
        ("n_ubatch", c_uint32),
        ("n_seq_max", c_uint32),
        ("n_rs_seq", c_uint32),
        ("n_outputs_max", c_uint32),  # max outputs in a ubatch (0 = n_batch)
        ("n_outputs_max_per_seq", c_uint32),  # max outputs of one sequence in a ubatch
        ("n_threads", c_int32),
        ("n_threads_batch", c_int32),
        ("ctx_type", c_int32),
        ("rope_scaling_type", c_int32),
        ("pooling_type", c_int32),
        ("attention_type", c_int32),
        ("flash_attn_type", c_int32),
        ("rope_freq_base", c_float),
        ("rope_freq_scale", c_float),
        ("yarn_ext_factor", c_float),
        ("yarn_attn_factor", c_float),
        ("yarn_beta_fast", c_float),
        ("yarn_beta_slow", c_float),
        ("yarn_orig_ctx", c_uint32),
        ("defrag_thold", c_float),
        ("cb_eval", c_void_p),
        ("cb_eval_user_data", c_void_p),
        ("type_k", c_int32),  # enum ggml_type (1 = F16)
        ("type_v", c_int32),
        ("abort_callback", c_void_p),
        ("abort_callback_data", c_void_p),
        ("_pointer_0x80", c_void_p),  # present in b11549's binary, not in the public header
        ("embeddings", c_bool),
        ("offload_kqv", c_bool),
        ("no_perf", c_bool),
        ("op_offload", c_bool),
        ("swa_full", c_bool),
        ("kv_unified", c_bool),
        ("samplers", c_void_p),
        ("n_samplers", c_size_t),
        ("ctx_other", c_void_p),
    ]


class Batch(ctypes.Structure):
    """struct llama_batch: parallel arrays of n_tokens entries."""

    _fields_ = [
        ("n_tokens", c_int32),
        ("token", POINTER(llama_token)),
        ("embd", POINTER(c_float)),
        ("pos", POINTER(llama_pos)),
        ("n_seq_id", POINTER(c_int32)),
        ("seq_id", POINTER(POINTER(llama_seq_id))),
        ("logits", POINTER(c_int8)),
    ]


class ChatMessage(ctypes.Structure):
    _fields_ = [("role", c_char_p), ("content", c_char_p)]


LogCallback = ctypes.CFUNCTYPE(None, c_int32, c_char_p, c_void_p)

# name: (restype, argtypes). Pointers to opaque structs (model, context, vocab, memory) are c_void_p.
_PROTOTYPES = {
    "llama_backend_init": (None, []),
    "llama_log_set": (None, [LogCallback, c_void_p]),
    "llama_model_default_params": (ModelParams, []),
    "llama_context_default_params": (ContextParams, []),
    "llama_model_load_from_file": (c_void_p, [c_char_p, ModelParams]),
    "llama_model_free": (None, [c_void_p]),
    "llama_init_from_model": (c_void_p, [c_void_p, ContextParams]),
    "llama_free": (None, [c_void_p]),
    "llama_model_get_vocab": (c_void_p, [c_void_p]),
    "llama_model_chat_template": (c_char_p, [c_void_p, c_char_p]),
    "llama_model_meta_val_str": (c_int32, [c_void_p, c_char_p, c_char_p, c_size_t]),
    "llama_n_ctx": (c_uint32, [c_void_p]),
    "llama_n_batch": (c_uint32, [c_void_p]),
    "llama_n_seq_max": (c_uint32, [c_void_p]),
    "llama_n_threads": (c_int32, [c_void_p]),
    "llama_get_memory": (c_void_p, [c_void_p]),
    "llama_memory_clear": (None, [c_void_p, c_bool]),
    "llama_memory_seq_rm": (c_bool, [c_void_p, llama_seq_id, llama_pos, llama_pos]),
    "llama_memory_seq_cp": (None, [c_void_p, llama_seq_id, llama_seq_id, llama_pos, llama_pos]),
    "llama_memory_seq_keep": (None, [c_void_p, llama_seq_id]),
    "llama_memory_seq_pos_max": (llama_pos, [c_void_p, llama_seq_id]),
    "llama_decode": (c_int32, [c_void_p, Batch]),
    "llama_get_logits_ith": (POINTER(c_float), [c_void_p, c_int32]),
    "llama_get_logits": (POINTER(c_float), [c_void_p]),
    "llama_vocab_n_tokens": (c_int32, [c_void_p]),
    "llama_vocab_is_eog": (c_bool, [c_void_p, llama_token]),
    "llama_vocab_eos": (llama_token, [c_void_p]),
    "llama_vocab_eot": (llama_token, [c_void_p]),
    "llama_vocab_bos": (llama_token, [c_void_p]),
    "llama_vocab_get_add_bos": (c_bool, [c_void_p]),
    "llama_tokenize": (
        c_int32,
        [c_void_p, c_char_p, c_int32, POINTER(llama_token), c_int32, c_bool, c_bool],
    ),
    "llama_token_to_piece": (c_int32, [c_void_p, llama_token, c_char_p, c_int32, c_int32, c_bool]),
    "llama_detokenize": (
        c_int32,
        [c_void_p, POINTER(llama_token), c_int32, c_char_p, c_int32, c_bool, c_bool],
    ),
    "llama_chat_apply_template": (
        c_int32,
        [c_char_p, POINTER(ChatMessage), c_size_t, c_bool, c_char_p, c_int32],
    ),
}


def library_path() -> Path:
    """The pinned wheel's shared library, found without importing its Python package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{PACKAGE}=={VERSION} is not installed (pip install {PACKAGE}=={VERSION})")
    path = Path(next(iter(spec.submodule_search_locations))) / LIBRARY
    if not path.is_file():
        raise ImportError(f"{path} is missing: reinstall {PACKAGE}=={VERSION}")
    return path


def _keep_errors(level: int, text: bytes | None, _user: int | None) -> None:
    # llama.cpp logs every load step at INFO: drop everything below ERROR, and keep errors (with
    # their continuation lines) for the exception that follows them, never on stderr, where the
    # user gets one clear line from us instead
    global _last_kept
    if level == GGML_LOG_LEVEL_CONT:
        keep = _last_kept
    else:
        keep = _last_kept = level >= GGML_LOG_LEVEL_ERROR
    if keep and text:
        line = text.decode("utf-8", "replace").strip()
        if line:
            _errors.append(line)


def last_error() -> str | None:
    """The first of the errors llama.cpp logged since the last call (the root cause; later
    lines say which callers gave up), without its function-name prefix."""
    line = _errors[0].split(": ", 1)[-1] if _errors else None
    _errors.clear()
    return line


_errors: deque[str] = deque(maxlen=8)
_last_kept = False
_log_callback = LogCallback(_keep_errors)  # a module global: C keeps the pointer forever
_lib: ctypes.CDLL | None = None


def load() -> ctypes.CDLL:
    """The library with its prototypes declared, backend initialised and logging silenced (once)."""
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL(str(library_path()))
        except OSError as err:  # e.g. libgomp.so.1 missing
            raise ImportError(f"cannot load {PACKAGE}=={VERSION}: {err} (needs Debian libgomp1)") from None
        for name, (restype, argtypes) in _PROTOTYPES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        lib.llama_log_set(_log_callback, None)
        lib.llama_backend_init()
        _lib = lib
    return _lib
