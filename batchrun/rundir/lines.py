"""Reading checkpoint lines: the one JSONL reader of a run directory's files.

    iter_lines(path)        every complete line (ending in a newline) that is a JSON
                            object, by default only those with an id: results,
                            errors, a batch part's files; a torn last line is skipped,
                            a missing file is empty, a link is refused
    iter_numbered(path)     the same reading, every line with its number and
                            NOT_JSON for one that does not parse (a provider's
                            batch output, checked line by line: batch/outputs.py)
    scan_jsonl(path)        the resume scan: ids, where valid data ends, a torn tail,
                            the first damaged line, and with totals the lines' money
                            (records.line_money)
    load_done_ids / load_failed_ids   what a run directory already holds
    load_failed_kinds(run_dir)  each failed id's latest (error kind, run)
    permanent_failures(...)     of those, the failures a re-run keeps (errors.is_permanent)

Reading takes no lock, so it works while a run is writing: a torn last line is
simply not counted yet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet, Iterator, Mapping

import orjson

from batchrun.errors import CheckpointError, is_permanent
from batchrun.records import KindTotals, Line, line_money
from batchrun.rundir.layout import ERRORS, RESULTS, open_no_follow


@dataclass(slots=True)
class JsonlScan:
    ids: set[str] = field(default_factory=set)  # ids of complete, parseable lines
    valid_bytes: int = 0  # the file is good up to here
    torn_bytes: int = 0  # bytes after valid_bytes (a torn write)
    lines: int = 0  # complete lines
    torn_lines: int = 0  # lines from valid_bytes on: 1 for a torn last line
    damaged_line: int | None = None  # the first complete (newline-ended) line that is not a record
    cost_usd: float = 0.0  # with totals: the lines' cost_usd + rejected_cost_usd (money spent)
    unpriced: int = 0  # valid lines with "cost_usd": null
    total_tokens: int = 0  # sum of the valid lines' usage.total_tokens
    cache_hits: int = 0  # lines with "cache_hit": true (reused answers)
    cost_saved_usd: float = 0.0  # their cost_saved_usd
    kinds: KindTotals = field(default_factory=KindTotals)  # with totals: token kinds, prompt cache, tiers
    requests: int = 0  # the lines' attempts: requests batchrun sent
    upstream_requests: int = 0  # what the endpoint (a LiteLLM proxy) reported it sent upstream for them
    upstream_lines: int = 0  # lines that report it
    upstream_unreported: int = 0  # attempts of those lines whose answer did not say
    last_by_id: dict[str, Line] | None = None  # only when asked (errors file)
    # with kinds: each id's latest (error_kind, run) (errors file)
    kind_by_id: dict[str, tuple[str, int | None]] | None = None


def scan_jsonl(path: Path | str, *, keep_last: bool = False, totals: bool = True, kinds: bool = False) -> JsonlScan:
    """Scan a checkpoint file; a missing file is an empty scan.

    Valid data ends at the first line that has no newline or does not parse
    as a JSON object with a string (or integer) "id": anything after it is
    torn. Only a last line without a newline is a torn write (lines are
    appended whole by one writer); `damaged_line` names the first complete
    line that is not a record, which no crash can leave behind. A symbolic
    link is refused (CheckpointError), never followed. `kinds`: each id's
    latest `error_kind` too (errors.jsonl: which failures are permanent).
    """
    scan = JsonlScan(last_by_id={} if keep_last else None, kind_by_id={} if kinds else None)
    fast = not keep_last and not totals and not kinds  # ids only: read them without parsing the line
    try:
        handle = open(open_no_follow(path, os.O_RDONLY), "rb")
    except FileNotFoundError:
        return scan
    try:
        with handle:
            for raw in handle:
                if fast and not scan.torn_lines and raw.startswith(b'{"id":"') and raw.endswith(b"}\n"):
                    end = raw.find(b'"', 7)
                    if end > 7 and raw.find(b"\\", 7, end) < 0:  # no escapes: the id is the raw bytes
                        scan.ids.add(raw[7:end].decode())
                        scan.lines += 1
                        scan.valid_bytes += len(raw)
                        continue
                if not scan.torn_lines and raw.endswith(b"\n"):
                    parsed = parse_line(raw)
                    if parsed is not None:
                        ticket_id, obj = parsed
                        if scan.last_by_id is not None:
                            scan.last_by_id[ticket_id] = obj
                        if scan.kind_by_id is not None:
                            run = obj.get("run")
                            scan.kind_by_id[ticket_id] = (str(obj.get("error_kind") or "unknown"),
                                                          run if isinstance(run, int) else None)
                        scan.ids.add(ticket_id)
                        if totals:  # every line is money spent (errors.jsonl: rejected answers)
                            money = line_money(obj)
                            scan.cost_usd += money.spent_usd
                            scan.unpriced += money.unpriced
                            scan.cache_hits += money.cache_hit
                            scan.cost_saved_usd += money.cost_saved_usd
                            scan.total_tokens += money.total_tokens
                            scan.kinds.add(money)
                            scan.requests += money.requests
                            if money.upstream_requests is not None:
                                scan.upstream_requests += money.upstream_requests
                                scan.upstream_lines += 1
                                scan.upstream_unreported += money.upstream_unreported
                        scan.lines += 1
                        scan.valid_bytes += len(raw)
                        continue
                if scan.damaged_line is None and raw.endswith(b"\n"):
                    scan.damaged_line = scan.lines + scan.torn_lines + 1
                scan.torn_lines += 1
                scan.torn_bytes += len(raw)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror}") from None
    return scan


def parse_line(raw: bytes) -> tuple[str, Line] | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    ticket_id = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(ticket_id, bool) or not isinstance(ticket_id, (str, int)):
        return None
    return str(ticket_id), obj


NOT_JSON = object()  # iter_numbered's value for a line that is not JSON


def iter_numbered(path: Path | str, *, whole_file: bool = True) -> Iterator[tuple[int, object, bytes]]:
    """(line number from 1, the parsed JSON value or NOT_JSON, the raw line) for every complete
    line of `path` but blank ones; `whole_file` as for iter_lines (module docstring)."""
    try:
        handle = open(open_no_follow(path, os.O_RDONLY), "rb")
    except FileNotFoundError:
        return
    with handle:
        try:
            for number, raw in enumerate(handle, start=1):
                if not raw.endswith(b"\n") and not whole_file:
                    break  # a torn last line: not a line yet
                if len(raw) <= 2 and not raw.strip():  # a blank line (a long one is simply not JSON)
                    continue
                try:
                    value = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    value = NOT_JSON
                yield number, value, raw
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read: {exc.strerror}") from None


def iter_lines(path: Path | str, *, with_id: bool = True, whole_file: bool = False) -> Iterator[Line]:
    """Every complete line of `path` that parses as a JSON object (module docstring); with `with_id`
    only objects whose "id" is a string or an integer. A line that does not parse is passed over.
    `whole_file`: the file was written whole (a provider's download), so its last line counts even
    without a newline; otherwise a last line without one is a write still under way."""
    for _, obj, _ in iter_numbered(path, whole_file=whole_file):
        if not isinstance(obj, dict):
            continue
        if with_id:
            ticket_id = obj.get("id")
            if isinstance(ticket_id, bool) or not isinstance(ticket_id, (str, int)):
                continue
        yield obj


def load_done_ids(run_dir: Path | str) -> set[str]:
    return scan_jsonl(Path(run_dir) / RESULTS, totals=False).ids


def load_failed_ids(run_dir: Path | str, done: set[str] | None = None) -> set[str]:
    run_dir = Path(run_dir)
    done = load_done_ids(run_dir) if done is None else done
    return scan_jsonl(run_dir / ERRORS, totals=False).ids - done


def load_failed_kinds(run_dir: Path, done: set[str] | None = None) -> dict[str, tuple[str, int | None]]:
    """Each id whose latest outcome is a failure, with that failure's (error_kind, run)."""
    run_dir = Path(run_dir)
    done = load_done_ids(run_dir) if done is None else done
    kinds = scan_jsonl(run_dir / ERRORS, totals=False, kinds=True).kind_by_id or {}
    return {ticket_id: kind for ticket_id, kind in kinds.items() if ticket_id not in done}


def permanent_failures(failures: Mapping[str, tuple[str, int | None]], fail_fast_runs: AbstractSet[int]) -> set[str]:
    """The ids among `failures` (load_failed_kinds) whose failure is permanent (errors.is_permanent), an
    auth / permission / not-found failure of a run fail-fast stopped (`fail_fast_runs`) being transient."""
    return {ticket_id for ticket_id, (kind, run) in failures.items()
            if is_permanent(kind, fail_fast=run is not None and run in fail_fast_runs)}
