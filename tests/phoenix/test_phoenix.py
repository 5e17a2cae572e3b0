"""A `fix` run in a real trace viewer: Arize Phoenix on 127.0.0.1, spans read back through its API.

Phoenix is heavy (about 850 MB in its own virtual environment), so this runs only under
`make test-phoenix`, which installs it and sets DECISION_RETRY_PHOENIX to its `phoenix` program
(and DECISION_RETRY_PHOENIX_SCREENSHOT to where a screenshot of the run in Phoenix's UI goes).
The `fix` run (scripted model, the units fixture) exports over OTLP/HTTP configured only by the
standard OTEL_* environment variables.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import fixture_repo

PHOENIX = os.environ.get("DECISION_RETRY_PHOENIX")
SCREENSHOT = os.environ.get("DECISION_RETRY_PHOENIX_SCREENSHOT")
PROJECT = "decision-retry-test"
SCRIPT = [
    ('def celsius_to_fahrenheit(celsius: float) -> float:\n    """Degrees Celsius to degrees '
     'Fahrenheit."""\n    return celsius * 9 / 5 '),
    {"choice": {"-": 0.5, "+": 0.5}},
    " 32\n",
    "```",
]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not PHOENIX, reason="needs Phoenix: run `make test-phoenix`")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    """Phoenix serving on 127.0.0.1 (UI, REST and OTLP/HTTP on one port), its data in a tmp dir."""
    work = tmp_path_factory.mktemp("phoenix")
    port, grpc = free_port(), free_port()
    env = {**os.environ, "PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(port),
           "PHOENIX_GRPC_PORT": str(grpc), "PHOENIX_WORKING_DIR": str(work),
           "PHOENIX_TELEMETRY_ENABLED": "false"}
    with open(work / "phoenix.log", "w") as log:
        proc = subprocess.Popen([PHOENIX, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):  # first start runs its database migrations: a minute or two
                if proc.poll() is not None:
                    pytest.fail(f"phoenix exited: {(work / 'phoenix.log').read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.5)
            else:
                pytest.fail("phoenix did not answer within 5 minutes")
            yield base
        finally:
            proc.terminate()  # the process we started, by its handle
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def fix_run(phoenix, tmp_path_factory):
    """`decision-retry fix` on a copy of the units fixture, exporting to Phoenix by environment."""
    tmp = tmp_path_factory.mktemp("fix")
    repo = fixture_repo(tmp, "units")
    script = tmp / "units.json"
    script.write_text(json.dumps({"segments": SCRIPT}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix,  # OTLP/HTTP shares Phoenix's port
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={PROJECT}",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true",
        "DECISION_RETRY_HOME": str(tmp / "home"),
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "decision_retry.cli", "fix", str(repo), "--model",
         f"scripted:{script}", "--proposal-temperature", "1", "--seed", "3",
         "--max-attempts", "12", "--json"],
        check=False, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "could not export" not in proc.stderr
    result = json.loads(proc.stdout)
    assert result["fixed"] and result["attempts"] >= 2
    return result


def spans_of(phoenix: str, run_id: str) -> list[dict]:
    """The run's spans through Phoenix's REST API (ingestion is asynchronous: wait for the root)."""
    for _ in range(120):
        got, cursor = [], None
        while True:
            url = f"{phoenix}/v1/projects/{PROJECT}/spans?limit=1000"
            page = get(url + (f"&cursor={cursor}" if cursor else ""))
            got += page["data"]
            if not (cursor := page.get("next_cursor")):
                break
        mine = [s for s in got if s["attributes"].get("gen_ai.conversation.id") == run_id]
        if any(s["name"] == "invoke_agent decision-retry" for s in mine):
            return mine
        time.sleep(1)
    pytest.fail("the run's root span never reached Phoenix")


def test_phoenix_shows_the_fix_run(phoenix, fix_run):
    spans = spans_of(phoenix, fix_run["run_id"])
    by_id = {s["context"]["span_id"]: s for s in spans}
    names = [s["name"] for s in spans]
    print(f"\nPhoenix {phoenix}: {len(spans)} spans of run {fix_run['run_id']}, "
          f"{fix_run['attempts']} attempts")
    for name in sorted(set(names)):
        print(f"  {names.count(name):3d}  {name}")

    # the agent: one root, classified by Phoenix as an AGENT, GenAI attributes as we sent them
    (root,) = [s for s in spans if s["name"] == "invoke_agent decision-retry"]
    assert root["parent_id"] is None and root["span_kind"] == "AGENT"
    a = root["attributes"]
    assert a["gen_ai.operation.name"] == "invoke_agent" and a["gen_ai.provider.name"]
    assert "gen_ai.system" not in a
    assert a["decision_retry.run.outcome"] == "fixed"
    assert len({s["context"]["trace_id"] for s in spans}) == 1

    # one branch per attempt, chat spans in branches, decisions in chat spans, tools
    branches = [s for s in spans if s["name"].startswith("branch ")]
    assert len(branches) == fix_run["attempts"]
    assert all(b["parent_id"] == root["context"]["span_id"] for b in branches)
    chats = [s for s in spans if s["name"].startswith("chat ")]
    assert chats and all(by_id[c["parent_id"]]["name"].startswith("branch ") for c in chats)
    assert all(c["span_kind"] == "LLM" and c["attributes"]["gen_ai.operation.name"] == "chat"
               for c in chats)
    decisions = [s for s in spans if s["name"].startswith("decision ")]
    assert decisions and all(by_id[d["parent_id"]]["name"].startswith("chat ") for d in decisions)
    tools = [s for s in spans if s["name"].startswith("execute_tool ")]
    assert {t["span_kind"] for t in tools} == {"TOOL"}
    tests = [t for t in tools if t["name"] == "execute_tool run_tests"]
    assert any(t["attributes"]["decision_retry.test.failed"] > 0 for t in tests)
    assert any(t["attributes"]["decision_retry.test.failed"] == 0 for t in tests)
    assert names.count("mh_step") >= 1

    # a retry branch: where it was cut, and the decision it was cut at (Phoenix keeps no span
    # links, so the branch names the decision by its node id, which the decision span carries)
    retries = [b for b in branches if "decision_retry.cut.turn" in b["attributes"]]
    assert len(retries) == fix_run["attempts"] - 1
    decision_by_node = {d["attributes"]["decision_retry.decision.id"]: d for d in decisions}
    linked = [b for b in retries if "decision_retry.cut.decision_id" in b["attributes"]]
    assert linked  # the others were cut where no decision point was (eps): they name the turn
    assert all("decision_retry.cut.turn_id" in b["attributes"] for b in retries if b not in linked)
    for b in linked:
        cut = b["attributes"]
        target = decision_by_node[cut["decision_retry.cut.decision_id"]]
        assert target["attributes"]["decision_retry.decision.position"] == cut[
            "decision_retry.cut.position"]
        assert target["attributes"]["decision_retry.decision.entropy"] == pytest.approx(
            cut["decision_retry.cut.entropy"])
        parent_branch = by_id[by_id[target["parent_id"]]["parent_id"]]
        assert parent_branch["attributes"]["decision_retry.branch.id"] == cut[
            "decision_retry.branch.parent_id"]
        assert target["attributes"]["decision_retry.decision.token"] in ("-", "+")

    if SCREENSHOT:  # the trace, with the last retry branch selected (its cut attributes shown)
        shoot(phoenix, linked[-1]["context"]["span_id"], Path(SCREENSHOT))


def shoot(phoenix: str, span_id: str, out: Path) -> None:
    """The span's trace in Phoenix's UI, by headless chromium with a fresh profile."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1600,1100",
             "--virtual-time-budget=30000", f"--screenshot={out.resolve()}",
             f"{phoenix}/redirects/spans/{span_id}"],
            check=True, capture_output=True, timeout=180)
    assert out.stat().st_size > 10_000
    print(f"screenshot: {out}")
