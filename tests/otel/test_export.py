"""Export over real OTLP/HTTP and OTLP/gRPC to a receiver on loopback, configured by environment
variables only, in a real `decision-retry logs export` subprocess; and collectors that are down."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from decision_retry.errors import BadInput
from decision_retry.otel import (
    listener_from_config,
    otlp_configured,
    otlp_protocol,
    tracer_provider_from_env,
)
from decision_retry.trace import Recorder, TraceStore
from tests.otel.receiver import (
    GrpcReceiver,
    HttpReceiver,
    Received,
    SilentServer,
    closed_endpoint,
    in_memory,
)
from tests.trace.sample_run import EDIT_BAD, SampleRun, record_sample, tokens

REPO = Path(__file__).resolve().parents[2]
BOUND_S = 30  # "never hangs": generous, the export timeout is a few seconds
# a subprocess also starts Python and imports the CLI (torch among it): seconds on a busy machine
SUBPROCESS_BOUND_S = 60
WARNING = "warning: could not export traces to "


@pytest.fixture
def stored(tmp_path) -> tuple[Path, SampleRun]:
    """A three-branch run recorded into a store under tmp_path/home."""
    home = tmp_path / "home"
    with TraceStore.open(home) as store:
        sample = record_sample(store)
    return home, sample


@pytest.fixture
def no_otel_env(monkeypatch) -> None:
    """This process's environment without any OTEL_* variable."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def export(home: Path, run_id: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`decision-retry logs export RUN` in a subprocess whose only OTEL_* variables are `env`
    (and the opt-in to message content, which these checks read)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    base["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "true"
    cmd = [sys.executable, "-m", "decision_retry.cli", "logs", "export", run_id]
    return subprocess.run(
        [*cmd, "--home", str(home), *args],
        check=False,
        env=base | env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_BOUND_S * 2,
    )


def check_run_spans(spans: list[Received], sample: SampleRun) -> None:
    """The sample run as a collector must see it: names, parenting, attributes, link, status."""
    names = [s.name for s in spans]
    assert names.count("invoke_agent decision-retry") == 1
    assert sorted(n for n in names if n.startswith("branch ")) == [
        "branch entropy-cut",
        "branch entropy-cut",
        "branch initial",
    ]
    assert names.count("chat scripted") == len(sample.turns) == 5
    assert names.count("execute_tool run_tests") == 3
    assert names.count("execute_tool read") + names.count("execute_tool edit") == 5
    assert sum(n.startswith("decision ") for n in names) == sample.n_decisions
    assert names.count("mh_step") == 2

    by_id = {s.span_id: s for s in spans}
    (root,) = [s for s in spans if s.name.startswith("invoke_agent")]
    assert root.parent_id == "" and {s.trace_id for s in spans} == {root.trace_id}
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert root.attributes["gen_ai.agent.name"] == "decision-retry"
    assert root.attributes["gen_ai.conversation.id"] == sample.run_id
    assert root.status == 1  # solved: OK
    for s in spans:
        parent = by_id.get(s.parent_id)
        if s.name.startswith(("branch ", "mh_step")):
            assert parent is root
        elif s.name.startswith(("chat ", "execute_tool ")):
            assert parent.name.startswith("branch ")
        elif s.name.startswith("decision "):
            assert parent.name.startswith("chat ")

    b0, b1, b2 = sample.branches
    branch = {s.attributes["decision_retry.branch.id"]: s for s in spans if s.name.startswith("b")}
    assert [branch[b.id].status for b in (b0, b1, b2)] == [2, 1, 2]  # failed, passed, failed
    retry = branch[b1.id]
    assert retry.attributes["decision_retry.branch.parent_id"] == b0.id
    assert retry.attributes["decision_retry.cut.turn"] == 1
    assert retry.attributes["decision_retry.cut.position"] == 6
    assert retry.attributes["decision_retry.cut.entropy"] == pytest.approx(3.1)
    ((trace_id, span_id, link_attrs),) = retry.links
    cut_from = by_id[span_id]
    assert trace_id == root.trace_id and cut_from.name == "decision entropy"
    assert cut_from.attributes["decision_retry.decision.position"] == 6
    assert cut_from.attributes["decision_retry.decision.token"] == " -"
    assert by_id[cut_from.parent_id].attributes["decision_retry.branch.id"] == b0.id
    assert link_attrs == {"decision_retry.link": "cut_from_decision"}

    chat = next(s for s in spans if s.name == "chat scripted")
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.request.model"] == "scripted"
    assert chat.attributes["gen_ai.request.temperature"] == 0.25
    assert chat.scope == "decision_retry"


def test_http_export_configured_by_environment(stored):
    home, sample = stored
    with HttpReceiver() as collector:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=secret-1",
            "OTEL_SERVICE_NAME": "dr-under-test",
        }
        done = export(home, sample.run_id, env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    spans = collector.collected.spans
    assert f"{len(spans)} spans" in done.stdout
    check_run_spans(spans, sample)
    assert all(h.get("x-api-key") == "secret-1" for h in collector.collected.headers)
    assert {s.resource["service.name"] for s in spans} == {"dr-under-test"}


@pytest.mark.parametrize(
    "protocol_var", ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"]
)
def test_grpc_export_configured_by_environment(stored, protocol_var):
    home, sample = stored
    with GrpcReceiver() as collector:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            protocol_var: "grpc",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=secret-2",
        }
        done = export(home, sample.run_id, env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    spans = collector.collected.spans
    check_run_spans(spans, sample)
    assert all(h.get("x-api-key") == "secret-2" for h in collector.collected.headers)
    assert {s.resource["service.name"] for s in spans} == {"decision-retry"}


def test_flags_choose_endpoint_and_protocol(stored):
    home, sample = stored
    with GrpcReceiver() as collector:
        done = export(home, "latest", {}, "--otlp", collector.endpoint, "--protocol", "grpc")
    assert done.returncode == 0, done.stderr
    check_run_spans(collector.collected.spans, sample)


@pytest.mark.parametrize("form", ["{host}", "http://{host}/", "http://{host}/v1/traces"])
def test_a_live_run_reaches_the_collector_given_by_otlp_in_any_url_form(
    tmp_path, no_otel_env, form
):
    with HttpReceiver() as collector, TraceStore.open(tmp_path) as store:
        host = collector.endpoint.removeprefix("http://")
        listener = listener_from_config(form.format(host=host))
        rec = Recorder(store, listeners=[listener])
        rec.start_run(model="scripted", strategy="restart")
        branch = rec.start_branch()
        turn = rec.record_turn(branch, tokens=tokens(EDIT_BAD))
        rec.record_decision(turn, 6)
        rec.finish_branch(branch, outcome="failed", passed=False)
        rec.finish_run("exhausted")
        assert listener.shutdown() is True
    names = {s.name: s for s in collector.collected.spans}
    assert set(names) == {
        "invoke_agent decision-retry",
        "branch initial",
        "chat scripted",
        "decision entropy",
    }
    assert names["decision entropy"].parent_id == names["chat scripted"].span_id
    assert names["chat scripted"].parent_id == names["branch initial"].span_id


FORGETFUL_RUN = """
from decision_retry.otel import listener_from_config
from decision_retry.trace import Recorder
listener = listener_from_config(None)
rec = Recorder(None, listeners=[listener])
rec.start_run(model="scripted", strategy="restart")
rec.start_branch()
"""  # the process ends without finish_run or listener.shutdown()


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_a_process_that_never_shuts_the_listener_down_still_flushes_at_exit(protocol):
    receiver = HttpReceiver() if protocol == "http/protobuf" else GrpcReceiver()
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
    }
    with receiver:
        done = subprocess.run(
            [sys.executable, "-c", FORGETFUL_RUN],
            env=base | env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_BOUND_S * 2,
            check=False,
        )
    assert done.returncode == 0 and done.stderr == ""
    spans = {s.name: s for s in receiver.collected.spans}
    assert set(spans) == {"invoke_agent decision-retry", "branch initial"}
    assert spans["invoke_agent decision-retry"].attributes["decision_retry.run.outcome"] == (
        "unfinished"
    )


