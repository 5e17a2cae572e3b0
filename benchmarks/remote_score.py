"""What a scoring pass (`score`, teacher forcing) costs through a vLLM server against a decode token.

vLLM answers `prompt_logprobs` without reading its prefix cache (engines/remote/vllm.py), so a
pass over T given tokens after a P-token prefix prefills all P + T positions, while a decode
token after a cached prefix costs one step. For each prefix length P (ids of a real source
file, so the text is code-like) this times, interleaved and repeated:

* decode: N tokens from the P-token prefix at temperature 1 (the prefix is in the cache: one
  request made before the timed ones), wall per decode token;
* score: T given tokens after the same prefix, one request, wall per pass and per scored token.

    .venv/bin/python benchmarks/remote_score.py --url vllm+http://127.0.0.1:8000/smollm2
        [--prefix 64,512,1536] [--span 32,128] [--decode 32] [--repeat 3]
        [--out bench-out/remote_score.json]

Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `decision_retry` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO, markdown_table, median, write_json
from decision_retry.engines.remote import connect
from decision_retry.sampling import child_generators
from decision_retry.tokens import Sampling

import torch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--prefix", default="64,512,1536")
    ap.add_argument("--span", default="32,128")
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="bench-out/remote_score.json")
    args = ap.parse_args(argv)
    prefixes = [int(v) for v in args.prefix.split(",")]
    spans = [int(v) for v in args.span.split(",")]

    engine = connect(args.url)
    source = (REPO / "decision_retry" / "lm.py").read_text() * 4
    ids = engine.encode_text(source)
    need = max(prefixes) + max(spans)
    if len(ids) < need:
        raise SystemExit(f"the source text has {len(ids)} tokens, {need} needed")
    load0 = os.getloadavg()
    gens = iter(child_generators(torch.Generator().manual_seed(0), 200))
    rows = []
    for p in prefixes:
        state = engine.prefill(ids[:p])
        q = Sampling(temperature=1.0, max_new_tokens=args.decode, stop=())
        engine.extend(state, q, next(gens))  # 1) the prefix into the server's cache
        decode, score = [], {t: [] for t in spans}
        for _ in range(args.repeat):  # 2) interleaved: load drift hits both
            t0 = time.perf_counter()
            out = engine.extend(state, q, next(gens))
            decode.append((time.perf_counter() - t0) / max(1, len(out.tokens)))
            for t in spans:
                t0 = time.perf_counter()
                engine.score(state, ids[p: p + t], q)
                score[t].append(time.perf_counter() - t0)
        per_decode = median(decode)
        for t in spans:
            per_pass = median(score[t])
            rows.append({"prefix": p, "span": t, "decode_s_per_token": per_decode,
                         "score_s_per_pass": per_pass, "score_s_per_token": per_pass / t,
                         "pass_in_decode_tokens": per_pass / per_decode,
                         "decode_runs": decode, "score_runs": score[t]})
    result = {"url": args.url, "decode_tokens": args.decode, "repeat": args.repeat,
              "loadavg_start": load0, "loadavg_end": os.getloadavg(), "rows": rows,
              "stats": vars(engine.stats)}
    print(markdown_table(
        ["prefix P", "span T", "decode s/token", "score s/pass", "score s/token",
         "a pass in decode tokens"],
        [[r["prefix"], r["span"], f"{r['decode_s_per_token']:.3f}", f"{r['score_s_per_pass']:.2f}",
          f"{r['score_s_per_token']:.4f}", f"{r['pass_in_decode_tokens']:.1f}"] for r in rows]))
    print(f"load average {load0[0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end")
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
