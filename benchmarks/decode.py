"""Decode-engine benchmark on the embedded SmolLM2-135M-Instruct (fp32, CPU).

What it measures, all in one process with the variants of each part interleaved:

1. single stream: our loop (`lm.extend`, temperature 1, fixed seed) with alternatives=0 and the
   default 5, against transformers `model.generate` (do_sample, same length via min_new_tokens);
2. K = 8 batched: `lm.extend_many` with 8 generators against `generate(num_return_sequences=8)`;
3. fork-and-continue against re-prefill: from one long generated state, cut at t and continue
   with (a) `lm.fork` + extend, or (b) prefill prompt + tokens[:t] from scratch + extend
   (what the public reference implementation does with `generate`);
4. torch threads: our loop with 1 and with 2 intra-op threads;

plus the memory-bandwidth ceiling (a large tensor copy; weights are read once per token) and the
matrix-vector floor (every Linear of the model once, batch 1, nothing else).

    .venv/bin/python benchmarks/decode.py [--tokens 128] [--reps 3] [--threads 1] [--out F]
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/decode.py --parts 4   # threads only

OMP_WAIT_POLICY is read once, when torch starts its thread pool, so it is an environment
variable of the run (recorded in the JSON), not a flag.

Prints markdown tables and writes JSON (default bench-out/decode.json). Ratios are the numbers
to trust on a shared machine: their numerator and denominator ran in the same rounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `decision_retry` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import interleaved, load, markdown_table, median, timed, write_json
from decision_retry.lm import LM, DecodeState, Sampling
from decision_retry.loading import load_lm
from decision_retry.sampling import child_generators

PROMPT = (
    "Write a Python module implementing a binary search tree with insert, delete, search and "
    "in-order traversal, with docstrings and tests."
)
SEED = 0
ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "DECISION_RETRY_THREADS")  # recorded in the JSON


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- 0) the machine: bandwidth ceiling and matrix-vector floor --------------------------------
def bandwidth(mb: int = 256, repeats: int = 6) -> dict:
    """Best-of copy and read bandwidth of a large fp32 tensor, bytes per second."""
    src = torch.ones(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch every page first
    nbytes = src.numel() * 4
    copy_s = min(timed(lambda: dst.copy_(src))[0] for _ in range(repeats))
    read_s = min(timed(lambda: src.sum())[0] for _ in range(repeats))
    # STREAM convention for copy: bytes read + bytes written.
    return {"copy_gbs": 2 * nbytes / copy_s / 1e9, "read_gbs": nbytes / read_s / 1e9}


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of distinct parameters (tied embedding / head counted once): read once per token."""
    seen = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    return sum(seen.values())


