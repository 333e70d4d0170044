"""Following checkpoint files as they grow, and the numbers kept from them.

A run directory's `results.jsonl` and `errors.jsonl` only ever grow by whole
lines appended at the end (one writer, checkpoint.py), except when the next
run cuts a torn last line (`open_checkpoint`). So a page never needs to read
a file twice: `JsonlFollower` remembers the byte offset it has read up to and,
on each `poll()`, reads only what was appended since, in chunks, keeping an
incomplete last line (a write in progress, or a torn tail) aside until its
newline arrives. If the bytes of that incomplete line are no longer in the file
(a torn tail cut off, and maybe new lines written where it was), the follower
reads on from where it began; if the file shrinks below that, or is replaced
by another file (another inode), it starts over from byte 0 and says so, so
the numbers are rebuilt from scratch.

`UnitNumbers` folds each parsed line into counters whose size does not depend
on the number of lines: counts, cost and tokens, a log-bucketed latency
histogram (stats.LatencyHistogram), failed tickets (a dict of failures only:
an id that later succeeds is dropped from it), the latest messages per error
kind (a few each), and a time series of the latest run in at most
`SERIES_POINTS` buckets (the bucket width doubles when the run outlasts
them). Memory is therefore bounded by the failures and the time span, never
by the size of the checkpoint files.

    JsonlFollower(path).poll(on_line, on_restart) -> more left to read
    UnitNumbers().add_result(line) / add_error(line) / snapshot(...)
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet, Callable

import orjson

from batchrun.analysis.documents import StoredJSON
from batchrun.analysis.stats import LatencyHistogram
from batchrun.errors import is_permanent
from batchrun.records import KindTotals, line_money, line_time
from batchrun.serve.payloads import FailedTicket, FailureMessage, RecentAnswer, SeriesPoints

__all__ = ["JsonlFollower", "SERIES_POINTS", "UnitNumbers", "open_nofollow"]

CHUNK_BYTES = 1 << 20  # read at most this much per read() call
POLL_BYTES = 8 << 20  # and at most this much per poll (the rest on the next one)
SERIES_POINTS = 120  # time buckets kept per run
MESSAGES_PER_KIND = 3  # latest failure messages kept per error kind
RECENT_ANSWERS = 10  # latest answers kept (shown only with --show-text)
FAILED_TICKETS_SHOWN = 200  # failed tickets listed on a run's page, the latest failures


def open_nofollow(path: Path) -> int:
    """os.open(path) for reading that refuses a symlink as the last component."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))


