"""benchmarks/pool_cells.py: several bench output directories pooled into one report (a real
subprocess on stored cells written as the harness writes them)."""

import json
import subprocess
import sys
from pathlib import Path

from decision_retry.bench.harness import CELLS_FILE, CONFIG_FILE, Cell

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "pool_cells.py"
SHARED = {"budget_tokens": 300, "model": None, "alpha": 4.0}


def out_dir(path: Path, cells: list[Cell], shared: dict = SHARED) -> Path:
    path.mkdir()
    (path / CONFIG_FILE).write_text(json.dumps({"shared": shared}))
    (path / CELLS_FILE).write_text("".join(c.model_dump_json() + "\n" for c in cells))
    return path


def cell(repo: str, strategy: str, seed: int, fixed: bool, attempts: int, wall: float) -> Cell:
    return Cell(repo=repo, strategy=strategy, seed=seed, fixed=fixed, attempts=attempts,
                decode_tokens=100 * attempts, wall_s=wall)


def pool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], check=False,
                          capture_output=True, text=True, timeout=120)


def test_pools_seeds_pairs_the_deciding_ones_and_tables_them_alone(tmp_path):
    # seed 1: "a" passes at once (both strategies), "b" is fixed by a retry of cut only;
    # seed 2: "a" fixed by restart only, "b" by neither
    s1 = out_dir(tmp_path / "s1", [
        cell("a", "cut", 1, True, 1, 10), cell("a", "restart", 1, True, 1, 10),
        cell("b", "cut", 1, True, 5, 90), cell("b", "restart", 1, False, 3, 30)])
    s2 = out_dir(tmp_path / "s2", [
        cell("a", "cut", 2, False, 6, 70), cell("a", "restart", 2, True, 2, 50),
        cell("b", "cut", 2, False, 6, 110), cell("b", "restart", 2, False, 3, 30)])
    done = pool(s1, s2, "--deciding", "--baselines", "restart")
    assert done.returncode == 0, done.stderr
    whole, _, alone = done.stdout.partition("On the deciding pairs alone:")
    assert "| cut | 2/4 |" in whole and "| restart | 2/4 |" in whole
    assert "First attempt solved 1 of 4" in whole
    # the deciding table leaves out the shared pass: 3 pairs, and its wall time alone
    assert "| cut | 1/3 |" in alone and "| restart | 1/3 |" in alone
    assert "| 90 |" in alone.split("| cut |")[1].split("\n")[0]  # (90 + 70 + 110) / 3
    assert "fixed 1 that restart did not, missed 1 that restart fixed (3 paired cells" in alone


def test_refuses_directories_run_at_other_settings(tmp_path):
    s1 = out_dir(tmp_path / "s1", [cell("a", "cut", 1, True, 1, 10)])
    s2 = out_dir(tmp_path / "s2", [cell("a", "cut", 2, True, 1, 10)], {**SHARED, "alpha": 2.0})
    done = pool(s1, s2)
    assert done.returncode != 0 and "other shared settings" in done.stderr
