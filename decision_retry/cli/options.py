"""Options shared by several commands."""

from collections.abc import Sequence

import click

model_option = click.option(
    "--model", default=None,
    help="A catalogue name (`decision-retry models`; default: the catalogue's default, on "
    "llama.cpp), a .gguf file (llama.cpp), a model directory or cached Hugging Face id "
    "(transformers), a server URL (llamacpp+http://HOST:PORT, vllm+http://HOST:PORT/MODEL), "
    "or scripted:SCRIPT.json.")

threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="Decode threads, llama.cpp and torch (default: $DECISION_RETRY_THREADS, else half "
    "the cores).")

# a seed is stored in SQLite (a signed 64-bit integer) and seeds torch.Generator
seed_type = click.IntRange(0, 2**63 - 1)


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and ±inf (a nan passes every comparison)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        import math

        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


def finite(min: float | None = None, max: float | None = None, *, min_open: bool = False,
           max_open: bool = False) -> FiniteFloat:
    """The type of a float option in [min, max] that must be a finite number."""
    return FiniteFloat(min, max, min_open=min_open, max_open=max_open)


# -- -o KEY=VALUE: the rarely changed knobs of a run, validated by RetryConfig ------------------
# the keys `-o help` leaves out (a regex, a tuple: `def_line` names span.opening's useful values)
UNLISTED = {"span.opening", "span.ends", "suspicious_lines"}  # the last: filled by the agent
# what a nested field without a description of its own does
NOTES = {"move": "what a rewind regenerates: auto (local where it applies, else suffix), "
         "suffix, local (to the end of the cut line), mixed",
         "cut.kind": "the cut distribution's shape: entropy-jump, level, softmax, uniform",
         "cut.beta": "exponent of the entropy-jump and level weights",
         "cut.tau": "softmax temperature", "cut.eps": "uniform share of the cut distribution",
         "def_line": "a local move cut in the reply's opening (imports, the def line): suffix "
         "(regenerate the rest) or local (that line only)"}


def option_keys() -> list[tuple[str, object, str]]:
    """(key, `fix`'s default, what it does) of every listed -o key, read from RetryConfig."""
    from pydantic import BaseModel

    from decision_retry.choices import FIX_RUN, FLAG_KEYS
    from decision_retry.samplers.chain import RetryConfig

    default = RetryConfig(**FIX_RUN)
    rows: list[tuple[str, object, str]] = []
    for name, field in RetryConfig.model_fields.items():
        value = getattr(default, name)
        if name in FLAG_KEYS or name in UNLISTED:
            continue
        if not isinstance(value, BaseModel):
            rows.append((name, value, field.description or NOTES.get(name, "")))
            continue
        for sub, inner in type(value).model_fields.items():
            key = f"{name}.{sub}"
            if key not in UNLISTED:
                rows.append((key, getattr(value, sub), inner.description or NOTES.get(key, "")))
        if name == "span":
            rows.append(("def_line", "suffix", NOTES["def_line"]))
    return rows


def options_help() -> str:
    """`fix -o help`: every key, its default and what it does."""
    rows = option_keys()
    width = max(len(f"{k}={v}") for k, v, _ in rows)
    lines = ["-o KEY=VALUE (repeatable) sets a field of the run's RetryConfig; `none` is None.",
             "Keys, with fix's defaults:"]
    lines += [f"  {f'{k}={v}':<{width}}  {what}" for k, v, what in rows]
    return "\n".join(lines)


def _key_error(key: str) -> str | None:
    """Why `key` names no RetryConfig field (None: it does)."""
    import difflib

    from pydantic import BaseModel

    from decision_retry.samplers.chain import RetryConfig

    if key == "def_line":
        return None
    model: type[BaseModel] | None = RetryConfig
    for part in key.split("."):
        fields = model.model_fields if model is not None else {}
        if part not in fields:
            known = [k for k, _, _ in option_keys()]
            near = difflib.get_close_matches(key, known, n=1)
            return "unknown key" + (f" (did you mean {near[0]}?)" if near else "") + \
                "; `-o help` lists the keys"
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
            else None
    return None if model is None else "give a field of it (e.g. cut.eps=0.2)"


def _finite(value: str) -> bool:
    """False for nan and ±inf in any spelling float() reads; True for every other value."""
    import math

    try:
        return math.isfinite(float(value))
    except ValueError:
        return True


def retry_config(base: dict, options: Sequence[str], flag: str = "-o ",
                 flags: dict[str, str] | None = None):
    """RetryConfig from `base` keyword arguments and `KEY=VALUE` options, or BadInput as one line
    naming the option (`-o alpha=x: Input should be a valid number ...`; `flag` "+" for a bench
    variant's +KEY=VALUE). `flags`: keys set by a flag of their own instead (key -> flag)."""
    from pydantic import ValidationError

    from decision_retry.choices import merge, option
    from decision_retry.errors import BadInput
    from decision_retry.samplers.chain import RetryConfig

    kw, given = dict(base), {}
    for text in options:
        key = text.partition("=")[0].strip()
        if key in (flags or {}):
            raise BadInput(f"{flag}{text}: {key} has a flag of its own: use {flags[key]}")
        try:
            parsed = option(text)
        except ValueError as err:
            raise BadInput(f"{flag}{text}: {err}") from None
        if why := _key_error(key):
            raise BadInput(f"{flag}{text}: {why}")
        if not _finite(text.partition("=")[2]):  # a nan passes every range check
            raise BadInput(f"{flag}{text}: not a finite number")
        kw, given[key] = merge(kw, parsed), text
    try:
        return RetryConfig(**kw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"]))
        msg = first["msg"].removeprefix("Value error, ")
        if where in given:
            named = f"{flag}{given[where]}"
        else:  # a rule across fields, or a nested model's: the options given, else the field
            named = where or " ".join(f"{flag}{t}" for t in given.values()) or "the config"
        raise BadInput(f"{named}: {msg}") from None