class JsonlFollower:
    """Reads the lines appended to one JSONL file since the last poll."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = 0  # bytes read so far (the partial line included)
        self.partial = b""  # an incomplete last line, waiting for its newline
        self.identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file being followed

    def poll(self, on_line: Callable[[StoredJSON], None], on_restart: Callable[[], None],
             max_bytes: int | None = POLL_BYTES) -> bool:
        """Hand every complete line appended since the last poll to `on_line`, in order;
        True when more is left to read (`max_bytes` was reached).

        `on_restart` is called first when the file shrank or was replaced: the lines
        that follow are read from byte 0 again, and numbers built from earlier lines
        must be dropped. Lines that are not JSON objects with an id are skipped, as
        `batchrun report` does. Memory: one chunk, never the file."""
        try:
            fd = open_nofollow(self.path)
        except FileNotFoundError:
            if self.offset > 0:
                on_restart()
            self.offset, self.partial, self.identity = 0, b"", None
            return False
        try:
            st = os.fstat(fd)
            restarted = False
            identity = (st.st_dev, st.st_ino)
            start = self.offset - len(self.partial)  # where the kept partial line begins
            if self.identity is not None and identity != self.identity:
                restarted = True
            elif st.st_size < start:
                restarted = True
            elif self.partial and (st.st_size < self.offset
                                   or os.pread(fd, len(self.partial), start) != self.partial):
                # a torn tail was cut (and maybe written over): read on from where it began
                self.offset, self.partial = start, b""
            if restarted:
                self.offset, self.partial = 0, b""
                on_restart()
            self.identity = identity
            end = st.st_size if max_bytes is None else min(st.st_size, self.offset + max_bytes)
            while self.offset < end:
                chunk = os.pread(fd, min(CHUNK_BYTES, end - self.offset), self.offset)
                if not chunk:
                    break
                self.offset += len(chunk)
                pieces = chunk.split(b"\n")
                pieces[0] = self.partial + pieces[0]
                self.partial = pieces.pop()  # b"" when the chunk ended with a newline
                for raw in pieces:
                    obj = _parse(raw)
                    if obj is not None:
                        on_line(obj)
            return self.offset < st.st_size
        finally:
            os.close(fd)


def _parse(raw: bytes) -> StoredJSON | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    ticket_id = obj.get("id")
    if isinstance(ticket_id, bool) or not isinstance(ticket_id, (str, int)):
        return None
    return obj


@dataclass
class TimeSeries:
    """Per-bucket sums over time for one run: at most SERIES_POINTS buckets."""

    origin: float | None = None  # epoch seconds of bucket 0
    last: float | None = None  # the latest time added: the last bucket is only filled up to it
    width: float = 1.0  # seconds per bucket
    # index -> [results, failed, requests, output tokens, busy ms]
    buckets: dict[int, list[float]] = field(default_factory=dict)

    def add(self, t: float, results: int, failed: int, requests: int, out_tokens: int, busy_ms: float,
            started: float | None = None) -> None:
        if self.origin is None:  # the first line's start: its busy time lies after the origin
            self.origin = float(int(min(t, started if started is not None else t)))
        if t < self.origin:  # a line finished before the first one seen: stretch backwards
            shift = int((self.origin - t) // self.width) + 1
            self.buckets = {i + shift: v for i, v in self.buckets.items()}
            self.origin -= shift * self.width
        index = int((t - self.origin) // self.width)
        while index >= SERIES_POINTS:
            self._coarsen()
            index = int((t - self.origin) // self.width)
        if self.last is None or t > self.last:
            self.last = t
        bucket = self.buckets.setdefault(index, [0, 0, 0, 0, 0.0])
        bucket[0] += results
        bucket[1] += failed
        bucket[2] += requests
        bucket[3] += out_tokens
        bucket[4] += busy_ms

    def _coarsen(self) -> None:
        merged: dict[int, list[float]] = {}
        for index, values in self.buckets.items():
            target = merged.setdefault(index // 2, [0, 0, 0, 0, 0.0])
            for k, v in enumerate(values):
                target[k] += v
        self.buckets = merged
        self.width *= 2

    def points(self) -> SeriesPoints:
        """Rates per second for each bucket from the first to the last (empty buckets are zeros;
        the last one's rate is over the time it covers so far, at least a quarter bucket)."""
        if self.origin is None or not self.buckets:
            return {"origin": None, "width_s": self.width, "t": [], "requests_per_s": [],
                    "output_tokens_per_s": [], "results_per_s": [], "failed_per_s": [], "concurrency": [],
                    "results": []}
        last = max(self.buckets)
        t: list[float] = []
        req: list[float] = []
        tok: list[float] = []
        res: list[float] = []
        fail: list[float] = []
        conc: list[float] = []
        counts: list[int] = []
        for index in range(0, last + 1):
            values = self.buckets.get(index, [0, 0, 0, 0, 0.0])
            width = self.width
            if index == last and self.last is not None:  # the last bucket spans up to the latest line only
                width = min(self.width, max(self.last - (self.origin + index * self.width), self.width / 4))
            t.append(round(index * self.width, 3))
            counts.append(int(values[0]))
            res.append(round(values[0] / width, 3))
            fail.append(round(values[1] / width, 3))
            req.append(round(values[2] / width, 3))
            tok.append(round(values[3] / width, 3))
            conc.append(round(values[4] / (width * 1000.0), 2))  # Little's law: busy time / wall time
        return {"origin": self.origin, "width_s": self.width, "t": t, "requests_per_s": req,
                "output_tokens_per_s": tok, "results_per_s": res, "failed_per_s": fail, "concurrency": conc,
                "results": counts}


class UnitNumbers:
    """What one run directory's checkpoint lines add up to, kept incrementally."""

    def __init__(self) -> None:
        self.done = 0  # result lines
        self.results_cost = 0.0
        self.errors_cost = 0.0  # answers paid for, then rejected (errors lines)
        self.rejected_cost = 0.0  # rejected_cost_usd on result lines
        self.unpriced = 0  # result lines with "cost_usd": null
        self.cache_hits = 0  # result lines with "cache_hit": true (answers reused, not paid again)
        self.cost_saved_usd = 0.0  # their cost_saved_usd
        self.kinds = KindTotals()  # token kinds, what prompt caching saved, tiers
        self.prompt_tokens = self.completion_tokens = self.total_tokens = 0
        self.latency = LatencyHistogram()
        self.ttft = LatencyHistogram()
        self.failed: dict[str, str] = {}  # id -> error_kind, for ids whose latest outcome is a failure
        self.failure_lines_by_kind: dict[str, int] = {}  # errors.jsonl lines by kind (every run)
        self.messages: dict[str, deque[FailureMessage]] = {}  # kind -> the latest few
        # the latest FAILED_TICKETS_SHOWN failed tickets (latest failure last): id -> its failure, kind and attempts
        self.failed_tickets: dict[str, FailedTicket] = {}
        self.failed_runs: dict[str, int | None] = {}  # id -> the run of its latest failure (fail-fast runs)
        self.requests = 0  # attempts of every line
        self.upstream_requests: int | None = None  # what the endpoint (a LiteLLM proxy) reported sending upstream
        self.upstream_unreported = 0  # attempts of reporting lines whose answer did not say
        self.latest_run: int | None = None  # the highest "run" seen: the series follows it
        self.series = TimeSeries()
        self.recent: deque[RecentAnswer] = deque(maxlen=RECENT_ANSWERS)  # latest answers
        self.last_finished_at: str | None = None

    def _run_of(self, line: StoredJSON) -> int | None:
        run = line.get("run")
        if isinstance(run, int) and not isinstance(run, bool):
            if self.latest_run is None or run > self.latest_run:
                self.latest_run = run
                self.series = TimeSeries()  # a new run: its own time axis
            return run
        return None

    def add_result(self, line: StoredJSON) -> None:
        ticket_id = str(line["id"])
        self.done += 1
        self.failed.pop(ticket_id, None)
        self.failed_runs.pop(ticket_id, None)
        self.failed_tickets.pop(ticket_id, None)
        money = line_money(line)
        self.results_cost += money.cost_usd or 0.0
        self.unpriced += money.unpriced
        self.rejected_cost += money.rejected_cost_usd
        self.cache_hits += money.cache_hit
        self.cost_saved_usd += money.cost_saved_usd
        self.kinds.add(money)
        out_tokens = money.completion_tokens
        self.prompt_tokens += money.prompt_tokens
        self.completion_tokens += out_tokens
        self.total_tokens += money.total_tokens
        latency = line.get("latency_ms")
        if isinstance(latency, (int, float)):
            self.latency.add(float(latency))
        ttft = line.get("ttft_ms")
        if isinstance(ttft, (int, float)):
            self.ttft.add(float(ttft))
        attempts = _int(line.get("attempts"))
        self.requests += attempts
        self._add_upstream(money.upstream_requests, money.upstream_unreported)
        run = self._run_of(line)
        t = line_time(line.get("finished_at"))
        if t is not None and (run is None or run == self.latest_run):
            elapsed = line.get("elapsed_ms")
            self.series.add(t, 1, 0, attempts, out_tokens, float(elapsed) if isinstance(elapsed, (int, float)) else 0.0,
                            line_time(line.get("started_at")))
        if isinstance(line.get("finished_at"), str):
            self.last_finished_at = max(self.last_finished_at or "", line["finished_at"])
        output = line.get("label") if isinstance(line.get("label"), str) else line.get("output")
        self.recent.append({"id": ticket_id, "answer": str(output)[:200] if output is not None else None,
                            "model": line.get("model_key") or line.get("model")})

    def add_error(self, line: StoredJSON) -> None:
        ticket_id = str(line["id"])
        kind = str(line.get("error_kind") or "unknown")
        self.failed[ticket_id] = kind
        run_of = line.get("run")
        self.failed_runs[ticket_id] = run_of if isinstance(run_of, int) and not isinstance(run_of, bool) else None
        self.failure_lines_by_kind[kind] = self.failure_lines_by_kind.get(kind, 0) + 1
        money = line_money(line)
        self.errors_cost += money.spent_usd  # answers paid for, then rejected
        attempts = _int(line.get("attempts"))
        self.requests += attempts
        self._add_upstream(money.upstream_requests, money.upstream_unreported)
        run = self._run_of(line)
        t = line_time(line.get("time"))
        if t is not None and (run is None or run == self.latest_run):
            self.series.add(t, 0, 1, attempts, 0, 0.0, line_time(line.get("started_at")))
        message = line.get("message")
        entry: FailureMessage = {"id": ticket_id, "message": str(message)[:500] if message is not None else None,
                                 "status_code": line.get("status_code"), "time": line.get("time"),
                                 "run": line.get("run")}
        self.messages.setdefault(kind, deque(maxlen=MESSAGES_PER_KIND)).append(entry)
        self.failed_tickets.pop(ticket_id, None)
        self.failed_tickets[ticket_id] = {**entry, "kind": kind, "attempts": attempts}
        if len(self.failed_tickets) > FAILED_TICKETS_SHOWN:
            del self.failed_tickets[next(iter(self.failed_tickets))]

    def _add_upstream(self, upstream: int | None, unreported: int) -> None:
        if upstream is not None:
            self.upstream_requests = (self.upstream_requests or 0) + upstream
            self.upstream_unreported += unreported

    @property
    def cost_usd(self) -> float:
        """What was spent, as `batchrun status` counts it: results' cost_usd and rejected
        answers on both files."""
        return self.results_cost + self.rejected_cost + self.errors_cost

    def failed_permanent(self, fail_fast_runs: AbstractSet[int] = frozenset()) -> int:
        """Failed tickets whose latest failure is permanent (errors.is_permanent; `fail_fast_runs`: the
        runs fail-fast stopped, whose auth / permission / not-found failures are transient)."""
        return sum(1 for ticket_id, kind in self.failed.items()
                   if is_permanent(kind, fail_fast=self.failed_runs.get(ticket_id) in fail_fast_runs))

    def failed_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kind in self.failed.values():
            counts[kind] = counts.get(kind, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
