"""What each span says: names and attributes of trace nodes, per the GenAI semantic conventions.

Pure functions from a node to a span name or an attribute dict; where the span sits in the tree
and in time is `spans.py`'s business. `gen_ai.*` keys follow the conventions (`gen_ai.provider.name`,
never the deprecated `gen_ai.system`); everything specific to decision-retry (entropy, decision
points, cuts, MH steps) is under `decision_retry.*`; `openinference.span.kind` lets Phoenix
classify spans.

Content (prompts, replies, tool arguments and results, test output, token texts) is opt-in, as the
conventions say: only when $OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT is `true`,
`SPAN_ONLY` or `SPAN_AND_EVENT` (we emit no events). Numbers (entropies, positions, token ids,
probabilities, counts) are always there.
"""

from __future__ import annotations

import json
import os
from typing import Any

from decision_retry import __version__, catalogue
from decision_retry.trace.models import Branch, DecisionPoint, MHStep, Run, TestRun, ToolCall, Turn

AGENT_NAME = "decision-retry"
# gen_ai.provider.name: the conventions list hosted APIs only (openai, aws.bedrock, ...) and ask
# for a custom value otherwise, so a run names the engine that decoded it. The module that
# implements the engine (or the Backend under `LM`) decides; a remote engine says its dialect.
LOCAL_PROVIDERS = {
    "decision_retry.engines.llamacpp": "llama.cpp",
    "decision_retry.engines.hf": "transformers",
    "decision_retry.engines.scripted": "decision_retry.scripted",
    "decision_retry.engines.toy": "decision_retry.toy",
}
REMOTE_PROVIDERS = {"llamacpp": "llama.cpp.server", "vllm": "vllm"}
UNKNOWN_PROVIDER = "unknown"  # a stored run that recorded no provider and no model spec
TEST_TOOL = "run_tests"  # gen_ai.tool.name of test runs
TEXT_LIMIT = 512  # characters of tool arguments, observations and test output kept on a span
SCALARS = (bool, int, float, str)
CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
CAPTURE_ON_SPANS = {"true", "span_only", "span_and_event"}


def capture_content() -> bool:
    """True when the environment asks for message content on spans."""
    return os.environ.get(CAPTURE_ENV, "").strip().lower() in CAPTURE_ON_SPANS


def content(attrs: dict[str, Any]) -> dict[str, Any]:
    """`attrs` when content capture is on, else nothing."""
    return attrs if capture_content() else {}


def clean(attrs: dict[str, Any]) -> dict[str, Any]:
    """Only values OpenTelemetry accepts: drop None and anything not a scalar or a list."""
    return {k: v for k, v in attrs.items() if isinstance(v, (*SCALARS, list))}


def clip(text: str) -> str:
    """At most TEXT_LIMIT characters, marked with an ellipsis when cut."""
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1] + "…"


def engine_provider(engine: Any) -> str:
    """The `gen_ai.provider.name` of an engine: llama.cpp, transformers, vllm, llama.cpp.server,
    ...; an engine of someone else's names its top-level package."""
    kind = getattr(getattr(engine, "dialect", None), "kind", None)
    if kind:  # engines.remote.RemoteEngine
        return REMOTE_PROVIDERS.get(kind, kind)
    module = type(getattr(engine, "backend", engine)).__module__  # LM names its backend's
    for package, name in LOCAL_PROVIDERS.items():
        if module == package or module.startswith(package + "."):
            return name
    return module.split(".")[0]


def spec_provider(spec: str | None) -> str:
    """The provider `--model SPEC` loads (decision_retry.loading): for runs that recorded none."""
    if spec is None or spec == "embedded" or spec.endswith(".gguf"):
        return "llama.cpp"  # the catalogue's models are GGUF files
    if spec.startswith("scripted:"):
        return "decision_retry.scripted"
    kind, plus, _ = spec.partition("+")
    if plus and kind in REMOTE_PROVIDERS:
        return REMOTE_PROVIDERS[kind]
    return "llama.cpp" if catalogue.known(spec) else "transformers"


