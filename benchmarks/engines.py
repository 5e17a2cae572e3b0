"""Engine benchmark: ours on llama.cpp, ours on torch, and llama.cpp's own server, side by side.

Per model (catalogue names), all in one run with the variants interleaved round by round:

1. single stream: our loop (`lm.extend`, temperature 1, fixed seed, full-vocabulary logp,
   entropy and 5 alternatives per token) against llama.cpp's own server (`/completion`, same
   model, same threads, same number of tokens, `ignore_eos`; its own `timings.predicted_per_second`,
   which excludes HTTP), and against our loop on torch (the GGUF dequantised by transformers);
2. K = 4 and K = 8 tries of one prefix in one batch (`lm.extend_many`): total tokens/s;
3. fork: `lm.fork(state, t)` of a long state plus one decode step (ms), against re-prefilling
   the prefix plus one step.

The server runs in a child process started from the same `xllamacpp` wheel, so its threads and
ours do not share a process; both use `--threads` threads.

    .venv/bin/python benchmarks/engines.py --models smollm2-135m,qwen2.5-coder-0.5b \
        [--tokens 96] [--reps 3] [--threads 1] [--torch smollm2-135m] [--out F]

Prints markdown tables and writes JSON (default bench-out/engines.json). Ratios compare runs of
the same round: trust them over absolute figures on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `decision_retry` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import interleaved, markdown_table, median, timed, write_json
from decision_retry import catalogue
from decision_retry.lm import LM, Sampling
from decision_retry.loading import load_llamacpp, load_transformers
from decision_retry.sampling import child_generators

PROMPT = (
    "Write a Python module implementing a binary search tree with insert, delete, search and "
    "in-order traversal, with docstrings and tests."
)
SEED = 0

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the server --------------------------------------------------------------------------------
class Server:
    """llama.cpp's own server (`decision_retry.engines.remote.serve.LocalServer`): one slot."""

    def __init__(self, path: Path, threads: int) -> None:
        from decision_retry.engines.remote.serve import LocalServer

        self.local = LocalServer(str(path), parallel=1, threads=threads).start()
        self.url = f"http://127.0.0.1:{self.local.port}"

    def complete(self, prompt: list[int], n: int) -> dict:
        body = {"prompt": prompt, "n_predict": n, "temperature": 1.0, "seed": SEED,
                "ignore_eos": True, "cache_prompt": False, "n_probs": 0}
        req = urllib.request.Request(self.url + "/completion", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        seconds, raw = timed(lambda: urllib.request.urlopen(req, timeout=600).read())
        out = json.loads(raw)
        t = out["timings"]
        return {"tokens": t["predicted_n"], "tps": t["predicted_per_second"],
                "wall_tps": t["predicted_n"] / seconds, "s": round(seconds, 3)}

    def close(self) -> None:
        self.local.stop()


# -- our loop ---------------------------------------------------------------------------------
def ours(lm: LM, ids: list[int], n: int, k: int = 1):
    """Prefill + decode n tokens (k rows): tokens/s of the decode part."""

    def run():
        state = lm.prefill(ids)
        s = Sampling(temperature=1.0, max_new_tokens=n)
        gens = child_generators(torch.Generator().manual_seed(SEED), k)
        seconds, outs = timed(lambda: lm.extend_many(state, s, gens))
        tokens = sum(len(o) for o in outs)
        return {"tokens": tokens, "tps": tokens / seconds, "s": round(seconds, 3)}

    return run


def fork_cost(lm: LM, ids: list[int], length: int, reps: int) -> dict:
    """ms to continue a `length`-token state from its middle by one token: fork + 1 decode step,
    against re-prefilling that prefix + 1 step (an engine may defer work to the first step)."""
    state = lm.extend(lm.prefill(ids), Sampling(max_new_tokens=length), torch.Generator().manual_seed(1))
    t = len(state) // 2
    one = Sampling(max_new_tokens=1)
    prefix = state.ids[: len(state.prompt_ids) + t]

    def step(start):
        return lm.extend(start(), one, torch.Generator().manual_seed(2))

    fork = [timed(lambda: step(lambda: lm.fork(state, t)))[0] for _ in range(reps * 3)]
    prefill = [timed(lambda: step(lambda: lm.prefill(prefix)))[0] for _ in range(reps)]
    return {"state_tokens": len(state), "t": t, "fork_ms": 1000 * median(fork),
            "reprefill_ms": 1000 * median(prefill)}


def bench_model(name: str, args) -> dict:
    path = catalogue.resolve(name)
    lm = load_llamacpp(path, name=name, threads=args.threads)
    ids = lm.encode(PROMPT)
    variants = {"ours llama.cpp k=1": ours(lm, ids, args.tokens)}
    server = Server(path, args.threads)
    variants["llama.cpp server k=1"] = lambda: server.complete(ids, args.tokens)
    if name in args.torch:
        hf = load_transformers(path, str(path), name=name, threads=args.threads)
        variants["ours torch k=1"] = ours(hf, ids, args.tokens)
    for k in (4, 8):
        variants[f"ours llama.cpp k={k}"] = ours(lm, ids, args.tokens, k)
    log(f"{name}: {len(variants)} variants x {args.reps} rounds")
    try:
        runs = interleaved(variants, args.reps, log=log)
    finally:
        server.close()
    tps = {v: median([r["tps"] for r in rs]) for v, rs in runs.items()}
    single = runs["ours llama.cpp k=1"]

    def ratio(other: str) -> float | None:
        if other not in runs:
            return None
        return median([a["tps"] / b["tps"] for a, b in zip(single, runs[other])])

    return {
        "model": name, "runs": runs, "tps": tps,
        "vs_server": ratio("llama.cpp server k=1"),
        "vs_torch": ratio("ours torch k=1"),
        "k4_over_single": median([b["tps"] / a["tps"] for a, b in zip(single, runs["ours llama.cpp k=4"])]),
        "k8_over_single": median([b["tps"] / a["tps"] for a, b in zip(single, runs["ours llama.cpp k=8"])]),
        "fork": fork_cost(lm, ids, 2 * args.tokens, args.reps),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,qwen2.5-coder-0.5b")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--torch", default="smollm2-135m", help="models also run on torch")
    ap.add_argument("--out", default="bench-out/engines.json")
    args = ap.parse_args(argv)
    args.torch = set(args.torch.split(",")) if args.torch else set()
    torch.set_num_threads(args.threads)
    results = [bench_model(m, args) for m in args.models.split(",")]
    rows = [[r["model"], r["tps"]["ours llama.cpp k=1"], r["tps"]["llama.cpp server k=1"],
             r["tps"].get("ours torch k=1", "-"), r["vs_server"], r["vs_torch"] or "-",
             r["tps"]["ours llama.cpp k=4"], r["tps"]["ours llama.cpp k=8"], r["k8_over_single"],
             r["fork"]["fork_ms"], r["fork"]["reprefill_ms"]] for r in results]
    print(markdown_table(
        ["model", "ours llama.cpp tok/s", "server tok/s", "ours torch tok/s", "ours / server",
         "ours llama.cpp / torch", "K=4 tok/s", "K=8 tok/s", "K=8 / single", "fork+1 ms",
         "re-prefill+1 ms"], rows))
    path = write_json(args.out, {"results": results, "tokens": args.tokens, "threads": args.threads})
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
