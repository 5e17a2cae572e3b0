"""Names and defaults of a run, importable without torch (the CLI's --help stays fast).

One vocabulary: a strategy says what a run does after a failure (`rewind`: cut the answer at a
token and resample from there, by the MH rule; `egps`: the same with K tries a cut; `from-end`:
append the failure and ask again; `restart`: start over), the cut weights say where a rewind
cuts (`auto`, `surprise`, `entropy`, `uniform`, `code`, `surprise+code`), and every other knob
is a field of `RetryConfig` (samplers/chain.py), set with `fix -o KEY=VALUE` or a `bench`
variant's `+KEY=VALUE`. Former strategy names, which named a cut rule as a strategy, are read
everywhere a strategy is read (`upgrade`).
"""

from collections.abc import Mapping
from typing import Literal

Strategy = Literal["rewind", "egps", "from-end", "restart"]
STRATEGIES: tuple[str, ...] = Strategy.__args__  # type: ignore[attr-defined]
CutWeights = Literal["auto", "surprise", "entropy", "uniform", "code", "surprise+code"]
CUT_WEIGHTS: tuple[str, ...] = CutWeights.__args__  # type: ignore[attr-defined]
Move = Literal["auto", "suffix", "local", "mixed"]
MOVES: tuple[str, ...] = Move.__args__  # type: ignore[attr-defined]

CUT_STRATEGIES = ("rewind", "egps")  # the strategies that cut an attempt
SINGLE_TRY_CUTS = ("rewind",)  # one proposal a cut: local moves, the no-body token, exclusion

# Before 0.x a cut rule was a strategy. A stored run keeps its name in the trace (a branch's
# label is part of its id); configs, `--strategy` and bench specs read it as the current one.
FORMER = {"entropy-cut": "rewind", "uniform-cut": "rewind", "argmax-cut": "rewind"}

# Defaults, defined once: `fix`, `bench`, the LangGraph nodes and the LangChain middleware read them.
BUDGET_TOKENS = 1500  # decode tokens of a `fix` run, accepted or not
SPIKE_THRESHOLD = 0.5  # nats: a token at least this uncertain is recorded as a decision point

# `sample --sampler`: draw once (plain, low-temp), or a chain of `fix`'s strategies over one turn
SamplerName = Literal["plain", "low-temp", "rewind", "egps"]
SAMPLERS: tuple[str, ...] = SamplerName.__args__  # type: ignore[attr-defined]
# former sampler names, read as today's: (sampler, the cut kind or None, argmax)
FORMER_SAMPLERS = {"ec-mh": ("rewind", None, False), "uniform-mh": ("rewind", "uniform", False),
                   "argmax-cut": ("rewind", None, True)}

# the opening of a patch reply (SpanRule.opening): through its first def/class header closed by
# ":" at a line end, imports before it and multi-line signatures included
DEF_HEADER = r"(?ms)^[ \t]*(?:async[ \t]+)?(?:def|class)\b.*?:[ \t]*(?:#[^\n]*)?\n"
# `fix`'s run, which `bench` calls "default": a rewind whose cut weights (surprise or entropy)
# and moves (local or suffix) are chosen per run where they apply, a def-line cut a suffix move
DEFAULT_RUN = {"strategy": "rewind", "move": "auto", "cut_weights": "auto",
               "span": {"opening": DEF_HEADER}}
# ... and, in `fix` and `bench`, which stop at the first pass, a new chain from a fresh reply once
# 4 proposals in a row left an attempt as it was (docs/results.md "Per second"); the LangGraph
# and LangChain integrations keep one chain
FIX_RUN = {**DEFAULT_RUN, "new_chain_after": 4}
BENCH_STRATEGIES = ("default", "rewind+uniform", "egps", "rewind+argmax", "from-end", "restart")


