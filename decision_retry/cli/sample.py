"""`decision-retry sample`: one answer from a power sampler, tokens coloured by entropy."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.text import Text

from decision_retry.choices import SAMPLERS
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


@click.command()
@click.argument("prompt")
@model_option
@click.option("--sampler", type=click.Choice(SAMPLERS), default="plain", show_default=True,
              help="plain/low-temp draw once; uniform-mh, ec-mh, egps target p^alpha; "
              "argmax-cut is a heuristic.")
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
              default="entropy-jump", show_default=True, help="Cut weights for ec-mh / egps.")
@click.option("--eps", type=finite(0, 1), default=0.1, show_default=True,
              help="Uniform share of the cut distribution.")
@click.option("--tries", type=click.IntRange(min=1), default=8, show_default=True,
              help="K tries per multiple-try move (egps).")
@click.option("--seed", type=int, default=0, show_default=True)
@threads_option
@click.option("--json", "as_json", is_flag=True, help="Print per-token records and MH steps.")
def sample(prompt, model, sampler, max_tokens, temperature, alpha, proposal_temperature, block,
           steps, cut_kind, eps, tries, seed, threads, as_json) -> None:
    """Sample a completion of PROMPT and show each token coloured by its entropy.

    \b
    Examples:
      decision-retry sample "Write is_even(n) in Python." --max-tokens 60
      decision-retry sample "def fib(n):" --sampler ec-mh --block 64 --steps 4 --json
    """
    from decision_retry.loading import load_lm
    from decision_retry.samplers import CutRule, SamplerConfig
    from decision_retry.samplers import sample as run_sampler

    lm = load_lm(model, threads=threads)
    cfg = SamplerConfig(
        sampler=sampler, alpha=alpha, proposal_temperature=proposal_temperature,
        temperature=temperature, max_tokens=max_tokens, block=min(block, max_tokens),
        steps=steps, cut=CutRule(kind=cut_kind, eps=eps), tries=tries,
    )
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
