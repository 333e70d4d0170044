"""The `batchrun` command line: the click group; each command is its own module.

    batchrun run JOB [flags]        commands/run.py     run a job, or resume it where it stopped
    batchrun status RUN_DIR         commands/status.py  counts of a finished or running run
    batchrun report RUN_DIR         commands/report.py  grade against gold labels, per model
    batchrun diff RUN_A RUN_B       commands/diff.py    what changed between two runs
    batchrun plan JOB               commands/plan.py    forecast tickets, tokens, cost, duration
    batchrun bench JOB              commands/bench.py   sweep concurrency, recommend a setting
    batchrun sim [flags]            commands/sim.py     serve the embedded simulator
    batchrun export RUN_DIR         commands/export.py  one row per ticket, in input order
    batchrun cache clear            commands/cache.py   empty the response cache
    batchrun init NAME              commands/init.py    write a job file that runs at once
    batchrun serve [RUNS_DIR]       commands/serve.py   a live page of the runs (Server-Sent Events)

A command module holds the click options, one call into its domain module
and the rendering; this module only registers them (one line each). Heavy
imports (litellm, the engine, the simulator) happen inside the commands, so
`batchrun --help` answers at once.
"""

from __future__ import annotations

import click

from batchrun import __version__
from batchrun.commands.bench import bench_command
from batchrun.commands.cache import cache_command
from batchrun.commands.cancel import cancel_command
from batchrun.commands.diff import diff_command
from batchrun.commands.export import export_command
from batchrun.commands.init import init_command
from batchrun.commands.plan import plan_command
from batchrun.commands.report import report_command
from batchrun.commands.run import run_command
from batchrun.commands.serve import serve_command
from batchrun.commands.sim import sim_command
from batchrun.commands.status import status_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="batchrun")
def main() -> None:
    """Run LLM batch jobs over JSONL tickets: resumable, bounded, honest about cost."""


main.add_command(run_command, name="run")
main.add_command(status_command, name="status")
main.add_command(report_command, name="report")
main.add_command(diff_command, name="diff")
main.add_command(cancel_command, name="cancel")
main.add_command(plan_command, name="plan")
main.add_command(bench_command, name="bench")
main.add_command(sim_command, name="sim")
main.add_command(export_command, name="export")
main.add_command(cache_command, name="cache")
main.add_command(init_command, name="init")
main.add_command(serve_command, name="serve")

if __name__ == "__main__":  # pragma: no cover
    main()
