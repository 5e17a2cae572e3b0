"""`fix`'s knobs: the frequent ones are flags, the rarely changed ones `-o KEY=VALUE` checked by
RetryConfig (one line, exit 2, nothing touched), a removed flag names its key, `-o help` lists
the keys with `fix`'s defaults read from the model, and `fix --help` stays short."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from decision_retry.choices import DEF_HEADER, DEFAULT_RUN, FLAG_KEYS
from decision_retry.cli.bench import bench
from decision_retry.cli.fix import REMOVED, fix
from decision_retry.cli.main import main
from decision_retry.cli.options import option_keys, retry_config
from decision_retry.errors import BadInput
from decision_retry.retry import RetryConfig
from tests.helpers import ROOT, fixture_repo, repo_state, run_cli

HELP_LINES = 110  # `fix --help` at 80 columns: 155 lines with 31 options before -o


def invoke(*args: str):
    """`decision-retry ARGS` in process (click's runner: stdout and stderr apart)."""
    return CliRunner().invoke(main, list(args), terminal_width=80)


def test_help_is_short_and_names_no_removed_flag():
    result = invoke("fix", "--help")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) <= HELP_LINES, len(lines)
    assert "-o, --option KEY=VALUE" in result.output and "-o help" in result.output
    for flag in REMOVED:
        assert not re.search(rf"{flag}\b", result.output), flag


def test_help_epilog_examples_are_keys_the_model_takes():
    epilog = " ".join(invoke("fix", "--help").output.split()).partition("Rarely changed")[2]
    examples = re.findall(r"-o ([a-z_.]+=[^\s;]+)", epilog)
    assert len(examples) >= 6
    cfg = retry_config(DEFAULT_RUN, examples)  # every example is a valid key and value
    assert cfg.cut.eps == 0.1 and cfg.span.opening is None  # -o cut.eps=0.1 -o def_line=local


def test_o_help_lists_every_field_with_fix_defaults():
    result = invoke("fix", "-o", "help")
    assert result.exit_code == 0
    listed = dict(re.findall(r"^  ([\w.]+)=(\S+)", result.output, re.MULTILINE))
    assert listed == {k: str(v) for k, v, _ in option_keys()}
    fields = set(RetryConfig.model_fields) - set(FLAG_KEYS) - {"suspicious_lines"}  # the agent's
    assert {k.split(".")[0] for k in listed} | {"span"} == fields | {"def_line"}
    # fix's defaults, not RetryConfig's own: auto moves, def-line suffix moves
    assert listed["move"] == "auto" and listed["def_line"] == "suffix"
    assert listed["alpha"] == str(RetryConfig().alpha) and listed["cut.eps"] == "0.1"


def test_options_set_the_run_config():
    cfg = retry_config({**DEFAULT_RUN, "strategy": "rewind"},
                       ["alpha=2", "cut.eps=0.2", "def_line=local", "exclude=none",
                        "restart_share=0.25", "argmax=true", "move=mixed"])
    assert (cfg.alpha, cfg.cut.eps, cfg.span.opening, cfg.exclude) == (2.0, 0.2, None, None)
    assert (cfg.restart_share, cfg.argmax, cfg.move) == (0.25, True, "mixed")
    assert cfg.cut_weights == "auto" and cfg.cut.kind == "entropy-jump"  # the rest: fix's
    default = retry_config(DEFAULT_RUN, [])
    assert default == RetryConfig(**DEFAULT_RUN) and default.span.opening == DEF_HEADER


@pytest.mark.parametrize(("args", "said"), [
    (["-o", "alpha=x"], "-o alpha=x: Input should be a valid number"),
    (["-o", "alpa=3"], "-o alpa=3: unknown key (did you mean alpha?)"),
    (["-o", "cut.eps=2"], "-o cut.eps=2: Input should be less than or equal to 1"),
    (["-o", "alpha=nan"], "-o alpha=nan: not a finite number"),
    (["-o", "verifier_weight=inf"], "-o verifier_weight=inf: not a finite number"),
    (["-o", "cut=3"], "-o cut=3: give a field of it"),
    (["-o", "alpha"], "-o alpha: not KEY=VALUE"),
    (["-o", "def_line=both"], "-o def_line=both: def_line is suffix or local"),
    (["-o", "strategy=egps"], "-o strategy=egps: strategy has a flag of its own: use --strategy"),
    (["-o", "cut_weights=code"], "use --cut-weights"),
    (["--strategy", "egps", "-o", "move=local"], "-o move=local: move 'local' is single-try"),
    (["--cut-weights", "uniform", "-o", "argmax=1"], "-o argmax=1: argmax ranks by the cut"),
    (["--strategy", "bogus"], "'bogus' is not one of 'rewind', 'egps', 'from-end', 'restart'"),
])
def test_a_bad_option_is_one_line(tmp_path, args, said):
    result = invoke("fix", str(tmp_path), *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert said in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", sorted(REMOVED))
def test_a_removed_flag_names_its_key(tmp_path, flag):
    for args in ([flag, "3"], [f"{flag}=3"]):
        result = invoke("fix", str(tmp_path), *args)
        assert result.exit_code == 2
        assert result.stderr == f"error: {flag} is now -o {REMOVED[flag]}=VALUE " \
            "(`main fix --help`)\n"
    key = REMOVED[flag]  # the key it names is one the model takes
    value = {"move": "local", "def_line": "local", "cut_token": "nobody", "tries": "3"}
    assert retry_config(DEFAULT_RUN, [f"{key}={value.get(key, '0.5')}"])


def test_former_strategy_names_are_read(tmp_path):
    assert invoke("fix", "--strategy", "argmax-cut", "-o", "help").exit_code == 0
    assert retry_config({**DEFAULT_RUN, "strategy": "argmax-cut"}, []) == \
        RetryConfig(**{**DEFAULT_RUN, "argmax": True})
    with pytest.raises(BadInput, match="-o resume=1: unknown key"):
        retry_config(DEFAULT_RUN, ["resume=1"])


@pytest.mark.slow
def test_the_real_command_refuses_before_touching_anything(tmp_path):
    repo = fixture_repo(tmp_path, "units")
    before = repo_state(repo)
    proc = run_cli("fix", repo, "-o", "tries=0", home=tmp_path / "home")
    assert proc.returncode == 2
    assert proc.stderr == "error: -o tries=0: Input should be greater than or equal to 1\n"
    proc = run_cli("fix", repo, "--alpha", "2", home=tmp_path / "home")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --alpha is now -o alpha=VALUE")
    assert repo_state(repo) == before and not (tmp_path / "home").exists()


@pytest.mark.parametrize("command", [fix, bench], ids=["fix", "bench"])
def test_every_flag_is_in_the_docs(command: click.Command):
    doc = (ROOT / "docs" / "cli.md").read_text()
    flags = [o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")]
    missing = [f for f in flags if not re.search(rf"`{re.escape(f)}[ `=/]", doc)]
    assert flags and not missing
