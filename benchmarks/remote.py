"""The remote engine on a llama.cpp server (127.0.0.1, from the xllamacpp wheel) against the same
GGUF in this process: what an MH step costs over HTTP, how much of each fork the server's prefix
cache serves, and how many MH decisions the top-k bounds leave approximate.

Two parts:

1. MH steps, paired: one current sequence per engine (the same prompt, seed and proposal),
   then the same cuts on both: fork at t, regenerate the suffix from q (temperature 1/alpha),
   decide with log A. Wall per step and per decode token, in process vs through the server
   (interleaved, so that load drift hits both), and the share of approximate decisions.
2. `fix` on fixture repositories through the server: prefix-cache hit rate (cached / prompt
   tokens the server reported), prompt tokens sent per decode token, approximate MH decisions.
3. What exact mode costs: wall per token with the whole vocabulary listed against the top-20.

    .venv/bin/python benchmarks/remote.py [--cuts 8] [--tokens 64] [--fixtures units,names,scores]
        [--seeds 0,1] [--budget 600] [--threads 1] [--exact-tokens 8] [--out bench-out/remote.json]

Prints markdown tables and writes JSON (default bench-out/remote.json).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `decision_retry` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO, load, markdown_table, median, write_json
from decision_retry import catalogue, loading
from decision_retry.engines.remote import connect
from decision_retry.engines.remote.serve import LocalServer
from decision_retry.samplers import mh
from decision_retry.tokens import Sampling

PROMPT = ("Here is a buggy function:\n```python\ndef celsius_to_fahrenheit(celsius):\n"
          "    return celsius * 9 / 5 - 32\n```\nWrite the corrected function.")


def local_engine(threads: int):
    path = catalogue.resolve("smollm2-135m")
    try:
        return loading.load_llamacpp(path, name="in-process", threads=threads), "llama.cpp"
    except Exception:  # noqa: BLE001 - no in-process llama.cpp here: transformers instead
        return loading.load_transformers(path, str(path), name="in-process", threads=threads), "torch"


def mh_steps(engines: dict, args) -> dict:
    """Part 1: the same cuts on each engine's own current sequence, interleaved."""
    alpha = 4.0
    q = Sampling(temperature=1 / alpha, max_new_tokens=args.tokens)
    current = {n: e.extend(e.prefill(PROMPT), q, torch.Generator().manual_seed(0))
               for n, e in engines.items()}
    walls = {n: [] for n in engines}
    tokens = {n: 0 for n in engines}
    approx = decided = 0
    g = torch.Generator().manual_seed(1)
    for i in range(args.cuts):
        frac = float(torch.rand((), generator=g))
        for name in (list(engines) if i % 2 == 0 else list(engines)[::-1]):
            e, x = engines[name], current[name]
            t = int(frac * len(x))
            t0 = time.perf_counter()
            y = e.extend(e.fork(x, t), q.model_copy(update={"max_new_tokens": args.tokens - t}),
                         torch.Generator().manual_seed(100 + i))
            rec = mh.mh_step_record(x.tokens, y.tokens, t, alpha=alpha, rule=None,
                                    verifier_delta=0.0, u=float(torch.rand((), generator=g)),
                                    decode_tokens=len(y) - t)
            walls[name].append(time.perf_counter() - t0)
            tokens[name] += len(y) - t
            if rec.approximate is not None:
                decided += 1
                approx += bool(rec.approximate)
    return {"walls": walls, "decode_tokens": tokens, "approximate": approx, "decided": decided}


def exact_cost(url: str, args) -> dict:
    """The same decode with the top-20 and with the whole vocabulary listed (exact mode)."""
    q = Sampling(temperature=0.25, max_new_tokens=args.exact_tokens)
    out = {}
    for name, spec in (("top-20", url), ("exact", url + "?exact=1")):
        e = connect(spec)
        state = e.prefill(PROMPT)
        walls = []
        for rep in range(2):
            t0 = time.perf_counter()
            y = e.extend(state, q, torch.Generator().manual_seed(rep))
            walls.append((time.perf_counter() - t0) / max(1, len(y)))
        out[name] = {"wall_per_token_s": min(walls), "tokens": len(y)}
    return out


