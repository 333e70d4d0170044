"""`batchrun export RUN_DIR`: one row per ticket, in input order (the work is export.export_run)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batchrun.analysis.textfmt import error_line

EXPORT_EXAMPLES = """
\b
Examples:
  batchrun export runs/classify_tickets                      # runs/classify_tickets/export.jsonl
  batchrun export runs/classify_tickets --format csv --with-input --out answers.csv
  batchrun export runs/compare_models --format parquet       # one column group per model

\b
CSV and TSV cells that begin with =, +, -, @, a tab or a carriage return are
written with a leading ' so that a spreadsheet shows them as text instead of
evaluating them (--raw-cells: as they are).

\b
Exit codes: 0 written; 2 not a run directory, or its input is gone or changed.
"""


@click.command(name="export", epilog=EXPORT_EXAMPLES)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "tsv", "parquet"]), default="jsonl",
              show_default=True, help="Output format (parquet needs batchrun[parquet]).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Output file [default: RUN_DIR/export.<format>].")
@click.option("--with-input", is_flag=True, help="Add the input row's fields to each row.")
@click.option("--input", "input_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The run's input file [default: the one the manifest names, found from any directory].")
@click.option("--raw-cells", is_flag=True, help="CSV/TSV: write text cells that begin like a spreadsheet formula "
                                                "(=, +, -, @, tab, CR) as they are, without the leading '.")
def export_command(run_dir: Path, fmt: str, out: Path | None, with_input: bool, input_path: Path | None,
                   raw_cells: bool) -> None:
    """Write one row per ticket of RUN_DIR, in input order: answer, usage, cost, attempts, errors.

    Exit codes: 0 written; 2 RUN_DIR is not a run directory, or its input cannot be found or changed
    since the run (pass --input PATH)."""
    from batchrun.analysis.export import export_run
    from batchrun.analysis.stats import cached_share, format_prompt_cache
    from batchrun.errors import BatchrunError

    try:
        result = export_run(run_dir, out, fmt, with_input=with_input, input=input_path, raw_cells=raw_cells)
    except BatchrunError as exc:
        click.echo(error_line(exc), err=True)
        sys.exit(int(exc.exit_code))
    groups = f" ({len(result.models)} models)" if result.models != ("",) else ""
    click.echo(f"batchrun: wrote {result.rows:,} ticket(s){groups} to {result.path}: {result.done:,} done, "
               f"{result.failed:,} failed, {result.pending:,} pending")

    cache_line = format_prompt_cache(result.cached_tokens,
                                     cached_share(result.cached_tokens, result.cache_reported_prompt_tokens),
                                     result.cache_write_tokens, result.prompt_cache_saved_usd)
    if cache_line:  # columns cached_tokens, cache_write_tokens, prompt_cache_saved_usd per ticket
        click.echo(f"batchrun: prompt cache: {cache_line}")
