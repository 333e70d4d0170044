"""`batchrun report RUN_DIR`: grade a run (or compare) directory against gold labels.

Options here; the grading is `grading.analyze`, the charts `charts.write_charts`,
the text `grading.format_report`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batchrun.analysis.textfmt import error_line

from batchrun.analysis.charts import write_charts
from batchrun.analysis.grading import analyze, format_report
from batchrun.errors import BatchrunError

__all__ = ["report_command"]

REPORT_EXAMPLES = """
\b
Examples:
  batchrun report runs/classify_tickets
  batchrun report runs/classify_tickets --out report_out        # + report.json and PNG charts
  batchrun report runs/compare_models                           # a compare directory: per model
  batchrun report runs/2026-11-22 --input tonight.jsonl --gold-field review.label

\b
Exit codes: 0; 2 RUN_DIR is not a run or compare directory, or --input cannot be read.
"""


@click.command(name="report", epilog=REPORT_EXAMPLES)
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write report.json and PNG charts (matplotlib) here.")
@click.option("--gold-field", help="Ticket field holding the gold label (dotted path ok) "
                                   "[default: the job's gold_field, else label].")
@click.option("--input", "input_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Tickets file to read gold labels from [default: the manifest's input].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
def report_command(run_dir: Path, out_dir: Path | None, gold_field: str | None, input_path: Path | None,
                   as_json: bool) -> None:
    """Grade RUN_DIR against gold labels; latency, tokens and cost per model.

    RUN_DIR is a run directory or a compare directory (models/<key>/ run
    directories), for which agreement between the models is added.
    """
    import orjson

    try:
        analysis = analyze(run_dir, gold_field=gold_field, input_path=input_path)
    except BatchrunError as exc:
        click.echo(error_line(exc), err=True)
        sys.exit(int(exc.exit_code))
    report = analysis.report
    notes: list[str] = []
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        charts = write_charts(analysis, out_dir)
        if charts is None:
            notes.append("matplotlib is not installed: wrote report.json only "
                         "(pip install 'batchrun[plots]' for the charts)")
            report["charts"] = []
        else:
            report["charts"] = [p.name for p in charts]
        (out_dir / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        written = ", ".join(["report.json", *report["charts"]])
        notes.append(f"wrote {written} to {out_dir}")
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_report(report), nl=False)
    for note in notes:
        click.echo(f"batchrun report: {note}", err=True)