def provider_name(run: Run | None) -> str:
    """`gen_ai.provider.name`: the run config's `provider` (recorded from the engine), else what
    a `fix` run's model spec loads, else unknown."""
    config = run.config if run else {}
    if config.get("provider"):
        return str(config["provider"])
    if "test_cmd" in config and "model" in config:  # a fix run (agent.runner.FixConfig)
        return spec_provider(config["model"])
    return UNKNOWN_PROVIDER


def run_attributes(run: Run) -> dict[str, Any]:
    """The root `invoke_agent` span; scalar config values become `decision_retry.config.*`."""
    config = {f"decision_retry.config.{k}": v for k, v in run.config.items()}
    return {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": AGENT_NAME,
        "gen_ai.agent.version": __version__,
        "gen_ai.conversation.id": run.id,
        "gen_ai.provider.name": provider_name(run),
        "gen_ai.request.model": run.model,
        "gen_ai.request.seed": run.seed,
        "decision_retry.run.id": run.id,
        "decision_retry.run.strategy": run.strategy,
        "decision_retry.run.repo": run.repo,
        "openinference.span.kind": "AGENT",
        **{k: v for k, v in config.items() if isinstance(v, SCALARS)},
    }


def branch_attributes(branch: Branch) -> dict[str, Any]:
    """A branch span at its start; a retry also says where it was cut from."""
    attrs: dict[str, Any] = {
        "decision_retry.branch.id": branch.id,
        "decision_retry.branch.index": branch.index,
        "decision_retry.branch.strategy": branch.strategy,
        "decision_retry.branch.parent_id": branch.parent_id,
        "openinference.span.kind": "CHAIN",
    }
    if branch.cut is not None:
        attrs["decision_retry.cut.turn"] = branch.cut.turn
        attrs["decision_retry.cut.position"] = branch.cut.position
        attrs["decision_retry.cut.entropy"] = branch.cut.entropy
    return attrs


def branch_end_attributes(branch: Branch | None, last_test: TestRun | None) -> dict[str, Any]:
    """A branch span at its end: outcome, verifier verdict, size of the diff, last test counts."""
    attrs: dict[str, Any] = {"decision_retry.branch.outcome": "unfinished"}
    if branch is not None:
        attrs["decision_retry.branch.outcome"] = branch.outcome or "unfinished"
        attrs["decision_retry.verifier.passed"] = branch.passed
        if branch.passed is False:
            attrs["error.type"] = "verifier_failed"
        if branch.final_diff is not None:
            lines = branch.final_diff.splitlines()
            changed = [ln for ln in lines if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
            attrs["decision_retry.branch.diff_lines"] = len(changed)
    if last_test is not None:
        for key in ("passed", "failed", "errors"):
            attrs[f"decision_retry.tests.{key}"] = getattr(last_test, key)
    return attrs


def chat_model(turn: Turn, run: Run | None) -> str:
    """The model a turn called: its params' `model`, else the run's."""
    return str(turn.params.get("model") or (run.model if run else "model"))


def turn_attributes(turn: Turn, run: Run | None) -> dict[str, Any]:
    """A `chat` span: request parameters, token usage and an entropy summary (no token arrays)."""
    params, model = turn.params, chat_model(turn, run)
    temperature = params.get("temperature")
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider_name(run),
        "gen_ai.request.model": model,
        "gen_ai.response.model": model,
        "gen_ai.request.temperature": (
            float(temperature) if isinstance(temperature, (int, float)) else None
        ),
        "gen_ai.request.top_k": params.get("top_k"),
        "gen_ai.request.top_p": params.get("top_p"),
        "gen_ai.request.max_tokens": params.get("max_tokens", params.get("max_new_tokens")),
        "gen_ai.request.seed": params.get("seed"),
        "gen_ai.usage.input_tokens": params.get("input_tokens", params.get("prompt_tokens")),
        "gen_ai.usage.output_tokens": len(turn.tokens),
        "decision_retry.turn.id": turn.id,
        "decision_retry.turn.index": turn.index,
        "decision_retry.branch.id": turn.branch_id,
        "openinference.span.kind": "LLM",
    }
    if isinstance(params.get("finish_reason"), str):
        attrs["gen_ai.response.finish_reasons"] = [params["finish_reason"]]
    attrs.update(content(turn_messages(turn)))
    entropies = [t.entropy for t in turn.tokens]
    if entropies:
        top = max(range(len(entropies)), key=entropies.__getitem__)
        attrs["decision_retry.entropy.mean"] = sum(entropies) / len(entropies)
        attrs["decision_retry.entropy.max"] = entropies[top]
        attrs["decision_retry.entropy.max_position"] = top
        attrs["decision_retry.logp.sum"] = sum(t.logp for t in turn.tokens)
    return attrs


