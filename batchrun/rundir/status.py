"""The read side of a run directory: everything that looks at one without writing.

    iter_jsonl(path)            every complete object line with an id of a checkpoint
                                file (results.jsonl, errors.jsonl); a torn last line
                                is skipped, a missing file is empty
    read_manifest(run_dir)      the manifest (checkpoint.py's reader), or None
    find_units(path)            ("run", [unit]) or ("compare", one unit per models/<key>/):
                                what `batchrun report` and `batchrun diff` read
    run_status(run_dir) -> dict counts recomputed from the checkpoint files (the
                                truth), the manifest's state and last summary:
                                what `batchrun status` prints; with a --limit,
                                what the last run was asked to do (asked,
                                pending_asked) apart from the input not asked yet;
                                for a run still "running" (alive or killed -9), whose
                                manifest summary is the one it started with, that
                                run's counts from the files (`current_run`, run_counts)
    compare_status(path)        one run_status per model of a compare directory
    batch_parts(run_dir)        a batch-mode run's parts (batches.json), or None
    batch_anomalies(run_dir)    its provider output lines not believed (batch_anomalies.jsonl)
    status_from_counts(...)     that JSON from counts: `batchrun serve` builds it from
                                the numbers it keeps while following a run

Reading takes no lock, so it works while a run is writing: a torn last line is
simply not counted yet. Whether a run is alive is read from its lock (run.lock
held with flock: `checkpoint.lock_state`), not from the manifest, which a
killed run leaves at "running": such a run shows as "stopped unexpectedly: pid
N is gone", with the tickets its in-flight journal left open (they may be
billed twice). checkpoint.py is the write side (and owns the file
names and the manifest format); grading.py, diffing.py and plan.py read
through here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import AbstractSet, Any, Mapping, TypedDict

from batchrun.errors import CheckpointError, NotARunDirError, ReportError, redact_endpoint
from batchrun.records import KindTotals
from batchrun.rundir.layout import LEDGER, LIVE_PART_STATES
from batchrun.rundir.lines import permanent_failures
from batchrun.rundir.manifest import Manifest, fail_fast_runs, read_manifest

MODELS_DIR = "models"  # a compare directory: models/<key>/ run directories

#: The status JSON of one run directory (`status_from_counts` defines its keys; `batchrun status
#: --json`, serve's /api/runs/NAME): counts, the manifest's state and values as it recorded them.
RunStatus = dict[str, Any]


class PartStatus(TypedDict):
    """One part of batches.json (batch/ledger.Part) as `status` shows it."""

    number: int
    model_key: str
    state: str
    status: str | None  # the provider's batch status
    tickets: int
    counts: dict[str, int] | None  # the provider's request_counts
    batch_id: str | None
    retry: int
    note: str | None
    completion_window: str | None  # the window the batch was created with ("24h")
    submitted_at: float | None
    expires_at: float | None  # when that window ends


class BatchParts(TypedDict):
    """The parts of a batch-mode run directory as `status` shows them (batch_parts)."""

    run_key: str | None
    parts: list[PartStatus]  # the parts not discarded
    live: int  # parts still at the provider (or on their way to it)




@dataclass
class RunUnit:
    """One model's run directory (a plain run, or one model of a compare directory)."""

    key: str  # the model key (compare directory) or the job name
    model: str  # the job's model string, from the manifest
    run_dir: Path
    manifest: Manifest

    @property
    def fingerprint(self) -> dict[str, Any]:  # the job's, as its manifest recorded it
        return ((self.manifest.get("job") or {}).get("fingerprint")) or {}

    @property
    def id_field(self) -> str:
        return str(self.fingerprint.get("id_field") or "id")

    @property
    def job_labels(self) -> list[str]:
        labels = (self.fingerprint.get("output") or {}).get("labels") or []
        return [str(label) for label in labels]


def _manifest_model(manifest: Manifest) -> str:
    fingerprint = (manifest.get("job") or {}).get("fingerprint") or {}
    model = fingerprint.get("model")
    if isinstance(model, str):
        return model
    models = fingerprint.get("models")
    if isinstance(models, list):  # a routed / multi-model job in one directory
        names = [m if isinstance(m, str) else str((m or {}).get("model") or (m or {}).get("name") or "?")
                 for m in models]
        return ", ".join(names)
    return "?"


