"""`humaneval-bugs --mutations K`: K single-token mutations in one canonical solution, each needed.

A case holds K mutations at K distinct tokens (distinct lines when possible) of the same function.
It is kept only when the K-mutant fails its tests, the canonical form passes, and every
leave-one-out version (K-1 of the mutations applied) still fails: no mutation is redundant.

Search, per problem, deterministic and bounded:
  1) singles: the first MAX_SINGLES candidates of `cases.candidates` (kinds rotated by the problem
     index), interleaved by kind, each screened alone; keep those that fail the tests;
  2) K-sets of the first MAX_POOL failing singles, in trial order (distinct lines first, then the
     smallest sum of ranks), at most MAX_SETS screened; the first whose K-mutant and K
     leave-one-outs all fail is kept;
  3) the kept set is verified by real pytest runs: canonical passes, each leave-one-out fails, the
     K-mutant fails (and is left in place).
"""

from __future__ import annotations

import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from decision_retry.bench.cases import (
    PYPROJECT,
    TEST_CMD,
    Mutation,
    candidates,
    module_name,
    parses,
    screen,
    test_file,
)

MAX_SINGLES = 30  # singles screened per problem
MAX_POOL = 12  # failing singles combined into sets (C(12, 3) = 220 sets ranked)
MAX_SETS = 40  # K-sets screened per problem
VERSION = 1  # bump when these rules change: cached K-suites are rebuilt


def apply_all(source: str, muts) -> str:
    """`source` with every mutation applied: right to left, so byte offsets stay valid."""
    for m in sorted(muts, key=lambda m: (m.line, m.start), reverse=True):
        source = m.apply(source)
    return source


def _overlap(a: Mutation, b: Mutation) -> bool:
    return a.line == b.line and a.start < b.end and b.start < a.end


def interleave(ms: list[Mutation]) -> list[Mutation]:
    """Round robin over kinds (in order of first appearance): varied kinds come first."""
    order = {kind: pos for pos, kind in enumerate(dict.fromkeys(m.kind for m in ms))}
    rank: dict[str, int] = {}
    keyed = []
    for i, m in enumerate(ms):
        keyed.append((rank.get(m.kind, 0), order[m.kind], i, m))
        rank[m.kind] = rank.get(m.kind, 0) + 1
    return [m for *_, m in sorted(keyed)]


def leave_one_out(source: str, ms: tuple[Mutation, ...]) -> list[str]:
    """The K versions with one mutation reverted, in the order of `ms`."""
    return [apply_all(source, ms[:j] + ms[j + 1 :]) for j in range(len(ms))]


def k_sets(source: str, singles: list[Mutation], k: int) -> list[tuple[Mutation, ...]]:
    """Candidate K-sets of `singles` in trial order, each version of which parses."""
    pool = singles[:MAX_POOL]
    ranked = []
    for idx in itertools.combinations(range(len(pool)), k):
        ms = [pool[i] for i in idx]
        if not any(_overlap(a, b) for a, b in itertools.combinations(ms, 2)):
            ranked.append((len({m.line for m in ms}) < k, sum(idx), idx))
    out = []
    for *_, idx in sorted(ranked):
        ms = tuple(pool[i] for i in idx)
        if all(map(parses, [apply_all(source, ms), *leave_one_out(source, ms)])):
            out.append(tuple(sorted(ms, key=lambda m: (m.line, m.start))))  # source order
            if len(out) == MAX_SETS:
                break
    return out


