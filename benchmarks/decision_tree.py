"""Controlled experiment with known truth: decode tokens until the verifier passes, as T and k vary.

The toy (`decision_retry.testing.DecisionTreeBackend`) writes T tokens; k of them are decision
points (4 plausible letters, p = .32/.28/.22/.18, entropy 1.36 nats) and the rest near-certain
filler (entropy ~1e-5). The verifier returns the fraction of decisions made right; the right
letter is the second most likely one everywhere, so neither greedy nor low temperature finds it
and sampling has to search. Strategies, each run until a proposal passes or `--cap` decode tokens:

  ec-mh       Entropy-Cut MH on the verifier-tilted target p^alpha * exp(lam * r), one block of T;
  uniform-mh  the same chain with uniform cuts;
  egps        entropy cuts + K tries per move (multiple-try Metropolis);
  ec-local    ec-mh with local moves (samplers/local.py): resample from the cut to just before
              the next decision point (H >= --span-decision), at most --max-span tokens, keep the
              rest rescored by one teacher-forced pass (counted as prefill positions);
  ec-mixed    ec-mh, each move local or suffix with probability 1/2;
  uniform-local  uniform cuts with local moves;
  restart     plain sampling at temperature 1, repeated until a sample passes (independent
              restarts; drawn in batches for speed, counted as if one after another).

Two layouts of the decisions:
  spread  decision i at (i + 1/2) * T / k: the decisions scale with T;
  early   decision i at 4 + 8 i: the decisions sit at the start, T - 8k tokens of filler follow.

Sweeps: T in --lengths at k = --k (both layouts), and k in --ks at T = --t (spread; early too
with --early-k-sweep). Medians over seeds (a run that hits
the cap counts as the cap: a median shown as ">=cap" is censored), and the fraction solved.

    .venv/bin/python benchmarks/decision_tree.py [--seeds 10] [--cap 40000] [--lam 10]
        [--strategies ec-mh,uniform-mh,egps,ec-local,ec-mixed,uniform-local,restart]
        [--span-decision 0.5] [--max-span 8]
        [--lengths 32,128,512] [--k 3] [--ks 1,2,4,6] [--t 128] [--layouts spread,early]
        [--early-k-sweep]
        [--out bench-out/decision_tree.json]

Prints markdown tables, writes JSON and a PNG (next to the JSON, and copied to
docs/img/decision_tree.png unless --no-docs-img).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `decision_retry` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO, load, markdown_table, median, write_json
from decision_retry.lm import LM, Sampling
from decision_retry.samplers import PowerSampler, SamplerConfig
from decision_retry.samplers.local import SpanRule
from decision_retry.sampling import child_generators
from decision_retry.testing import decision_tree_lm

STRATEGIES = ("ec-mh", "uniform-mh", "egps", "ec-local", "ec-mixed", "uniform-local", "restart")
DEFAULT_STRATEGIES = ("ec-mh", "uniform-mh", "egps", "ec-local", "ec-mixed", "restart")
MOVES = {"ec-local": ("ec-mh", "local"), "ec-mixed": ("ec-mh", "mixed"),
         "uniform-local": ("uniform-mh", "local")}  # strategy -> (sampler, move)
RESTART_BATCH = 64


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Outcome:
    """One run of one strategy on one toy: did it pass, and what did it spend getting there."""

    strategy: str
    layout: str
    T: int
    k: int
    seed: int
    solved: bool
    tokens: int  # decode tokens until the run ended (pass or cap)
    proposals: int  # MH moves (restart: samples drawn)
    tries: int  # sequences proposed (egps: K per move)
    first_pass_tokens: int | None  # tokens when any proposal first passed the verifier
    seconds: float
    prefill: int = 0  # positions teacher-forced (kept tails of local moves), not decoded


class _OverBudget(Exception):
    """Raised from `on_step` to end a chain at the token cap."""


class _Watch:
    """The verifier, noting the tokens spent when a proposal (any try) first passes."""

    def __init__(self, verify) -> None:
        self.verify, self.sampler, self.first = verify, None, None

    def __call__(self, text: str) -> float:
        r = self.verify(text)
        if r >= 1.0 and self.first is None:
            self.first = self.sampler.spent
        return r


def positions(layout: str, T: int, k: int) -> list[int] | None:
    if layout == "spread":
        return None  # the backend's default: evenly spread
    if layout == "early":
        return [4 + 8 * i for i in range(k)]
    raise ValueError(f"layout {layout!r}: use spread or early")


def mh_run(lm: LM, strategy: str, seed: int, *, cap: int, lam: float, tries: int,
           span: SpanRule | None = None) -> Outcome:
    """One chain of an MH sampler, one block of T tokens, MH steps until pass or cap."""
    T = lm.backend.length
    sampler_name, move = MOVES.get(strategy, (strategy, "suffix"))
    cfg = SamplerConfig(
        sampler=sampler_name, max_tokens=T, block=T, steps=10**9, alternatives=0,
        verifier_weight=lam, stop_on_pass=True, tries=tries, move=move, span=span or SpanRule(),
    )
    watch = _Watch(lm.backend.verify)
    sampler = PowerSampler(lm, cfg, verifier=watch)
    watch.sampler = sampler
    moves = [0, 0]

    def on_step(rec, state) -> None:
        moves[0] += 1
        moves[1] += rec.tries
        if sampler.spent >= cap:
            raise _OverBudget

    t0 = time.perf_counter()
    try:
        result = sampler.run("x", torch.Generator().manual_seed(seed), on_step)
        solved = result.passed
    except _OverBudget:
        solved = False
    return Outcome(strategy, "", T, len(lm.backend.positions), seed, solved, sampler.spent,
                   moves[0], moves[1], watch.first, time.perf_counter() - t0, sampler.prefilled)


def restart_run(lm: LM, seed: int, *, cap: int) -> Outcome:
    """Independent samples at temperature 1 until one passes; tokens counted one after another."""
    T, verify = lm.backend.length, lm.backend.verify
    g, start = torch.Generator().manual_seed(seed), lm.prefill("x")
    q = Sampling(temperature=1.0, max_new_tokens=T, alternatives=0)
    spent, drawn, solved = 0, 0, False
    t0 = time.perf_counter()
    while spent < cap and not solved:
        batch = min(RESTART_BATCH, -(-(cap - spent) // T))
        for y in lm.extend_many(start, q, child_generators(g, batch)):
            spent, drawn = spent + len(y), drawn + 1
            if verify(y.text) >= 1.0:
                solved = True
                break
    return Outcome("restart", "", T, len(lm.backend.positions), seed, solved, spent, drawn, drawn,
                   spent if solved else None, time.perf_counter() - t0)


def run_point(layout: str, T: int, k: int, args) -> list[Outcome]:
    lm = decision_tree_lm(T, k, positions=positions(layout, T, k))
    out = []
    for strategy in args.strategies:
        for seed in range(args.seeds):
            if strategy == "restart":
                o = restart_run(lm, seed, cap=args.cap)
            else:
                o = mh_run(lm, strategy, seed, cap=args.cap, lam=args.lam, tries=args.tries,
                           span=SpanRule(decision=args.span_decision, ends=(),
                                         max_span=args.max_span))
            out.append(dataclasses.replace(o, layout=layout))
        done = [o for o in out if o.strategy == strategy]
        log(f"  {layout} T={T} k={k} {strategy}: median tokens "
            f"{median([o.tokens for o in done]):.0f}, solved {sum(o.solved for o in done)}/"
            f"{len(done)}, {sum(o.seconds for o in done):.1f} s")
    return out


def summarize(outcomes: list[Outcome], cap: int) -> list[dict]:
    """Medians per (layout, T, k, strategy); censored when more than half hit the cap."""
    groups: dict[tuple, list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.layout, o.T, o.k, o.strategy), []).append(o)
    rows = []
    for (layout, T, k, strategy), os_ in groups.items():
        solved = sum(o.solved for o in os_)
        first = [o.first_pass_tokens if o.first_pass_tokens is not None else cap for o in os_]
        tokens = sorted(o.tokens if o.solved else cap for o in os_)
        rows.append({
            "layout": layout, "T": T, "k": k, "strategy": strategy, "runs": len(os_),
            "solved": solved / len(os_),
            "median_tokens": median(tokens),
            "tokens_p25_p75": [tokens[len(tokens) // 4], tokens[(3 * len(tokens)) // 4]],
            "censored": solved * 2 <= len(os_),
            "median_first_pass_tokens": median(first),
            "median_proposals": median([o.proposals for o in os_]),
            "median_tries": median([o.tries for o in os_]),
            "median_tokens_over_T": median([(o.tokens if o.solved else cap) / T for o in os_]),
            "median_prefill": median([o.prefill for o in os_]),
            # the search alone: MH strategies first draw one whole sample of exactly T tokens
            "median_search_tokens": median([(o.tokens if o.solved else cap)
                                            - (0 if strategy == "restart" else T) for o in os_]),
            "seconds": sum(o.seconds for o in os_),
        })
    return rows


def table(rows: list[dict], key: str, cap: int) -> str:
    """One markdown table: a line per sweep value, a column per strategy (tokens, solved)."""
    strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in rows)]
    values = sorted({r[key] for r in rows})
    cells = []
    for v in values:
        line = [v]
        for s in strategies:
            r = next((r for r in rows if r[key] == v and r["strategy"] == s), None)
            if r is None:
                line.append("")
                continue
            tok = f">={cap}" if r["censored"] else f"{r['median_tokens']:.0f}"
            pre = f"; prefill {r['median_prefill']:.0f}" if r.get("median_prefill") else ""
            search = f" [{r['median_search_tokens']:.0f}]" if r["strategy"] != "restart" else ""
            line.append(f"{tok}{search} ({r['median_proposals']:.0f}; {r['solved']:.0%}{pre})")
        cells.append(line)
    return markdown_table([key, *strategies], cells)


def plot(rows: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ec-mh": "tab:red", "uniform-mh": "tab:blue", "egps": "tab:purple",
              "ec-local": "tab:green", "ec-mixed": "tab:olive", "uniform-local": "tab:cyan",
              "restart": "tab:gray"}
    styles = {"spread": "-", "early": "--"}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    for col, (key, fixed, fixed_key) in enumerate([("T", args.k, "k"), ("k", args.t, "T")]):
        for row, (metric, label) in enumerate([
            ("median_tokens", "decode tokens to solve (median)"),
            ("median_proposals", "proposals to solve (median: MH moves / restarts)"),
        ]):
            ax = axes[row][col]
            for layout in args.layouts:
                for s in args.strategies:
                    pts = sorted((r[key], r[metric], r["censored"]) for r in rows
                                 if r["layout"] == layout and r["strategy"] == s
                                 and r[fixed_key] == fixed)
                    if len(pts) < 2:
                        continue  # e.g. the early layout's one point of the k sweep
                    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                    ax.plot(xs, ys, styles[layout], color=colors[s], marker="o",
                            label=f"{s} ({layout})")
                    cens = [(x, y) for x, y, c in pts if c]
                    if cens:
                        ax.scatter(*zip(*cens), s=120, facecolors="none", edgecolors="black",
                                   zorder=3)
            ax.set_yscale("log")
            if key == "T":
                ax.set_xscale("log", base=2)
            ax.set_xlabel(f"{key} ({fixed_key} = {fixed})")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"Decision-tree toy: tokens to pass the verifier (lam={args.lam}, "
                 f"{args.seeds} seeds, cap {args.cap}; circled = censored at the cap)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--cap", type=int, default=40_000, help="decode tokens per run at most")
    ap.add_argument("--lam", type=float, default=10.0, help="verifier weight lambda")
    ap.add_argument("--tries", type=int, default=8, help="K tries per egps move")
    ap.add_argument("--lengths", type=ints, default=[32, 128, 512], help="T sweep")
    ap.add_argument("--k", type=int, default=3, help="decisions in the T sweep")
    ap.add_argument("--ks", type=ints, default=[1, 2, 4, 6], help="k sweep (k = --k is added)")
    ap.add_argument("--t", type=int, default=128, help="T in the k sweep")
    ap.add_argument("--layouts", type=lambda s: s.split(","), default=["spread", "early"])
    ap.add_argument("--early-k-sweep", action="store_true", help="k sweep in the early layout too")
    ap.add_argument("--strategies", type=lambda s: s.split(","), default=list(DEFAULT_STRATEGIES))
    ap.add_argument("--span-decision", type=float, default=0.5,
                    help="local moves: H >= this makes a position a decision point (span end)")
    ap.add_argument("--max-span", type=int, default=8, help="local moves: tokens resampled at most")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny tensors: 1)")
    ap.add_argument("--out", default="bench-out/decision_tree.json")
    ap.add_argument("--no-docs-img", action="store_true", help="do not copy the PNG to docs/img")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    started, load_start = time.perf_counter(), load()

    t_sweep = {(T, args.k) for T in args.lengths}
    k_sweep = {(args.t, k) for k in [*args.ks, args.k]}
    outcomes: list[Outcome] = []
    for layout in args.layouts:
        # the k sweep needs the spread layout; early adds it only when asked (time)
        points = t_sweep | (k_sweep if layout == "spread" or args.early_k_sweep else set())
        for T, k in sorted(points):
            if layout == "early" and 8 * k > T:
                continue  # the early decisions do not fit
            outcomes += run_point(layout, T, k, args)
    rows = summarize(outcomes, args.cap)

    print(f"\nload average (1, 5, 15 min) at start {load_start}, at end {load()}")
    print(f"cell: median decode tokens to solve [of them in MH moves, after the first sample of "
          f"T tokens] (median proposals; fraction solved within "
          f"{args.cap} tokens; median prefill positions of local moves), {args.seeds} seeds, "
          f"lam={args.lam}, egps K={args.tries}, local spans: H >= {args.span_decision}, "
          f"at most {args.max_span} tokens")
    for layout in args.layouts:
        by_t = [r for r in rows if r["layout"] == layout and r["k"] == args.k]
        by_k = [r for r in rows if r["layout"] == layout and r["T"] == args.t]
        print(f"\n### {layout}: T grows, k = {args.k}\n\n{table(by_t, 'T', args.cap)}")
        if len({r["k"] for r in by_k}) > 1:
            print(f"\n### {layout}: k grows, T = {args.t}\n\n{table(by_k, 'k', args.cap)}")
    gaps = [r for r in rows if r["median_first_pass_tokens"] < r["median_tokens"]]
    if gaps:
        print("\nfirst passing proposal earlier than the run's end (median tokens):")
        for r in gaps:
            print(f"  {r['layout']} T={r['T']} k={r['k']} {r['strategy']}: "
                  f"{r['median_first_pass_tokens']:.0f} vs {r['median_tokens']:.0f}")

    out = Path(args.out)
    png = out.with_suffix(".png")
    plot(rows, args, png)
    if not args.no_docs_img:
        docs_png = REPO / "docs" / "img" / "decision_tree.png"
        docs_png.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, docs_png)
    results = {
        "settings": {k: v for k, v in vars(args).items()} | {
            "probs": [0.32, 0.28, 0.22, 0.18], "right_rank": 1, "alpha": 4.0,
            "restart_temperature": 1.0, "cut": SamplerConfig().cut.model_dump(),
        },
        "load_at_start": load_start,
        "summary": rows,
        "runs": [dataclasses.asdict(o) for o in outcomes],
        "plot": str(png),
    }
    path = write_json(out, results, started=started)
    print(f"\nwrote {path} and {png} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