def upgrade(data: Mapping) -> dict:
    """RetryConfig keyword arguments with a former strategy name made current (the same run):
    entropy-cut is rewind; argmax-cut is rewind with argmax; uniform-cut is rewind with uniform
    cut weights, or, where it read surprise or code weights (the replies scored, code classes
    scaling w_t), those weights under a uniform cut rule."""
    data = dict(data)
    name = data.get("strategy")
    if name not in FORMER:
        return data
    data["strategy"] = FORMER[name]
    if name == "argmax-cut":
        data["argmax"] = True
    elif name == "uniform-cut":
        if data.get("cut_weights", "entropy") in ("entropy", "auto"):
            data["cut_weights"] = "uniform"
        else:
            cut = data.get("cut") or {}
            cut = cut.model_dump() if hasattr(cut, "model_dump") else cut
            if isinstance(cut, Mapping):  # else not a cut rule: the model says so
                data["cut"] = {**cut, "kind": "uniform"}
    return data


def describe(retry: Mapping) -> str:
    """What a run does, in words (the progress line, the trace, `logs`), from RetryConfig's
    values: the strategy, then where it cuts and which moves run. `fix`'s default reads
    "rewind (surprise cuts, local moves, def-line suffix moves, no null moves, a new chain after
    4 unmoved proposals)" once resolved."""
    retry = upgrade(retry)
    s = retry.get("strategy", "rewind")
    if s == "from-end":
        return "from-end (the failure appended, asked again)"
    if s == "restart":
        return "restart (a fresh attempt each time)"
    weights = retry.get("cut_weights", "entropy")
    if weights != "uniform" and (retry.get("cut") or {}).get("kind") == "uniform":
        weights = "uniform+code" if "code" in weights.split("+") else "uniform"
    move = retry.get("move", "suffix")
    parts = [f"{'argmax ' if retry.get('argmax') else ''}{weights} cuts",
             f"mixed moves ({retry.get('local_share', 0.5):g} local)" if move == "mixed"
             else f"{move} moves"]
    if s == "egps":
        parts.insert(0, f"{retry.get('tries', 4)} tries a cut")
    if move in ("local", "mixed", "auto") and (retry.get("span") or {}).get("opening"):
        parts.append("def-line suffix moves")
    if retry.get("walk_fresh") is False:
        parts.append("fresh replies decoded in full")
    if retry.get("line_weight", 1) != 1:
        parts.append(f"suspicious lines x{retry['line_weight']:g}")
    if retry.get("restart_share"):
        parts.append(f"restart {retry['restart_share']:g}")
    if retry.get("cut_token") == "nobody":
        parts.append("no-body cut token")
    if retry.get("exclude") and s in SINGLE_TRY_CUTS:
        parts.append("no null moves")
    if retry.get("new_chain_after"):
        parts.append(f"a new chain after {retry['new_chain_after']} unmoved proposals")
    return f"{s} ({', '.join(parts)})"


def current_name(strategy: str) -> str:
    """A recorded strategy name as it reads today (`logs`): former names made current."""
    return FORMER.get(strategy, strategy)


# -- KEY=VALUE: `fix -o`, a bench variant's +KEY=VALUE ------------------------------------------
# keys `fix` sets by a flag of their own (a bench variant: the strategy by its name); `def_line`
# is no field but names span.opening's two useful values
FLAG_KEYS = {"strategy": "--strategy", "cut_weights": "--cut-weights",
             "proposal_temperature": "--proposal-temperature"}
DEF_LINE = {"suffix": DEF_HEADER, "local": None}


def option(text: str) -> dict:
    """`KEY=VALUE` as RetryConfig keyword arguments: a dotted key sets a nested field
    (`cut.eps=0.2` -> {"cut": {"eps": "0.2"}}), `none` is None, `def_line=suffix|local` sets
    span.opening; values stay strings for the model to validate. ValueError for a malformed one
    or the strategy (a flag's, or a variant name's, to set)."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
        raise ValueError("not KEY=VALUE")
    if key == "strategy":
        raise ValueError("the strategy is no option: name it (fix --strategy, a bench variant)")
    if key == "def_line":
        if value not in DEF_LINE:
            raise ValueError("def_line is suffix or local")
        return {"span": {"opening": DEF_LINE[value]}}
    out: object = None if value.lower() in ("none", "null") else value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out  # type: ignore[return-value]


def merge(base: Mapping, extra: Mapping) -> dict:
    """`base` updated by `extra`, nested dicts merged key by key."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) \
            else v
    return out


