"""The web server of `batchrun serve`: aiohttp, static pages, JSON and Server-Sent Events.

Routes:

    GET /                          the list of runs (static/index.html)
    GET /runs/{name}               one run's page (static/run.html)
    GET /static/{file}             app.js, style.css
    GET /api/runs                  every run under RUNS_DIR, newest first: job, state,
                                   progress, cost, accuracy where graded, times
    GET /api/runs/{name}           one run: the listing's line, `status` (the numbers of
                                   `batchrun status --json`), per model (`units`): counts,
                                   rates over time, latency, cost and budget, failures by
                                   kind, batch parts; `grading` once it has stopped
    GET /api/runs/{name}/events    the same JSON as Server-Sent Events ("snapshot"
                                   events), pushed whenever it changes
    GET /api/runs/{name}/tickets/{id}  one ticket (analysis/ticket_detail: `batchrun show --json`):
                                   attempts and verdict; its messages and answer with show_text only

How it follows a run: one `Hub` holds a `runs.RunWatch` per run asked for. A run
with at least one open event stream has one follower task, whatever the number of
pages: every `interval` seconds it reads what the checkpoint files gained (in a
thread), builds the snapshot once, and offers the encoded bytes to every stream's
one-slot queue (a slow page skips to the latest, it never queues up history). When
the last stream of a run closes (the tab closed: aiohttp cancels its handler, or
its transport is found closing), the follower task stops. Grading a stopped run
(grading.analyze, diffing.diff_analyses) runs in a child process, one at a time,
once its files have been quiet for a moment: reading every answer of a run never
stays in the server's memory.

Security: `build_app(..., token=...)` puts every route behind the token (header
`Authorization: Bearer T`, header `X-Batchrun-Token: T`, or `?token=T`, compared
in constant time); the command requires one for any host but loopback. Run names
go through `RunsRoot.resolve` (one plain directory under RUNS_DIR). Pages send a
Content-Security-Policy (scripts from this server only), no-referrer (the token
stays out of Referer headers) and nosniff. Answers and error messages quoting
answers are sent only with `show_text`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from batchrun.errors import redact_secrets
from batchrun.serve.payloads import GradeResult, JobRuns, Listing, RunLine, RunSnapshot
from batchrun.serve.runs import RunsRoot, RunWatch, UnsafeName, run_kind

__all__ = ["Hub", "build_app"]

STATIC = Path(__file__).resolve().parent / "static"
HEARTBEAT_S = 15.0  # a comment line on an idle stream: proxies keep it open, a dead client is found
TRANSPORT_CHECK_S = 1.0  # how often an idle stream looks whether its client went away
LISTING_TTL_S = 1.0  # the listing is rebuilt at most this often, whatever the number of pages

TOKEN_KEY: web.AppKey[str | None] = web.AppKey("token")


@dataclass(eq=False)
class Subscriber:
    """One open event stream: a one-slot queue holding the latest snapshot not yet sent."""

    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(maxsize=1))

    def offer(self, payload: bytes) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(payload)


class Hub:
    """The runs being watched, their event-stream subscribers and follower tasks."""

    def __init__(self, root: Path, *, show_text: bool = False, interval: float = 1.0) -> None:
        self.root = RunsRoot(root)
        self.show_text = show_text
        self.interval = interval
        self.watches: dict[str, RunWatch] = {}
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.followers: dict[str, asyncio.Task[None]] = {}
        self.wakeups: dict[str, asyncio.Event] = {}
        self.grading_tasks: dict[str, asyncio.Task[None]] = {}
        self._grading_slot = asyncio.Semaphore(1)
        self._listing: tuple[float, Listing] | None = None
        self._listing_lock = asyncio.Lock()
        self._last_payload: dict[str, bytes] = {}  # the snapshot each run's streams got last

    # -- runs --------------------------------------------------------------------------------

    def watch(self, name: str) -> RunWatch:
        """The RunWatch of a run name; UnsafeName or LookupError when there is no such run."""
        path = self.root.resolve(name)
        watch = self.watches.get(name)
        if watch is not None and watch.path == path and path.is_dir():
            return watch
        if run_kind(path) is None:
            raise LookupError(f"no run named {name!r} in {self.root.root}")
        watch = self.watches[name] = RunWatch(name, path)
        return watch

    async def catch_up(self, watch: RunWatch) -> None:
        """Read everything a run's files hold now (several polls for a big file)."""
        while True:
            await asyncio.to_thread(watch.refresh)
            if watch.caught_up:
                return

    async def listing(self) -> Listing:
        async with self._listing_lock:
            now = time.monotonic()
            if self._listing is not None and now - self._listing[0] < LISTING_TTL_S:
                return self._listing[1]
            runs: list[RunLine] = []
            for name in self.root.names():
                try:
                    watch = self.watch(name)
                except (UnsafeName, LookupError):
                    continue
                await asyncio.to_thread(watch.refresh)
                self.schedule_grading(watch)
                runs.append(watch.summary())
            runs.sort(key=lambda r: (r["started_at"] or "", r["name"]), reverse=True)
            jobs: dict[str, list[str]] = {}
            for run in runs:
                jobs.setdefault(run["job"] or "(unknown job)", []).append(run["name"])
            job_runs: list[JobRuns] = [{"job": job, "runs": names} for job, names in jobs.items()]
            listing: Listing = {"root": str(self.root.root), "runs": runs, "jobs": job_runs}
            self._listing = (time.monotonic(), listing)
            return listing

    def previous_run(self, watch: RunWatch) -> Path | None:
        """The latest stopped run of the same job that started before this one."""
        job = watch.job()
        started, _ = watch.times()
        if job is None or started is None:
            return None
        best: tuple[str, RunWatch] | None = None
        for name in self.root.names():
            if name == watch.name:
                continue
            try:
                other = self.watch(name)
            except (UnsafeName, LookupError):
                continue
            if not other.units or not all(u.manifest for u in other.units.values()):
                other.refresh()  # blocking: only called from the grading thread
            other_start, _ = other.times()
            if other.job() != job or other_start is None or other_start >= started:
                continue
            if other.state in ("running", "submitted"):
                continue
            if best is None or other_start > best[0]:
                best = (other_start, other)
        return best[1].path if best else None

    async def snapshot(self, name: str) -> RunSnapshot:
        watch = self.watch(name)
        await self.catch_up(watch)
        self.schedule_grading(watch)
        return await asyncio.to_thread(watch.snapshot, self.show_text)

    # -- grading -----------------------------------------------------------------------------

    def schedule_grading(self, watch: RunWatch) -> None:
        task = self.grading_tasks.get(watch.name)
        if task is not None and not task.done():
            return
        if not watch.needs_grading():
            return
        self.grading_tasks[watch.name] = asyncio.get_running_loop().create_task(self._grade(watch))

    async def _grade(self, watch: RunWatch) -> None:
        """Grade a stopped run in a child process (runs.grade_run), one at a time."""
        async with self._grading_slot:
            signature = watch.begin_grading()
            result: GradeResult | None = None
            previous: Path | None = None
            try:
                previous = await asyncio.to_thread(self.previous_run, watch)
                args = [str(watch.path), *([str(previous)] if previous else [])]
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "batchrun.serve.grade", *args,
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE)
                try:
                    out, err = await process.communicate()
                finally:
                    if process.returncode is None:  # cancelled (shutdown): do not wait for it
                        process.kill()
                        await process.wait()
                if process.returncode == 0:
                    result = orjson.loads(out)
                else:
                    tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
                    result = {"models": [], "diff": None, "note": f"grading failed: {redact_secrets(tail[0])}"}
            finally:
                watch.end_grading(signature, result, previous.name if previous else None)
        self._listing = None
        wake = self.wakeups.get(watch.name)
        if wake is not None:
            wake.set()

    # -- event streams -----------------------------------------------------------------------

    def subscribe(self, name: str) -> Subscriber:
        self.watch(name)
        sub = Subscriber()
        self.subscribers.setdefault(name, set()).add(sub)
        task = self.followers.get(name)
        if task is None or task.done():
            self.wakeups[name] = asyncio.Event()
            self.followers[name] = asyncio.get_running_loop().create_task(self._follow(name))
        else:
            self.wakeups[name].set()  # the newcomer needs a first snapshot now
            self._last_payload.pop(name, None)
        return sub

    def unsubscribe(self, name: str, sub: Subscriber) -> None:
        subs = self.subscribers.get(name)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self.subscribers[name]
            task = self.followers.pop(name, None)
            if task is not None:
                task.cancel()
            self.wakeups.pop(name, None)
            self._last_payload.pop(name, None)

    async def _follow(self, name: str) -> None:
        """One run's follower: read, build, offer to every stream; until nobody listens."""
        watch = self.watches[name]
        while self.subscribers.get(name):
            await asyncio.to_thread(watch.refresh)
            self.schedule_grading(watch)
            payload = await asyncio.to_thread(lambda: orjson.dumps(watch.snapshot(self.show_text)))
            if payload != self._last_payload.get(name):
                self._last_payload[name] = payload
                for sub in list(self.subscribers.get(name, ())):
                    sub.offer(payload)
            if watch.caught_up:
                wake = self.wakeups.get(name)
                if wake is None:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.interval)
                wake.clear()

    async def close(self) -> None:
        tasks = [*self.followers.values(), *self.grading_tasks.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.followers.clear()
        self.subscribers.clear()


HUB_KEY = web.AppKey("hub", Hub)


# --------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------


def _hub(request: web.Request) -> Hub:
    return request.app[HUB_KEY]


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


async def index_page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


async def run_page(request: web.Request) -> web.StreamResponse:
    try:
        _hub(request).watch(request.match_info["name"])
    except UnsafeName as exc:
        return web.Response(status=400, text=str(exc))
    except LookupError as exc:
        return web.Response(status=404, text=str(exc))
    return web.FileResponse(STATIC / "run.html")


async def api_runs(request: web.Request) -> web.Response:
    return _json(await _hub(request).listing())


async def api_run(request: web.Request) -> web.Response:
    try:
        return _json(await _hub(request).snapshot(request.match_info["name"]))
    except UnsafeName as exc:
        return _error(400, str(exc))
    except LookupError as exc:
        return _error(404, str(exc))


async def api_ticket(request: web.Request) -> web.Response:
    """One ticket's detail, as `batchrun show --json` gives it (messages and answer: show_text only)."""
    from batchrun.analysis.ticket_detail import TicketNotFoundError, ticket_detail
    from batchrun.errors import ReportError

    hub = _hub(request)
    try:
        watch = hub.watch(request.match_info["name"])
        detail = await asyncio.to_thread(ticket_detail, watch.path, request.match_info["ticket"],
                                         show_text=hub.show_text)
    except UnsafeName as exc:
        return _error(400, str(exc))
    except (LookupError, TicketNotFoundError) as exc:
        return _error(404, str(exc))
    except ReportError as exc:
        return _error(409, str(exc))
    return web.Response(body=redact_secrets(orjson.dumps(detail).decode()), content_type="application/json")


async def api_events(request: web.Request) -> web.StreamResponse:
    hub = _hub(request)
    name = request.match_info["name"]
    try:
        sub = hub.subscribe(name)
    except UnsafeName as exc:
        return _error(400, str(exc))
    except LookupError as exc:
        return _error(404, str(exc))
    try:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        idle = 0.0
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                break  # the page was closed
            try:
                payload = await asyncio.wait_for(sub.queue.get(), TRANSPORT_CHECK_S)
            except TimeoutError:
                idle += TRANSPORT_CHECK_S
                if idle >= HEARTBEAT_S:
                    idle = 0.0
                    await response.write(b": keep-alive\n\n")
                continue
            idle = 0.0
            await response.write(b"event: snapshot\ndata: " + payload + b"\n\n")
    except (ConnectionResetError, ConnectionError):
        pass  # the page went away mid-write
    finally:
        hub.unsubscribe(name, sub)
    return response


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------


def _given_token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("X-Batchrun-Token") or request.query.get("token")


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[TOKEN_KEY]
    if token is not None:
        given = _given_token(request)
        if given is None or not hmac.compare_digest(given.encode(), str(token).encode()):
            return web.Response(status=401, text="batchrun serve: this server needs its token "
                                                 "(?token=..., or the Authorization: Bearer header)",
                                headers={"WWW-Authenticate": "Bearer"})
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy",
                                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def build_app(root: Path, *, token: str | None = None, show_text: bool = False,
              interval: float = 1.0) -> web.Application:
    """The aiohttp application serving RUNS_DIR `root` (no socket yet: see command.py or aiohttp's runners)."""
    app = web.Application(middlewares=[_guard])
    app[TOKEN_KEY] = token

    async def start_hub(app: web.Application) -> AsyncIterator[None]:
        hub = Hub(root, show_text=show_text, interval=interval)
        app[HUB_KEY] = hub
        yield
        await hub.close()

    app.cleanup_ctx.append(start_hub)
    app.router.add_get("/", index_page)
    app.router.add_get("/runs/{name}", run_page)
    app.router.add_get("/api/runs", api_runs)
    app.router.add_get("/api/runs/{name}", api_run)
    app.router.add_get("/api/runs/{name}/events", api_events)
    app.router.add_get("/api/runs/{name}/tickets/{ticket}", api_ticket)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    return app