def fixture_runs(url: str, args) -> dict:
    """Part 2: `fix` through the server on fixture copies; stats from the engine and the steps."""
    from decision_retry.agent.runner import FixConfig, fix
    from decision_retry.retry import RetryConfig
    from decision_retry.trace.store import TraceStore

    engine = connect(url)
    runs, steps = [], []
    with tempfile.TemporaryDirectory() as tmp:
        store = TraceStore(Path(tmp) / "traces.db")
        for name in args.fixtures.split(","):
            for seed in map(int, args.seeds.split(",")):
                repo = Path(tmp) / f"{name}-{seed}"
                shutil.copytree(REPO / "fixtures" / name, repo,
                                ignore=shutil.ignore_patterns("FIXTURE.json"))
                for git in (["init", "-q"], ["add", "-A"], ["-c", "user.name=b", "-c",
                            "user.email=b@localhost", "commit", "-qm", "bug"]):
                    subprocess.run(["git", *git], cwd=repo, check=True)
                cfg = FixConfig(retry=RetryConfig(proposal_temperature=0.7), seed=seed,
                                budget_tokens=args.budget, max_attempts=10)
                t0 = time.perf_counter()
                res = fix(repo, cfg, lm=engine, store=store)
                runs.append({"fixture": name, "seed": seed, "fixed": res.fixed,
                             "attempts": res.attempts, "decode_tokens": res.decode_tokens,
                             "mh_steps": len(res.steps), "wall_s": round(time.perf_counter() - t0, 1)})
                steps += res.steps
                print(f"  fix {name} seed {seed}: {runs[-1]}", file=sys.stderr)
        store.close()
    s = engine.stats
    return {"runs": runs, "stats": vars(s), "cache_hit_rate": s.cache_hit_rate,
            "approximate": sum(bool(r.approximate) for r in steps),
            "decided": sum(r.approximate is not None for r in steps)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--fixtures", default="units,names,scores")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--budget", type=int, default=600)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--exact-tokens", type=int, default=8, help="tokens decoded in exact mode")
    ap.add_argument("--out", default="bench-out/remote.json")
    args = ap.parse_args()
    started = time.perf_counter()
    print(f"load at start: {load()}", file=sys.stderr)

    with LocalServer("smollm2-135m", parallel=4, threads=args.threads) as server:
        local, kind = local_engine(args.threads)
        remote = connect(server.url)
        part1 = mh_steps({"in-process": local, "server": remote}, args)
        print(f"part 1: {part1}", file=sys.stderr, flush=True)  # a long run keeps what it has
        write_json(args.out, {"local_engine": kind, "part1": part1}, started=started)
        part3 = exact_cost(server.url, args)
        print(f"part 3: {part3}", file=sys.stderr, flush=True)
        part2 = fixture_runs(server.url, args)

    w, n = part1["walls"], part1["decode_tokens"]
    per_tok = {k: sum(w[k]) / max(1, n[k]) for k in w}
    rows = [[k, len(w[k]), round(median(w[k]) * 1000), n[k], round(per_tok[k] * 1000, 1)]
            for k in w]
    print(markdown_table(["engine", "MH steps", "median wall per step (ms)", "decode tokens",
                          "wall per decode token (ms)"], rows))
    ratio = per_tok["server"] / per_tok["in-process"]
    print(f"\nwall ratio server / in-process ({kind}), per decode token: {ratio:.2f}; "
          f"approximate MH decisions: {part1['approximate']}/{part1['decided']}\n")
    st = part2["stats"]
    rows = [[r["fixture"], r["seed"], r["fixed"], r["attempts"], r["decode_tokens"], r["mh_steps"],
             r["wall_s"]] for r in part2["runs"]]
    print(markdown_table(["fixture", "seed", "fixed", "attempts", "decode tokens", "MH steps",
                          "wall (s)"], rows))
    hit = part2["cache_hit_rate"]
    print(f"\nprefix cache: {st['cached_tokens']}/{st['reported_prompt_tokens']} prompt tokens "
          f"({hit:.1%}) served from the server's cache; {st['prompt_tokens_sent']} prompt tokens "
          f"sent for {st['generated_tokens']} decode tokens in {st['requests']} requests; "
          f"approximate MH decisions {part2['approximate']}/{part2['decided']}")
    top, ex = part3["top-20"]["wall_per_token_s"], part3["exact"]["wall_per_token_s"]
    print(f"\nexact mode (all {remote.info.vocab} log-probs per token): {ex * 1000:.0f} ms per "
          f"token against {top * 1000:.0f} ms with the top-20 ({ex / top:.1f}x)")
    path = write_json(args.out, {"local_engine": kind, "part1": part1, "ratio_per_token": ratio,
                                 "part2": part2, "exact_mode": part3}, started=started)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
