"""The simulator's Batch API: OpenAI's `/v1/files` and `/v1/batches` (and, on the same machinery,
Anthropic's `/v1/messages/batches`: `batchrun.sim.anthropic_batches`).

Enough of OpenAI's Batch API for litellm's batch functions (`acreate_file`,
`acreate_batch`, `aretrieve_batch`, `afile_content`, `acancel_batch`,
`alist_batches`, through the OpenAI SDK) to talk to the simulator:

``POST /v1/files``                    multipart upload (``purpose``, ``file``), streamed to disk
``GET /v1/files/{id}``                the file object
``GET /v1/files/{id}/content``        the file's bytes, streamed from disk
``POST /v1/batches``                  create (``input_file_id``, ``endpoint``,
                                      ``completion_window``, ``metadata``)
``GET /v1/batches/{id}``              the batch object
``POST /v1/batches/{id}/cancel``      cancel: ``cancelling``, then ``cancelled``
                                      with what was answered so far in its output file
``GET /v1/batches?after=&limit=``     newest first, paged (``has_more``, ``last_id``);
                                      ``metadata`` is returned, never filtered on
``GET /sim/batch_stats``              counters: batches created, calls per endpoint,
                                      batch lines answered per custom_id, the anthropic-beta
                                      header of each Message Batch created by this process

Life of a batch. Created ``validating``: every input line must be JSON with
a unique string ``custom_id``, ``method`` POST, ``url`` equal to the batch's
endpoint and an object ``body``; otherwise the batch turns ``failed`` with
``errors`` naming the line. Then ``in_progress``: the lines are answered in
order, each exactly as `ChatSimulator` answers that chat request (same
models, labels, JSON and tool answers, usage; `ChatSimulator.answer_batch_line`),
``request_counts`` growing as they are. ``batch_duration_s`` simulated
seconds are spread over the lines. Output lines are written to disk as they
are made, in blocks whose order is reversed (output lines come in any
order, as OpenAI says), so neither input nor output is ever held in memory.
``finalizing``, then ``completed`` with ``output_file_id`` (when any line
succeeded) and ``error_file_id`` (when any failed).

Time. The simulator's clock runs ``batch_time_scale`` times faster than the
real one for batches: timestamps (``created_at``, ``expires_at``, ...) are
on that clock, and a 24-hour ``completion_window`` ends after
86400 / batch_time_scale real seconds.

Faults (`batchrun.sim.batch_faults`): a batch that fails validation, expires
with part of its lines answered, fails a share of its lines, fails all of
them, or stays in progress past its window; an output file holding duplicate,
unknown, null-id and non-JSON lines; 429/5xx answers from any endpoint; a
create whose answer is lost after the batch was made.

Output line: ``{"id": "batch_req_...", "custom_id": ..., "response":
{"status_code": 200, "request_id": ..., "body": <chat.completion>}, "error":
null}``; a failed line has the error body and its status code; a line not
run before expiry has ``"response": null, "error": {"code": "batch_expired",
...}``.

Files live in a temporary directory removed when the application stops.

Anthropic's Message Batches (`anthropic_batches.py`) are SimBatch objects with ``api =
"anthropic"`` run by the same `_run`: their requests file holds ``{"custom_id", "params"}``
lines, each answered through `anthropic_batches.answer_line`, and every result (succeeded,
errored, and the ``canceled`` or ``expired`` requests a cancel or the window's end leaves) goes
into one results file, as Anthropic streams them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypedDict

import orjson
from aiohttp import BodyPartReader, web

from batchrun.sim.batch_faults import BatchFault
from batchrun.sim.config import SimConfig
from batchrun.sim.jsontypes import JSONObject

if TYPE_CHECKING:
    from batchrun.sim.server import ChatSimulator

WINDOWS = {"24h": 86400.0}
FINISHED = frozenset({"completed", "failed", "expired", "cancelled"})
STATE_FILE = "state.json"
BLOCK_LINES = 64  # lines answered between clock checks; each block's output order is reversed
MAX_LIST_LIMIT = 100


def _error(status: int, message: str, error_type: str = "invalid_request_error", code: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    payload = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers)


@dataclass
class SimFile:
    id: str
    path: Path
    bytes: int
    created_at: int
    filename: str
    purpose: str

    def to_dict(self) -> JSONObject:
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": None, "status_details": None}


@dataclass
class SimBatch:
    id: str
    number: int  # 1-based creation order
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    expires_at: int
    status: str = "validating"
    errors: JSONObject | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    times: dict[str, int] = field(default_factory=dict)  # in_progress_at, completed_at, ...
    total: int = 0
    completed: int = 0
    failed: int = 0
    cancel_requested: bool = False
    api: str = "openai"  # "anthropic": a Message Batch (anthropic_batches.py)
    canceled: int = 0  # Anthropic's counts of requests a cancel or the window's end left unanswered
    expired: int = 0
    task: asyncio.Task[None] | None = None

    def to_dict(self) -> JSONObject:
        out: JSONObject = {
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": self.errors,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": self.created_at, "expires_at": self.expires_at,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }
        for name in ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
                     "cancelling_at", "cancelled_at"):
            out[name] = self.times.get(name)
        return out


def _seconds(value: float) -> str:
    """A retry-after value: whole seconds as an integer ("3"), else as a float ("0.01")."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class BatchLine(TypedDict):
    """A line of a batch's input file, as `BatchSimulator._validate` checked it (an Anthropic
    batch's lines are {"custom_id", "params"}, checked when it was created)."""

    custom_id: str
    method: str
    url: str
    body: JSONObject


