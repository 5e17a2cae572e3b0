"""`bench --strategies` specs: a strategy or `default` (`fix`'s run), then `+KEY=VALUE` options as
`fix -o` takes them or the shorthands; the former names and old specs build the same runs."""

from __future__ import annotations

import pytest

from decision_retry.bench.harness import BenchConfig
from decision_retry.choices import BENCH_STRATEGIES, DEF_HEADER, FIX_RUN, parse_variant
from decision_retry.cli.bench import parse_strategies
from decision_retry.errors import BadInput
from decision_retry.retry import RetryConfig


def run_of(spec: str) -> RetryConfig:
    return RetryConfig(**parse_variant(spec))


def test_default_is_fix_run_and_the_default_list_builds():
    assert parse_variant("default") == FIX_RUN
    assert BenchConfig(suite="fixtures").strategies == BENCH_STRATEGIES
    assert BENCH_STRATEGIES[0] == "default"
    assert parse_strategies(",".join(BENCH_STRATEGIES)) == BENCH_STRATEGIES
    assert {run_of(s).strategy for s in BENCH_STRATEGIES} == {"rewind", "egps", "from-end",
                                                                "restart"}


@pytest.mark.parametrize(("old", "new"), [
    ("entropy-cut", "rewind"),
    ("uniform-cut", "rewind+uniform"),
    ("argmax-cut", "rewind+argmax"),
    ("entropy-cut+local+code", "rewind+move=local+cut_weights=code"),
    ("uniform-cut+surprise", "rewind+surprise+cut.kind=uniform"),
    ("argmax-cut+surprise+code", "rewind+argmax=true+cut_weights=surprise+code"),
    ("entropy-cut+defline", "rewind+move=local+def_line=suffix"),
    ("entropy-cut+mixed+defline", "rewind+move=mixed+def_line=suffix"),
    ("entropy-cut+nbtoken", "rewind+cut_token=nobody"),
    ("default+restart0.3", "default+restart_share=0.3"),
    ("default+code", "default+cut_weights=code"),
])
def test_old_specs_build_the_runs_they_built(old, new):
    assert run_of(old) == run_of(new)


def test_options_reach_the_cells_config():
    cfg = BenchConfig(suite="fixtures", alpha=3.0, strategies=("default", "default+alpha=2"))
    assert cfg.fix_config("default", 0).retry == RetryConfig(**FIX_RUN, alpha=3.0)
    tuned = cfg.fix_config("default+alpha=2+cut.eps=0.2", 0).retry
    assert (tuned.alpha, tuned.cut.eps, tuned.span.opening) == (2.0, 0.2, DEF_HEADER)
    assert cfg.fix_config("uniform-cut", 1).retry.rule.kind == "uniform"


@pytest.mark.parametrize(("spec", "said"), [
    ("bogus", "unknown strategy 'bogus'"),
    ("rewind+alpha=x", "--strategies rewind+alpha=x: +alpha=x: Input should be a valid number"),
    ("default+foo=1", "+foo=1: unknown key"),
    ("default+cut.eps=nan", "+cut.eps=nan: not a finite number"),
    ("egps+local", "+local in 'egps+local': shorthands apply to rewind and default"),
    ("egps+move=local", "move 'local' is single-try"),
    ("rewind+uniform+code", "uniform cut weights have no code part"),
    ("default+strategy=egps", "the strategy is no option"),
    ("rewind+restartx", "unknown option +restartx"),
    ("rewind+restart2", "the share must be in [0, 1]"),
])
def test_a_bad_spec_is_one_line(spec, said):
    with pytest.raises(BadInput) as err:
        parse_strategies(f"default,{spec}")
    assert said in str(err.value) and "\n" not in str(err.value)
