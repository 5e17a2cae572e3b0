"""Power samplers on the embedded SmolLM2-135M-Instruct (fp32, CPU): what an MH step costs.

Two parts, in one process:

1. ec-mh vs uniform-mh vs egps (and low-temp, the proposal alone) at equal MH steps on short
   coding prompts: decode tokens spent, wall time, acceptance rate, final log-likelihood under p.
2. The cost of one MH step against (L - t), L the current length and t the cut: decode tokens,
   positions the model computed (prefill + decode rows, counted at the backend) and wall time.
   Side by side, every MH step of the samplers in --baseline-on is replayed right after it ran
   the way the public reference implementation of uniform-cut MH makes a proposal:
   `model.generate` from the full prompt + prefix (re-prefill), do_sample at temperature
   1/alpha, output_scores + output_logits turned into log p and log q; it is asked for exactly
   as many new tokens as our proposal drew (min_new_tokens = max_new_tokens), so both do the
   same decoding and differ only in how they get the prefix. Ratios are paired per step.

    .venv/bin/python benchmarks/samplers.py [--prompts 4] [--steps 3] [--max-tokens 64]
        [--block 32] [--seeds 1] [--tries 4] [--samplers ec-mh,uniform-mh,egps,low-temp]
        [--baseline-on uniform-mh] [--context FILE] [--threads 1] [--out bench-out/samplers.json]

Prints markdown tables and writes JSON (default bench-out/samplers.json).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `decision_retry` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import load, markdown_table, median, timed, write_json
from decision_retry.lm import LM
from decision_retry.loading import load_lm
from decision_retry.samplers import PowerSampler, SamplerConfig

PROMPTS = [
    "Write a Python function is_palindrome(s) that returns True when s reads the same backwards.",
    "Write a Python function fizzbuzz(n) that returns the FizzBuzz strings for 1 to n as a list.",
    "Write a Python function count_vowels(s) that returns the number of vowels in s.",
    "Write a Python function merge_sorted(a, b) that merges two sorted lists into one sorted list.",
    "Write a Python function factorial(n) that returns n! for a non-negative integer n.",
    "Write a Python function reverse_words(s) that reverses the order of the words in s.",
]
SAMPLERS = ("ec-mh", "uniform-mh", "egps", "low-temp")


def prompt_text(i: int, args) -> str:
    """Prompt i, after the --context file shown as reference code (a long prompt, like an agent's)."""
    if not args.context:
        return PROMPTS[i]
    code = Path(args.context).read_text()
    return f"Here is a Python module for reference:\n```python\n{code}```\n\n{PROMPTS[i]}"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- metering: what the model computes, and when a step starts -------------------------------
class CountingBackend:
    """Wraps a Backend; counts the positions the model computes (prefill ids, decode rows)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.prefill_positions = 0
        self.decode_rows = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def prefill(self, ids):
        self.prefill_positions += len(ids)
        return self.inner.prefill(ids)

    def forward(self, cache, ids):
        self.decode_rows += ids.numel()
        return self.inner.forward(cache, ids)


class MeteredLM(LM):
    """The engine, noting where each fork starts: an MH step runs from its fork to its record."""

    def __init__(self, lm: LM) -> None:
        super().__init__(CountingBackend(lm.backend), name=lm.name)
        self.fork_at: tuple[float, int, int, int, int] | None = None

    def fork(self, state, t):
        be = self.backend  # (perf_counter, L, t, model positions so far: prefill, decode rows)
        self.fork_at = (time.perf_counter(), len(state), t, be.prefill_positions, be.decode_rows)
        return super().fork(state, t)


# -- the reference-style proposal -------------------------------------------------------------
@torch.inference_mode()
def generate_proposal(lm: LM, prefix_ids: list[int], n: int, temperature: float, seed: int):
    """Re-prefill prompt + prefix and draw n tokens with `generate`; sums of log p and log q."""
    model = lm.backend.model
    x = torch.tensor([prefix_ids])  # (1, P + t)
    eos = min(lm.backend.eos_ids)
    torch.manual_seed(seed)
    out = model.generate(
        x, attention_mask=torch.ones_like(x), do_sample=True, temperature=temperature, top_k=0,
        top_p=1.0, max_new_tokens=n, min_new_tokens=n, pad_token_id=eos,
        return_dict_in_generate=True, output_scores=True, output_logits=True,
    )
    new = out.sequences[0, x.shape[1]:]  # (n,)
    idx = new.view(-1, 1, 1)
    logp = torch.gather(torch.log_softmax(torch.stack(out.logits).float(), -1), -1, idx)  # (n,1,1)
    logq = torch.gather(torch.log_softmax(torch.stack(out.scores).float(), -1), -1, idx)
    return len(new), float(logp.sum()), float(logq.sum())


# -- one chain --------------------------------------------------------------------------------
def run_chain(lm: MeteredLM, prompt_i: int, sampler: str, seed: int, args) -> tuple[dict, list]:
    """One chain; per-step records; reference replays of its steps when asked."""
    cfg = SamplerConfig(sampler=sampler, max_tokens=args.max_tokens, block=args.block,
                        steps=args.steps, tries=args.tries)
    ps = PowerSampler(lm, cfg)
    be = lm.backend
    steps: list[dict] = []
    replay_s = [0.0]

    def on_step(rec, state) -> None:
        now = time.perf_counter()
        start, L, t, prefill0, rows0 = lm.fork_at
        step = {
            "sampler": sampler, "prompt": prompt_i, "seed": seed, "t": t, "L": L,
            "L_minus_t": L - t, "P": len(state.prompt_ids), "proposal_length": rec.proposal_length,
            "decode_tokens": rec.decode_tokens, "tries": rec.tries, "accepted": rec.accepted,
            "wall_s": now - start, "model_prefill_positions": be.prefill_positions - prefill0,
            "model_decode_rows": be.decode_rows - rows0,
        }
        if sampler in args.baseline_on:
            prefix = state.ids[: len(state.prompt_ids) + t]
            n = rec.proposal_length
            s, (m, _, _) = timed(lambda: generate_proposal(
                lm, prefix, n, cfg.q_temperature, seed * 1000 + len(steps)))
            replay_s[0] += s
            step |= {"generate_wall_s": s, "generate_tokens": m,
                     "generate_positions": len(prefix) - 1 + m, "ratio": s / step["wall_s"]}
        steps.append(step)

    rows_before, prefill_before = be.decode_rows, be.prefill_positions
    t0 = time.perf_counter()
    res = ps.run(prompt_text(prompt_i, args), torch.Generator().manual_seed(seed), on_step)
    wall = time.perf_counter() - t0 - replay_s[0]
    chain = {
        "sampler": sampler, "prompt": prompt_i, "seed": seed, "length": len(res.state),
        "finish": res.state.finish, "mh_steps": len(res.steps),
        "decode_tokens": res.decode_tokens,
        "mh_decode_tokens": sum(s.decode_tokens for s in res.steps),
        "model_decode_rows": be.decode_rows - rows_before,
        "model_prefill_positions": be.prefill_positions - prefill_before,
        "cuts_at_0": sum(s.cut_position == 0 for s in res.steps),
        "wall_s": wall, "acceptance": res.acceptance_rate, "log_likelihood": res.log_likelihood,
        "logp_per_token": res.log_likelihood / max(1, len(res.state)), "text": res.text,
    }
    return chain, steps


# -- analysis ---------------------------------------------------------------------------------
def fit(ys: list[float], cols: list[list[float]]) -> list[float]:
    """Least squares y ~ c0 + c1 * col1 + ...; returns the coefficients."""
    a = np.column_stack([np.ones(len(ys)), *[np.asarray(c, float) for c in cols]])
    coef, *_ = np.linalg.lstsq(a, np.asarray(ys, float), rcond=None)
    return [float(c) for c in coef]


def sampler_table(chains: list[dict], samplers: list[str]) -> tuple[list[dict], str]:
    rows = []
    for s in samplers:
        cs = [c for c in chains if c["sampler"] == s]
        rows.append({
            "sampler": s, "chains": len(cs),
            "mh_steps": sum(c["mh_steps"] for c in cs) / len(cs),
            "decode_tokens": sum(c["decode_tokens"] for c in cs) / len(cs),
            "mh_decode_tokens": sum(c["mh_decode_tokens"] for c in cs) / len(cs),
            "wall_s": sum(c["wall_s"] for c in cs) / len(cs),
            "tokens_per_s": sum(c["decode_tokens"] for c in cs) / sum(c["wall_s"] for c in cs),
            "cuts_at_0": (sum(c["cuts_at_0"] for c in cs)
                          / max(1, sum(c["mh_steps"] for c in cs))),
            "acceptance": (sum(c["acceptance"] * c["mh_steps"] for c in cs)
                           / max(1, sum(c["mh_steps"] for c in cs))),
            "length": sum(c["length"] for c in cs) / len(cs),
            "log_likelihood": sum(c["log_likelihood"] for c in cs) / len(cs),
            "logp_per_token": sum(c["logp_per_token"] for c in cs) / len(cs),
            "model_prefill_positions": sum(c["model_prefill_positions"] for c in cs) / len(cs),
        })
    text = markdown_table(
        ["sampler", "MH steps", "decode tokens (in MH)", "wall s", "tok/s", "accept",
         "cuts at t=0", "length", "log p(x)", "log p / token", "prefill positions"],
        [[r["sampler"], r["mh_steps"], f"{r['decode_tokens']:.0f} ({r['mh_decode_tokens']:.0f})",
          r["wall_s"], r["tokens_per_s"], f"{r['acceptance']:.0%}",
          f"{r['cuts_at_0']:.0%}" if r["mh_steps"] else "", r["length"],
          r["log_likelihood"], r["logp_per_token"], r["model_prefill_positions"]]
         for r in rows],
    )
    return rows, text


def cost_table(steps: list[dict], bins: list[int]) -> tuple[list[dict], str]:
    """Single-try steps binned by L - t: tokens, wall, and the paired generate replay."""
    single = [s for s in steps if s["tries"] == 1]
    rows = []
    edges = [*bins, 10**9]
    for lo, hi in itertools.pairwise(edges):
        b = [s for s in single if lo <= s["L_minus_t"] < hi]
        if not b:
            continue
        rep = [s for s in b if "ratio" in s]
        rows.append({
            "L_minus_t": f"{lo}-{hi - 1}" if hi < 10**9 else f">={lo}", "steps": len(b),
            "mean_L_minus_t": sum(s["L_minus_t"] for s in b) / len(b),
            "mean_decode_tokens": sum(s["decode_tokens"] for s in b) / len(b),
            "mean_t": sum(s["t"] for s in b) / len(b),
            "mean_model_positions": sum(s["model_decode_rows"] + s["model_prefill_positions"]
                                        for s in b) / len(b),
            "mean_generate_positions": (sum(s["generate_positions"] for s in rep) / len(rep)
                                        if rep else None),
            "ours_wall_s": median([s["wall_s"] for s in b]),
            "ours_ms_per_token": median([1e3 * s["wall_s"] / max(1, s["decode_tokens"]) for s in b]),
            "replayed": len(rep),
            "generate_wall_s": median([s["generate_wall_s"] for s in rep]) if rep else None,
            "ratio": median([s["ratio"] for s in rep]) if rep else None,
        })
    text = markdown_table(
        ["L - t", "steps", "mean L - t", "mean decode tokens", "mean t",
         "model positions: ours", "generate", "ours s (median)", "ours ms/token", "replayed",
         "generate s (median)", "generate / ours (paired)"],
        [[r["L_minus_t"], r["steps"], r["mean_L_minus_t"], r["mean_decode_tokens"], r["mean_t"],
          r["mean_model_positions"], r["mean_generate_positions"], r["ours_wall_s"],
          r["ours_ms_per_token"], r["replayed"], r["generate_wall_s"], r["ratio"]]
         for r in rows],
    )
    return rows, text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=4, help=f"how many of {len(PROMPTS)} prompts")
    ap.add_argument("--steps", type=int, default=3, help="MH steps after each block")
    ap.add_argument("--max-tokens", type=int, default=64, help="length cap T")
    ap.add_argument("--block", type=int, default=32, help="block size B")
    ap.add_argument("--seeds", type=int, default=1, help="chains per prompt and sampler")
    ap.add_argument("--tries", type=int, default=4, help="K tries per egps move")
    ap.add_argument("--samplers", type=lambda s: s.split(","), default=list(SAMPLERS))
    ap.add_argument("--baseline-on", type=lambda s: s.split(","), default=["uniform-mh"],
                    help="samplers whose steps are replayed with generate (the reference is "
                    "uniform-mh; adding ec-mh doubles the replay time)")
    ap.add_argument("--context", default=None, metavar="FILE",
                    help="show this source file before every task (a long prompt)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", default="bench-out/samplers.json")
    args = ap.parse_args(argv)
    if not 1 <= args.prompts <= len(PROMPTS):
        ap.error(f"--prompts {args.prompts}: choose 1..{len(PROMPTS)}")
    started, load_start = time.perf_counter(), load()

    load_s, base = timed(lambda: load_lm(None, threads=args.threads))
    torch.set_num_threads(args.threads)
    lm = MeteredLM(base)
    log(f"model loaded in {load_s:.0f} s; load {load_start}")
    # warm-up: one short proposal each way, so neither path pays first-call costs in the table
    warm = lm.prefill(prompt_text(0, args))
    generate_proposal(lm, list(warm.prompt_ids), 4, 0.25, 0)
    PowerSampler(lm, SamplerConfig(sampler="low-temp", max_tokens=4, block=4)).run(
        PROMPTS[0], torch.Generator().manual_seed(0))

    chains, steps, loads = [], [], []
    for seed in range(args.seeds):
        for i in range(args.prompts):
            shift = (i + seed) % len(args.samplers)  # rotate the order: no sampler always first
            for s in args.samplers[shift:] + args.samplers[:shift]:
                chain, st = run_chain(lm, i, s, seed, args)
                chains.append(chain)
                steps += st
                log(f"  prompt {i} seed {seed} {s}: {chain['decode_tokens']} tokens, "
                    f"{chain['mh_steps']} steps, {chain['wall_s']:.1f} s, "
                    f"accept {chain['acceptance']:.0%}, log p {chain['log_likelihood']:.1f}")
            loads.append(load())

    mh = [s for s in args.samplers if s != "low-temp"]
    srows, stext = sampler_table(chains, args.samplers)
    crows, ctext = cost_table([s for s in steps if s["sampler"] in mh], [0, 8, 16, 32, 48])
    single = [s for s in steps if s["tries"] == 1]
    rep = [s for s in single if "ratio" in s]
    fits = {
        "ours_tokens_vs_L_minus_t": fit([s["decode_tokens"] for s in single],
                                        [[s["L_minus_t"] for s in single]]),
        "ours_wall_vs_tokens_and_prefix": fit([s["wall_s"] for s in single],
                                              [[s["decode_tokens"] for s in single],
                                               [s["P"] + s["t"] for s in single]]),
    }
    if len(rep) >= 3:
        fits["generate_wall_vs_tokens_and_prefix"] = fit(
            [s["generate_wall_s"] for s in rep],
            [[s["generate_tokens"] for s in rep], [s["P"] + s["t"] for s in rep]])
        fits["ours_wall_vs_tokens_and_prefix_replayed"] = fit(
            [s["wall_s"] for s in rep],
            [[s["decode_tokens"] for s in rep], [s["P"] + s["t"] for s in rep]])
    egps = [s for s in steps if s["tries"] > 1]
    summary = {
        "replayed_steps": len(rep),
        "ratio_median": median([s["ratio"] for s in rep]) if rep else None,
        "ratio_of_totals": (sum(s["generate_wall_s"] for s in rep) / sum(s["wall_s"] for s in rep)
                            if rep else None),
        "excess_s_median": (median([s["generate_wall_s"] - s["wall_s"] for s in rep])
                            if rep else None),
        "mean_prefix": sum(s["P"] + s["t"] for s in rep) / len(rep) if rep else None,
        "decode_tokens_equal_L_minus_t": sum(s["decode_tokens"] == s["L_minus_t"] for s in single),
        "single_try_steps": len(single),
        "egps_tokens_per_try_over_L_minus_t": (
            sum(s["decode_tokens"] for s in egps) / sum(s["tries"] * s["L_minus_t"] for s in egps)
            if egps else None),
    }

    print(f"\nload average (1, 5, 15 min) at start {load_start}, after each prompt {loads}")
    print(f"\n### Samplers at equal MH steps: {args.prompts} prompts x {args.seeds} seed(s), "
          f"T={args.max_tokens}, B={args.block}, {args.steps} steps per block, egps K={args.tries}"
          f" (means per chain)\n\n{stext}")
    print(f"\n### One MH step against L - t (single-try steps of {', '.join(mh)}; "
          f"generate replays of {', '.join(args.baseline_on)})\n\n{ctext}")
    a, b = fits["ours_tokens_vs_L_minus_t"]
    print(f"\ndecode tokens = {a:.2f} + {b:.3f} (L - t) over {len(single)} single-try steps; "
          f"equal to L - t in {summary['decode_tokens_equal_L_minus_t']} of them")
    if egps:
        print(f"egps: decode tokens / (K (L - t)) = {summary['egps_tokens_per_try_over_L_minus_t']:.3f}")
    if rep:
        print(f"generate - ours, per step (median): {summary['excess_s_median']:.2f} s, for a "
              f"re-prefilled prefix P + t of {summary['mean_prefix']:.0f} positions (mean)")
        print(f"generate replay / ours, per step (median of {len(rep)} paired steps): "
              f"{summary['ratio_median']:.2f}; ratio of summed wall: {summary['ratio_of_totals']:.2f}")

    results = {
        "settings": vars(args) | {"prompts_text": PROMPTS[: args.prompts], "alpha": 4.0,
                                  "prompt_tokens": sorted({s["P"] for s in steps}),
                                  "cut": SamplerConfig().cut.model_dump()},
        "load_at_start": load_start, "load_after_each_prompt": loads,
        "model_load_s": round(load_s, 1),
        "samplers": srows, "cost_by_L_minus_t": crows, "fits": fits, "summary": summary,
        "chains": chains, "steps": steps,
    }
    path = write_json(args.out, results, started=started)
    print(f"\nwrote {path} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
