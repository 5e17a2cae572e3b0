"""Which cut rule points at the bug? Measured on first attempts that write the bug again.

In `humaneval-bugs` the mutated token is known (FIXTURE.json: the mutated and the canonical line;
with `--mutations K`, K of them, and each one the reply writes again is a bug of its own row).
For each case: the agent's patch prompt (the failing test's output and source, the buggy function),
one first attempt from the model at the proposal temperature; when the reply contains the mutated
line and not the canonical one, it *reproduces the bug* (with K mutations: one or more of them),
and for that reply every cut rule gives a distribution c(t | x) over the reply's tokens (the
closing stop token's entropy zeroed, as the agent does). Reported per rule: the mass on the bug
token and on its line, and the bug token's rank by weight (1 = the rule's top choice; tied tokens
count half, so uniform ranks (L + 1) / 2).

Rules (eps = 0.1 uniform share everywhere, as the samplers use):
  uniform        1 / L;
  entropy-jump   w_t = max(0, H_t - H_(t-1))^4 (the default of entropy-cut);
  entropy        w_t = H_t^4;
  +code          times samplers/codeweights.py's class multiplier (strings/comments x0.1,
                 the defined name x4);
  surprise       w_t = (-log p_B(x_t))^4, p_B the model under a second context that shows the
                 signature, the docstring and the failing test but not the body (one scoring
                 pass over the reply; design.md §8's probe). `--no-body probe` (default) words it
                 as the probe did ("Write this Python function so that the test passes");
                 `--no-body agent` is the context `fix --cut-weights surprise` uses
                 (agent/nobody.py: the patch prompt with the body replaced by `...`);
  contrast       w_t = max(0, log p(x_t) - log p_B(x_t))^4: how much the buggy body shown in the
                 prompt props the token up.

    .venv/bin/python benchmarks/localisation.py [--model qwen2.5-coder-0.5b] [--limit 30]
        [--seeds 0] [--temperature 0.25] [--no-body probe|agent] [--mutations 1]
        [--suite-dir bench-out/localisation] [--out bench-out/localisation.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.common import load, markdown_table, write_json
from decision_retry.agent import definitions, nobody, patch
from decision_retry.bench.suites import load_suite
from decision_retry.lm import Sampling
from decision_retry.localise.locate import failing_test, functions
from decision_retry.repo.testrun import run_tests
from decision_retry.samplers import codeweights, cuts
from decision_retry.samplers.cuts import CutRule

EPS, BETA = 0.1, 4.0
RULES = ("uniform", "entropy-jump", "entropy-jump+code", "entropy", "surprise", "surprise+code",
         "contrast")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def no_body_prompt(source: str, fail: str, test_src: str) -> str:
    """The probe's second context: signature and docstring (nobody.stub), the failing test."""
    return ("Write this Python function so that the test passes.\n```python\n" + nobody.stub(source)
            + "\n```\nThe test:\n```python\n" + test_src + "\n```\n" + fail
            + "\n\nWrite the complete function. Reply with the function only.")


def weights(rule: str, ent, logp, logp_b, texts) -> list[float]:
    if rule == "uniform":
        w = [1.0] * len(ent)
    elif rule.startswith("entropy-jump"):
        w = cuts.weights(ent, CutRule(kind="entropy-jump", beta=BETA))
    elif rule == "entropy":
        w = [h ** BETA for h in ent]
    elif rule.startswith("surprise"):
        w = [(-lb) ** BETA for lb in logp_b]
    else:  # contrast
        w = [max(0.0, a - b) ** BETA for a, b in zip(logp, logp_b)]
    if rule.endswith("+code"):
        w = [x * s for x, s in zip(w, codeweights.scale(texts))]
    return w


def distribution(w: list[float]) -> list[float]:
    z, n = sum(w), len(w)
    return [(1 - EPS) * x / z + EPS / n for x in w] if z > 0 else [1.0 / n] * n


def bug_position(reply: str, old: str, new: str) -> tuple[int, int, int] | None:
    """(char of the bug, line start, line end) in the reply, or None if it is not reproduced."""
    o, n = old.strip(), new.strip()
    lines = reply.split("\n")
    if any(ln.strip() == n for ln in lines):
        return None
    at = 0
    for ln in lines:
        if ln.strip() == o:
            lead = len(ln) - len(ln.lstrip())
            k = next((i for i, (a, b) in enumerate(zip(o, n)) if a != b), min(len(o), len(n)))
            return at + lead + k, at, at + len(ln)
        at += len(ln) + 1
    return None