def _job_order(units: list[RunUnit]) -> list[RunUnit]:
    """A compare directory's models in the order the job file lists them (when it can be read),
    else by directory name."""
    job_path = (units[0].manifest.get("job") or {}).get("path")
    names: list[str] = []
    if isinstance(job_path, str) and Path(job_path).is_file():
        try:
            from batchrun.job.spec import load_job

            names = [str(getattr(entry, "name", "")) for entry in getattr(load_job(job_path), "models", None) or []]
        except Exception:  # an edited or moved job file: directory order
            names = []
    return sorted(units, key=lambda u: (names.index(u.key) if u.key in names else len(names), u.key))


def find_units(path: Path) -> tuple[str, list[RunUnit]]:
    """("compare", one unit per models/<key>/) or ("run", [the run directory])."""
    path = Path(path)
    if not path.is_dir():
        raise NotARunDirError(f"{path}: no such directory")
    units: list[RunUnit] = []
    models = path / MODELS_DIR
    try:
        if models.is_dir():
            for sub in sorted(p for p in models.iterdir() if p.is_dir()):
                manifest = read_manifest(sub)
                if manifest is not None:
                    units.append(RunUnit(sub.name, _manifest_model(manifest), sub, manifest))
        if units:
            return "compare", _job_order(units)
        manifest = read_manifest(path)
    except CheckpointError as exc:
        raise ReportError(str(exc)) from None
    if manifest is None:
        raise NotARunDirError(f"{path}: no manifest.json here nor in {MODELS_DIR}/*/: "
                              "not a batchrun run or compare directory")
    name = str((manifest.get("job") or {}).get("name") or path.name)
    return "run", [RunUnit(name, _manifest_model(manifest), path, manifest)]


def compare_status(path: Path) -> list[RunStatus] | None:
    """One run_status per model of a compare directory (models/<key>/), in the job's order,
    each with its "model" key; None when `path` is not a compare directory."""
    if not (Path(path) / MODELS_DIR).is_dir():
        return None
    mode, units = find_units(path)
    if mode != "compare":
        return None
    return [{**run_status(unit.run_dir), "model": unit.key, "model_name": unit.model} for unit in units]


def run_status(run_dir: Path) -> RunStatus:
    """Counts recomputed from the checkpoint files, plus the manifest's state and last summary."""
    from batchrun.rundir.layout import ERRORS, REJECTS, RESULTS
    from batchrun.rundir.lines import scan_jsonl

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise NotARunDirError(f"{run_dir}: no manifest.json here: not a batchrun run directory")
    results = scan_jsonl(run_dir / RESULTS)
    errors = scan_jsonl(run_dir / ERRORS, kinds=True)  # its cost_usd: answers rejected by the output check
    done, unpriced, tokens = len(results.ids), results.unpriced, results.total_tokens
    cost = results.cost_usd + errors.cost_usd
    failed_ids = errors.ids - results.ids
    kinds = errors.kind_by_id or {}
    permanent = len(permanent_failures({i: kinds[i] for i in failed_ids if i in kinds}, fail_fast_runs(manifest)))
    rejects = run_dir / REJECTS
    rejected = rejects.read_bytes().count(b"\n") if rejects.exists() else 0
    status = status_from_counts(run_dir, manifest, done=done, failed=len(failed_ids), failed_permanent=permanent,
                                cost_usd=cost,
                                unpriced=unpriced, total_tokens=tokens, rejected_lines=rejected,
                                cache_hits=results.cache_hits, cost_saved_usd=results.cost_saved_usd,
                                done_ids=results.ids, kinds=results.kinds, requests=results.requests + errors.requests,
                                upstream_requests=(results.upstream_requests + errors.upstream_requests
                                                   if results.upstream_lines + errors.upstream_lines else None),
                                upstream_unreported=results.upstream_unreported + errors.upstream_unreported)
    if manifest.get("state") == "running" and isinstance(manifest.get("run"), int):
        # the manifest's summary was written when the run started (all zeros): what that run did so far,
        # running or killed, is in the files
        status["current_run"] = run_counts(run_dir, manifest["run"])
    return status


