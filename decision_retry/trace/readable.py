"""Recorded parameters in words, for the report: a turn's sampling parameters, a tool call, the
run's settings. Nothing is dumped as JSON; structures are named, the localisation summarised."""

from __future__ import annotations

from typing import Any

from decision_retry.trace import summary as s
from decision_retry.trace.models import RunTree, ToolCall

_PARAM_NAMES = {"temperature": "temperature", "input_tokens": "prompt tokens",
                "finish_reason": "finish reason", "max_new_tokens": "max new tokens"}


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def params_text(params: dict[str, Any]) -> str:
    """A turn's parameters in words: `temperature 0.25 · prompt tokens 120 · finish reason eos`;
    the localisation (shown above the attempts) and other structures are named, not dumped."""
    parts = []
    for key, value in params.items():
        if key == "model":
            continue  # the run's model, in the header
        name = _PARAM_NAMES.get(key, key.replace("_", " "))
        if key == "localisation":
            parts.append("localisation: see the top of the report")
        elif _scalar(value):
            parts.append(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}")
        else:
            parts.append(f"{name}: {len(value)} items" if hasattr(value, "__len__") else name)
    return " · ".join(parts)


def call_text(call: ToolCall) -> str:
    """A tool call in words: `apply_patch units.py::f (shown: units.py::f, units.py::g)`; a
    reply that rewrote several functions names each: `units.py::f, units.py::g`."""
    args = call.arguments
    several = args.get("functions")
    if isinstance(several, list) and several:
        text = ", ".join(f"{e.get('file')}::{e.get('function')}" for e in several
                         if isinstance(e, dict))
    elif args.get("file") and "function" in args:
        text = f"{args['file']}::{args['function']}"
    else:
        text = " ".join(f"{k} {v}" for k, v in args.items() if _scalar(v))
    shown = args.get("shown")
    if isinstance(shown, list) and shown:
        names = [f"{e.get('file')}::{e.get('function')}" for e in shown if isinstance(e, dict)]
        text += f" (shown: {', '.join(names)})"
    return text


def settings(tree: RunTree) -> list[tuple[str, str]]:
    """The run's settings that decide what it did, as (name, value) pairs."""
    cfg = tree.run.config if isinstance(tree.run.config, dict) else {}
    retry = cfg.get("retry") if isinstance(cfg.get("retry"), dict) else {}
    rows = [("test command", cfg.get("test_cmd")), ("protocol", cfg.get("protocol")),
            ("strategy", s.what_ran(tree.run)),
            ("cut signal", f"{s.signal_name(tree)} (cut_weights {retry.get('cut_weights')})"
             if retry.get("cut_weights") else s.signal_name(tree)),
            ("move", retry.get("move")), ("alpha", retry.get("alpha")),
            ("proposal temperature", retry.get("proposal_temperature")),
            ("verifier weight", retry.get("verifier_weight")),
            ("budget tokens", cfg.get("budget_tokens")),
            ("max attempts", cfg.get("max_attempts")), ("seed", tree.run.seed)]
    return [(k, str(v)) for k, v in rows if v is not None]