def one_case(lm, defn, case, seed: int, temperature: float, no_body: str = "probe") -> dict:
    meta = json.loads((case.path / "FIXTURE.json").read_text())
    result = run_tests("python -m pytest -x -q", case.path, 60)
    suspect = next(f for f in functions(case.path, meta["bug_file"]) if f.name == meta["bug_function"])
    test = failing_test(case.path, result)
    test_src = test.source if test else ""
    prefix = lm.encode_text(defn.format["assistant_prefix"])
    msgs = patch.messages(defn, suspect, test_src, result)
    state = lm.prefill(lm.encode(msgs) + prefix)
    q = Sampling(temperature=temperature, max_new_tokens=defn.limits["max_new_tokens"],
                 stop=defn.stop, stop_regex=defn.stop_regex)
    t0 = time.perf_counter()
    x = lm.extend(state, q, torch.Generator().manual_seed(seed))
    out = {"case": case.name, "kind": meta["kind"], "seed": seed, "tokens": len(x),
           "decode_s": round(time.perf_counter() - t0, 1)}
    texts = [t.text for t in x.tokens]
    reply = "".join(texts)
    fixes = meta.get("fixes") or [meta["fix"]]  # K mutations: each one its own bug
    found = [f for f in (bug_position(reply, fx["old"], fx["new"]) for fx in fixes) if f]
    out["reproduced"] = len(found)
    if not found:
        return out
    # the second context, one teacher-forced pass over the same reply ids
    if no_body == "agent":
        b_msgs = nobody.messages(defn, [suspect], test_src, result)
    else:
        b_msgs = [{"role": "user", "content": no_body_prompt(
            suspect.source, patch.error_lines(result, defn.limits["error_lines"]), test_src)}]
    xb = lm.score(lm.prefill(lm.encode(b_msgs) + prefix), [t.id for t in x.tokens], q)
    ent = [t.entropy for t in x.tokens]
    if x.finish == "stop":
        ent[-1] = 0.0  # the closing token is no cut site (retry.cut_entropies)
    logp, logp_b = [t.logp for t in x.tokens], [t.logp for t in xb.tokens]
    starts, at = [], 0
    for s in texts:
        starts.append(at)
        at += len(s)
    by_rule = {}  # rule -> (weights, cut distribution), the same for every bug of the reply
    for rule in RULES:
        w = weights(rule, ent, logp, logp_b, texts)
        by_rule[rule] = (w, distribution(w))
    out["bugs"] = []
    for c, line0, line1 in found:
        bug = max(i for i, s in enumerate(starts) if s <= c)
        line = [i for i, s in enumerate(starts) if s < line1 and s + len(texts[i]) > line0]
        row = {"bug_token": texts[bug], "bug_index": bug, "line_tokens": len(line),
               "H_bug": ent[bug], "surprise_bug": -logp_b[bug]}
        for rule, (w, p) in by_rule.items():
            row[rule] = {"mass": p[bug], "line_mass": sum(p[i] for i in line),
                         "rank": 1 + sum(1 for v in w if v > w[bug])
                         + 0.5 * (sum(1 for v in w if v == w[bug]) - 1)}  # ties: half count
        out["bugs"].append(row)
    return out


def summary(rows: list[dict]) -> str:
    rep = [b for r in rows for b in r.get("bugs", [])]  # one row per reproduced mutation
    cells = []
    for rule in RULES:
        ranks = [r[rule]["rank"] for r in rep]
        cells.append([rule, len(rep), f"{statistics.mean(r[rule]['mass'] for r in rep):.3f}",
                      f"{statistics.mean(r[rule]['line_mass'] for r in rep):.3f}",
                      f"{statistics.median(ranks):.0f}", sum(k == 1 for k in ranks),
                      sum(k <= 3 for k in ranks), sum(k <= 10 for k in ranks)])
    return markdown_table(["rule", "bugs", "mass on bug token (mean)", "mass on bug line (mean)",
                           "rank (median)", "top-1", "top-3", "top-10"], cells)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--temperature", type=float, default=0.25, help="1/alpha, the agent's default")
    ap.add_argument("--suite-dir", default="bench-out/localisation", help="where the suite is built")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mutations", type=int, default=1,
                    help="the K-mutation suite (bench --mutations K); each mutation its own bug")
    ap.add_argument("--no-body", choices=("probe", "agent"), default="probe",
                    help="the second context: the probe's wording, or fix's (agent/nobody.py)")
    ap.add_argument("--out", default="bench-out/localisation.json")
    args = ap.parse_args(argv)
    from decision_retry.loading import load_lm

    started, load0 = time.perf_counter(), load()
    torch.set_num_threads(args.threads)
    lm = load_lm(args.model, threads=args.threads)
    defn = definitions.load("patch")
    cases = load_suite("humaneval-bugs", Path(args.suite_dir), limit=args.limit, on_build=log,
                       mutations=args.mutations)
    rows = []
    for case in cases:
        for seed in [int(s) for s in args.seeds.split(",")]:
            try:
                row = one_case(lm, defn, case, seed, args.temperature, args.no_body)
            except Exception as err:  # noqa: BLE001 - one broken case must not end the run
                row = {"case": case.name, "seed": seed, "error": f"{type(err).__name__}: {err}"}
            rows.append(row)
            extra = "".join(f"; bug {b['bug_token']!r}: ranks " + ", ".join(
                f"{r} {b[r]['rank']}" for r in RULES[1:]) for b in row.get("bugs", []))
            log(f"{case.name} seed {seed}: {row.get('tokens')} tokens, reproduced "
                f"{row.get('reproduced')}{extra}{' ' + row['error'] if 'error' in row else ''}")
            if any(r.get("bugs") for r in rows):
                Path(args.out).with_suffix(".partial.md").write_text(summary(rows) + "\n")
    table = summary(rows)
    n_rep = sum(bool(r.get("reproduced")) for r in rows)
    n_bugs = sum(len(r.get("bugs", [])) for r in rows)
    print(f"\nmodel {args.model}, T = {args.temperature}, {len(rows)} first attempts on "
          f"{len(cases)} humaneval-bugs cases (K = {args.mutations}), {n_rep} reproduce a bug, "
          f"{n_bugs} bugs in all; load {load0} -> {load()}\n")
    print(table)
    write_json(Path(args.out), {"settings": vars(args), "rows": rows, "table": table},
               started=started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