def test_export_without_a_collector_configured_is_one_error_line(stored):
    home, sample = stored
    done = export(home, sample.run_id, {})
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: no OTLP endpoint: pass --otlp URL or set OTEL_EXPORTER_OTLP_ENDPOINT"
    ]


def assert_one_warning(stderr: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(WARNING) and "the local trace store is complete" in lines[0]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
@pytest.mark.parametrize("collector", ["refused", "silent"])
@pytest.mark.slow
def test_collector_down_export_ends_in_bounded_time_with_one_warning(stored, protocol, collector):
    home, sample = stored
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "8"}
    with SilentServer() as silent:
        if collector == "refused":  # nothing listens: our lowered default timeout applies
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = closed_endpoint()
        else:  # accepts and never answers; the standard timeout variable bounds each export
            env |= {
                "OTEL_EXPORTER_OTLP_ENDPOINT": silent.endpoint,
                "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
            }
        began = time.monotonic()
        done = export(home, sample.run_id, env)
        elapsed = time.monotonic() - began
    assert elapsed < SUBPROCESS_BOUND_S
    assert done.returncode == 1 and done.stdout == ""
    assert_one_warning(done.stderr)


@pytest.mark.parametrize("status", [400, 503])
@pytest.mark.slow
def test_collector_refusing_with_an_error_status_gives_one_warning(stored, status):
    home, sample = stored
    with HttpReceiver(status=status) as collector:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "8",  # several batches fail: still one line
        }
        done = export(home, sample.run_id, env)
    assert done.returncode == 1
    assert_one_warning(done.stderr)
    assert collector.collected.spans == []