def turn_messages(turn: Turn) -> dict[str, str]:
    """`gen_ai.input.messages` / `gen_ai.output.messages` (JSON, the conventions' message parts):
    the turn's prompt as one user message, its text as the assistant's reply."""
    finish = turn.params.get("finish_reason")
    output = {"role": "assistant", "parts": [{"type": "text", "content": turn.text}]}
    if isinstance(finish, str):
        output["finish_reason"] = finish
    attrs = {"gen_ai.output.messages": json.dumps([output], ensure_ascii=False)}
    if turn.prompt:
        attrs["gen_ai.input.messages"] = json.dumps(
            [{"role": "user", "parts": [{"type": "text", "content": turn.prompt}]}],
            ensure_ascii=False)
    return attrs


def decision_name(decision: DecisionPoint) -> str:
    """`decision <label>`: the tool label (action, file, ...) or `entropy`."""
    return f"decision {decision.label or decision.kind}"


def decision_attributes(decision: DecisionPoint) -> dict[str, Any]:
    """A decision span: entropy, position, chosen token, alternatives, repository snapshot
    (the texts of the token, the choice and the alternatives only when capturing content)."""
    return {
        "decision_retry.decision.id": decision.id,
        "decision_retry.decision.kind": decision.kind,
        "decision_retry.decision.label": decision.label,
        "decision_retry.decision.entropy": decision.entropy,
        "decision_retry.decision.position": decision.position,
        "decision_retry.decision.token_id": decision.token_id,
        "decision_retry.decision.alternative_probs": [a.prob for a in decision.alternatives],
        "decision_retry.decision.snapshot": decision.snapshot,
        "decision_retry.turn.id": decision.turn_id,
        **content({
            "decision_retry.decision.token": decision.token,
            "decision_retry.decision.choice": decision.choice,
            "decision_retry.decision.alternatives": [a.text for a in decision.alternatives],
        }),
    }


def tool_attributes(name: str, branch_id: str) -> dict[str, Any]:
    """What every `execute_tool` span carries."""
    return {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.type": "function",
        "decision_retry.branch.id": branch_id,
        "openinference.span.kind": "TOOL",
    }


def tool_call_attributes(call: ToolCall) -> dict[str, Any]:
    """An action's call id; its arguments and observation (clipped) when capturing content."""
    return {
        "gen_ai.tool.call.id": call.id,
        "decision_retry.turn.id": call.turn_id,
        **content({
            "gen_ai.tool.call.arguments": clip(json.dumps(call.arguments, default=str)),
            "gen_ai.tool.call.result": clip(call.observation),
        }),
    }


def testrun_attributes(test_run: TestRun) -> dict[str, Any]:
    """A test run: command, counts, exit code, duration; the output tail (clipped) when
    capturing content."""
    attrs = {
        "gen_ai.tool.call.id": test_run.id,
        **content({"gen_ai.tool.call.result": clip(test_run.output_tail)}),
        "decision_retry.test.command": test_run.command,
        "decision_retry.test.passed": test_run.passed,
        "decision_retry.test.failed": test_run.failed,
        "decision_retry.test.errors": test_run.errors,
        "decision_retry.test.exit_code": test_run.exit_code,
        "decision_retry.test.duration_s": test_run.duration_s,
    }
    if not test_run.ok:
        attrs["error.type"] = "tests_failed"
    return attrs


def mh_step_attributes(step: MHStep) -> dict[str, Any]:
    """An MH step: the cut, the parts of log A, accepted, decode tokens spent."""
    fields = step.model_dump(exclude={"id", "run_id"})
    return {
        **{f"decision_retry.mh.{k}": v for k, v in fields.items()},
        "decision_retry.mh.id": step.id,
        "openinference.span.kind": "EVALUATOR",
    }
