"""The runs under RUNS_DIR, as the page and the JSON API see them.

    RunsRoot(root)             the directory served: which names are runs, and
                               `resolve(name)`, the only way from a name in a
                               URL to a path (one plain directory name directly
                               under the root: no "..", no "/", no absolute
                               path, no symlink, nothing outside the root)
    lock_held(run_dir)         whether a process holds the run's run.lock flock
                               (read from /proc/locks, so the probe never takes
                               the lock a starting run needs)
    RunWatch(name, path)       one run (a run directory or a compare directory,
                               models/<key>/), followed incrementally: one
                               UnitWatch per run directory, each with a
                               JsonlFollower on results.jsonl and errors.jsonl
                               and a UnitNumbers; `refresh()` reads what was
                               appended, `snapshot()` is the JSON of the run page,
                               whose `status` is rundir.status_from_counts: the
                               numbers of `batchrun status --json`
    grade_run(path, previous)  accuracy, confusion matrix and the diff against the
                               previous run (run in a child process: serve/grade.py)
    live_state(...)            running, finished, failed, interrupted,
                               budget exhausted, submitted, stopped unexpectedly

Everything here reads the run directory; nothing talks to the running
process or writes into RUNS_DIR. Grading (accuracy, confusion matrix) and the
change against the previous run of the same job are computed by
grading.analyze and diffing.diff_analyses once a run is no longer running,
and cached until its files change.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import orjson

from batchrun.analysis.documents import PairDiff, StoredJSON
from batchrun.analysis.stats import percentiles
from batchrun.analysis.ticket_detail import ANSWER_QUOTING_KINDS
from batchrun.errors import is_permanent, redact_secrets
from batchrun.rundir.layout import ERRORS, LOCK, MANIFEST, REJECTS, RESULTS
from batchrun.rundir.manifest import fail_fast_runs
from batchrun.rundir.status import MODELS_DIR, status_from_counts
from batchrun.serve.follow import JsonlFollower, UnitNumbers, open_nofollow
from batchrun.serve.payloads import (
    BatchPart,
    FailedTicketShown,
    DiffView,
    FailureGroup,
    GradedModel,
    GradeResult,
    RunLine,
    RunSnapshot,
    UnitDetail,
)

__all__ = ["RunsRoot", "RunWatch", "UnsafeName", "grade_run", "live_state", "lock_held"]

BATCH_FILES = ("batches.json", "batch.json", "parts.json")  # batch mode's part records, when present
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")
# error kinds whose message quotes the model's answer: shown only with --show-text
TEXT_KINDS = ANSWER_QUOTING_KINDS  # failure messages that quote the answer: only with --show-text
QUIET_S = 2.0  # a stopped run is graded once its files have not changed for this long

#: (mtime_ns, size) of a file, None when it is absent.
FileSignature: TypeAlias = "tuple[int, int] | None"
#: What changes when a run directory's files do: its manifest's, results' and errors' signatures.
UnitSignature: TypeAlias = "tuple[FileSignature, ...]"

STATE_LABELS = {
    "done": "finished",
    "failed": "failed",
    "interrupted": "interrupted",
    "budget_exhausted": "budget exhausted",
    "submitted": "submitted",
}


class UnsafeName(ValueError):
    """A run name that is not one plain directory directly under RUNS_DIR."""


# --------------------------------------------------------------------------------------------
# Liveness
# --------------------------------------------------------------------------------------------


def _held_flocks() -> set[tuple[int, int, int]] | None:
    """(major, minor, inode) of every file with an flock held, or None when /proc/locks is unreadable."""
    try:
        with open("/proc/locks", "rb") as handle:
            text = handle.read()
    except OSError:
        return None
    held = set()
    for line in text.splitlines():
        parts = line.split()
        if b"FLOCK" not in parts or b"->" in parts:  # "->": a waiter, not a holder
            continue
        try:
            major, minor, inode = parts[5].split(b":")
            held.add((int(major, 16), int(minor, 16), int(inode)))
        except (IndexError, ValueError):
            continue
    return held


def lock_held(run_dir: Path, held: set[tuple[int, int, int]] | None = None) -> bool:
    """True while a batchrun process holds `run_dir/run.lock` (checkpoint._acquire_lock)."""
    path = Path(run_dir) / LOCK
    try:
        st = path.lstat()
    except OSError:
        return False
    held = _held_flocks() if held is None else held
    if held is not None:
        return (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in held
    try:  # no /proc/locks (not Linux): the pid the lock file names is alive
        pid = int(path.read_text().strip() or 0)
        if pid <= 0:
            return False
        os.kill(pid, 0)
        return True
    except (OSError, ValueError):
        return False


def live_state(manifest_state: str | None, held: bool) -> str:
    """What the page shows: the manifest's state, corrected by whether the lock is held."""
    if held:
        return "running"
    if manifest_state == "running":
        return "stopped unexpectedly"  # the manifest says running but nobody holds the lock
    return STATE_LABELS.get(str(manifest_state), str(manifest_state or "unknown"))