def test_a_run_with_its_collector_down_completes_and_stores_everything(
    tmp_path, capfd, no_otel_env, monkeypatch
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    with SilentServer() as silent, TraceStore.open(tmp_path) as store:
        listener = listener_from_config(silent.endpoint, protocol="grpc")
        rec = Recorder(store, listeners=[listener])
        run = rec.start_run(model="scripted", strategy="entropy-cut")
        for _ in range(3):
            branch = rec.start_branch()
            turn = rec.record_turn(branch, tokens=tokens(EDIT_BAD))
            rec.record_decision(turn, 6)
            rec.record_test_run(branch, command="pytest", exit_code=1, failed=1)
            rec.finish_branch(branch, outcome="failed", passed=False)
        rec.finish_run("exhausted")
        began = time.monotonic()
        delivered = listener.shutdown()
        elapsed = time.monotonic() - began
        counts = store.counts(run.id)
    assert not delivered and elapsed < BOUND_S
    assert counts == {"branches": 3, "turns": 3, "tokens": 3 * len(EDIT_BAD), "mh_steps": 0}
    assert_one_warning(capfd.readouterr().err)


def test_shutdown_is_bounded_even_when_the_environment_allows_a_long_export(
    capfd, no_otel_env, monkeypatch
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "10000")  # meant as ms, read as seconds
    with SilentServer() as silent:
        listener = listener_from_config(silent.endpoint)
        rec = Recorder(None, listeners=[listener])
        rec.start_run(model="scripted", strategy="restart")
        rec.finish_run("exhausted")
        began = time.monotonic()
        delivered = listener.shutdown(timeout_s=1.0)
        elapsed = time.monotonic() - began
    assert not delivered and elapsed < BOUND_S
    err = capfd.readouterr().err
    assert_one_warning(err)
    assert "(no answer within 1s)" in err


def test_nothing_configured_means_no_provider_and_no_listener(no_otel_env, monkeypatch):
    assert not otlp_configured()
    assert tracer_provider_from_env() is None
    assert listener_from_config(None) is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert otlp_configured()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert tracer_provider_from_env() is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not otlp_configured()
    assert otlp_configured("http://127.0.0.1:4318")  # an explicit --otlp always counts


def test_protocol_comes_from_argument_then_traces_variable_then_general(no_otel_env, monkeypatch):
    assert otlp_protocol() == "http/protobuf"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert otlp_protocol() == "grpc"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    assert otlp_protocol() == "http/protobuf"
    assert otlp_protocol("grpc") == "grpc"
    with pytest.raises(BadInput, match="http/json"):
        otlp_protocol("http/json")


def test_a_library_users_own_provider_is_used_and_not_shut_down(no_otel_env):
    provider, exporter = in_memory()
    listener = listener_from_config(None, tracer_provider=provider)
    rec = Recorder(None, listeners=[listener])
    rec.start_run(model="m", strategy="restart")
    rec.finish_run("exhausted")
    assert listener.shutdown() is True
    assert [s.name for s in exporter.get_finished_spans()] == ["invoke_agent decision-retry"]
    provider.get_tracer("still-open").start_span("after").end()  # not shut down by us
    assert len(exporter.get_finished_spans()) == 2
    with pytest.raises(ValueError, match="either"):
        listener_from_config("http://127.0.0.1:4318", tracer_provider=provider)
