"""Options shared by several commands."""

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
