"""`batchrun status`: what a run directory holds, finished or in progress.

    run_status(run_dir) -> dict     counts recomputed from the checkpoint files
                                    (the truth), plus the manifest's state and
                                    last summary
    format_status(status) -> str    the table `batchrun status` prints

Reading takes no lock, so it works while a run is writing: a torn last line
is simply not counted yet. Whether a run is alive is read from its lock
(run.lock held with flock: `checkpoint.lock_state`), not from the manifest,
which a killed run leaves at "running": such a run is shown as "stopped
unexpectedly: pid N is gone", with the tickets its in-flight journal left
open (they may be billed twice).

Grading and comparing runs live in grading.py (`batchrun report`) and
diffing.py (`batchrun diff`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from batchrun.checkpoint import ERRORS, REJECTS, RESULTS, lock_state, open_inflight, read_manifest, scan_jsonl
from batchrun.errors import CheckpointError
from batchrun.stats import format_summary

__all__ = ["format_status", "run_status"]


def run_status(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise CheckpointError(f"{run_dir}: no manifest.json here: not a batchrun run directory")
    results = scan_jsonl(run_dir / RESULTS)
    errors = scan_jsonl(run_dir / ERRORS)  # its cost_usd: answers rejected by the output check
    done, unpriced, tokens = len(results.ids), results.unpriced, results.total_tokens
    cost = results.cost_usd + errors.cost_usd
    failed_ids = errors.ids - results.ids
    rejects = run_dir / REJECTS
    rejected = rejects.read_bytes().count(b"\n") if rejects.exists() else 0
    total = int((manifest.get("input") or {}).get("tickets") or 0)
    state, note = manifest.get("state"), None
    live = lock_state(run_dir) == "held"  # the lock is the truth: a killed run leaves "running" behind
    if state == "running" and not live:
        pid = manifest.get("pid")
        state = "stopped unexpectedly"
        note = (f"pid {pid} is gone" if not _pid_alive(pid) else f"pid {pid} no longer holds run.lock") + (
            " (killed, or the machine stopped): re-run the same command to resume")
    # tickets whose request was in flight when a run died: only meaningful when no run is writing
    maybe_billed = sorted(open_inflight(run_dir, results.ids)) if not live else []
    return {
        "run_dir": str(run_dir),
        "job": (manifest.get("job") or {}).get("name"),
        "state": state,
        "state_note": note,
        "live": live,
        "run": manifest.get("run"),
        "endpoint": manifest.get("endpoint"),
        "input": (manifest.get("input") or {}).get("path"),
        "tickets": total,
        "done": done,
        "failed": len(failed_ids),
        "pending": max(total - done - len(failed_ids), 0),
        "rejected_lines": rejected,
        "cost_usd": round(cost, 6),
        "unpriced_results": unpriced,
        "total_tokens": tokens,
        "started_at": manifest.get("started_at"),
        "finished_at": manifest.get("finished_at"),
        "error": manifest.get("error"),
        "last_summary": manifest.get("summary"),
        "maybe_billed_before": len(maybe_billed),
        "maybe_billed_before_ids": maybe_billed[:100],
    }


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def format_status(status: dict[str, Any]) -> str:
    rows = [
        ("run directory", status["run_dir"]),
        ("job", status["job"]),
        ("state", f"{status['state']} (run {status['run']}, started {status['started_at']}"
                  + (f", finished {status['finished_at']})" if status["finished_at"] else ")")
                  + (f": {status['state_note']}" if status.get("state_note") else "")),
        ("endpoint", status["endpoint"]),
        ("input", status["input"]),
        ("tickets", f"{status['tickets']:,}"),
        ("done", f"{status['done']:,}"),
        ("failed", f"{status['failed']:,}"),
        ("pending", f"{status['pending']:,}"),
        *([("rejected input lines", f"{status['rejected_lines']:,} (rejects.jsonl)")] if status["rejected_lines"] else []),
        ("total tokens", f"{status['total_tokens']:,}"),
        ("cost (all runs)", f"${status['cost_usd']:,.6f}"
         + (f" ({status['unpriced_results']} unpriced)" if status["unpriced_results"] else "")),
    ]
    if status["error"]:
        rows.append(("error", status["error"]))
    if status.get("maybe_billed_before"):
        ids = status["maybe_billed_before_ids"]
        more = status["maybe_billed_before"] - len(ids[:10])
        rows.append(("may be billed twice", (
            f"{status['maybe_billed_before']:,} ticket(s) were in flight when the last run died: "
            + ", ".join(ids[:10]) + (f" and {more:,} more" if more > 0 else "")
            + " (the next run marks their lines maybe_billed_before)")))
    width = max(len(label) for label, _ in rows)
    text = "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
    if status["last_summary"]:
        text += "\n\n" + format_summary(status["last_summary"], title=f"last run (run {status['run']})")
    return text
