"""`decision-retry sample`: one answer from a power sampler, tokens coloured by entropy."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.text import Text

from decision_retry.choices import FORMER_SAMPLERS, SAMPLERS
from decision_retry.cli.options import finite, model_option, threads_option
from decision_retry.tokens import Token


def entropy_style(h: float) -> str:
    """Cool-to-hot colour for an entropy in nats (0 .. ~3)."""
    if h < 0.3:
        return "grey70"
    if h < 1.0:
        return "yellow"
    if h < 2.0:
        return "dark_orange"
    return "bold red"


def render_tokens(tokens: list[Token]) -> Text:
    text = Text()
    for t in tokens:
        text.append(t.text, style=entropy_style(t.entropy))
    return text


class SamplerType(click.Choice):
    """--sampler: today's names, and the former ones (ec-mh, uniform-mh, argmax-cut), read as
    SamplerConfig reads them."""

    def __init__(self) -> None:
        super().__init__(SAMPLERS)

    def convert(self, value, param, ctx):
        return value if value in FORMER_SAMPLERS else super().convert(value, param, ctx)


@click.command()
@click.argument("prompt")
@model_option
@click.option("--sampler", type=SamplerType(), default="plain", show_default=True,
              help="plain/low-temp draw once; rewind and egps target p^alpha (the former "
              "ec-mh, uniform-mh and argmax-cut are read as rewind).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Length cap T.")
@click.option("--temperature", type=finite(min=0), default=1.0, show_default=True,
              help="For --sampler plain; 0 = greedy.")
@click.option("--alpha", type=finite(min=0, min_open=True), default=4.0,
              show_default=True, help="Target p^alpha (MH samplers).")
@click.option("--proposal-temperature", type=finite(min=0, min_open=True),
              default=None, help="Proposal temperature (default 1/alpha).")
@click.option("--block", type=click.IntRange(min=1), default=192, show_default=True,
              help="Block size B: MH steps run after every B tokens.")
@click.option("--steps", type=click.IntRange(min=0), default=10, show_default=True,
              help="MH steps per block.")
@click.option("--cut", "cut_kind", type=click.Choice(["entropy-jump", "softmax", "uniform"]),
              default="entropy-jump", show_default=True, help="Cut weights for rewind / egps.")
@click.option("--argmax", is_flag=True, help="rewind: cut at the highest-weight position not yet "
              "tried instead of drawing one (a heuristic: no cut correction).")
@click.option("--eps", type=finite(0, 1), default=0.1, show_default=True,
              help="Uniform share of the cut distribution.")
@click.option("--tries", type=click.IntRange(min=1), default=8, show_default=True,
              help="K tries per multiple-try move (egps).")
@click.option("--seed", type=int, default=0, show_default=True)
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print per-token records and MH steps.")
def sample(prompt, model, sampler, max_tokens, temperature, alpha, proposal_temperature, block,
           steps, cut_kind, argmax, eps, tries, seed, threads, as_json) -> None:
    """Sample a completion of PROMPT and show each token coloured by its entropy.

    \b
    Examples:
      decision-retry sample "Write is_even(n) in Python." --max-tokens 60
      decision-retry sample "def fib(n):" --sampler rewind --block 64 --steps 4 --json
    """
    from pydantic import ValidationError

    from decision_retry.errors import BadInput
    from decision_retry.loading import load_lm
    from decision_retry.samplers import CutRule, SamplerConfig
    from decision_retry.samplers import sample as run_sampler

    try:
        cfg = SamplerConfig(
            sampler=sampler, argmax=argmax, alpha=alpha, proposal_temperature=proposal_temperature,
            temperature=temperature, max_tokens=max_tokens, block=min(block, max_tokens),
            steps=steps, cut=CutRule(kind=cut_kind, eps=eps), tries=tries,
        )
    except ValidationError as err:  # a combination the option types alone do not catch
        raise BadInput(err.errors()[0]["msg"].removeprefix("Value error, ")) from None
    lm = load_lm(model, threads=threads)  # after the options are checked: no load for a typo
    result = run_sampler(lm, prompt, cfg, seed=seed)
    if as_json:
        out = {
            "model": lm.name, "seed": seed, "config": cfg.model_dump(), "text": result.text,
            "finish": result.state.finish, "decode_tokens": result.decode_tokens,
            "tokens": [t.model_dump() for t in result.state.tokens],
            "steps": [s.model_dump() for s in result.steps],
        }
        click.echo(json.dumps(out, indent=1))
        return
    console = Console(highlight=False)
    console.print(render_tokens(list(result.state.tokens)))
    legend = Text("\nentropy: ")
    for label, h in (("<0.3", 0), ("<1", 0.5), ("<2", 1.5), (">=2 nats", 3)):
        legend.append(label + " ", style=entropy_style(h))
    accepted = sum(s.accepted for s in result.steps)
    legend.append(f"  | {len(result.state.tokens)} tokens, {result.decode_tokens} decoded, "
                  f"{accepted}/{len(result.steps)} MH steps accepted", style="dim")
    console.print(legend)