def _screen_all(jobs: list[dict], workers: int) -> list:
    """`screen` over `workers` subprocesses at once (jobs split in contiguous chunks)."""
    n = max(1, min(workers, len(jobs)))
    chunks = [jobs[i * len(jobs) // n : (i + 1) * len(jobs) // n] for i in range(n)]
    with ThreadPoolExecutor(n) as pool:
        return [r for part in pool.map(screen, chunks) for r in part]


def _verify_k(path: Path, module_file: str, canonical: str, loo: list[str], mutant: str) -> dict:
    """Real pytest runs: canonical passes, each leave-one-out fails, the K-mutant fails (kept)."""
    from decision_retry.repo.testrun import run_tests

    env = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # plain asserts: the venv's plugins (langsmith,
    # hypothesis, anyio) cost ~3 s of CPU per run and change nothing here

    def fails(src: str) -> bool:
        (path / module_file).write_text(src)
        r = run_tests(TEST_CMD, path, 120, env=env)  # generous: a loaded machine is slow
        return not r.ok and not r.timed_out and not r.no_tests

    (path / module_file).write_text(canonical)
    good = run_tests(TEST_CMD, path, 120, env=env).ok
    loo_fail = [fails(src) for src in loo]
    return {"mutant_fails": fails(mutant), "canonical_passes": good, "leave_one_out_fail": loo_fail}


def build_k(root: Path, problems: list[tuple[int, dict]], workers: int, k: int) -> dict[str, dict]:
    """Screen, write and verify one batch of problems with K mutations each; {task_id: entry}."""
    # 1) singles that fail alone, per problem
    base = []
    for i, p in problems:
        module = module_name(p["entry_point"])
        source = p["prompt"] + p["canonical_solution"]
        ms = interleave(candidates(source, p["prompt"].count("\n") + 1, i)[:MAX_SINGLES])
        base.append({"module": module, "source": source, "test": test_file(p, module), "ms": ms})
    jobs = [{"module": b["module"], "source": b["source"], "test": b["test"], "all": True,
             "sets": [[m.apply(b["source"])] for m in b["ms"]]} for b in base]
    failing = _screen_all(jobs, workers)

    # 2) the first K-set whose mutant and leave-one-outs all fail
    sets = [k_sets(b["source"], [b["ms"][j] for j in (f or [])], k) for b, f in zip(base, failing)]
    jobs = [{"module": b["module"], "source": b["source"], "test": b["test"],
             "sets": [[apply_all(b["source"], s), *leave_one_out(b["source"], s)] for s in ss]}
            for b, ss in zip(base, sets)]
    chosen = _screen_all(jobs, workers)

    def one(n: int) -> tuple[str, dict]:
        (i, p), b, j = problems[n], base[n], chosen[n]
        if j is None:
            why = "canonical fails" if failing[n] is None else (
                f"{len(failing[n])} failing single(s), no needed {k}-set in {len(sets[n])}")
            return p["task_id"], {"kept": False, "reason": why}
        ms, name = sets[n][j], f"he{i:03d}k{k}_{p['entry_point']}"
        path, module_file = root / name, f"{b['module']}.py"
        (path / "tests").mkdir(parents=True, exist_ok=True)
        (path / "pyproject.toml").write_text(PYPROJECT.format(name=name.replace("_", "-")))
        (path / "tests" / f"test_{b['module']}.py").write_text(b["test"])
        mutant, loo = jobs[n]["sets"][j][0], jobs[n]["sets"][j][1:]
        verified = _verify_k(path, module_file, b["source"], loo, mutant)
        # fix j: the line in the K-mutant -> the same line with mutation j reverted
        fixes = [{"file": module_file, "line": m.line, "kind": m.kind,
                  "old": mutant.split("\n")[m.line - 1], "new": loo[q].split("\n")[m.line - 1]}
                 for q, m in enumerate(ms)]
        kinds = [m.kind for m in ms]
        meta = {"description": f"{p['task_id']} ({p['entry_point']}): {k} mutations "
                f"({', '.join(kinds)}), each needed", "source": p["task_id"],
                "bug_file": module_file, "bug_function": p["entry_point"], "bug_line": ms[0].line,
                "kind": ms[0].kind, "mutations": k, "fix": fixes[0], "fixes": fixes,
                "verified": verified}
        (path / "FIXTURE.json").write_text(json.dumps(meta, indent=2) + "\n")
        kept = verified["mutant_fails"] and verified["canonical_passes"] and all(
            verified["leave_one_out_fail"])
        return p["task_id"], {"kept": kept, "name": name, "kind": ms[0].kind, "kinds": kinds,
                              "reason": None if kept else "pytest disagreed with the screening"}

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return dict(pool.map(one, range(len(problems))))