@torch.inference_mode()
def matvec_floor(model: torch.nn.Module, repeats: int = 5) -> float:
    """Seconds for one batch-1 pass over every Linear of the model (the head included)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = [torch.randn(1, m.in_features) for m in linears]

    def once():
        for m, x in zip(linears, xs):
            torch.nn.functional.linear(x, m.weight)

    once()
    return median([timed(once)[0] for _ in range(repeats)])


# -- 1, 2, 4) tokens per second -------------------------------------------------------------
def ours(
    lm: LM, ids: list[int], n: int, *, k: int = 1, alternatives: int = 5, threads: int | None = None
):
    """Prefill + our loop (k = 1: `extend`, k > 1: `extend_many`); returns a timing record."""

    def run():
        state = lm.prefill(ids)
        sampling_ = Sampling(temperature=1.0, max_new_tokens=n, alternatives=alternatives)
        if k == 1:
            return [lm.extend(state, sampling_, torch.Generator().manual_seed(SEED))]
        return lm.extend_many(
            state, sampling_, child_generators(torch.Generator().manual_seed(SEED), k)
        )

    return lambda: _with_threads(
        threads, lambda: _record(*timed(run), lambda outs: [len(o) for o in outs])
    )


def generate(lm: LM, ids: list[int], n: int, *, k: int = 1, threads: int | None = None):
    """transformers `generate`: pure sampling at temperature 1 (its default top_k=50 switched off)."""
    model, x = lm.backend.model, torch.tensor([ids])  # (1, P)
    eos = min(lm.backend.eos_ids)

    @torch.inference_mode()
    def run():
        torch.manual_seed(SEED)
        return model.generate(
            x,
            attention_mask=torch.ones_like(x),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=n,
            min_new_tokens=n,
            num_return_sequences=k,
            pad_token_id=eos,
        )  # (k, P + n)

    return lambda: _with_threads(
        threads, lambda: _record(*timed(run), lambda out: [out.shape[1] - x.shape[1]] * k)
    )


def _with_threads(threads: int | None, fn):
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def _record(seconds: float, out, count) -> dict:
    tokens = sum(count(out))
    return {"tokens": tokens, "s": round(seconds, 3), "tps": round(tokens / seconds, 2)}


def summarize(runs: list[dict]) -> dict:
    return {
        "tokens": runs[0]["tokens"],
        "median_s": median([r["s"] for r in runs]),
        "median_tps": median([r["tps"] for r in runs]),
        "runs": runs,
    }


def paired_ratio(a: list[dict], b: list[dict]) -> float:
    """Median over rounds of tps(a) / tps(b): each ratio compares runs from the same round."""
    return median([x["tps"] / y["tps"] for x, y in zip(a, b)])


# -- 3) fork-and-continue against re-prefill ------------------------------------------------
def long_state(lm: LM, ids: list[int], length: int) -> tuple[DecodeState, float]:
    """A state with `length` generated tokens (continued past an early EOS: only cost matters)."""
    t0 = time.perf_counter()
    state = lm.prefill(ids)
    gen = torch.Generator().manual_seed(SEED)
    while len(state) < length:
        # Reopen a state that ended early: its cache still covers all but the last id.
        state = dataclasses.replace(state, finish=None)
        state = lm.extend(state, Sampling(max_new_tokens=length - len(state)), gen)
    return state, time.perf_counter() - t0


def fork_variants(lm: LM, state: DecodeState, t: int, suffix: int) -> dict:
    """(a) fork at t + extend `suffix` tokens; (b) prefill prompt + tokens[:t] + extend."""
    sampling_ = Sampling(temperature=1.0, max_new_tokens=suffix)
    prefix = state.ids[: len(state.prompt_ids) + t]

    def run(setup):
        setup_s, start = timed(setup)
        decode_s, out = timed(
            lambda: lm.extend(start, sampling_, torch.Generator().manual_seed(SEED))
        )
        new = len(out) - len(start)
        return {"setup_s": round(setup_s, 4), "decode_s": round(decode_s, 3), "new": new}

    return {
        f"fork t={t}": lambda: run(lambda: lm.fork(state, t)),
        f"re-prefill t={t}": lambda: run(lambda: lm.prefill(prefix)),
    }


def fork_section(lm: LM, state: DecodeState, cuts: list[int], suffix: int, reps: int) -> list[dict]:
    variants: dict = {}
    for t in cuts:
        variants |= fork_variants(lm, state, t, suffix)
    runs = interleaved(variants, reps, log=log)
    P, L = len(state.prompt_ids), len(state)
    rows = []
    for t in cuts:
        a, b = runs[f"fork t={t}"], runs[f"re-prefill t={t}"]
        s = a[0]["new"]
        per_token = median([r["decode_s"] / r["new"] for r in a + b])  # same work in both arms
        setup_a, setup_b = median([r["setup_s"] for r in a]), median([r["setup_s"] for r in b])
        wall_a = median([r["setup_s"] + r["decode_s"] for r in a])
        wall_b = median([r["setup_s"] + r["decode_s"] for r in b])
        # Forward positions computed: prefill feeds all prompt + prefix ids but the last,
        # each decode step feeds one. A full MH step regenerates to the end: L - t tokens.
        full_a, full_b = L - t, (P + t - 1) + (L - t)
        rows.append(
            {
                "t": t,
                "prefix_tokens": P + t,
                "suffix_tokens": s,
                "fork_setup_s": setup_a,
                "reprefill_setup_s": setup_b,
                "fork_wall_s": wall_a,
                "reprefill_wall_s": wall_b,
                "wall_ratio": median(
                    [
                        (y["setup_s"] + y["decode_s"]) / (x["setup_s"] + x["decode_s"])
                        for x, y in zip(a, b)
                    ]
                ),
                "fork_tokens": s,
                "reprefill_tokens": P + t - 1 + s,
                "full_step_fork_tokens": full_a,
                "full_step_reprefill_tokens": full_b,
                "full_step_fork_s_est": setup_a + full_a * per_token,
                "full_step_reprefill_s_est": setup_b + (L - t) * per_token,
                "decode_s_per_token": per_token,
                "runs": {"fork": a, "reprefill": b},
            }
        )
    return rows


# -- the four parts: each returns (JSON results, markdown) ----------------------------------
def part_single(lm: LM, ids: list[int], args, probe) -> tuple[dict, str]:
    """1) single stream: our loop with 0 and 5 alternatives against `generate`.

    `probe` (bandwidth ceiling and matrix-vector floor) runs once per round too, so "of ceiling"
    compares each round's decode speed with that round's bandwidth.
    """
    n = args.tokens
    variants = {
        "ours alt=0": ours(lm, ids, n, alternatives=0),
        "ours alt=5": ours(lm, ids, n, alternatives=5),
        "generate": generate(lm, ids, n),
        "probe": probe,
    }
    log(f"1) single stream, {n} tokens, {args.threads} thread(s)")
    runs = interleaved(variants, args.reps, log=log)
    probes = runs.pop("probe")
    out = {k: summarize(v) for k, v in runs.items()}
    for key, value in out.items():
        value["vs_generate"] = paired_ratio(runs[key], runs["generate"])
        value["of_ceiling"] = median(
            [r["tps"] / p["ceiling_tps"] for r, p in zip(runs[key], probes)]
        )
        value["of_floor"] = median([r["tps"] / p["floor_tps"] for r, p in zip(runs[key], probes)])
    ceiling = median([p["ceiling_tps"] for p in probes])
    floor = median([p["floor_tps"] for p in probes])
    out["probe"] = {"ceiling_tps": ceiling, "floor_tps": floor, "runs": probes}
    rows = [
        [
            k,
            v["tokens"],
            v["median_s"],
            v["median_tps"],
            v["vs_generate"],
            f"{v['of_ceiling']:.0%}",
            f"{v['of_floor']:.0%}",
        ]
        for k, v in out.items()
        if k != "probe"
    ]
    rows += [
        ["bandwidth ceiling", "", "", ceiling, "", "100%", ""],
        ["Linear layers only", "", "", floor, "", "", "100%"],
    ]
    table = markdown_table(
        ["variant", "tokens", "s", "tok/s", "vs generate (paired)", "of ceiling", "of Linear"],
        rows,
    )
    title = (
        f"### Single stream, {n} new tokens, median of {args.reps} "
        f"(copy bandwidth {median([p['copy_gbs'] for p in probes]):.1f} GB/s read+write)"
    )
    return out, f"{title}\n\n{table}"


def part_batched(lm: LM, ids: list[int], args) -> tuple[dict, str]:
    """2) K = 8 tries: `extend_many` against `generate(num_return_sequences=8)`."""
    m = args.batch_tokens
    variants = {"ours K=8": ours(lm, ids, m, k=8), "generate K=8": generate(lm, ids, m, k=8)}
    log(f"2) K = 8, {m} tokens per row")
    runs = interleaved(variants, args.reps, log=log)
    out = {k: summarize(v) for k, v in runs.items()}
    out["ours K=8"]["vs_generate"] = paired_ratio(runs["ours K=8"], runs["generate K=8"])
    out["generate K=8"]["vs_generate"] = 1.0
    table = markdown_table(
        ["variant", "tokens", "s", "tok/s total", "vs generate (paired)"],
        [
            [k, v["tokens"], v["median_s"], v["median_tps"], v["vs_generate"]]
            for k, v in out.items()
        ],
    )
    return out, f"### K = 8 batched, {m} new tokens per row, median of {args.reps}\n\n{table}"


def part_fork(lm: LM, ids: list[int], args) -> tuple[dict, str]:
    """3) fork-and-continue against re-prefill, from one long state."""
    log(f"3) generating a {args.fork_len}-token state")
    state, long_s = long_state(lm, ids, args.fork_len)
    cuts = [args.fork_len * i // 4 for i in (1, 2, 3)]
    rows = fork_section(lm, state, cuts, args.suffix, args.reps)
    P, L = len(state.prompt_ids), len(state)
    table = markdown_table(
        [
            "cut t",
            "setup fork ms",
            "setup re-prefill ms",
            "wall fork s",
            "wall re-prefill s",
            "wall ratio",
            "tokens fork",
            "tokens re-prefill",
            f"full step to {L}: tokens",
            "est. s",
        ],
        [
            [
                r["t"],
                r["fork_setup_s"] * 1e3,
                r["reprefill_setup_s"] * 1e3,
                r["fork_wall_s"],
                r["reprefill_wall_s"],
                r["wall_ratio"],
                r["fork_tokens"],
                r["reprefill_tokens"],
                f"{r['full_step_fork_tokens']} vs {r['full_step_reprefill_tokens']}",
                f"{r['full_step_fork_s_est']:.1f} vs {r['full_step_reprefill_s_est']:.1f}",
            ]
            for r in rows
        ],
    )
    title = (
        f"### Fork vs re-prefill: state of {P} prompt + {L} generated tokens (made at "
        f"{L / long_s:.1f} tok/s), {args.suffix}-token suffix, median of {args.reps}"
    )
    out = {"long_state": {"tokens": L, "s": round(long_s, 2), "tps": L / long_s}, "cuts": rows}
    return out, f"{title}\n\n{table}"


def part_threads(lm: LM, ids: list[int], args) -> tuple[dict, str]:
    """4) 1 vs 2 torch threads; short runs under a time budget (2 busy cores can collapse)."""
    nt = args.thread_tokens
    log(f"4) threads, {nt} tokens")
    runs = interleaved(
        {th: ours(lm, ids, nt, threads=th) for th in (1, 2)}, args.reps, budget_s=40, log=log
    )
    out = {str(th): summarize(r) for th, r in runs.items()}
    out["two_vs_one"] = paired_ratio(runs[2], runs[1])
    table = markdown_table(
        ["threads", "runs", "s", "tok/s"],
        [
            [th, len(r), out[str(th)]["median_s"], out[str(th)]["median_tps"]]
            for th, r in runs.items()
        ],
    )
    omp = os.environ.get("OMP_WAIT_POLICY", "unset")
    return out, (
        f"### Torch threads, our loop, {nt} new tokens (OMP_WAIT_POLICY {omp})\n\n{table}\n\n"
        f"2 threads / 1 thread (paired): {out['two_vs_one']:.2f}"
    )


# -- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per single-stream run")
    ap.add_argument("--batch-tokens", type=int, default=64, help="new tokens per row, K = 8 runs")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions per variant")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for parts 1-3")
    ap.add_argument("--thread-tokens", type=int, default=16, help="new tokens per run, part 4")
    ap.add_argument(
        "--fork-len", type=int, default=400, help="generated tokens of the forked state"
    )
    ap.add_argument("--suffix", type=int, default=16, help="tokens decoded after each cut")
    ap.add_argument("--parts", default="1,4,2,3", help="which parts to run, in this order")
    ap.add_argument("--out", default="bench-out/decode.json")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    load_start = load()

    # 0) model, weights, bandwidth ceiling, matrix-vector floor
    load_s, lm = timed(lambda: load_lm(None, threads=args.threads))
    torch.set_num_threads(args.threads)
    model = lm.backend.model
    ids = lm.encode(PROMPT)
    wbytes = weight_bytes(model)

    def probe() -> dict:
        bw = bandwidth()
        floor_s = matvec_floor(model)
        out = bw | {"ceiling_tps": bw["copy_gbs"] * 1e9 / wbytes, "floor_tps": 1 / floor_s}
        return {k: round(v, 2) for k, v in out.items()}

    bw = {th: _with_threads(th, probe) for th in (1, 2)}
    ceiling = bw[args.threads]["ceiling_tps"]
    head = (
        f"weights {wbytes / 1e6:.0f} MB fp32; at start: copy bandwidth "
        f"{bw[args.threads]['copy_gbs']:.1f} GB/s (read+write, {args.threads} thread), read "
        f"{bw[args.threads]['read_gbs']:.1f} GB/s -> ceiling {ceiling:.1f} tok/s; Linear layers "
        f"alone (batch 1) {bw[args.threads]['floor_tps']:.1f} tok/s"
    )
    log(f"model loaded in {load_s:.1f} s; prompt {len(ids)} tokens; {head}")
    ours(lm, ids, 4)()  # warm-up of both paths
    generate(lm, ids, 4)()

    # 1) 4) 2) 3), each followed by the load average
    parts = {
        "1": ("single", lambda: part_single(lm, ids, args, probe)),
        "2": ("batched", lambda: part_batched(lm, ids, args)),
        "3": ("fork", lambda: part_fork(lm, ids, args)),
        "4": ("threads", lambda: part_threads(lm, ids, args)),
    }
    results: dict = {
        "settings": vars(args) | {"prompt": PROMPT, "prompt_tokens": len(ids), "seed": SEED},
        "env": {k: os.environ.get(k) for k in ENV},
        "load_at_start": load_start,
        "model_load_s": round(load_s, 1),
        "weight_bytes": wbytes,
        "probe_at_start": {str(k): v for k, v in bw.items()},  # per thread count
        "load_after": {},
    }
    texts = []
    for key in args.parts.split(","):
        name, run = parts[key.strip()]
        results[name], text = run()
        results["load_after"][name] = load()
        texts.append(f"{text}\n\nload average after: {results['load_after'][name]}")

    print(f"\nload average (1, 5, 15 min) at start {load_start}\n{head}\n")
    print("\n\n".join(texts))
    path = write_json(args.out, results, started=started)
    print(f"\nwrote {path} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