def run_counts(run_dir: Path, run: int) -> dict[str, Any]:
    """What run `run` of a directory has on disk: tickets done and failed, money spent, requests
    sent and the upstream requests the endpoint reported (for a run still going, or one that died
    before writing its summary)."""
    from batchrun.records import line_money
    from batchrun.rundir.layout import ERRORS, RESULTS
    from batchrun.rundir.lines import iter_lines

    counts: dict[str, Any] = {"run": run, "done": 0, "failed": 0, "cost_usd": 0.0, "requests": 0,
                              "upstream_requests": None}
    done: set[str] = set()
    failed: set[str] = set()
    for name, ids in ((RESULTS, done), (ERRORS, failed)):
        for line in iter_lines(Path(run_dir) / name):
            if line.get("run") != run:
                continue
            ids.add(str(line["id"]))
            money = line_money(line)
            counts["cost_usd"] += money.spent_usd
            counts["requests"] += money.requests
            if money.upstream_requests is not None:
                counts["upstream_requests"] = (counts["upstream_requests"] or 0) + money.upstream_requests
    counts["done"], counts["failed"] = len(done), len(failed - done)
    counts["cost_usd"] = round(counts["cost_usd"], 6)
    return counts


def status_from_counts(run_dir: Path, manifest: Mapping[str, Any], *, done: int, failed: int, cost_usd: float,
                       unpriced: int, total_tokens: int, rejected_lines: int, cache_hits: int = 0,
                       cost_saved_usd: float = 0.0, live: bool | None = None,
                       done_ids: AbstractSet[str] | None = None, failed_permanent: int = 0, kinds: KindTotals | None = None,
                       requests: int | None = None, upstream_requests: int | None = None,
                       upstream_unreported: int = 0) -> RunStatus:
    """The status JSON (`batchrun status --json`, and `batchrun serve`'s /api/runs/NAME) from a
    run directory's counts: the one definition of its keys and rounding. `live`: whether a run
    holds the lock (None: probe it here); `done_ids`: the ids with a result (None: read them,
    only for a dead run, to name its tickets left in flight); `failed_permanent`: of the failed,
    those whose latest failure is permanent (a re-run keeps them; the rest it retries); `requests`:
    the requests the lines record (all runs), `upstream_requests` what the endpoint reported it sent
    upstream for them (None: it never said), `upstream_unreported` the attempts whose answer did not say."""
    from batchrun.rundir.checkpoint import lock_state
    from batchrun.rundir.journal import open_inflight
    from batchrun.rundir.layout import RESULTS
    from batchrun.rundir.lines import scan_jsonl

    total = int((manifest.get("input") or {}).get("tickets") or 0)
    state, note = manifest.get("state"), None
    if live is None:
        live = lock_state(run_dir) == "held"  # the lock is the truth: a killed run leaves "running" behind
    if state == "running" and not live:
        pid = manifest.get("pid")
        state = "stopped unexpectedly"
        note = (f"pid {pid} is gone" if not _pid_alive(pid) else f"pid {pid} no longer holds run.lock") + (
            " (killed, or the machine stopped): re-run the same command to resume")
    # tickets whose request was in flight when a run died: only meaningful when no run is writing
    maybe_billed: list[str] = []
    if not live:
        ids = done_ids if done_ids is not None else scan_jsonl(Path(run_dir) / RESULTS).ids
        maybe_billed = sorted(open_inflight(run_dir, ids))
    anomalies, anomalies_cost = batch_anomalies(run_dir)
    limit = manifest.get("limit")
    asked = min(int(limit), total) if isinstance(limit, int) else total  # what the last run was asked to do
    finished = done + failed
    return {
        "run_dir": str(run_dir),
        "job": (manifest.get("job") or {}).get("name"),
        "state": state,
        "state_note": note,
        "live": live,
        "run": manifest.get("run"),
        "endpoint": redact_endpoint(manifest.get("endpoint")),  # an older manifest may hold a key
        "input": _input_shown(run_dir, manifest),
        "tickets": total,
        "done": done,
        "failed": failed,
        "failed_permanent": failed_permanent,  # kept by a re-run (--retry-permanent sends them)
        "failed_transient": failed - failed_permanent,  # retried by a re-run
        "pending": max(total - done - failed, 0),  # of the whole input
        "limit": limit if isinstance(limit, int) else None,  # the last run's --limit
        "asked": asked,
        "pending_asked": max(asked - finished, 0),  # of what the last run was asked to do
        "not_asked": max(total - max(asked, finished), 0),  # beyond the limit: no run was asked yet
        "rejected_lines": rejected_lines,
        "cost_usd": round(cost_usd + anomalies_cost, 6),
        "unpriced_results": unpriced,
        "cache_hits": cache_hits,
        "cost_saved_usd": round(cost_saved_usd, 6),
        "total_tokens": total_tokens,
        # token kinds of the results: cached share of input tokens, what prompt caching saved, tiers
        **(kinds or KindTotals()).as_dict(),
        "requests": requests,  # all runs, as the lines record them
        "upstream_requests": upstream_requests,
        "upstream_unreported": upstream_unreported if upstream_requests is not None else 0,
        "started_at": manifest.get("started_at"),
        "finished_at": manifest.get("finished_at"),
        "error": manifest.get("error"),
        # a run still "running" (alive, or killed) has the summary it was started with: all zeros
        "last_summary": manifest.get("summary") if manifest.get("state") != "running" else None,
        "current_run": None,  # run_status: that run's counts from the files
        "batch": batch_parts(run_dir),
        "batch_anomalies": anomalies,  # batch mode: provider output lines not believed, by kind
        "batch_anomalies_cost_usd": round(anomalies_cost, 6),  # ... billed, carried by no ticket's line
        "maybe_billed_before": len(maybe_billed),
        "maybe_billed_before_ids": maybe_billed[:100],
    }