def _chain(first: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


class _Writer:
    """An output or error file of a batch, created on its first line."""

    def __init__(self, owner: "BatchSimulator", purpose: str, name: str) -> None:
        self.owner, self.purpose, self.name = owner, purpose, name
        self.handle: IO[bytes] | None = None
        self.file: SimFile | None = None
        self.lines = 0

    def write(self, blob: bytes) -> None:
        if self.handle is None:
            self.file = self.owner.new_file(self.name, self.purpose)
            self.handle = open(self.file.path, "wb")
        self.handle.write(blob)
        self.lines += 1

    def close(self) -> str | None:
        if self.handle is None:
            return None
        self.handle.close()
        assert self.file is not None
        self.file.bytes = self.file.path.stat().st_size
        return self.file.id


class BatchSimulator:
    """Files and batches of one simulator instance (module docstring)."""

    def __init__(self, chat: ChatSimulator, config: SimConfig) -> None:
        self.chat = chat  # the ChatSimulator that answers each line
        self.config = config
        self.faults: tuple[BatchFault, ...] = config.batch_faults
        self.directory: Path | None = None
        self.files: dict[str, SimFile] = {}
        self.batches: dict[str, SimBatch] = {}
        self.order: list[str] = []  # batch ids, oldest first
        self.calls: dict[str, int] = {}
        self.lines_by_ticket: dict[str, int] = {}
        self.anthropic_betas: list[str | None] = []  # the anthropic-beta header of each Message Batch create
        self._real0 = time.time()
        self._epoch0 = self._real0
        self._resumed: set[str] = set()  # batches an earlier simulator left unfinished (see _run)
        self._next = 0
        self._prefix = os.urandom(3).hex()
        self.state_dir = Path(config.batch_state_dir) if config.batch_state_dir else None
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.directory = self.state_dir
            self._load()

    # -- wiring --------------------------------------------------------------------

    # -- persistence (batch_state_dir) --------------------------------------------------

    def _load(self) -> None:
        """Pick up the files and batches a previous simulator left in batch_state_dir;
        batches it left unfinished are processed again from their first line, on the saved clock:
        the lines due by now (or by a cancel asked meanwhile) are answered at once (see _run)."""
        assert self.state_dir is not None
        try:
            state = orjson.loads((self.state_dir / STATE_FILE).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return
        self._epoch0, self._real0 = state["epoch0"], state["real0"]
        self._next = state["next"]
        self._prefix = state["prefix"]
        self.calls = state.get("calls", {})
        self.lines_by_ticket = state.get("lines_by_ticket", {})
        for item in state["files"]:
            self.files[item["id"]] = SimFile(**{**item, "path": self.state_dir / item["id"]})
        for item in state["batches"]:
            batch = SimBatch(**item)
            self.batches[batch.id] = batch
            self.order.append(batch.id)
        self._resumed = {b.id for b in self.batches.values() if b.status not in FINISHED}

    def save(self) -> None:
        """Write the state (files, batches, counters) to batch_state_dir, atomically."""
        if self.state_dir is None:
            return
        state = {
            "epoch0": self._epoch0, "real0": self._real0, "next": self._next, "prefix": self._prefix,
            "calls": self.calls, "lines_by_ticket": self.lines_by_ticket,
            "files": [{k: v for k, v in vars(f).items() if k != "path"} for f in self.files.values()],
            "batches": [{k: v for k, v in vars(self.batches[i]).items() if k != "task"} for i in self.order],
        }
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_bytes(orjson.dumps(state))
        os.replace(tmp, self.state_dir / STATE_FILE)

    async def _on_startup(self, app: web.Application) -> None:
        for batch in (self.batches[batch_id] for batch_id in self.order if batch_id in self._resumed):
            batch.completed = batch.failed = batch.canceled = batch.expired = 0
            batch.output_file_id = batch.error_file_id = None
            batch.status = "validating"
            batch.task = asyncio.get_running_loop().create_task(self._process(batch))
        self.save()

    def install(self, app: web.Application) -> None:
        router = app.router
        router.add_post("/v1/files", self.upload)
        router.add_get("/v1/files/{file_id}", self.retrieve_file)
        router.add_get("/v1/files/{file_id}/content", self.file_content)
        router.add_post("/v1/batches", self.create)
        router.add_get("/v1/batches", self.list_batches)
        router.add_get("/v1/batches/{batch_id}", self.retrieve)
        router.add_post("/v1/batches/{batch_id}/cancel", self.cancel)
        router.add_get("/sim/batch_stats", self.stats)
        from batchrun.sim.anthropic_batches import AnthropicBatches

        AnthropicBatches(self).install(app)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._cleanup)

    async def _cleanup(self, app: web.Application) -> None:
        for batch in self.batches.values():
            if batch.task is not None:
                batch.task.cancel()
        for batch in self.batches.values():
            if batch.task is not None:
                try:
                    await batch.task
                except (asyncio.CancelledError, Exception):
                    pass
        self.save()
        if self.directory is not None and self.state_dir is None:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------

    def now(self) -> float:
        """The batch clock: epoch seconds running batch_time_scale times faster than real time."""
        return self._epoch0 + (time.time() - self._real0) * self.config.batch_time_scale

    def wall_time(self, simulated: float) -> float:
        """The real (epoch) time at which the batch clock shows `simulated`."""
        return self._real0 + (simulated - self._epoch0) / self.config.batch_time_scale

    def real_seconds(self, simulated: float) -> float:
        return max(0.0, simulated / self.config.batch_time_scale)

    def _new_id(self, prefix: str) -> str:
        self._next += 1
        return f"{prefix}{self._prefix}{self._next:06d}"

    def new_file(self, filename: str, purpose: str) -> SimFile:
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="batchrun-sim-files-"))
        file_id = self._new_id("file-sim")
        sim_file = SimFile(id=file_id, path=self.directory / file_id, bytes=0, created_at=int(self.now()),
                           filename=filename, purpose=purpose)
        self.files[file_id] = sim_file
        return sim_file

    def _call_fault(self, endpoint: str, error: Callable[..., web.Response] = _error) -> web.Response | BatchFault | None:
        """Count a call; the error response of a fault that hits it (or the create_lost rule), in the
        shape `error(status, message, type, code, headers=...)` makes (OpenAI's by default)."""
        number = self.calls.get(endpoint, 0) + 1
        self.calls[endpoint] = number
        for rule in self.faults:
            if rule.hits_call(endpoint, number):
                if rule.kind == "create_lost":
                    return rule
                if rule.kind == "429":
                    return error(429, "Rate limit reached for batch requests (simulated fault)",
                                 "rate_limit_exceeded", "rate_limit_exceeded",
                                 headers={"retry-after": _seconds(rule.retry_after)})
                if rule.kind == "401":
                    return error(401, "Incorrect API key provided (simulated fault)", "invalid_request_error",
                                 "invalid_api_key")
                return error(int(rule.kind), "The server had an error while processing your request "
                             "(simulated fault)", "server_error")
        return None

    def _batch_fault(self, batch: SimBatch) -> BatchFault | None:
        for rule in self.faults:
            if rule.hits_batch(batch.number):
                return rule
        return None

    def _draw(self, custom_id: str, number: int) -> float:
        digest = hashlib.blake2b(f"{self.config.seed}\0{custom_id}\0{number}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64

    # -- files ---------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        fault = self._call_fault("files")
        if isinstance(fault, web.Response):
            return fault
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError):
            return _error(400, "expected a multipart/form-data body with 'purpose' and 'file'")
        purpose, sim_file = None, None
        while True:
            part = await reader.next()
            if part is None:
                break
            # A nested multipart/* part is no form field (it failed here before it was typed: a 500).
            assert isinstance(part, BodyPartReader)
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                sim_file = self.new_file(part.filename or "upload.jsonl", "batch")
                size = 0
                with open(sim_file.path, "wb") as handle:
                    while True:
                        chunk = await part.read_chunk(1 << 20)
                        if not chunk:
                            break
                        handle.write(chunk)
                        size += len(chunk)
                sim_file.bytes = size
        if sim_file is None:
            return _error(400, "Missing required parameter: 'file'.")
        if purpose is None:
            return _error(400, "Missing required parameter: 'purpose'.")
        sim_file.purpose = purpose
        self.save()
        return web.json_response(sim_file.to_dict(), dumps=lambda o: orjson.dumps(o).decode())

    async def retrieve_file(self, request: web.Request) -> web.Response:
        fault = self._call_fault("file")
        if isinstance(fault, web.Response):
            return fault
        sim_file = self.files.get(request.match_info["file_id"])
        if sim_file is None:
            return _error(404, f"No such File object: {request.match_info['file_id']}")
        return web.json_response(sim_file.to_dict(), dumps=lambda o: orjson.dumps(o).decode())

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        fault = self._call_fault("content")
        if isinstance(fault, web.Response):
            return fault
        sim_file = self.files.get(request.match_info["file_id"])
        if sim_file is None:
            return _error(404, f"No such File object: {request.match_info['file_id']}")
        return web.FileResponse(sim_file.path, headers={"Content-Type": "application/octet-stream"})

    # -- batches -------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        fault = self._call_fault("create")
        if isinstance(fault, web.Response):
            return fault
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.")
        input_file_id = body.get("input_file_id")
        endpoint = body.get("endpoint")
        window = body.get("completion_window")
        metadata = body.get("metadata")
        if input_file_id not in self.files:
            return _error(404 if isinstance(input_file_id, str) else 400, f"No such File object: {input_file_id}")
        if endpoint not in ("/v1/chat/completions",):
            return _error(400, f"Invalid 'endpoint': {endpoint!r}; the simulator serves /v1/chat/completions")
        if window not in WINDOWS:
            return _error(400, f"Invalid 'completion_window': {window!r}; supported: 24h")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16
                                     or not all(isinstance(v, str) and len(v) <= 512 for v in metadata.values())):
            return _error(400, "Invalid 'metadata': at most 16 string values of up to 512 characters")
        created = self.now()
        batch = SimBatch(id=self._new_id("batch_sim"), number=len(self.order) + 1, input_file_id=input_file_id,
                         endpoint=endpoint, completion_window=window, metadata=metadata,
                         created_at=int(created), expires_at=int(created + WINDOWS[window]))
        self.batches[batch.id] = batch
        self.order.append(batch.id)
        batch.task = asyncio.get_running_loop().create_task(self._process(batch))
        self.save()
        if isinstance(fault, BatchFault):  # create_lost: made, but the client never hears of it
            return _error(500, "The server had an error while processing your request (simulated fault)",
                          "server_error")
        return web.json_response(batch.to_dict(), dumps=lambda o: orjson.dumps(o).decode())

    async def retrieve(self, request: web.Request) -> web.Response:
        fault = self._call_fault("retrieve")
        if isinstance(fault, web.Response):
            return fault
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, f"No such Batch object: {request.match_info['batch_id']}")
        return web.json_response(batch.to_dict(), dumps=lambda o: orjson.dumps(o).decode())

    async def cancel(self, request: web.Request) -> web.Response:
        fault = self._call_fault("cancel")
        if isinstance(fault, web.Response):
            return fault
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, f"No such Batch object: {request.match_info['batch_id']}")
        if batch.status in ("validating", "in_progress", "finalizing"):
            batch.cancel_requested = True
            batch.status = "cancelling"
            batch.times["cancelling_at"] = int(self.now())
            self.save()
        elif batch.status not in ("cancelling", "cancelled"):
            return _error(409, f"Cannot cancel a batch with status '{batch.status}'.")
        return web.json_response(batch.to_dict(), dumps=lambda o: orjson.dumps(o).decode())

    async def list_batches(self, request: web.Request) -> web.Response:
        fault = self._call_fault("list")
        if isinstance(fault, web.Response):
            return fault
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            return _error(400, "Invalid 'limit': expected an integer")
        limit = max(1, min(MAX_LIST_LIMIT, limit))
        ids = [i for i in self.order[::-1] if self.batches[i].api == "openai"]  # newest first
        after = request.query.get("after")
        if after:
            if after not in self.batches:
                return _error(400, f"Invalid 'after': no batch {after}")
            ids = ids[ids.index(after) + 1:]
        page = [self.batches[i].to_dict() for i in ids[:limit]]
        return web.json_response({"object": "list", "data": page,
                                  "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None,
                                  "has_more": len(ids) > limit}, dumps=lambda o: orjson.dumps(o).decode())

    async def stats(self, request: web.Request) -> web.Response:
        by_status: dict[str, int] = {}
        for batch in self.batches.values():
            by_status[batch.status] = by_status.get(batch.status, 0) + 1
        return web.json_response({
            "batches_created": len(self.order), "batches_by_status": by_status, "calls": dict(self.calls),
            "files": len(self.files), "lines_by_ticket": dict(self.lines_by_ticket),
            "anthropic_betas": list(self.anthropic_betas),
        }, dumps=lambda o: orjson.dumps(o).decode())

    # -- processing ----------------------------------------------------------------

    def _validate(self, batch: SimBatch) -> tuple[int, JSONObject | None]:
        """(line count, None) or (0, the errors object) for the batch's input file."""
        path = self.files[batch.input_file_id].path
        if batch.api == "anthropic":  # validated when it was created
            with open(path, "rb") as handle:
                return sum(1 for _ in handle), None
        seen: set[str] = set()
        count = 0
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                problem = None
                try:
                    line = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    line, problem = None, "invalid_json"
                if problem is None and not isinstance(line, dict):
                    problem = "invalid_json"
                elif problem is None:
                    cid = line.get("custom_id")
                    if not isinstance(cid, str) or not cid:
                        problem = "missing_custom_id"
                    elif cid in seen:
                        problem = "duplicate_custom_id"
                    elif line.get("method") != "POST":
                        problem = "invalid_method"
                    elif line.get("url") != batch.endpoint:
                        problem = "mismatched_url"
                    elif not isinstance(line.get("body"), dict):
                        problem = "invalid_body"
                    else:
                        seen.add(cid)
                if problem is not None:
                    return 0, {"object": "list", "data": [
                        {"code": problem, "message": f"line {number}: {problem.replace('_', ' ')}",
                         "param": None, "line": number}]}
                count += 1
        if count == 0:
            return 0, {"object": "list", "data": [{"code": "empty_file", "message": "the input file is empty",
                                                   "param": None, "line": None}]}
        return count, None

    async def _sleep_until(self, when: float, batch: SimBatch) -> None:
        while not batch.cancel_requested:
            left = when - self.now()
            if left <= 0:
                return
            await asyncio.sleep(min(self.real_seconds(left), 0.05))

    async def _process(self, batch: SimBatch) -> None:
        try:
            await self._run(batch)
            self.save()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: fail the batch as a provider would, visibly
            batch.status = "failed"
            batch.errors = {"object": "list", "data": [{"code": "simulator_error", "message": repr(exc),
                                                        "param": None, "line": None}]}
            batch.times["failed_at"] = int(self.now())
            self.save()

    async def _run(self, batch: SimBatch) -> None:
        fault = self._batch_fault(batch)
        await asyncio.sleep(0)
        count, errors = self._validate(batch)
        if fault is not None and fault.kind == "invalid":
            errors = {"object": "list", "data": [{"code": "invalid_request", "message":
                      "line 1: the request is not valid (simulated fault)", "param": "body", "line": 1}]}
        if errors is not None:
            batch.status, batch.errors = "failed", errors
            batch.times["failed_at"] = int(self.now())
            return
        # A batch an earlier simulator left unfinished has been running on the (saved) clock
        # since it was made: the lines due by now (by its cancel, if one came) are answered at
        # once (a provider keeps what it answered before a cancel), so what a later command finds
        # does not depend on how long the earlier simulators lived.
        resumed = batch.id in self._resumed
        if batch.cancel_requested and not resumed:
            if batch.api == "anthropic":  # every request gets its "canceled" result
                results = _Writer(self, "batch_output", f"{batch.id}_results.jsonl")
                with open(self.files[batch.input_file_id].path, "rb") as handle:
                    self._unanswered(batch, handle, results, "canceled")
                batch.output_file_id = results.close()
            batch.status = "cancelled"
            batch.times["cancelled_at"] = int(self.now())
            return
        batch.total = count
        batch.status = "in_progress"
        batch.times.setdefault("in_progress_at", batch.created_at if resumed else int(self.now()))
        self.save()
        kind = fault.kind if fault is not None else None
        stop_after = None  # lines answered before an expire/slow fault stops the batch
        if fault is None:
            pass
        elif kind == "expire":
            stop_after = int(count * (0.5 if fault.rate is None else fault.rate))
        elif kind == "slow":
            stop_after = int(count * (fault.rate or 0.0))
        per_line = self.config.batch_duration_s / count
        started = float(batch.times["in_progress_at"]) if resumed else self.now()
        out = _Writer(self, "batch_output", f"{batch.id}_output.jsonl")
        # Anthropic: one results file holds every request's result
        err = out if batch.api == "anthropic" else _Writer(self, "batch_output", f"{batch.id}_error.jsonl")
        extra: list[bytes] = []
        if kind == "anomalies" and batch.api != "anthropic":  # lines in OpenAI's output shape
            head, extra = self._anomaly_lines(batch)
            out.write(head)
        cancelled = False
        try:
            with open(self.files[batch.input_file_id].path, "rb") as handle:
                block: list[tuple[bool, bytes]] = []
                index = 0
                leftover: bytes | None = None  # the first line an expire/slow fault leaves unanswered
                cutoff = batch.times.get("cancelling_at") if resumed and batch.cancel_requested else None
                for raw in handle:
                    if stop_after is not None and index >= stop_after:
                        leftover = raw
                        break
                    if cutoff is not None and started + per_line * index > cutoff:
                        cancelled = True  # this line was not due before the cancel
                        leftover = raw
                        break
                    line = orjson.loads(raw)
                    cid = line["custom_id"]
                    self.lines_by_ticket[cid] = self.lines_by_ticket.get(cid, 0) + 1
                    block.append(self._answer(batch, fault, line))
                    index += 1
                    if len(block) >= BLOCK_LINES:
                        self._flush(batch, block, out, err)
                        await self._sleep_until(started + per_line * index, batch)
                        if batch.cancel_requested:
                            cancelled = True
                            break
                self._flush(batch, block, out, err)
                for blob in extra:
                    out.write(blob)
                if not cancelled and stop_after is not None:
                    if kind == "slow":  # in progress for ever, past the window, until cancelled
                        while not batch.cancel_requested:
                            await asyncio.sleep(0.02)
                        cancelled = True
                    else:  # expire: wait for the window's end, then the rest of the lines expire
                        while self.now() < batch.expires_at and not batch.cancel_requested:
                            await asyncio.sleep(min(0.05, self.real_seconds(batch.expires_at - self.now())))
                        cancelled = batch.cancel_requested
                        if not cancelled:
                            rest = handle if leftover is None else _chain(leftover, handle)
                            self._unanswered(batch, rest, err, "expired")
                if not cancelled and not batch.cancel_requested:
                    await self._sleep_until(started + self.config.batch_duration_s, batch)
                cancelled = cancelled or batch.cancel_requested
                if cancelled and batch.api == "anthropic":  # the requests not answered: "canceled"
                    self._unanswered(batch, handle if leftover is None else _chain(leftover, handle), out,
                                     "canceled")
        finally:
            batch.output_file_id = out.close()
            batch.error_file_id = err.close() if err is not out else None
        now = int(self.now())
        if cancelled:
            batch.status = "cancelled"
            batch.times["cancelled_at"] = now
        elif kind == "expire":
            batch.status = "expired"
            batch.times["expired_at"] = now
        else:
            batch.times["finalizing_at"] = now
            batch.status = "completed"
            batch.times["completed_at"] = now

    def _unanswered(self, batch: SimBatch, rows: Iterable[bytes], writer: _Writer, why: str) -> None:
        """The result of each request left unanswered when the window ended ("expired") or a cancel
        came ("canceled"; OpenAI's output has no line for those)."""
        for raw in rows:
            cid = orjson.loads(raw)["custom_id"]
            if batch.api == "anthropic":
                from batchrun.sim.anthropic_batches import unanswered_line

                writer.write(unanswered_line(cid, why))
                if why == "expired":
                    batch.expired += 1
                else:
                    batch.canceled += 1
            elif why == "expired":
                batch.failed += 1
                writer.write(orjson.dumps({
                    "id": self._new_id("batch_req_"), "custom_id": cid, "response": None,
                    "error": {"code": "batch_expired", "message": "This request could not be "
                              "executed before the completion window expired."}}) + b"\n")

    def _anomaly_lines(self, batch: SimBatch) -> tuple[bytes, list[bytes]]:
        """The `anomalies` fault's lines (batch_faults.py): the first, and those after the answers."""
        with open(self.files[batch.input_file_id].path, "rb") as handle:
            lines: list[BatchLine] = [orjson.loads(raw) for raw, _ in zip(handle, range(2))]

        def message(body: JSONObject) -> JSONObject:
            choices = body.get("choices")
            first = choices[0] if isinstance(choices, list) and choices else None
            found = first.get("message") if isinstance(first, dict) else None
            return found if isinstance(found, dict) else {}

        def record(cid: object, line: BatchLine, content: str | None = None) -> bytes:
            status, body = self.chat.answer_batch_line(orjson.dumps(line["body"]), str(cid))
            if content is not None and status == 200:
                message(body)["content"] = content
            return orjson.dumps({"id": self._new_id("batch_req_"), "custom_id": cid, "response": {
                "status_code": status, "request_id": self._new_id("req_"), "body": body}, "error": None}) + b"\n"

        first, second = lines[0], lines[-1]
        said = message(self.chat.answer_batch_line(orjson.dumps(second["body"]), second["custom_id"])[1]).get("content")
        other = next(label for label in ("bug", "feature", "billing", "other") if label != said)
        tail = [record(second["custom_id"], second, other), record(f"ghost-{batch.number}", first),
                record(None, first), b"<html><body>502 Bad Gateway</body></html>\n"]
        return record(first["custom_id"], first, "banana"), tail

    def _answer(self, batch: SimBatch, fault: BatchFault | None, line: BatchLine) -> tuple[bool, bytes]:
        cid = line["custom_id"]
        failed = fault is not None and (
            fault.kind == "all_failed"
            or (fault.kind == "fail_lines" and self._draw(cid, batch.number) < (0.5 if fault.rate is None
                                                                                    else fault.rate)))
        if batch.api == "anthropic":
            from batchrun.sim.anthropic_batches import answer_line

            return answer_line(self.chat, dict(line), failed)
        body: JSONObject
        if failed:
            status, body = 500, {"error": {"message": "The server had an error while processing your request "
                                           "(simulated fault)", "type": "server_error", "param": None,
                                           "code": None}}
        else:
            status, body = self.chat.answer_batch_line(orjson.dumps(line["body"]), cid)
        record = {"id": self._new_id("batch_req_"), "custom_id": cid,
                  "response": {"status_code": status, "request_id": self._new_id("req_"), "body": body},
                  "error": None}
        return status == 200, orjson.dumps(record) + b"\n"

    def _flush(self, batch: SimBatch, block: list[tuple[bool, bytes]], out: _Writer, err: _Writer) -> None:
        for ok, blob in reversed(block):  # output lines come in any order
            if ok:
                out.write(blob)
                batch.completed += 1
            else:
                err.write(blob)
                batch.failed += 1
        block.clear()
