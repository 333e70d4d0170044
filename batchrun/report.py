"""`batchrun status`: what a run directory holds, finished or in progress.

    run_status(run_dir) -> dict     counts recomputed from the checkpoint files
                                    (the truth), plus the manifest's state and
                                    last summary
    format_status(status) -> str    the table `batchrun status` prints

Reading takes no lock, so it works while a run is writing: a torn last line
is simply not counted yet.

Grading and comparing runs live in grading.py (`batchrun report`) and
diffing.py (`batchrun diff`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchrun.checkpoint import ERRORS, REJECTS, RESULTS, read_manifest, scan_jsonl
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
    return {
        "run_dir": str(run_dir),
        "job": (manifest.get("job") or {}).get("name"),
        "state": manifest.get("state"),
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
        "batch": _batch_parts(run_dir),
    }


def _batch_parts(run_dir: Path) -> dict[str, Any] | None:
    """A batch-mode run's parts (batches.json), or None."""
    from batchrun.batch_mode import ledger_summary

    return ledger_summary(run_dir)


def format_status(status: dict[str, Any]) -> str:
    rows = [
        ("run directory", status["run_dir"]),
        ("job", status["job"]),
        ("state", f"{status['state']} (run {status['run']}, started {status['started_at']}"
                  + (f", finished {status['finished_at']})" if status["finished_at"] else ")")),
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
    batch = status.get("batch")
    if batch:
        for part in batch["parts"]:
            counts = part.get("counts") or {}
            rows.append((f"batch part {part['number']}", f"{part['state']} (provider: {part.get('status') or '-'}), "
                         f"{part['tickets']:,} tickets, {counts.get('completed', 0):,} completed, "
                         f"{counts.get('failed', 0):,} failed"
                         + (f", {part['retry']:,} to resubmit" if part.get("retry") else "")
                         + (f"; {part['note']}" if part.get("note") else "")))
    width = max(len(label) for label, _ in rows)
    text = "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
    if status["last_summary"]:
        text += "\n\n" + format_summary(status["last_summary"], title=f"last run (run {status['run']})")
    return text