_STATE_ORDER = ["running", "stopped unexpectedly", "failed", "budget exhausted", "interrupted", "submitted",
                "unknown", "finished"]


def combined_state(states: list[str]) -> str:
    """A compare directory's state: the most pressing of its models' states."""
    if not states:
        return "unknown"
    return min(states, key=lambda s: _STATE_ORDER.index(s) if s in _STATE_ORDER else len(_STATE_ORDER))


# --------------------------------------------------------------------------------------------
# The root
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> object:
    """A small JSON file read without following a symlink; None if absent or unreadable."""
    try:
        fd = open_nofollow(path)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            return orjson.loads(handle.read())
    except (OSError, orjson.JSONDecodeError):
        return None


def _is_plain_dir(path: Path) -> bool:
    try:
        return not path.is_symlink() and path.is_dir()
    except OSError:
        return False


def run_kind(path: Path) -> str | None:
    """"run" (manifest.json), "compare" (models/<key>/manifest.json) or None."""
    models = path / MODELS_DIR
    if _is_plain_dir(models):
        try:
            for sub in models.iterdir():
                if _is_plain_dir(sub) and (sub / MANIFEST).is_file() and not (sub / MANIFEST).is_symlink():
                    return "compare"
        except OSError:
            pass
    manifest = path / MANIFEST
    if manifest.is_file() and not manifest.is_symlink():
        return "run"
    return None


