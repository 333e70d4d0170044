"""The `batchrun` command line: the click group; each command is its own module.

    batchrun run JOB [flags]        commands/run.py     run a job, or resume it where it stopped
    batchrun status RUN_DIR         commands/status.py  counts of a finished or running run
    batchrun show RUN_DIR ID        commands/show.py    one ticket: its messages, attempts, answer, verdict
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
and the rendering; this module only registers them (one line each in
COMMANDS) and imports a command's module when that command runs. Heavy
imports (litellm, the engine, the simulator) happen inside the commands, so
`batchrun --help` answers at once.
"""

from __future__ import annotations

import importlib

import click

from batchrun import __version__

#: Every command: its name and where its click command lives. A command's module is imported
#: only when that command runs (or --help lists them all), so `batchrun run` with a bad job answers
#: without importing the simulator, bench or report code.
COMMANDS = {
    "run": "batchrun.commands.run:run_command",
    "status": "batchrun.commands.status:status_command",
    "show": "batchrun.commands.show:show_command",
    "report": "batchrun.commands.report:report_command",
    "diff": "batchrun.commands.diff:diff_command",
    "cancel": "batchrun.commands.cancel:cancel_command",
    "plan": "batchrun.commands.plan:plan_command",
    "bench": "batchrun.commands.bench:bench_command",
    "sim": "batchrun.commands.sim:sim_command",
    "export": "batchrun.commands.export:export_command",
    "cache": "batchrun.commands.cache:cache_command",
    "init": "batchrun.commands.init:init_command",
    "serve": "batchrun.commands.serve:serve_command",
}


class _Commands(click.Group):
    """The click group, loading each command's module on first use (COMMANDS)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, name = target.partition(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="batchrun")
def main() -> None:
    """Run LLM batch jobs over JSONL tickets: resumable, bounded, honest about cost."""


if __name__ == "__main__":  # pragma: no cover
    main()
