"""Names of strategies and samplers, importable without torch (the CLI's --help stays fast)."""

from typing import Literal

Strategy = Literal["entropy-cut", "uniform-cut", "egps", "argmax-cut", "from-end", "restart"]
STRATEGIES: tuple[str, ...] = Strategy.__args__  # type: ignore[attr-defined]

# Defaults, defined once: `fix`, `bench`, the LangGraph nodes and the LangChain middleware read them.
BUDGET_TOKENS = 1500  # decode tokens of a `fix` run, accepted or not
SPIKE_THRESHOLD = 0.5  # nats: a token at least this uncertain is recorded as a decision point

SamplerName = Literal["plain", "low-temp", "uniform-mh", "ec-mh", "egps", "argmax-cut"]
SAMPLERS: tuple[str, ...] = SamplerName.__args__  # type: ignore[attr-defined]

# Strategy variants for `bench`: a strategy name, then `+option`s (the levers of docs/benchmarks.md):
#   +local / +mixed  local or mixed moves; +code  code-aware cut weights;
#   +defline         local moves (unless +mixed), but a cut before the reply's first def line is
#                    closed (imports, the def line) regenerates the whole rest (a suffix move);
#   +surprise        cut weights from the surprise under the no-body context (with +code: both);
#   +nbtoken         the cut's first new token drawn from the no-body context;
#   +restartP        a restart move with probability P (e.g. +restart0.2).
# the opening of a patch reply (SpanRule.opening): through its first def/class header closed by
# ":" at a line end, imports before it and multi-line signatures included
DEF_HEADER = r"(?ms)^[ \t]*(?:async[ \t]+)?(?:def|class)\b.*?:[ \t]*(?:#[^\n]*)?\n"
VARIANT_OPTIONS = ("local", "mixed", "defline", "code", "surprise", "nbtoken", "restart")
# `fix`'s run, which `bench` calls "default": a rewind whose cut rule (surprise or entropy) and
# moves (local or suffix) are chosen per run where they apply, a def-line cut a suffix move
DEFAULT_RUN = {"move": "auto", "cut_weights": "auto", "span": {"opening": DEF_HEADER}}
BENCH_STRATEGIES = ("default", "uniform-cut", "egps", "argmax-cut", "from-end", "restart")


def parse_variant(spec: str) -> tuple[str, dict]:
    """`entropy-cut+local+code` -> ("entropy-cut", RetryConfig keyword arguments); `default`
    is `fix`'s run (DEFAULT_RUN); ValueError naming the bad part."""
    base, *options = spec.split("+")
    kw: dict = {}
    if base == "default":
        base, kw = "entropy-cut", dict(DEFAULT_RUN)
    if base not in STRATEGIES:
        raise ValueError(f"unknown strategy {base!r}: choose from default,{','.join(STRATEGIES)}")
    for opt in options:
        if opt in ("local", "mixed"):
            kw["move"] = opt
        elif opt == "defline":
            kw.setdefault("move", "local")
            kw["span"] = {"opening": DEF_HEADER}
        elif opt in ("code", "surprise"):
            have = set(kw.get("cut_weights", "entropy").split("+")) - {"entropy"}
            kw["cut_weights"] = "+".join(w for w in ("surprise", "code") if w in have | {opt})
        elif opt == "nbtoken":
            kw["cut_token"] = "nobody"
        elif opt.startswith("restart"):
            try:
                kw["restart_share"] = float(opt[len("restart"):] or 0.2)
            except ValueError:
                raise ValueError(f"bad option +{opt} in {spec!r}: use +restart0.2") from None
            if not 0 <= kw["restart_share"] <= 1:
                raise ValueError(f"+{opt} in {spec!r}: the share must be in [0, 1]")
        else:
            raise ValueError(f"unknown option +{opt} in {spec!r}: use +{', +'.join(VARIANT_OPTIONS)}")
    if options and base not in ("entropy-cut", "uniform-cut", "argmax-cut"):
        raise ValueError(f"{spec!r}: options apply to entropy-cut, uniform-cut and argmax-cut")
    return base, kw
