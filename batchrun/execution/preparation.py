"""prepare_run: everything before the first request of a run, synchronous, no network.

Opens and locks the run directory, cuts torn checkpoint lines, checks the
whole input in one pass (every bad line is reported before any request; with
on_bad_input = "skip" they go to rejects.jsonl), refuses to resume a run
directory made by a different job, input or endpoint (unless force), names the
tickets the last run left in flight (they may be billed twice), and counts what
is left to do: a PreparedRun. Tickets whose latest failure is permanent
(errors.PERMANENT_KINDS: context window, content policy, invalid request, auth,
not found) are kept as they are, counted and named in a note, unless
`retry_permanent`; transient failures are retried (all failures are kept with
`skip_failed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet

import orjson

from batchrun.errors import (
    RunMismatchError,
    TicketError,
    redact_endpoint,
)
from batchrun.job.spec import JobSpec
from batchrun.job.tickets import InputScan, file_digest, scan_from_index, scan_input
from batchrun.rundir.checkpoint import (
    Checkpoint,
    open_checkpoint,
    read_input_index,
    write_input_index,
    write_rejects,
)
from batchrun.rundir.lines import permanent_failures
from batchrun.rundir.manifest import Manifest, fail_fast_runs, read_manifest

MAYBE_BILLED_IDS_SHOWN = 20


def describe_maybe_billed(ids: list[str]) -> str:
    """The warning for tickets the in-flight journal says may have been paid for already."""
    shown = ", ".join(ids[:MAYBE_BILLED_IDS_SHOWN]) + (f", ... ({len(ids) - MAYBE_BILLED_IDS_SHOWN} more)"
                                                      if len(ids) > MAYBE_BILLED_IDS_SHOWN else "")
    return (f"{len(ids)} ticket(s) were in flight when the last run died (or was interrupted): they may be "
            f"billed twice; their new lines say maybe_billed_before: {shown}")


@dataclass
class PreparedRun:
    job: JobSpec
    job_path: Path | None
    checkpoint: Checkpoint
    scan: InputScan
    endpoint: str  # "simulator", a redacted api_base, or "provider default"
    limit: int | None
    skip_failed: bool
    run_number: int  # 1 for the first invocation on this run directory
    manifest: Manifest  # the run directory's, as the last run left it ({} for a new one)
    tickets_total: int  # tickets considered (after limit)
    already_done: int
    skipped_failed: int
    to_do: int
    skipped_permanent: int = 0  # failed for good in an earlier run, not retried (--retry-permanent sends them)
    max_cost_usd: float | None = None  # the budget across all runs on this directory
    notes: list[str] = field(default_factory=list)  # things the user should know

    @property
    def run_dir(self) -> Path:
        return self.checkpoint.run_dir

    def release(self) -> None:
        self.checkpoint.release()


def mismatches(old: Manifest, job: JobSpec, scan: InputScan, endpoint: str) -> list[str]:
    changes: list[str] = []
    old_fp = (old.get("job") or {}).get("fingerprint") or {}
    new_fp = job.fingerprint()
    for key in sorted(set(old_fp) | set(new_fp)):
        if old_fp.get(key) != new_fp.get(key):
            changes.append(f"job {key} changed")
    old_input = old.get("input") or {}
    if old_input.get("sha256") and old_input.get("sha256") != scan.sha256:
        changes.append(
            f"input changed ({old_input.get('path')}, {old_input.get('size')} bytes -> "
            f"{scan.path}, {scan.size} bytes)"
        )
    before = redact_endpoint(old.get("endpoint"))  # as shown now: a manifest written before kept keys in paths
    if before and before != endpoint:
        changes.append(f"endpoint changed ({before} -> {endpoint})")
    return changes


def prepare_run(
    job: JobSpec,
    *,
    job_path: Path | str | None = None,
    endpoint: str = "provider default",
    limit: int | None = None,
    skip_failed: bool = False,
    force: bool = False,
    max_cost_usd: float | None = None,
    retry_permanent: bool = False,
) -> PreparedRun:
    """Everything before the first request; raises BatchrunError subclasses."""
    job_path = Path(job_path) if job_path is not None else None
    templates = job.prompt_templates
    budget = max_cost_usd if max_cost_usd is not None else job.max_cost_usd
    if budget != job.max_cost_usd:  # the job says the budget, for whatever runs it (worker processes, Ray)
        job = job.with_overrides(max_cost_usd=budget)
    checkpoint = open_checkpoint(job.resolved_run_dir(), totals=budget is not None, force=force)
    try:
        skip_bad = job.on_bad_input == "skip"
        # the resume plan, the same for a saved index and a full scan
        max_problems = None if skip_bad else 20
        failed_ids: AbstractSet[str] = checkpoint.failed_ids if skip_failed else frozenset()
        old: Manifest = read_manifest(checkpoint.run_dir) or {}
        kept = permanent_failures(checkpoint.failed_kinds, fail_fast_runs(old))
        permanent_ids: AbstractSet[str] = frozenset() if retry_permanent else kept
        # what makes a saved index valid besides the input's bytes
        key = orjson.dumps([job.id_field, [t.fields for t in templates], job.max_line_bytes]
                           + ([job.input_format] if job.input_format else [])
                           + ["ids-v2"]).decode()  # v2: ids checked by tickets.check_id (an older index was not)
        index = read_input_index(checkpoint.run_dir)
        scan = None
        if index is not None and index.get("key") == key:
            sha256, size = file_digest(job.input)
            if (sha256, size) == (index.get("sha256"), index.get("size")):
                scan = scan_from_index(job.input, index, max_problems=max_problems, done_ids=checkpoint.done_ids,
                                       failed_ids=failed_ids, limit=limit, permanent_ids=permanent_ids)
        if scan is None:
            scan = scan_input(job.input, job.id_field, templates, max_line_bytes=job.max_line_bytes,
                              keep_ids=True, input_format=job.input_format, max_problems=max_problems,
                              done_ids=checkpoint.done_ids, failed_ids=failed_ids, limit=limit,
                              permanent_ids=permanent_ids)
            if not scan.file_problems and (not scan.problem_count or skip_bad):
                write_input_index(checkpoint.run_dir, scan.to_index(key))
            scan.ids = None  # the index is on disk; free the memory
        notes = list(checkpoint.repaired)
        if checkpoint.maybe_billed:
            notes.append(describe_maybe_billed(list(checkpoint.maybe_billed)))
        if scan.file_problems or (scan.problem_count and not skip_bad):
            raise TicketError(scan.describe_problems())
        if scan.skipped_permanent:
            kinds: dict[str, int] = {}
            for kind, _run in (checkpoint.failed_kinds[i] for i in kept):
                kinds[kind] = kinds.get(kind, 0) + 1
            by_kind = (" (" + ", ".join(f"{kind} {count:,}" for kind, count in sorted(kinds.items())) + ")"
                       if sum(kinds.values()) == scan.skipped_permanent else "")
            notes.append(f"{scan.skipped_permanent:,} permanent failure(s) from earlier runs, not retried{by_kind}: "
                         "--retry-permanent to send them again")
        if old and not force:
            changes = mismatches(old, job, scan, endpoint)
            if changes:
                raise RunMismatchError(
                    f"{checkpoint.run_dir} holds a run of a different job or input:\n  "
                    + "\n  ".join(changes)
                    + "\nUse another --run-dir for the new run, or --force to resume anyway."
                )
        if skip_bad:
            rejects = write_rejects(checkpoint.run_dir, job.input, scan.problems)
            if scan.problem_count:
                notes.append(f"{scan.problem_count} bad input line(s) skipped (on_bad_input = \"skip\"): see {rejects}")
        return PreparedRun(
            job=job,
            job_path=job_path,
            checkpoint=checkpoint,
            scan=scan,
            endpoint=endpoint,
            limit=limit,
            skip_failed=skip_failed,
            run_number=int(old.get("run", 0)) + 1,
            manifest=old,
            tickets_total=scan.selected,
            already_done=scan.already_done,
            skipped_failed=scan.skipped_failed,
            skipped_permanent=scan.skipped_permanent,
            to_do=scan.selected - scan.already_done - scan.skipped_failed - scan.skipped_permanent,
            max_cost_usd=budget,
            notes=notes,
        )
    except BaseException:
        checkpoint.release()
        raise
