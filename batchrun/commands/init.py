"""`batchrun init NAME`: write a commented job file (and sample tickets) that runs at once.

Options here; the files are `starter.write_starter`, the text `starter.describe`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batchrun.analysis.textfmt import error_line

__all__ = ["init_command"]

INIT_EXAMPLES = """
\b
Examples:
  batchrun init triage                      # triage.toml + triage.jsonl (3 sample tickets)
  batchrun run triage.toml                  # runs at once against the simulator, no key
  batchrun init nightly --model anthropic/claude-3-5-haiku-20241022 --input tickets.jsonl
"""


@click.command(name="init", epilog=INIT_EXAMPLES)
@click.argument("name")
@click.option("--model", default="openai/gpt-4o-mini", show_default=True, help="litellm model string for live runs.")
@click.option("--input", "input_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Your JSONL tickets (the prompt uses its first line's text fields) [default: write 3 samples].")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where to write the files.")
def init_command(name: str, model: str, input_path: Path | None, directory: Path) -> None:
    """Write NAME.toml, a commented job file that runs at once against the simulator."""
    from batchrun.errors import BatchrunError
    from batchrun.job.starter import describe, write_starter

    try:
        files = write_starter(name, directory, model=model, input_path=input_path)
    except BatchrunError as exc:
        click.echo(error_line(exc), err=True)
        sys.exit(int(exc.exit_code))
    click.echo(describe(files))
