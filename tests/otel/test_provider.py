"""`gen_ai.provider.name` names the engine that decoded a run (otel/attributes.py)."""

from __future__ import annotations

import pytest

from decision_retry import catalogue, loading
from decision_retry.agent.runner import FixConfig, fix
from decision_retry.engines.remote import connect
from decision_retry.engines.remote.serve import LocalServer
from decision_retry.otel import SpanListener, replay
from decision_retry.otel.attributes import engine_provider, provider_name
from decision_retry.retry import RetryConfig
from decision_retry.testing import scripted_lm, tiny_llama
from decision_retry.trace import TraceStore
from decision_retry.trace.models import Run
from tests.helpers import fixture_repo
from tests.otel.receiver import in_memory

UNITS_FIX = [  # the scripted model writes the fixture's function correctly
    ('def celsius_to_fahrenheit(celsius: float) -> float:\n    """Degrees Celsius to degrees '
     'Fahrenheit."""\n    return celsius * 9 / 5 + 32\n'),
    "```",
]


def test_in_process_engines_name_their_backend():
    assert engine_provider(scripted_lm(["x"])) == "decision_retry.scripted"
    assert engine_provider(tiny_llama()) == "transformers"
    gguf = catalogue.resolve("smollm2-135m")
    assert engine_provider(loading.load_llamacpp(gguf, name="smollm2", threads=1)) == "llama.cpp"


@pytest.mark.slow
def test_a_llamacpp_server_is_not_the_in_process_engine():
    with LocalServer("smollm2-135m", parallel=1, alias="smollm2") as server:
        engine = connect(server.url)
        assert engine_provider(engine) == "llama.cpp.server"
        engine.http.close()


def fix_config(model: str | None) -> dict:
    return FixConfig(model=model).model_dump(mode="json")


@pytest.mark.parametrize(("model", "provider"), [
    (None, "llama.cpp"),  # the default catalogue model is a GGUF
    ("qwen2.5-coder-0.5b", "llama.cpp"),
    ("models/coder.gguf", "llama.cpp"),
    ("llamacpp+http://gpu:8080", "llama.cpp.server"),
    ("vllm+http://gpu:8000/qwen", "vllm"),
    ("scripted:script.json", "decision_retry.scripted"),
    ("models/coder-hf", "transformers"),
])
def test_a_stored_fix_run_without_a_provider_gets_the_one_its_model_spec_loads(model, provider):
    run = Run(model="m", strategy="restart", config=fix_config(model), seed=0)
    assert provider_name(run) == provider


def test_a_recorded_provider_wins_and_nothing_known_is_unknown():
    assert provider_name(Run(model="m", strategy="s", config={**fix_config(None),
                                                               "provider": "vllm"}, seed=0)) == "vllm"
    assert provider_name(Run(model="m", strategy="s", config={"alpha": 4.0}, seed=0)) == "unknown"


def test_a_fix_run_records_its_engine_and_every_span_says_it(tmp_path):
    tracer, exporter = in_memory()
    cfg = FixConfig(retry=RetryConfig(strategy="restart"), budget_tokens=200, max_attempts=2)
    with TraceStore(tmp_path / "home" / "traces.db") as store:
        result = fix(fixture_repo(tmp_path, "units"), cfg, lm=scripted_lm(UNITS_FIX), store=store,
                     listeners=[SpanListener(tracer)])
        assert result.fixed
        tree = store.load(result.run_id)
    assert tree.run.config["provider"] == "decision_retry.scripted"
    named = [s for s in exporter.get_finished_spans() if "gen_ai.provider.name" in s.attributes]
    assert {s.name.split()[0] for s in named} >= {"invoke_agent", "chat"}
    assert {s.attributes["gen_ai.provider.name"] for s in named} == {"decision_retry.scripted"}
    exporter.clear()  # exported again from the store (`logs export`): the same name
    replay(tree, SpanListener(tracer))
    assert {s.attributes.get("gen_ai.provider.name") for s in exporter.get_finished_spans()
            if "gen_ai.provider.name" in s.attributes} == {"decision_retry.scripted"}


def test_the_langchain_chat_model_names_its_engine():
    pytest.importorskip("langchain_core")
    from decision_retry.langchain import ChatDecisionRetry
    from decision_retry.langchain.trace import provider

    assert provider(ChatDecisionRetry(engine=scripted_lm(["x"]))) == "decision_retry.scripted"
    assert provider(ChatDecisionRetry(engine=tiny_llama())) == "transformers"
