"""`batchrun cancel RUN_DIR`: cancel a batch-mode run's parts that are still running.

Reads the run directory's manifest for its job file and endpoint, builds the
same provider access the run used (keys from the environment; for a run
against the embedded simulator, the simulator is started again on the run
directory's saved batches), and asks the provider to cancel every submitted
part that has not finished (`batch_mode.cancel_batches`). What those parts
answered before the cancel is kept: the next `batchrun run` of the job
collects it and resubmits the rest (or `--finish-online` sends it online).
A compare job's run directory cancels every model's parts.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from batchrun.analysis.textfmt import error_line

__all__ = ["cancel_command"]

EXAMPLES = """
\b
Examples:
  batchrun cancel runs/classify_batch
  OPENAI_API_KEY=... batchrun cancel runs/nightly --api-base https://my-proxy.example/v1
"""


@click.command(name="cancel", epilog=EXAMPLES)
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--api-base", envvar="BATCHRUN_API_BASE",
              help="Server the run used, when it was given on the command line [env: BATCHRUN_API_BASE].")
def cancel_command(run_dir: Path, api_base: str | None) -> None:
    """Cancel the batch parts of RUN_DIR that are still running; keep what they answered."""
    import anyio

    from batchrun.batch.cancel import cancel_batches
    from batchrun.batch.ledger import LEDGER
    from batchrun.errors import BatchrunError, ConfigurationError
    from batchrun.job.spec import load_job
    from batchrun.rundir.manifest import read_manifest

    secrets: list[str] = []
    try:
        dirs = [d for d in [run_dir, *sorted((run_dir / "models").glob("*"))] if (d / LEDGER).exists()]
        if not dirs:
            raise ConfigurationError(f"{run_dir}: no {LEDGER}: not a batch-mode run directory")
        manifest = read_manifest(dirs[0]) or {}
        job_path = (manifest.get("job") or {}).get("path")
        if not job_path:
            raise ConfigurationError(f"{dirs[0]}: the manifest does not name its job file")
        job = load_job(job_path)
        use_sim = manifest.get("endpoint") == "simulator" and api_base is None
        if api_base:
            job = job.with_overrides(api_base=api_base)
        from batchrun.launcher import batch_apis, sim_config
        from batchrun.launcher import provider_targets as _targets

        total = 0
        with contextlib.ExitStack() as stack:
            sim_url = None
            if use_sim:
                import dataclasses

                from batchrun.sim.process import start_simulator

                config = dataclasses.replace(sim_config(job), batch_state_dir=str(
                    (run_dir / "simulator-batches").resolve()))
                sim_url = stack.enter_context(start_simulator(config)).base_url
            for each_dir in dirs:
                each = job
                if each_dir.parent.name == "models" and job.compare_mode:
                    each = job.for_model(job.model_entry(each_dir.name))
                apis = batch_apis(each, _targets(each, use_sim, secrets), sim_url)
                asked = anyio.run(lambda: cancel_batches(each_dir, apis))
                for part in asked:
                    click.echo(f"{each_dir}: part {part['number']} (batch {part['batch_id']}): {part['status']}")
                total += len(asked)
        click.echo(f"{total} part(s) asked to cancel; run the job again to collect what they answered"
                   if total else "Nothing running to cancel.")
    except BatchrunError as exc:
        click.echo(error_line(exc, secrets), err=True)
        sys.exit(int(exc.exit_code))
