"""`batchrun show RUN_DIR ID`: one ticket at a glance (the work is analysis/ticket_detail.py).

Its rendered messages, every attempt (time, kind, latency, tokens, cost, model), the answer and
the check's verdict; nothing is sent. Ticket and model text goes through textfmt.terminal_safe.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

SHOW_EXAMPLES = """
\b
Examples:
  batchrun show runs/classify_tickets T000042
  batchrun show runs/classify_tickets T000042 --json | jq .models[""].runs
  batchrun show runs/2026-11-22 T000042 --input /data/tonight.jsonl

\b
Exit codes: 0 shown; 2 RUN_DIR is not a run directory, or no ticket has this id.
"""


@click.command(name="show", epilog=SHOW_EXAMPLES)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("ticket_id")
@click.option("--input", "input_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The run's input file [default: the one the manifest names, found from any directory].")
@click.option("--json", "as_json", is_flag=True, help="Print the detail as one JSON object.")
def show_command(run_dir: Path, ticket_id: str, input_path: Path | None, as_json: bool) -> None:
    """Show one ticket of RUN_DIR: its messages, every attempt, the answer and the verdict."""
    from batchrun.analysis.ticket_detail import format_ticket_detail, ticket_detail
    from batchrun.errors import BatchrunError

    try:
        detail = ticket_detail(run_dir, ticket_id, input_path)
    except BatchrunError as exc:
        click.echo(f"batchrun: error: {exc}", err=True)
        sys.exit(int(exc.exit_code))
    if as_json:
        import orjson

        click.echo(orjson.dumps(detail, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_ticket_detail(detail))