class RunsRoot:
    """RUNS_DIR: its runs, and safe name -> path resolution."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def resolve(self, name: str) -> Path:
        """The run directory a URL names; UnsafeName for anything but one plain
        directory directly under the root."""
        if not isinstance(name, str) or not NAME.match(name) or name in (".", ".."):
            raise UnsafeName(f"not a run name: {name!r}")
        path = self.root / name
        if path.is_symlink():
            raise UnsafeName(f"{name!r} is a symbolic link: not served")
        resolved = path.resolve()
        if resolved.parent != self.root:
            raise UnsafeName(f"{name!r} is outside the runs directory")
        return resolved

    def names(self) -> list[str]:
        """Every run or compare directory directly under the root (symlinks skipped)."""
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError:
            return []
        out = []
        for entry in entries:
            if not NAME.match(entry.name) or entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
                continue
            if run_kind(Path(entry.path)) is not None:
                out.append(entry.name)
        return out


# --------------------------------------------------------------------------------------------
# One run directory, followed
# --------------------------------------------------------------------------------------------


def _file_signature(path: Path) -> FileSignature:
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class UnitWatch:
    """One run directory: its manifest (re-read when it changes) and its followed checkpoints."""

    def __init__(self, key: str, run_dir: Path) -> None:
        self.key = key
        self.run_dir = run_dir
        self.results = JsonlFollower(run_dir / RESULTS)
        self.errors = JsonlFollower(run_dir / ERRORS)
        self.numbers = UnitNumbers()
        self.manifest: StoredJSON = {}
        self._manifest_sig: FileSignature = None
        self.rejected_lines = 0
        self._rejects_sig: FileSignature = None
        self.batches: object = None  # batch mode's part records (the first of BATCH_FILES there is)
        self._batches_sig: tuple[FileSignature, ...] | None = None
        self.held = False
        self.caught_up = False

    def refresh(self, held_locks: set[tuple[int, int, int]] | None) -> bool:
        """Read what changed; True if anything did."""
        changed = False
        sig = _file_signature(self.run_dir / MANIFEST)
        if sig != self._manifest_sig:
            manifest = _read_json(self.run_dir / MANIFEST)
            if isinstance(manifest, dict):
                self.manifest = manifest
                self._manifest_sig = sig
                changed = True
        sig = _file_signature(self.run_dir / REJECTS)
        if sig != self._rejects_sig:
            self._rejects_sig = sig
            self.rejected_lines = _count_lines(self.run_dir / REJECTS)
            changed = True
        sigs = tuple(_file_signature(self.run_dir / name) for name in BATCH_FILES)
        if sigs != self._batches_sig:
            self._batches_sig = sigs
            self.batches = next((data for data in (_read_json(self.run_dir / name) for name in BATCH_FILES)
                                 if data is not None), None)
            changed = True
        held = lock_held(self.run_dir, held_locks)
        if held != self.held:
            self.held = held
            changed = True
        # errors first, all of it, then results: an id's failure (an earlier run) is always
        # read before its success (a later run), so `failed` ends as errors.ids - results.ids
        before = (self.numbers.done, len(self.numbers.failed), self.numbers.requests)
        try:
            more = self._poll()
        except _Restart:  # a file shrank or was replaced: rebuild every number from byte 0
            self.numbers = UnitNumbers()
            self.results = JsonlFollower(self.results.path)
            self.errors = JsonlFollower(self.errors.path)
            more = self._poll()
            changed = True
        self.caught_up = not more
        return changed or before != (self.numbers.done, len(self.numbers.failed), self.numbers.requests)

    def _poll(self) -> bool:
        self.errors.poll(self.numbers.add_error, _raise_restart, max_bytes=None)
        return self.results.poll(self.numbers.add_result, _raise_restart)

    @property
    def state(self) -> str:
        return live_state(self.manifest.get("state"), self.held)

    def status(self) -> StoredJSON:
        n = self.numbers
        return status_from_counts(self.run_dir, self.manifest, done=n.done, failed=len(n.failed),
                                  failed_permanent=n.failed_permanent(fail_fast_runs(self.manifest)),
                                  cost_usd=n.cost_usd,
                                  unpriced=n.unpriced, total_tokens=n.total_tokens,
                                  rejected_lines=self.rejected_lines, cache_hits=n.cache_hits,
                                  cost_saved_usd=n.cost_saved_usd, live=self.held, kinds=n.kinds,
                                  requests=n.requests, upstream_requests=n.upstream_requests,
                                  upstream_unreported=n.upstream_unreported)

    def signature(self) -> UnitSignature:
        """Changes whenever the run's files do: the key of the grading cache."""
        return (self._manifest_sig, _file_signature(self.run_dir / RESULTS), _file_signature(self.run_dir / ERRORS))

    def detail(self, show_text: bool) -> UnitDetail:
        n = self.numbers
        fail_fast = fail_fast_runs(self.manifest)  # runs whose auth / not-found failures were the endpoint's
        status = self.status()
        summary = self.manifest.get("summary") or {}
        total = status["tickets"]
        failures: list[FailureGroup] = []
        for kind, count in n.failed_by_kind().items():
            messages = list(n.messages.get(kind, ()))[::-1]
            if kind in TEXT_KINDS and not show_text:
                messages = [{**m, "message": "(quotes the answer: shown with --show-text)"} for m in messages]
            else:
                messages = [{**m, "message": redact_secrets(text) if (text := m["message"]) else text}
                            for m in messages]
            failures.append({"kind": kind, "tickets": count, "lines": n.failure_lines_by_kind.get(kind, 0),
                             "permanent": any(is_permanent(kind, fail_fast=n.failed_runs.get(i) in fail_fast)
                                              for i, k in n.failed.items() if k == kind), "latest": messages})
        failed_tickets: list[FailedTicketShown] = []
        for entry in reversed(list(n.failed_tickets.values())):  # the latest failure first
            text = entry["message"]
            if entry["kind"] in TEXT_KINDS and not show_text:
                text = "(quotes the answer: shown with --show-text)"
            elif text:
                text = redact_secrets(text)
            failed_tickets.append({**entry, "message": text,
                                   "permanent": is_permanent(entry["kind"], fail_fast=entry["run"] in fail_fast)})
        model = ((self.manifest.get("job") or {}).get("fingerprint") or {}).get("model")
        return {
            "key": self.key,
            "model": model if isinstance(model, str) else None,
            "state": self.state,
            "status": status,
            "progress": round((status["done"] + status["failed"]) / total, 6) if total else None,
            "requests": n.requests,  # sent by batchrun, as the lines record them (all runs)
            "upstream_requests": n.upstream_requests,  # what the endpoint (a LiteLLM proxy) reported sending
            "latest_run": n.latest_run,
            "tokens": {"prompt": n.prompt_tokens, "completion": n.completion_tokens, "total": n.total_tokens},
            "latency_ms": {**percentiles(n.latency), "n": n.latency.n},  # within about 1% (log buckets)
            "ttft_ms": {**percentiles(n.ttft), "n": n.ttft.n} if n.ttft.n else None,
            "series": n.series.points(),
            "failures": failures,
            "failed_tickets": failed_tickets,  # the latest failed tickets (FAILED_TICKETS_SHOWN): a click shows one
            "max_cost_usd": self.manifest.get("max_cost_usd"),
            "concurrency_settled": summary.get("concurrency_settled") if self.state != "running" else None,
            "batches": _batch_parts(self.batches),
            "recent_answers": list(n.recent)[::-1] if show_text else None,
            "caught_up": self.caught_up,
            "last_finished_at": n.last_finished_at,
        }