# A bench variant: a strategy (or `default`, `fix`'s run), then `+option`s: `+KEY=VALUE` (as
# `fix -o`) or a shorthand, the levers of docs/benchmarks.md:
#   +local / +mixed  local or mixed moves;   +uniform / +argmax  a uniform or argmax cut;
#   +code            code-aware cut weights; +surprise  cut weights from the surprise under the
#                    no-body context (with +code: both);
#   +defline         local moves (unless +mixed), but a cut before the reply's first def line is
#                    closed (imports, the def line) regenerates the whole rest (a suffix move);
#   +nbtoken         the cut's first new token drawn from the no-body context;
#   +restartP        a restart move with probability P (e.g. +restart0.2).
VARIANT_OPTIONS = ("local", "mixed", "uniform", "argmax", "defline", "code", "surprise",
                   "nbtoken", "restart")


def parse_variant(spec: str) -> dict:
    """`rewind+local+code`, `default+restart_share=0.2` -> RetryConfig keyword arguments (the
    strategy included); `default` is `fix`'s run (FIX_RUN); former names are read as
    `upgrade` reads them. ValueError naming the bad part; the values are the model's to check."""
    base, *options = spec.split("+")
    if base == "default":
        kw: dict = dict(FIX_RUN)
    elif base in STRATEGIES or base in FORMER:
        kw = {"strategy": base}
    else:
        raise ValueError(f"unknown strategy {base!r}: choose from default,{','.join(STRATEGIES)}")
    single = kw["strategy"] in SINGLE_TRY_CUTS or kw["strategy"] in FORMER
    for opt in options:
        if "=" in opt:
            try:
                kw = merge(kw, option(opt))
            except ValueError as err:
                raise ValueError(f"+{opt} in {spec!r}: {err}") from None
            continue
        name = opt.rstrip("0123456789.") if opt.startswith("restart") else opt
        if name not in VARIANT_OPTIONS:
            raise ValueError(f"unknown option +{opt} in {spec!r}: use +KEY=VALUE (as fix -o) "
                             f"or +{', +'.join(VARIANT_OPTIONS)}")
        if not single:
            raise ValueError(f"+{opt} in {spec!r}: shorthands apply to rewind and default")
        if opt in ("local", "mixed"):
            kw["move"] = opt
        elif opt == "uniform":
            kw["cut_weights"] = "uniform"
        elif opt == "argmax":
            kw["argmax"] = True
        elif opt == "defline":
            kw.setdefault("move", "local")
            kw = merge(kw, {"span": {"opening": DEF_HEADER}})
        elif opt in ("code", "surprise"):
            have = set(kw.get("cut_weights", "entropy").split("+")) - {"entropy", "auto"}
            if "uniform" in have:
                raise ValueError(f"+{opt} in {spec!r}: uniform cut weights have no "
                                 f"{opt} part (+{opt}+cut.kind=uniform: uniform over {opt})")
            kw["cut_weights"] = "+".join(w for w in ("surprise", "code") if w in have | {opt})
        elif opt == "nbtoken":
            kw["cut_token"] = "nobody"
        else:  # restartP
            try:
                kw["restart_share"] = float(opt[len("restart"):] or 0.2)
            except ValueError:
                raise ValueError(f"bad option +{opt} in {spec!r}: use +restart0.2") from None
            if not 0 <= kw["restart_share"] <= 1:
                raise ValueError(f"+{opt} in {spec!r}: the share must be in [0, 1]")
    return upgrade(kw)
