"""Batch mode: a job's tickets through the provider's Batch API, on the online run's contract.

`mode = "batch"` (or `batchrun run JOB --mode batch`) sends each ticket still
to do as one line of a batch input file instead of one online call: about
half the price, answers within the provider's 24-hour window. Everything
else means what it means online: the same `prepare_run` (lock, input check,
resume refusal on a changed job), the same result and error lines
(`records.Outcome`, one `CheckpointWriter`), the same manifest, the same
output checks (labels, JSON schema, tools: `ticket_runner.judge_answer`), every
line of the provider's output files checked first (batch/outputs.py: unknown,
null and duplicate custom_ids, lines that are not JSON: batch_anomalies.jsonl).
All provider calls go through the `providers.seam.BatchAPI` of the model:
`LiteLLMBatchAPI` (litellm's `acreate_file`, `acreate_batch`,
`aretrieve_batch`, `afile_content`, `acancel_batch`, `alist_batches`) or
`AnthropicBatchAPI` (Anthropic's Message Batches: requests inline in the
create, results as one JSONL stream, no metadata). What differs between
providers stays behind that seam: whether a file is uploaded
(`inline_requests`), the limits per part, the custom_id of a ticket, how a
listed batch is recognised (`match_batch`), how an output line reads
(`parse_line`) and prices.

Run directory additions:

    batches.json              the ledger: a random run key, and one entry per part
                              (number, model key, state, ticket count, file id, batch id,
                              provider status and request counts, ...); rewritten
                              atomically (temp file, fsync, rename, fsync of the directory)
                              at every state change, so it always says what exists
    batch/part-0001.jsonl     the part's requests, as uploaded or sent inline (custom_id = ticket id,
                              or a digest of it "k" where the provider refuses the id: Anthropic)
    batch/part-0001.tickets.jsonl  per ticket of the part: attempts so far, invalid answers,
                              rejected answers and their cost
    batch/part-0001.output.jsonl / .errors.jsonl   the provider's output and error files,
                              downloaded in chunks (never held in memory)
    batch/part-0001.failed.jsonl   tickets of the part without a result: why, and whether
                              they go into a new part (retry) or to errors.jsonl
    batch_anomalies.jsonl     one line per output line not believed (batch/outputs.py)

Life of a part (its `state` in the ledger):

    building    its files are being written. A crash here: the next run deletes them
                and marks the part `discarded` (nothing left the machine).
    built       files complete; next: upload. (A crash after the upload and before the
                file id is recorded costs an orphan file, never a batch.) A provider that
                takes requests inline (Anthropic) uploads nothing: straight to uploaded.
    uploaded    file id recorded; next: create the batch with metadata
                {batchrun_run: <run key>, batchrun_job: <fingerprint>, batchrun_part: <n>}.
                The time of the first create is recorded before it is sent. After a
                create that failed, timed out or whose answer a crash lost, the
                provider's batches are listed (every page, filtered here: litellm does not
                filter on metadata) and the part's batch is adopted instead of creating
                another: the one whose metadata names the part, or, for a provider whose
                batches carry none (Anthropic), one created since that first create with
                the part's request count (BatchAPI.match_batch). A provider that cannot
                list is named in a warning with the part.
    submitted   batch id recorded; polled (backoff from batch_poll_s to batch_poll_max_s)
                until the batch is completed, failed, expired or cancelled. A batch still
                running well past its window is cancelled (what it answered is kept).
    collecting  output and error files downloaded and turned into result lines
                (results.jsonl ignores an id it already has, so a crash here only
                repeats work); tickets without a result go to part-N.failed.jsonl.
    failures_ready  errors.jsonl's size is recorded, then its error lines are appended
                (a crash here: the file is cut back to that size and they are written
                again, so no error line is doubled).
    collected   done; tickets whose failure is worth another try (a 429/5xx line, an
                expired or cancelled part, a part that failed validation, an answer the
                output check rejected) and that have attempts left (retry.max_attempts;
                max_invalid_output_retries for rejected answers) go into a new part.

Exactly once: a ticket is never in two live parts. New parts take tickets
in this order: retries of collected parts (unless already in a later part),
then tickets of the input not done, not in a part that was live when this
run started or made by this run. Each ticket thus ends once, in
results.jsonl or errors.jsonl; and a batch is created once per part (the
create is never retried blindly: `max_retries=0` in the seam, and a failed
create is followed by a listing before any other create).

`--no-wait` stops after submitting (state `submitted`, exit 0): the same
command later collects without resubmitting. `--finish-online` (handled by
the command) cancels what is still running, collects it, and leaves the
rest to the online engine.

Prices: the batch price of `BatchAPI.batch_prices` (job `[prices]`
batch prices, else half the job's prices; litellm's batch prices; else half
litellm's online price), with `cost_status` saying which.

Each step where a crash leaves a different state behind calls
`steps.reached(point)`; the kill tests replace it in a process of their own
(tests/crashing_batchrun.py) to SIGKILL it there.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, BinaryIO, Callable, Iterator, Literal, Mapping, TypeVar

import anyio
import anyio.abc
import orjson
from tenacity import RetryCallState

from batchrun.analysis.stats import RunStats
from batchrun.batch import steps
from batchrun.batch.adoption import find_batch
from batchrun.batch.ledger import (
    PART_DIR,
    Failure,
    Ledger,
    Part,
    TicketMeta,
    ids_of,
    read_part_lines,
    write_part_file,
)
from batchrun.batch.outputs import PART_FILES, Anomaly, PartOutputs
from batchrun.batch.refusal import endpoint_refusal
from batchrun.errors import BatchEndpointError, BatchrunError, RequestError
from batchrun.execution.finish import RunFinish
from batchrun.execution.preparation import PreparedRun
from batchrun.execution.result import RunResult
from batchrun.execution.retrying import build_retrying
from batchrun.execution.ticket_runner import rules_for, utc_now
from batchrun.job.templates import render_messages
from batchrun.job.tickets import read_tickets
from batchrun.providers.seam import BatchAPI, ChatRequest, Reply
from batchrun.records import Line, Outcome
from batchrun.rundir.checkpoint import CheckpointWriter, CheckpointWriteError
from batchrun.rundir.layout import BATCH_ANOMALIES, ERRORS, append_lines
from batchrun.rundir.layout import LIVE_PART_STATES as LIVE

log = logging.getLogger("batchrun")
console = logging.getLogger("batchrun.console")  # what a person sees on stderr (run_logging.py)
WINDOW = "24h"  # the completion window batchrun asks for (providers/batch_api.py)
WINDOW_S = 86400.0
OVERDUE_FACTOR = 1.1  # a batch still running after this many windows is cancelled
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
WRITE_EVERY = 256  # result lines per write
LIST_PAGE = 100  # batches per alist_batches page (OpenAI's maximum)
#: a part's result files: the ledger key of the provider's file id, the part file's suffix
DOWNLOADS: tuple[tuple[Literal["output_file_id", "error_file_id"], str], ...] = (
    ("output_file_id", ".output.jsonl"), ("error_file_id", ".errors.jsonl"))

_T = TypeVar("_T")

if TYPE_CHECKING:
    from tqdm import tqdm




# -- the run --------------------------------------------------------------------------------


@dataclass
class _Builder:
    """A part being written: its input file and its tickets file."""

    part: Part
    requests: BinaryIO  # part-N.jsonl
    tickets: BinaryIO  # part-N.tickets.jsonl
    count: int = 0
    size: int = 0
    estimate_usd: float = 0.0  # what its requests may cost (jobs with a budget)
    sources: set[int] = field(default_factory=set)


class _BatchRun:
    def __init__(self, prep: PreparedRun, apis: Mapping[str, BatchAPI], params: Mapping[str, Mapping[str, object]],
                 *, no_wait: bool, stop_submitting: bool, time_scale: float, progress: bool) -> None:
        self.prep = prep
        self.job = prep.job
        self.apis = dict(apis)
        self.params = {key: dict(value) for key, value in params.items()}
        self.no_wait = no_wait
        self.stop_submitting = stop_submitting  # --finish-online: cancel live parts, build none
        self.time_scale = time_scale
        # a provider clock that runs faster (the simulator) is polled as often in its own time
        self.poll_s = max(0.05, prep.job.batch_poll_s / time_scale)
        self.poll_max_s = max(self.poll_s, prep.job.batch_poll_max_s / time_scale)
        self.progress = progress
        self.ledger = Ledger.load(prep.run_dir, prep.job.fingerprint_hash())
        self.writer = CheckpointWriter(prep.run_dir, prep.checkpoint.done_ids,
                                       max_output_bytes=prep.job.max_output_bytes)
        self.failed_ids = set(prep.checkpoint.failed_ids)
        self.stats = RunStats(tickets_total=prep.tickets_total, already_done=prep.already_done,
                              skipped_failed=prep.skipped_failed, to_do=prep.to_do,
                              rejected_lines=prep.scan.problem_count)
        self.prices = {key: api.batch_prices() for key, api in self.apis.items()}
        self.rules = rules_for(self.job)
        self.bar: tqdm | None = None
        self.signal_number: int | None = None
        self.budget_note: str | None = None
        self.warned_unpriced = False  # batch answers with no price: said once
        self.live_at_start = {p["number"] for p in self.ledger.parts if p["state"] in LIVE}
        (prep.run_dir / PART_DIR).mkdir(exist_ok=True)

    # -- helpers --------------------------------------------------------------------------

    def _api(self, part: Part) -> BatchAPI:
        key = part["model_key"]
        if key not in self.apis:
            raise BatchrunError(f"part {part['number']} was made for model {key!r}, which this job no longer has")
        return self.apis[key]

    async def _retrying(self, what: str, call: Callable[[], Awaitable[_T]]) -> _T:
        """`call()` under the job's tenacity policy (for calls a retry cannot duplicate)."""
        async for attempt in build_retrying(self.job.retry):
            with attempt:
                try:
                    return await call()
                except RequestError as exc:
                    log.info("%s: %s", what, exc)
                    raise
        raise AssertionError("the retry layer reraises the last error")  # pragma: no cover

    def _metadata(self, part: Part) -> dict[str, str]:
        return {"batchrun_run": self.ledger.run_key, "batchrun_job": self.job.fingerprint_hash()[:16],
                "batchrun_part": str(part["number"])}

    # -- start: repair what a crash left ----------------------------------------------------

    def reconcile(self) -> None:
        changed = False
        for part in self.ledger.parts:
            if part["state"] == "building":
                for suffix in (".jsonl", ".tickets.jsonl"):
                    self.ledger.path(part, suffix).unlink(missing_ok=True)
                part["state"] = "discarded"
                part["note"] = "discarded: a run stopped while building it (nothing was sent)"
                changed = True
        for part in self.ledger.parts:
            offset = part.get("errors_offset")
            if part["state"] == "failures_ready" and offset is not None:
                errors = self.prep.run_dir / ERRORS
                if errors.exists() and errors.stat().st_size > offset:
                    with open(errors, "r+b") as handle:
                        handle.truncate(offset)
                        os.fsync(handle.fileno())
        if changed:
            self.ledger.save()

    # -- building and submitting -----------------------------------------------------------

    def _pending(self) -> Iterator[tuple[str, str, bytes, TicketMeta, int | None]]:
        """(model key, ticket id, request line, ticket meta, source part) for every ticket
        that goes into a new part: retries first, then tickets of the input (module docstring)."""
        parts = [p for p in self.ledger.parts if p["state"] != "discarded"]
        sources = [p for p in parts if p["state"] == "collected" and p.get("retry") and not p.get("carried")]
        excluded: set[str] = set()
        for part in parts:
            if part["number"] in self.live_at_start or part["run"] == self.prep.run_number:
                excluded |= ids_of(self.ledger, part)
        for source in sources:
            later: set[str] = set()
            for part in parts:
                if part["number"] > source["number"]:
                    later |= ids_of(self.ledger, part)
            retry = {_key_of(f): f for f in read_part_lines(self.ledger.path(source, ".failed.jsonl"))
                     if f.get("retry") and str(f["id"]) not in later}
            excluded |= {str(f["id"]) for f in retry.values()}
            if not retry:
                continue
            with open(self.ledger.path(source, ".jsonl"), "rb") as handle:
                for raw in handle:
                    line = orjson.loads(raw)
                    failure = retry.get(line["custom_id"])
                    if failure is None or failure["id"] in self.prep.checkpoint.done_ids:
                        continue  # not a retry, or done since (--finish-online)
                    again: TicketMeta = {"id": failure["id"], "a": failure["a"] + 1, "i": failure.get("i", 0),
                                         "r": failure.get("r", 0), "c": failure.get("c", 0.0)}
                    if "k" in failure:
                        again["k"] = failure["k"]
                    if failure.get("u"):
                        again["u"] = failure.get("u", 0)
                    yield source["model_key"], failure["id"], raw, again, source["number"]
        for ticket in read_tickets(self.job.input, self.job.id_field, only_lines=self.prep.scan.dispatch,
                                   max_line_bytes=self.job.max_line_bytes):
            if ticket.id in excluded:
                continue
            key = ""
            if self.job.routes:
                key, _ = self.job.route(ticket.fields)
            api = self.apis[key]
            request = ChatRequest(ticket_id=ticket.id, messages=render_messages(self.job, ticket),
                                  timeout_s=self.job.timeout_s, options=self.rules.options)
            custom_id = api.custom_id(ticket.id)
            raw = orjson.dumps(api.request_line(custom_id, request, self.params.get(key, {}))) + b"\n"
            meta: TicketMeta = {"id": ticket.id, "a": 1, "i": 0, "r": 0, "c": 0.0}
            if custom_id != ticket.id:
                meta["k"] = custom_id  # the provider's custom_id, where the ticket id is not one it takes
            yield key, ticket.id, raw, meta, None

    def _open_builder(self, key: str) -> _Builder:
        part = self.ledger.new_part(key, self.prep.run_number)
        self.ledger.save()  # a trace before any file: a crash now is repaired as "discarded"
        return _Builder(part=part, requests=open(self.ledger.path(part, ".jsonl"), "wb"),
                        tickets=open(self.ledger.path(part, ".tickets.jsonl"), "wb"))

    async def _close_builder(self, builder: _Builder) -> Part:
        for handle in (builder.requests, builder.tickets):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        part = builder.part
        part.update({"state": "built", "tickets": builder.count, "bytes": builder.size,
                     "estimate_usd": builder.estimate_usd})  # reserved from the budget while it is live
        self.ledger.save()
        await self._submit(part)
        return part

    async def build_parts(self) -> None:
        """Put every pending ticket into parts within the limits, submitting each when full."""
        if self.stop_submitting:
            return
        builders: dict[str, _Builder] = {}
        sources: set[int] = set()
        budget = self._budget()
        self.budget_note = None  # said again below if the budget still stops this build
        try:
            for key, ticket_id, raw, meta, source in self._pending():
                estimate = 0.0
                if budget is not None:
                    estimate = self._estimate(key, raw)
                    if budget[0] + budget[1] + estimate > budget[2]:
                        self.budget_note = (
                            f"budget reached: ${budget[0]:.6f} spent + ${budget[1]:.6f} submitted in parts + "
                            f"about ${estimate:.6f} for the next ticket would pass max_cost_usd = "
                            f"${budget[2]:g}; re-run with a larger budget to continue")
                        break
                    budget[1] += estimate
                builder = builders.get(key)
                max_requests, max_bytes = self._part_limits(key)
                if builder is not None and (builder.count >= max_requests or builder.size + len(raw) > max_bytes):
                    await self._close_builder(builder)
                    builder = None
                if builder is None:
                    builder = builders[key] = self._open_builder(key)
                builder.requests.write(raw)
                builder.tickets.write(orjson.dumps(meta) + b"\n")
                builder.count += 1
                builder.size += len(raw)
                builder.estimate_usd += estimate
                if source is not None:
                    sources.add(source)
                steps.reached("building")
            for key in list(builders):
                await self._close_builder(builders.pop(key))
        finally:
            for builder in builders.values():  # interrupted: the next run discards it
                builder.requests.close()
                builder.tickets.close()
        if self.budget_note is None:
            changed = False
            for part in self.ledger.parts:
                if part["number"] in sources or (part["state"] == "collected" and part.get("retry")
                                                 and not part.get("carried")):
                    part["carried"] = True
                    changed = True
            if changed:
                self.ledger.save()

    def _part_limits(self, key: str) -> tuple[int, int]:
        """Requests and bytes per part: the job's, within the provider's own limits."""
        api = self.apis[key]
        return (min(self.job.batch_max_requests, api.max_requests or self.job.batch_max_requests),
                min(self.job.batch_max_bytes, api.max_bytes or self.job.batch_max_bytes))

    def _budget(self) -> list[float] | None:
        """[spent on disk, reserved by live parts, max] when the job has a budget."""
        if self.prep.max_cost_usd is None:
            return None
        reserved = sum(p.get("estimate_usd") or 0.0 for p in self.ledger.parts if p["state"] in LIVE)
        return [self.prep.checkpoint.spent_usd + self.stats.cost_usd, reserved, self.prep.max_cost_usd]

    def _estimate(self, key: str, raw: bytes) -> float:
        line = orjson.loads(raw)
        body = line.get("body") or line.get("params") or {}  # OpenAI's line, Anthropic's request
        prompt = (sum(len(str(m.get("content") or "")) for m in body.get("messages", []))
                  + len(str(body.get("system") or ""))) // 3
        completion = int(body.get("max_tokens") or body.get("max_completion_tokens") or 1024)
        prices = self.prices.get(key)
        if prices is None:
            return 0.0
        return prompt * prices.input_per_token + completion * prices.output_per_token

    async def _submit(self, part: Part) -> None:
        """built -> uploaded -> submitted, adopting a batch a lost create made."""
        api = self._api(part)
        if part["state"] == "built":
            file_id = None  # inline requests (Anthropic): nothing to upload, the create carries them
            if not api.inline_requests:
                uploaded = await self._retrying(f"part {part['number']}: upload",
                                                lambda: api.create_file(self.ledger.path(part, ".jsonl")))
                file_id = uploaded["id"]
            steps.reached("uploaded")
            part.update({"state": "uploaded", "file_id": file_id})
            self.ledger.save()
        if part["state"] != "uploaded":
            return
        found = None
        # the retry layer: a create that failed (or whose answer was lost) is looked for before another
        async for attempt in build_retrying(self.job.retry, before_sleep=_log_create_retry(part["number"])):
            with attempt:
                found = await self._find_batch(part)
                if found is None:
                    part["create_attempts"] = part.get("create_attempts", 0) + 1
                    part.setdefault("create_sent_at", time.time())  # what a listing is matched against
                    part["create_last_sent_at"] = time.time()
                    self.ledger.save()
                    found = await api.create_batch(self.ledger.path(part, ".jsonl"), part["file_id"],
                                                   self._metadata(part))
                    steps.reached("created")
        assert found is not None
        self.stats.attempts += part["tickets"]
        submitted_at = time.time()
        window = found.get("completion_window")
        expires = found.get("expires_at")  # the provider's word, checked before it is believed
        part.update({"state": "submitted", "batch_id": found["id"], "status": found.get("status"),
                     "submitted_at": submitted_at, "counts": found.get("request_counts"),
                     "completion_window": window if isinstance(window, str) and len(window) < 16 else WINDOW,
                     "expires_at": float(expires) if isinstance(expires, (int, float)) and not isinstance(expires, bool)
                     and expires > submitted_at - 60 else submitted_at + WINDOW_S})
        self.ledger.save()

    async def _find_batch(self, part: Part) -> Reply | None:
        """The batch a lost create of this part made, if the provider lists it (batch/adoption.py)."""
        return await find_batch(self._api(part), part, self.ledger, self._metadata(part), self._retrying, LIST_PAGE)

    # -- waiting and collecting ------------------------------------------------------------

    def _live(self) -> list[Part]:
        return [p for p in self.ledger.parts if p["state"] in LIVE]

    async def resume_parts(self) -> None:
        """Finish what an earlier run left: collections, then uploads and creates."""
        for part in self._live():
            if part["state"] in ("collecting", "failures_ready"):
                await self._collect(part)
        for part in self._live():
            if part["state"] in ("built", "uploaded"):
                await self._submit(part)

    async def wait_and_collect(self) -> None:
        delay = self.poll_s
        while True:
            open_parts = [p for p in self._live() if p["state"] == "submitted"]
            if not open_parts:
                return
            progressed = False
            for part in open_parts:
                api = self._api(part)
                batch_id = part["batch_id"]
                assert batch_id is not None  # submitted
                batch = await self._retrying(f"part {part['number']}: retrieve",
                                             functools.partial(api.retrieve_batch, batch_id))
                steps.reached("polled")
                status = batch.get("status")
                counts = batch.get("request_counts")
                if status != part["status"] or counts != part["counts"]:
                    progressed = True
                    part.update({"status": status, "counts": counts})
                    if status != part["status"]:
                        self.ledger.save()
                if status in TERMINAL:
                    part.update({"output_file_id": batch.get("output_file_id"),
                                 "error_file_id": batch.get("error_file_id"), "errors_detail": batch.get("errors"),
                                 "state": "collecting"})
                    self.ledger.save()
                    await self._collect(part)
                    progressed = True
                elif self.stop_submitting or self._overdue(part):
                    if not part.get("cancel_requested"):
                        if not self.stop_submitting:
                            part["note"] = "still running past its window: cancelled, answers so far kept"
                        part["cancel_requested"] = True
                        self.ledger.save()
                        await self._cancel(api, part)
            self._update_bar()
            if progressed and not self.stop_submitting:
                await self.build_parts()  # retries of what was just collected
                delay = self.poll_s
                continue
            await anyio.sleep(delay)
            delay = min(delay * 1.5, self.poll_max_s)

    async def _cancel(self, api: BatchAPI, part: Part) -> None:
        """Ask for a cancel; a batch that finished meanwhile (409) is simply collected next poll."""
        batch_id = part["batch_id"]
        assert batch_id is not None  # submitted

        async def cancel() -> Reply | None:
            try:
                return await api.cancel_batch(batch_id)
            except RequestError as exc:
                if exc.status_code == 409:
                    return None
                raise
        await self._retrying(f"part {part['number']}: cancel", cancel)

    def _overdue(self, part: Part) -> bool:
        submitted = part.get("submitted_at")
        return submitted is not None and time.time() - submitted > WINDOW_S * OVERDUE_FACTOR / self.time_scale

    async def _collect(self, part: Part) -> None:
        api = self._api(part)
        if part["state"] == "collecting":
            for key, suffix in DOWNLOADS:
                dest = self.ledger.path(part, suffix)
                file_id = part.get(key)
                if file_id and not dest.exists():
                    await self._retrying(f"part {part['number']}: download",
                                         functools.partial(api.download, file_id, dest))
                    steps.reached("downloaded")
            await self._read_outputs(part)
            await self.writer.sync()
            part["errors_offset"] = (self.prep.run_dir / ERRORS).stat().st_size
            part["state"] = "failures_ready"
            self.ledger.save()
        await self._write_failures(part)

    def _ticket_meta(self, part: Part) -> dict[str, Line]:
        """The part's tickets by the custom_id their requests carry."""
        return {_key_of(m): m for m in read_part_lines(self.ledger.path(part, ".tickets.jsonl"))}

    def _started_at(self, part: Part) -> str:
        when = part.get("submitted_at") or time.time()
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when * 1000) % 1000:03d}Z"

    async def _read_outputs(self, part: Part) -> None:
        """Output and error files, each line checked (batch/outputs.py) -> result lines now, failures to
        part-N.failed.jsonl, the lines not believed to batch_anomalies.jsonl (cut back to where this
        part's began when a crash made the collection start again)."""
        meta = self._ticket_meta(part)
        ready: list[Outcome] = []
        failures: list[bytes] = []
        elapsed_ms = max(0.0, (time.time() - (part.get("submitted_at") or time.time())) * 1000.0)
        api = self._api(part)
        outputs = PartOutputs(self.job, self.prep.run_number, part, api,
                              self.prices.get(part["model_key"]), meta, self._started_at(part), elapsed_ms)
        for item in outputs.collect([self.ledger.path(part, suffix) for suffix, _ in PART_FILES]):
            if isinstance(item, Outcome):
                if item.completion is not None and item.completion.cost_usd is None:
                    self._warn_unpriced(api, item.completion.model)
                ready.append(item)
                if len(ready) >= WRITE_EVERY:
                    await self._write(ready)
                    ready = []
            else:
                failures.append(orjson.dumps(item) + b"\n")
        await self._write(ready)
        self._record_anomalies(part, outputs.anomalies)
        status = part.get("status")
        kind, message = {
            "failed": ("batch_failed", f"the batch failed validation: {_describe_errors(part.get('errors_detail'))}"),
            "expired": ("expired", "the batch's 24 h window ended before this request ran"),
            "cancelled": ("cancelled", "the batch was cancelled before this request ran"),
        }.get(status or "", ("missing", "the batch completed without an output or error line for this request"))
        for cid, m in meta.items():
            if cid not in outputs.seen:
                failures.append(orjson.dumps({**m, "kind": kind, "type": "Batch" + status.title() if status else
                                              "BatchMissing", "message": message, "status": None,
                                              "retry": True}) + b"\n")
        write_part_file(self.ledger.path(part, ".failed.jsonl"), failures)

    def _record_anomalies(self, part: Part, anomalies: list[Anomaly]) -> None:
        """The part's lines not believed: appended to batch_anomalies.jsonl (from the offset the
        ledger noted before this part's first collection), counted in the ledger and the summary."""
        path = self.prep.run_dir / BATCH_ANOMALIES
        offset = part.get("anomalies_offset")
        if offset is None:
            part["anomalies_offset"] = path.stat().st_size if path.exists() else 0
            self.ledger.save()
        elif path.exists() and path.stat().st_size > offset:
            with open(path, "r+b") as handle:  # an earlier collection of this part was cut short
                handle.truncate(offset)
        counts: dict[str, int] = {}
        for record in anomalies:
            counts[record["kind"]] = counts.get(record["kind"], 0) + 1
        part["anomalies"] = counts or None
        if not anomalies:
            return
        append_lines(path, [orjson.dumps(record) + b"\n" for record in anomalies], what="batch anomalies")
        steps.reached("anomalies")
        self.stats.record_batch_anomalies(anomalies)
        log.warning("part %d: %d output line(s) not believed (%s): see %s", part["number"], len(anomalies),
                    ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), path)

    def _warn_unpriced(self, api: BatchAPI, answered_by: str | None) -> None:
        """Once per run: batch answers with no price (cost_usd null), and the likely reason."""
        if self.warned_unpriced:
            return
        self.warned_unpriced = True
        note = (f"batch answers for {api.model} (answered by {answered_by or '?'}) come back with no price "
                "(cost_usd null, cost_status unpriced_model): litellm has no price for that name. Through a "
                "LiteLLM proxy, a model alias is not translated inside batch files: name the upstream model "
                "(docs/batch.md, \"Through a LiteLLM Proxy\"), or set [prices] in the job")
        console.warning("warning: %s", note)  # stderr and --log-file, dated (run_logging.py)

    async def _write(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        try:
            written = await self.writer.write_batch(outcomes)
        except CheckpointWriteError as exc:  # the disk filled: count what made it whole, then fail
            for outcome in exc.written:
                self.stats.record(outcome)
            raise
        steps.reached("writing")
        for outcome in written:
            self.stats.record(outcome)
            if outcome.ok:
                self.failed_ids.discard(outcome.ticket_id)
            else:
                self.failed_ids.add(outcome.ticket_id)
        self._update_bar()

    async def _write_failures(self, part: Part) -> None:
        """failures_ready -> collected: terminal failures to errors.jsonl, the rest counted for retry."""
        retry = 0
        ready: list[Outcome] = []
        started_at = self._started_at(part)
        for failure in read_part_lines(self.ledger.path(part, ".failed.jsonl")):
            if failure.get("retry") and failure["a"] < self.job.retry.max_attempts:
                retry += 1
                continue
            message = failure.get("message") or ""
            if failure.get("retry"):
                message = f"{message} (after {failure['a']} batch request(s); retry.max_attempts = " \
                          f"{self.job.retry.max_attempts})"
            ready.append(Outcome(
                ticket_id=failure["id"], attempts=failure["a"], started_at=started_at, finished_at=utc_now(),
                elapsed_ms=0.0, run=self.prep.run_number, error_kind=failure.get("kind"),
                error_type=failure.get("type"), error_message=message, status_code=failure.get("status"),
                rejected_outputs=failure.get("r", 0), rejected_cost_usd=failure.get("c", 0.0),
                rejected_unpriced=failure.get("u", 0),
                model_key=part["model_key"] or None))
            if len(ready) >= WRITE_EVERY:
                await self._write(ready)
                ready = []
        await self._write(ready)
        await self.writer.sync()
        steps.reached("errors")
        part.update({"state": "collected", "retry": retry, "carried": retry == 0})
        self.ledger.save()

    # -- progress -----------------------------------------------------------------------------

    def _update_bar(self) -> None:
        if not self.progress:
            return
        live = [p for p in self.ledger.parts if p["state"] == "submitted"]
        total = sum(p["tickets"] for p in live)
        done = sum(((p.get("counts") or {}).get("completed") or 0) + ((p.get("counts") or {}).get("failed") or 0)
                   for p in live)
        if self.bar is None:
            from tqdm.auto import tqdm  # a notebook's widget, else the terminal's bar

            self.bar = tqdm(total=total, unit="request", dynamic_ncols=True, file=sys.stderr, mininterval=0.25)
        self.bar.total = total
        self.bar.n = done
        self.bar.set_postfix_str(f"parts={len(live)} results={self.stats.done} failed={self.stats.failed}",
                                 refresh=False)
        self.bar.refresh()

    async def watch_signals(self, scope: anyio.CancelScope, *,
                            task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                self.signal_number = int(signum)
                console.warning("%s: stopping; submitted parts stay recorded, re-run the same command to "
                                "collect them", signal.Signals(signum).name)
                scope.cancel()
                return

    def manifest_extra(self) -> dict[str, object]:
        """What a batch run's manifest adds: its mode and its parts."""
        parts = [p for p in self.ledger.parts if p["state"] != "discarded"]
        return {"mode": "batch",
                "batch": {"run_key": self.ledger.run_key, "parts": len(parts),
                          "live": sum(1 for p in parts if p["state"] in LIVE),
                          "price_status": sorted({p.status for p in self.prices.values() if p is not None})}}

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()

    async def run(self) -> str:
        self.reconcile()
        await self.writer.open()
        refused: BatchEndpointError | None = None
        try:
            async with anyio.create_task_group() as tg:
                work = anyio.CancelScope()
                await tg.start(self.watch_signals, work)
                with work:
                    try:
                        await self.resume_parts()
                        await self.build_parts()
                        if not self.no_wait:
                            await self.wait_and_collect()
                    except RequestError as exc:  # raised here, after the task group: never an ExceptionGroup
                        refused = endpoint_refusal(exc)
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the work's own other error (a bad answer file, ...), as it is
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
                raise group.exceptions[0] from None
            raise
        if refused is not None:
            raise refused  # the ledger says what exists: the same command resumes
        if self.signal_number is not None:
            return "interrupted"
        if self.budget_note is not None and not self._live():
            return "budget_exhausted"
        if self._live():
            return "submitted"
        return "done"


def _describe_errors(errors: object) -> str:
    if isinstance(errors, Mapping):
        data = errors.get("data") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in data if isinstance(e, Mapping))[:500] \
            or "no detail"
    return "no detail"


def _key_of(meta: Mapping[str, object]) -> str:
    """The custom_id of a part's ticket (its id, unless the provider needed another: "k")."""
    return str(meta.get("k", meta["id"]))


def _log_create_retry(number: int) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.info("part %d: create failed (%s); looking for it before another create", number, exc)

    return before_sleep


async def execute_batch_run(prep: PreparedRun, apis: Mapping[str, BatchAPI],
                            params: Mapping[str, Mapping[str, object]] | None = None, *, no_wait: bool = False,
                            stop_submitting: bool = False, time_scale: float = 1.0,
                            progress: bool = False) -> RunResult:
    """Run the prepared job in batch mode (module docstring); always leaves a consistent run directory.

    `apis`: one BatchAPI per model key ("" for a single-model job); `params`: the request
    params per model key; `time_scale`: how much faster than real time the provider's clock runs
    (the simulator's batch_time_scale; 1 for a real provider), for the overdue check.
    """
    run = _BatchRun(prep, apis, params or {key: prep.job.params for key in apis}, no_wait=no_wait,
                    stop_submitting=stop_submitting, time_scale=time_scale, progress=progress)
    finish = RunFinish(prep, run.stats, run.failed_ids, run.writer, extra=run.manifest_extra,
                       cleanup=(run.close_bar,))
    async with finish:
        try:
            state = await run.run()
        finally:
            with anyio.CancelScope(shield=True):  # the providers' connections, whatever happened
                for api in apis.values():
                    await api.aclose()
        finish.end(state, error=run.budget_note, signal_number=run.signal_number)
    return finish.result()