class _Restart(Exception):
    """A followed file was cut or replaced."""


def _raise_restart() -> None:
    raise _Restart


def _count_lines(path: Path) -> int:
    try:
        fd = open_nofollow(path)
    except OSError:
        return 0
    count = 0
    with os.fdopen(fd, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def _batch_parts(data: object) -> list[BatchPart] | None:
    """Batch mode's parts (when its file exists): part, state and request counts, whatever the
    exact layout (a list of parts, or {"parts": [...]}). Only known, small fields are kept."""
    if data is None:
        return None
    parts = data.get("parts") if isinstance(data, dict) else data
    if isinstance(parts, dict):
        parts = [{"part": k, **v} if isinstance(v, dict) else {"part": k, "state": v} for k, v in parts.items()]
    if not isinstance(parts, list):
        return None
    out: list[BatchPart] = []
    for index, part in enumerate(parts):
        if not isinstance(part, dict):
            continue
        counts = part.get("request_counts") or part.get("counts") or {}
        counts = counts if isinstance(counts, dict) else {}
        out.append({
            "part": part.get("part", part.get("index", index + 1)),
            "state": str(part.get("state") or part.get("status") or "unknown"),
            "requests": part.get("requests") or part.get("tickets") or counts.get("total"),
            "completed": counts.get("completed"),
            "failed": counts.get("failed"),
            "model": part.get("model_key") or part.get("model"),
        })
    return out


# --------------------------------------------------------------------------------------------
# One run (a run directory or a compare directory)
# --------------------------------------------------------------------------------------------


@dataclass
class Graded:
    """Grading and the diff against the previous run, computed once a run stops."""

    signature: tuple[UnitSignature, ...]
    models: list[GradedModel]
    previous: str | None  # the run compared against
    diff: list[DiffView] | None
    note: str | None = None


class RunWatch:
    """One entry of RUNS_DIR, followed. Thread-safe: refresh and snapshot take a lock."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self.kind = run_kind(path) or "run"
        self.units: dict[str, UnitWatch] = {}
        self.lock = threading.Lock()
        self.graded: Graded | None = None
        self.grading_in_progress = False
        self.quiet_since = time.monotonic()  # when its files last changed (as far as refresh saw)
        self._discover()

    def _discover(self) -> None:
        if self.kind == "compare":
            models = self.path / MODELS_DIR
            try:
                subs = sorted(p for p in models.iterdir() if _is_plain_dir(p) and (p / MANIFEST).is_file())
            except OSError:
                subs = []
            for sub in subs:
                if sub.name not in self.units:
                    self.units[sub.name] = UnitWatch(sub.name, sub)
        elif not self.units:
            self.units[""] = UnitWatch("", self.path)

    def refresh(self) -> bool:
        with self.lock:
            self._discover()
            held = _held_flocks()
            changed = False
            for unit in self.units.values():
                changed |= unit.refresh(held)
            if changed:
                self.quiet_since = time.monotonic()
            return changed

    @property
    def caught_up(self) -> bool:
        return all(unit.caught_up for unit in self.units.values())

    @property
    def state(self) -> str:
        return combined_state([unit.state for unit in self.units.values()])

    def job(self) -> str | None:
        """The job's name (a compare directory's models are named "<job>.<key>")."""
        for unit in self.units.values():
            name = (unit.manifest.get("job") or {}).get("name")
            if name:
                name = str(name)
                if self.kind == "compare" and name.endswith(f".{unit.key}"):
                    name = name[: -len(unit.key) - 1]
                return name
        return None

    def signature(self) -> tuple[UnitSignature, ...]:
        return tuple(unit.signature() for unit in self.units.values())

    def times(self) -> tuple[str | None, str | None]:
        starts: list[str] = [start for u in self.units.values() if (start := u.manifest.get("started_at"))]
        ends: list[str] = [end for u in self.units.values() if (end := u.manifest.get("finished_at"))]
        running = any(u.state == "running" for u in self.units.values())
        return (min(starts) if starts else None, None if running or not ends else max(ends))

    def summary(self) -> RunLine:
        """The run's line in the listing."""
        with self.lock:
            statuses = [unit.status() for unit in self.units.values()]
            started, finished = self.times()
            tickets = sum(s["tickets"] for s in statuses)
            done = sum(s["done"] for s in statuses)
            failed = sum(s["failed"] for s in statuses)
            accuracy = None
            if self.graded is not None and self.graded.signature == self.signature():
                graded = [m for m in self.graded.models if m.get("accuracy") is not None]
                if graded:
                    correct = sum(m["correct"] for m in graded)
                    total = sum(m["graded"] for m in graded)
                    accuracy = round(correct / total, 6) if total else None
            return {
                "name": self.name,
                "kind": self.kind,
                "job": self.job(),
                "state": self.state,
                "models": [u.key for u in self.units.values()] if self.kind == "compare" else None,
                "tickets": tickets,
                "done": done,
                "failed": failed,
                "pending": max(tickets - done - failed, 0),
                "progress": round((done + failed) / tickets, 6) if tickets else None,
                "cost_usd": round(sum(s["cost_usd"] for s in statuses), 6),
                "unpriced_results": sum(s["unpriced_results"] for s in statuses),
                "accuracy": accuracy,
                "started_at": started,
                "finished_at": finished,
            }

    def snapshot(self, show_text: bool) -> RunSnapshot:
        """The JSON of the run page (and GET /api/runs/{name})."""
        with self.lock:
            units = [unit.detail(show_text) for unit in self.units.values()]
            graded = self.graded if self.graded is not None and self.graded.signature == self.signature() else None
        line = self.summary()
        out: RunSnapshot
        if self.kind == "run" and units:  # "status": exactly `batchrun status --json`
            out = {**line, "status": units[0]["status"], "units": units, "grading": None}
        else:
            out = {**line, "units": units, "grading": None}
        if graded is not None:
            diff = graded.diff
            if diff is not None and not show_text:
                diff = [{**pair, "changed": {**pair["changed"], "examples": []}} for pair in diff]
            out["grading"] = {"models": graded.models, "previous": graded.previous, "diff": diff,
                              "note": graded.note}
        return out

    def needs_grading(self) -> bool:
        """Stopped, caught up, its files quiet for QUIET_S, and not graded as they are now."""
        with self.lock:
            if self.grading_in_progress or not self.caught_up:
                return False
            if time.monotonic() - self.quiet_since < QUIET_S:
                return False
            if any(unit.state in ("running", "submitted") for unit in self.units.values()):
                return False
            return self.graded is None or self.graded.signature != self.signature()

    def begin_grading(self) -> tuple[UnitSignature, ...]:
        with self.lock:
            self.grading_in_progress = True
            return self.signature()

    def end_grading(self, signature: tuple[UnitSignature, ...] | None, result: GradeResult | None,
                    previous: str | None) -> None:
        with self.lock:
            self.grading_in_progress = False
            if signature is not None and result is not None:
                self.graded = Graded(signature, list(result.get("models") or []), previous, result.get("diff"),
                                     result.get("note"))


