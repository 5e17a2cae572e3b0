"""`decision-retry bench`: every retry strategy on a suite of buggy repositories, at one token budget.

* `suites`:  where the repositories come from (`fixtures`, `humaneval-bugs`, any directory of repos);
* `harness`: the cells (repo x strategy x seed), run in worker processes, stored as they finish;
* `report`:  `cells.json`, `results.md` and `fix_rate.png` under the output directory.

Import the submodules directly (`from decision_retry.bench.harness import run_bench`): this
package imports nothing, so the suite builder's screening subprocess starts without torch.
"""
