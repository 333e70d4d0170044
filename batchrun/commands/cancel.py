"""`batchrun cancel RUN_DIR`: cancel a batch-mode run's parts that are still running.

Reads the run directory's manifest for its job file and endpoint, builds the
same provider access the run used (keys from the environment; for a run
against the embedded simulator, the simulator is started again on the run
directory's saved batches), and asks the provider to cancel every submitted
part that has not finished (`launcher.cancel_run`, `batch.cancel.cancel_batches`). What those parts
answered before the cancel is kept: the next `batchrun run` of the job
collects it and resubmits the rest (or `--finish-online` sends it online).
A compare job's run directory cancels every model's parts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batchrun.analysis.textfmt import error_line, terminal_safe

__all__ = ["cancel_command"]

EXAMPLES = """
\b
Examples:
  batchrun cancel runs/classify_batch
  OPENAI_API_KEY=... batchrun cancel runs/nightly --api-base https://my-proxy.example/v1

\b
Exit codes: 0 asked (or nothing running); 2 not a batch-mode run directory, or its job file
is missing or invalid; 4 the provider refused the key; 1 the provider failed after the retries.
"""


@click.command(name="cancel", epilog=EXAMPLES)
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--api-base", envvar="BATCHRUN_API_BASE",
              help="Server the run used, when it was given on the command line [env: BATCHRUN_API_BASE].")
def cancel_command(run_dir: Path, api_base: str | None) -> None:
    """Cancel the batch parts of RUN_DIR that are still running; keep what they answered."""
    from batchrun.errors import BatchrunError
    from batchrun.launcher import cancel_run

    secrets: list[str] = []
    try:
        asked = cancel_run(run_dir, api_base, secrets)
    except BatchrunError as exc:
        click.echo(error_line(exc, secrets), err=True)
        sys.exit(int(exc.exit_code))
    for each_dir, part in asked:
        click.echo(terminal_safe(f"{each_dir}: part {part['number']} (batch {part['batch_id']}): {part['status']}"))
    click.echo(f"{len(asked)} part(s) asked to cancel; run the job again to collect what they answered"
               if asked else "Nothing running to cancel.")
