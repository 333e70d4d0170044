"""The one finish of every run, online or batch: state -> exit code -> manifest.

    async with RunFinish(prep, stats, failed_ids, writer) as finish:   manifest "running"
        ... the run ...
        finish.end("done" | "interrupted" | "budget_exhausted" | "submitted" | "failed", ...)
    result = finish.result()                                          a RunResult

Leaving the block, in a shielded scope whatever happened: the checkpoint
writer is flushed and closed, then the manifest is written with the final
state, counts and summary. A cancellation there ends the run "interrupted",
an exception "failed" with its message (and is raised on); a writer or
manifest that cannot be written turns any state into "failed". A full disk
gets the space held since the start back first (rundir/layout.reserve_space),
so that its manifest still says "failed", with the summary.

    exit_code(state, ...)   the exit code of a final state (README, "Exit codes"):
        interrupted -> 128 + signal; stopped by fail-fast -> 4; failed -> 1;
        budget_exhausted -> 5; submitted -> 0; done with failed tickets -> 3;
        done -> 0
    build_manifest(...)     manifest.json's content (rundir/manifest.py writes it)
"""

from __future__ import annotations

import os
import signal
import time
from types import TracebackType
from typing import Awaitable, Callable, Mapping

import anyio

from batchrun import __version__
from batchrun.analysis.stats import RunStats
from batchrun.errors import BatchrunError, CheckpointError, DiskFullError, ExitCode
from batchrun.execution.preparation import PreparedRun
from batchrun.execution.result import RunResult
from batchrun.execution.ticket_runner import utc_now
from batchrun.job.input_formats import input_format_of
from batchrun.providers.litellm_setup import litellm_version
from batchrun.rundir.checkpoint import CheckpointWriter
from batchrun.rundir.layout import release_space
from batchrun.rundir.manifest import Manifest, input_record, write_manifest

__all__ = ["MAX_HISTORY", "RunFinish", "build_manifest", "exit_code"]

MAX_HISTORY = 100  # runs remembered in manifest.json
STATES = frozenset({"running", "done", "interrupted", "failed", "budget_exhausted", "submitted"})


def exit_code(state: str, *, failed_tickets: int, stop_reason: str | None = None,
              signal_number: int | None = None) -> int:
    """The exit code of a run that ended in `state` (module docstring)."""
    if state == "interrupted":
        return 128 + (signal_number or signal.SIGINT)
    if stop_reason == "fail_fast":
        return int(ExitCode.ABORTED)
    if state == "failed":
        return int(ExitCode.ERROR)
    if state == "budget_exhausted":
        return int(ExitCode.BUDGET_EXHAUSTED)
    if state == "submitted":
        return int(ExitCode.OK)
    if failed_tickets:
        return int(ExitCode.TICKETS_FAILED)
    return int(ExitCode.OK)


def build_manifest(prep: PreparedRun, stats: RunStats, failed_ids: set[str], state: str, started_at: str,
                   finished_at: str | None, error: str | None) -> Manifest:
    """manifest.json for a run in `state`: what ran, its counts and summary, the runs before."""
    done_total = len(prep.checkpoint.done_ids)
    summary = stats.summary()
    history = list(prep.manifest.get("history") or [])
    entry = {
        "run": prep.run_number, "state": state, "started_at": started_at, "finished_at": finished_at,
        "done": stats.done, "failed": stats.failed, "requests": stats.attempts,
        "cost_usd": summary["cost_usd"], "stop_reason": stats.stop_reason,
    }
    history = [h for h in history if h.get("run") != prep.run_number][-(MAX_HISTORY - 1):] + [entry]
    return {
        "batchrun_version": __version__,
        "litellm_version": litellm_version(),
        "job": {
            "name": prep.job.name,
            "path": str(prep.job_path) if prep.job_path else None,
            "fingerprint": prep.job.fingerprint(),
            "fingerprint_sha256": prep.job.fingerprint_hash(),
        },
        "input": {**input_record(prep.scan.path, prep.run_dir), "size": prep.scan.size, "sha256": prep.scan.sha256,
                  "tickets": prep.scan.tickets, "format": input_format_of(prep.scan.path, prep.job.input_format)},
        "endpoint": prep.endpoint,
        "limit": prep.limit,
        "run": prep.run_number,
        "pid": os.getpid(),
        "state": state,
        "started_at": started_at,
        "finished_at": finished_at,
        "error": error,
        "counts": {
            "tickets": prep.scan.tickets,
            "done": done_total,
            "failed": len(failed_ids),
            "rejected_lines": prep.scan.problem_count,
        },
        "max_cost_usd": prep.max_cost_usd,
        "summary": summary,
        "history": history,
    }


