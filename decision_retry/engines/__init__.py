"""One module per engine, each behind `decision_retry.protocols` (Backend or Engine).

* `hf` — transformers/torch, for model directories, hub ids and config-built test models;
* `llamacpp` — llama.cpp in this process, for GGUF files (the default);
* `toy`, `scripted` — models of known truth and a scripted model, for tests and users without weights;
* `remote` — a llama.cpp server or a vLLM deployment over HTTP.

Engines import only `decision_retry.protocols` and `decision_retry.tokens`; the decode loop
(`decision_retry.lm`) and the loaders (`decision_retry.loading`, `decision_retry.testing`) come after.
"""