def grade_run(path: Path, previous: Path | None) -> GradeResult:
    """Accuracy and confusion matrix per model (grading.analyze) and the diff against
    `previous` (diffing.diff_analyses), as the page shows them. Reads every result of
    both runs: `batchrun serve` calls it in a child process (python -m batchrun.serve.grade),
    so its memory goes back to the system when it is done."""
    from batchrun.analysis.diffing import diff_analyses
    from batchrun.analysis.grading import analyze, macro_f1
    from batchrun.errors import BatchrunError

    note = None
    models: list[GradedModel] = []
    diff = None
    try:
        analysis = analyze(path)
        for m in analysis.report["models"]:
            g, gold = m.get("grading"), m.get("gold")
            models.append({
                "key": m["key"], "model": m["model"], "accuracy": g.get("accuracy") if g else None,
                "graded": g.get("graded", 0) if g else 0, "correct": g.get("correct", 0) if g else 0,
                "macro_f1": macro_f1(g),
                "confusion": g.get("confusion") if g else None,
                "gold_note": gold.get("note") if gold else None,
            })
        if previous is not None:
            try:
                result = diff_analyses(analyze(previous), analysis, show=10)
                diff = [_diff_pair(pair) for pair in result["pairs"]]
            except BatchrunError as exc:
                note = f"no comparison with {Path(previous).name}: {exc}"
    except BatchrunError as exc:
        note = str(exc)
    return {"models": models, "diff": diff, "note": note}


def _diff_pair(pair: PairDiff) -> DiffView:
    """The part of diffing.diff_pair the page shows."""
    return {
        "a": pair["a"], "b": pair["b"],
        "accuracy": pair["accuracy"],
        "changed": pair["changed"],
        "answered": pair["answered"],
        "cost_usd": pair["cost_usd"],
        "latency_p50_ms": pair["latency_p50_ms"],
        "latency_p95_ms": pair["latency_p95_ms"],
    }
