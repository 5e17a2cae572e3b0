"""`bench --budget-seconds` and the compute columns: CPU s, wall s, test runs (cached) per strategy."""

import json

import pytest
from click.testing import CliRunner

from decision_retry.bench.harness import Cell, load_cells, run_bench
from decision_retry.bench.results import engine_counts, summarize, within_seconds, write_report
from decision_retry.bench.suites import fixtures_dir, load_suite
from decision_retry.cli.bench import canonical_command
from decision_retry.cli.main import main
from tests.helpers import bench_config

# the bug written again every time: every attempt after the first is the same tree
SAME = {"segments": [("def celsius_to_fahrenheit(celsius: float) -> float:\n"
                      "    return celsius * 9 / 5 - 32\n"), "```"]}


@pytest.fixture
def units():
    return [c for c in load_suite("fixtures", fixtures_dir()) if c.name == "units"]


def test_cells_record_compute_and_the_table_shows_it(tmp_path, units):
    script = tmp_path / "same.json"
    script.write_text(json.dumps(SAME))
    cfg = bench_config(script, strategies=("restart",), budget_tokens=200, max_attempts=3)
    cells = run_bench(units, cfg, tmp_path / "out")
    [cell] = cells
    assert cell.error is None and not cell.fixed and cell.attempts == 3
    assert cell.cpu_s > 0 and cell.test_runs == 4  # the input check and three attempts
    assert cell.cached_runs >= 2  # the second and third attempt test the first one's tree
    assert cell.costs["tests"]["cpu_s"] > 0
    assert load_cells(tmp_path / "out")[cell.key].cpu_s == cell.cpu_s
    write_report(tmp_path / "out", cells, cfg, command="decision-retry bench ...")
    md = (tmp_path / "out" / "results.md").read_text()
    assert "CPU s / cell" in md and "test runs (cached)" in md
    # what a CPU second buys here: decode CPU s per decode token, beside the processor's name
    machine = json.loads((tmp_path / "out" / "cells.json").read_text())["machine"]
    rate = cell.costs["decode"]["cpu_s"] / cell.decode_tokens
    assert machine["decode_cpu_s_per_token"] == pytest.approx(rate, abs=1e-4) and machine["cpu"]
    assert f"Decode cost {rate:.3f} CPU s a token" in md and f"({machine['cpu']})" in md
    row = next(line for line in md.splitlines() if line.startswith("| restart |"))
    assert f"| 4.0 ({cell.cached_runs:.1f}) |" in row
    [summary] = summarize(cells, ["restart"])
    assert summary.cpu_mean_s == pytest.approx(cell.cpu_s)


def test_budget_seconds_stops_each_cell_and_is_a_shared_setting(tmp_path, units):
    script = tmp_path / "same.json"
    script.write_text(json.dumps(SAME))
    cfg = bench_config(script, strategies=("restart",), budget_tokens=200, max_attempts=50,
                       budget_seconds=0.01)
    [cell] = run_bench(units, cfg, tmp_path / "out")
    assert cell.stop == "time limit" and cell.attempts == 1  # checked after each attempt
    assert cfg.shared()["budget_seconds"] == 0.01
    assert "budget_seconds" not in bench_config(script).shared()  # older directories stay valid
    words = canonical_command("fixtures", cfg, None, 1, "out").split()
    assert words[words.index("--budget-seconds") + 1] == "0.01"


def test_a_bad_budget_seconds_is_one_line_and_exit_2(tmp_path):
    res = CliRunner().invoke(main, ["bench", "fixtures", "--budget-seconds", "5x",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert res.stderr.strip().count("\n") == 0 and "--budget-seconds" in res.stderr


def test_fixed_within_seconds_counts_a_fix_only_if_it_ended_by_the_budget():
    def cell(repo, strategy, fixed, cpu_s):
        return Cell(repo=repo, strategy=strategy, seed=0, fixed=fixed, cpu_s=cpu_s)

    cells = [cell("a", "default", True, 12.0), cell("a", "restart", True, 21.0),  # both, at 25
             cell("b", "default", True, 18.0), cell("b", "restart", False, 31.0),
             cell("c", "default", False, 30.5), cell("c", "restart", True, 26.0),
             cell("d", "default", True, 9.0), cell("d", "restart", True, 9.0),  # a shared first
             cell("e", "default", True, 5.0)]  # no restart cell: not paired
    head, rule, at_20, at_30 = within_seconds(cells, ["default", "restart"], "restart", [20, 30])
    assert at_20 == "| default | 20 | 3 / 4 | 1 | +2 / -0 | 0.5 |"  # a, b; d for both
    assert at_30 == "| default | 30 | 3 / 4 | 3 | +1 / -1 | 1 |"  # b against c
    assert within_seconds([c.model_copy(update={"cpu_s": None}) for c in cells],
                          ["default", "restart"], "restart", [20]) == []


def test_the_report_pairs_fixes_within_the_cpu_budget(tmp_path, units):
    script = tmp_path / "same.json"
    script.write_text(json.dumps(SAME))
    cfg = bench_config(script, strategies=("default", "restart"), budget_tokens=200,
                       max_attempts=2, budget_seconds=40)
    cells = run_bench(units, cfg, tmp_path / "out")
    write_report(tmp_path / "out", cells, cfg, command="decision-retry bench ...")
    md = (tmp_path / "out" / "results.md").read_text()
    assert "### Fixed within B CPU seconds, paired with restart" in md
    assert [line.split(" | ")[1] for line in md.splitlines()
            if line.startswith("| default | ") and "+0 / -0" in line] == ["10", "20", "30", "40"]


def test_the_engines_counters_are_summed_over_the_cells_that_recorded_them():
    def cell(repo, engine):
        return Cell(repo=repo, strategy="default", seed=0, costs={"engine": engine} if engine else None)

    cells = [cell("a", {"kv_disordered": 2, "kv_evictions": 0}), cell("b", None),
             cell("c", {"kv_disordered": 1, "kv_evictions": 4})]
    assert engine_counts(cells) == ("Engine counters over all cells: decodes with KV cells out of "
                                    "order 3, KV evictions 4.")
    assert engine_counts([cell("b", None)]) == ""