class RunFinish:
    """The finish of one run (module docstring). `extra()` adds keys to the manifest (batch mode's
    parts); `cleanup` callables run, shielded, before the writer is closed."""

    def __init__(self, prep: PreparedRun, stats: RunStats, failed_ids: set[str], writer: CheckpointWriter, *,
                 extra: Callable[[], Mapping[str, object]] | None = None,
                 cleanup: tuple[Callable[[], Awaitable[None] | None], ...] = ()) -> None:
        self.prep = prep
        self.stats = stats
        self.failed_ids = failed_ids
        self.writer = writer
        self.extra = extra
        self.cleanup = cleanup
        self.started_at = utc_now()
        self.state = "failed"  # until end() says otherwise
        self.error: str | None = None
        self.stop_reason: str | None = None
        self.signal_number: int | None = None

    def end(self, state: str, *, error: str | None = None, stop_reason: str | None = None,
            signal_number: int | None = None) -> None:
        """How the run ended, as the run itself saw it (before its files are closed)."""
        if state not in STATES:
            raise ValueError(f"not a run state: {state!r}")
        self.state, self.error, self.stop_reason, self.signal_number = state, error, stop_reason, signal_number

    def _manifest(self, state: str, finished_at: str | None, error: str | None) -> Manifest:
        manifest = build_manifest(self.prep, self.stats, self.failed_ids, state, self.started_at, finished_at, error)
        if self.extra is not None:
            manifest.update(self.extra())
        return manifest

    async def __aenter__(self) -> RunFinish:
        write_manifest(self.prep.run_dir, self._manifest("running", None, None))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        if exc is not None:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                self.state = "interrupted"
            else:
                self.state = "failed"
                self.error = str(exc) if isinstance(exc, BatchrunError) else f"{type(exc).__name__}: {exc}"
        with anyio.CancelScope(shield=True):
            self.stats.finished = time.monotonic()
            for step in self.cleanup:
                pending = step()
                if pending is not None:
                    await pending
            try:
                await self.writer.close()
            except (OSError, CheckpointError) as error:  # the disk went away: say so, keep the first error
                self.error = self.error or f"cannot flush checkpoint: {error}"
                self.state = "failed"
            self._write_last_manifest()
        return False

    def _write_last_manifest(self) -> None:
        """The final manifest; on a full disk, after giving back the space held since the start
        (layout.reserve_space), so that a run the disk stopped still says `failed`, with its summary."""
        for attempt in (1, 2):
            try:
                write_manifest(self.prep.run_dir, self._manifest(self.state, utc_now(), self.error))
                return
            except DiskFullError as error:
                self.error = self.error or str(error)
                self.state = "failed"
                if attempt == 1 and release_space(self.prep.run_dir):
                    continue
                return
            except CheckpointError as error:
                self.error = self.error or str(error)
                self.state = "failed"
                return

    def result(self) -> RunResult:
        """The RunResult of the finished run: its state, exit code and summary."""
        code = exit_code(self.state, failed_tickets=self.stats.failed, stop_reason=self.stop_reason,
                         signal_number=self.signal_number)
        return RunResult(state=self.state, exit_code=code, summary=self.stats.summary(), error=self.error)
