"""`batchrun run JOB --mode batch`: the batch-mode half of the run command.

`run_batch` is called by `batchrun run` for each model of a batch-mode job
(a compare job: one set of parts per model, each in its own run directory):
it prepares the run (`engine.prepare_run`: lock, input check, resume
refusal), builds one `provider.LiteLLMBatchAPI` per model key, hands over to
`batch_mode.execute_batch_run`, and renders the summary. With
`--finish-online` it first cancels and collects the parts still running
(`stop_submitting`), then sends the tickets left through the online engine
(the run command's own online path, passed in as `online`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

__all__ = ["run_batch"]


def run_batch(job: Any, job_file: Path, targets: dict[str, dict[str, Any]], sim_url: str | None, time_scale: float,
              *, limit: int | None, skip_failed: bool, force: bool, grace: float, progress: bool,
              max_cost_usd: float | None, verbose: int, no_wait: bool, finish_online: bool,
              online: Callable[..., int]) -> int:
    import anyio

    from batchrun.batch_mode import execute_batch_run, ledger_summary
    from batchrun.engine import prepare_run
    from batchrun.errors import ConfigurationError, redact_url
    from batchrun.provider import BATCH_PROVIDERS, LiteLLMBatchAPI
    from batchrun.spec import PricesSpec
    from batchrun.stats import format_summary

    use_sim = sim_url is not None
    endpoint = "simulator" if use_sim else ", ".join(sorted(
        {redact_url(t["api_base"]) if t["api_base"] else "provider default" for t in targets.values()}))
    apis = {}
    for key, kwargs in targets.items():
        prices = PricesSpec.model_validate(kwargs["prices"]) if kwargs["prices"] else None
        api = LiteLLMBatchAPI(model=kwargs["model"], api_base=sim_url if use_sim else kwargs["api_base"],
                              api_key=kwargs["api_key"], timeout_s=max(job.timeout_s, 300.0), prices=prices)
        if api.provider not in BATCH_PROVIDERS:
            raise ConfigurationError(
                f"{kwargs['model']}: litellm has no batch creation for provider {api.provider!r}; "
                f"batch mode needs one of {', '.join(sorted(BATCH_PROVIDERS))} (use --mode online)")
        apis[key] = api
    params = {key: kwargs["params"] for key, kwargs in targets.items()}
    prep = prepare_run(job, job_path=job_file, endpoint=endpoint, limit=limit, skip_failed=skip_failed,
                       force=force, max_cost_usd=max_cost_usd)
    try:
        for note in prep.notes:
            click.echo(f"batchrun: {note}", err=True)
        ledger = ledger_summary(prep.run_dir)
        live = ledger["live"] if ledger else 0
        if prep.to_do == 0 and not live:
            click.echo(f"Nothing to do: {prep.already_done:,} of {prep.tickets_total:,} tickets already done in "
                       f"{prep.run_dir}. No batch submitted.")
            return 0
        models = ", ".join(t["model"] for t in targets.values())
        click.echo(f"batchrun: {job.name}: batch mode, {prep.to_do:,} to do ({live} part(s) already submitted), "
                   f"model {models} via {endpoint}, run {prep.run_number} in {prep.run_dir}", err=True)
        result = anyio.run(lambda: execute_batch_run(prep, apis, params, no_wait=no_wait,
                                                     stop_submitting=finish_online, time_scale=time_scale,
                                                     progress=progress))
        click.echo(format_summary(result.summary, title=f"{job.name}: run {prep.run_number} (batch) {result.state}"))
        summary = ledger_summary(prep.run_dir) or {"parts": []}
        for part in summary["parts"]:
            counts = part.get("counts") or {}
            click.echo(f"  part {part['number']}: {part['state']} ({part.get('status') or '-'}), "
                       f"{part['tickets']:,} tickets, {counts.get('completed', 0):,} completed, "
                       f"{counts.get('failed', 0):,} failed" + (f"; {part['note']}" if part.get("note") else ""))
        click.echo(f"run directory: {prep.run_dir}  (batchrun status {prep.run_dir})")
        if result.state == "submitted":
            click.echo("Submitted: run the same command later to collect the answers (nothing is sent again).",
                       err=True)
        elif result.error:
            click.echo(f"batchrun: {result.state}: {result.error}", err=True)
        code = result.exit_code
    finally:
        prep.release()
    if finish_online and result.state == "done":
        click.echo("batchrun: --finish-online: sending the tickets left online", err=True)
        code = online(job, job_file, targets, sim_url, limit=limit, skip_failed=skip_failed, force=True,
                      grace=grace, progress=progress, max_cost_usd=max_cost_usd, verbose=verbose)
    return code
