"""`batchrun diff RUN_A RUN_B`: what changed between two runs (or compare directories).

Options here; the comparison is `diffing.diff_runs` and `diffing.accuracy_check`,
the text `diffing.format_diff`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batchrun.analysis.textfmt import error_line

from batchrun.analysis.diffing import (
    ACCURACY_DROPPED,
    DEFAULT_SHOW,
    accuracy_check,
    diff_runs,
    format_diff,
)
from batchrun.errors import BatchrunError

__all__ = ["diff_command"]

DIFF_EXAMPLES = f"""
\b
Examples:
  batchrun diff runs/2026-11-21 runs/2026-11-22
  batchrun diff runs/2026-11-21 runs/2026-11-22 --fail-on-accuracy-drop 2   # nightly: exit 6 on a regression
  batchrun diff runs/compare_old runs/compare_new --json

\b
Exit codes: 0; 2 not a run or compare directory, nothing pairs up, or no gold
labels for --fail-on-accuracy-drop; {ACCURACY_DROPPED} accuracy fell by more than allowed.
"""


@click.command(name="diff", epilog=DIFF_EXAMPLES)
@click.argument("run_a", type=click.Path(file_okay=False, path_type=Path))
@click.argument("run_b", type=click.Path(file_okay=False, path_type=Path))
@click.option("--fail-on-accuracy-drop", "max_drop", type=click.FloatRange(min=0), metavar="POINTS",
              help=f"Exit {ACCURACY_DROPPED} if B's accuracy is more than POINTS percentage points below A's.")
@click.option("--gold-field", help="Ticket field holding the gold label [default: the job's gold_field, else label].")
@click.option("--show", type=click.IntRange(min=0), default=DEFAULT_SHOW, show_default=True,
              help="Changed tickets listed by id.")
@click.option("--json", "as_json", is_flag=True, help="Print the diff as JSON.")
def diff_command(run_a: Path, run_b: Path, max_drop: float | None, gold_field: str | None, show: int,
                 as_json: bool) -> None:
    """Compare run RUN_B with RUN_A: changed answers, label shift, accuracy, cost and latency.

    RUN_A is the reference, RUN_B the candidate; each a run directory or a
    compare directory (models/<key>/).
    """
    import orjson

    try:
        diff = diff_runs(run_a, run_b, gold_field=gold_field, show=show)
    except BatchrunError as exc:
        click.echo(error_line(exc), err=True)
        sys.exit(int(exc.exit_code))
    code, check = (0, []) if max_drop is None else accuracy_check(diff, max_drop)
    if as_json:
        diff["accuracy_check"] = None if max_drop is None else {"max_drop_points": max_drop, "exit_code": code,
                                                                 "lines": check}
        click.echo(orjson.dumps(diff, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_diff(diff), nl=False)
        for line in check:
            click.echo(line)
    sys.exit(code)