def _input_shown(run_dir: Path, manifest: Mapping[str, Any]) -> str | None:
    """The run's input as found from here (manifest.find_input), else as the manifest names it."""
    from batchrun.rundir.manifest import find_input

    found, _ = find_input(run_dir, manifest)
    return str(found) if found is not None else (manifest.get("input") or {}).get("path")


def batch_anomalies(run_dir: Path) -> tuple[dict[str, int], float]:
    """Batch mode's batch_anomalies.jsonl (batch/outputs.py): lines by kind, and what the billed ones
    no ticket's line carries cost (unknown or null custom_ids)."""
    from batchrun.records import line_money
    from batchrun.rundir.layout import BATCH_ANOMALIES
    from batchrun.rundir.lines import iter_lines

    counts: dict[str, int] = {}
    cost = 0.0
    for record in iter_lines(Path(run_dir) / BATCH_ANOMALIES, with_id=False):
        kind = str(record.get("kind"))
        counts[kind] = counts.get(kind, 0) + 1
        if record.get("counted") == "anomaly":
            cost += line_money({"cost_usd": record.get("billed_usd")}).spent_usd
    return dict(sorted(counts.items())), cost


def batch_parts(run_dir: Path) -> BatchParts | None:
    """The parts of a batch-mode run directory (state, provider status, counts), or None."""
    import orjson

    path = Path(run_dir) / LEDGER
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read the batch ledger: {exc}") from None
    parts: list[PartStatus] = [
        {"number": p.get("number"), "model_key": p.get("model_key"), "state": p.get("state"), "status": p.get("status"),
         "tickets": p.get("tickets"), "counts": p.get("counts"), "batch_id": p.get("batch_id"), "retry": p.get("retry"),
         "note": p.get("note"), "completion_window": p.get("completion_window"), "submitted_at": p.get("submitted_at"),
         "expires_at": p.get("expires_at")}
        for p in data.get("parts") or [] if p.get("state") != "discarded"]
    return {"run_key": data.get("run_key"), "parts": parts,
            "live": sum(1 for p in parts if p["state"] in LIVE_PART_STATES)}


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
