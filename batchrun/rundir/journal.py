"""The in-flight journal (inflight.jsonl): every request is noted before it can leave.

    InflightJournal     appends {"id", "attempt", "run"} before each request (one unbuffered
                        write: it survives kill -9), and "unsent" marks for attempts counted
                        but never sent
    open_inflight(...)  entries still open when a run starts: tickets the last run left in
                        flight, which may be billed twice (reported, and their next lines
                        say maybe_billed_before)
    compact_inflight    the journal rewritten with only its open entries
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import AbstractSet, Mapping, TypedDict

import orjson

from batchrun.rundir.layout import ERRORS, INFLIGHT, open_no_follow, write_atomic
from batchrun.rundir.lines import load_done_ids, parse_line


class OpenEntry(TypedDict):
    """A journal entry no outcome line has cleared: the last attempt noted for a ticket, and its run."""

    attempt: int
    run: int


def open_inflight(run_dir: Path, done_ids: AbstractSet[str] | None = None) -> dict[str, OpenEntry]:
    """Journal entries no outcome line has cleared: id -> {"attempt", "run"} (read only).

    An entry of run r is cleared by a results line (a done ticket is never
    sent again) or an errors line of run r or later. Memory: beyond the done
    ids the caller holds anyway, the journal's ids that are not done (failed
    or open), then only the open ones."""
    run_dir = Path(run_dir)
    path = run_dir / INFLIGHT
    if not path.exists() and not path.is_symlink():
        return {}
    done = load_done_ids(run_dir) if done_ids is None else done_ids
    latest: dict[str, OpenEntry] = {}
    try:
        with open(open_no_follow(path, os.O_RDONLY), "rb") as handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # torn by a crash mid-write: that request was never sent
                try:
                    entry = orjson.loads(raw)
                    ticket_id = str(entry["id"])
                    if ticket_id in done:  # a done ticket is never sent again: cleared
                        continue
                    noted: OpenEntry = {"attempt": int(entry.get("attempt") or 1), "run": int(entry["run"])}
                    if entry.get("unsent"):  # that very request was never sent: cleared
                        if latest.get(ticket_id) == noted:
                            del latest[ticket_id]
                    else:
                        latest[ticket_id] = noted
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue  # the journal only ever over-reports; a bad line names no ticket
    except FileNotFoundError:
        return {}
    if latest:
        try:
            with open(open_no_follow(run_dir / ERRORS, os.O_RDONLY), "rb") as handle:
                for raw in handle:
                    parsed = parse_line(raw) if raw.endswith(b"\n") else None
                    if parsed is not None and parsed[0] in latest:
                        run = parsed[1].get("run")
                        if isinstance(run, int) and run >= latest[parsed[0]]["run"]:
                            del latest[parsed[0]]
        except FileNotFoundError:
            pass
    return latest


def compact_inflight(run_dir: Path, entries: Mapping[str, OpenEntry]) -> None:
    """Rewrite the journal with only its open entries (atomically), or remove it."""
    path = run_dir / INFLIGHT
    if not entries:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    write_atomic(path, (orjson.dumps({"id": ticket_id, **entry}) + b"\n" for ticket_id, entry in entries.items()),
                 what="the in-flight journal")


class InflightJournal:
    """Appends an entry before each request is sent (one unbuffered write, no
    thread hop: a few microseconds, in the OS before the request leaves, so it
    survives kill -9; not fsynced, so a power cut may lose the last ones)."""

    def __init__(self, run_dir: Path, run_number: int) -> None:
        self.path = Path(run_dir) / INFLIGHT
        self.run_number = run_number
        self._fd: int | None = None

    def open(self) -> None:
        self._fd = open_no_follow(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def note(self, ticket_id: str, attempt: int) -> None:
        """Record that a request for `ticket_id` is about to be sent; OSError if it cannot be."""
        assert self._fd is not None, "open() first"
        os.write(self._fd, orjson.dumps({"id": ticket_id, "attempt": attempt, "run": self.run_number}) + b"\n")

    def note_unsent(self, ticket_id: str, attempt: int) -> None:
        """Record that the request noted for (`ticket_id`, `attempt`) was never sent after all (an
        attempt counted ahead of its sender: a Ray actor's first); it clears that entry."""
        assert self._fd is not None, "open() first"
        os.write(self._fd, orjson.dumps({"id": ticket_id, "attempt": attempt, "run": self.run_number,
                                         "unsent": True}) + b"\n")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
