"""Running the server of `batchrun serve` (the command is commands/serve.py).

    serve_token(host, token)        the token rule: none needed on loopback unless one
                                    is given; any other host gets the given token or a
                                    new random one (printed once)
    serve_forever(root, host, port, ...)
                                    binds, calls on_ready(port), serves until SIGINT or
                                    SIGTERM; OSError when the address cannot be bound
    serve_in_background(run_dir, port)
                                    what `batchrun run --serve` uses: a `batchrun serve`
                                    child process on the run directory's parent, showing
                                    that run's page, stopped when the block ends
    linger(seconds)                 after the run: keep the page served for `seconds`
                                    (None: until Ctrl-C or SIGTERM), the final state on it

The pages read the run directories only: serving never slows a run down and works
the same for a run in another process, one started by cron, or one finished last
night.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["LOOPBACK", "TOKEN_ENV", "linger", "serve", "serve_forever", "serve_in_background", "serve_token", "url"]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
TOKEN_ENV = "BATCHRUN_SERVE_TOKEN"

async def serve(root: Path, host: str, port: int, *, token: str | None, show_text: bool, interval: float,
                on_ready: Callable[[int], None]) -> None:
    """Serve until cancelled; `on_ready(port)` once listening (the port really bound)."""
    from aiohttp import web

    from batchrun.serve.app import build_app

    app = build_app(root, token=token, show_text=show_text, interval=interval)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, shutdown_timeout=1.0)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        on_ready(bound)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def serve_token(host: str, token: str | None) -> tuple[str | None, bool]:
    """(the token requests must carry, whether it was generated): loopback needs none unless
    one is given; any other host gets the given one or a new random one."""
    if token:
        return token, False
    if host in LOOPBACK:
        return None, False
    return secrets.token_urlsafe(24), True


def url(host: str, port: int, path: str = "/", token: str | None = None) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}{path}" + (f"?token={token}" if token else "")


def serve_forever(root: Path, host: str, port: int, *, token: str | None, show_text: bool, interval: float,
                  on_ready: Callable[[int], None]) -> None:
    """Serve until SIGINT or SIGTERM (then return); OSError if host:port cannot be bound."""

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None  # asyncio.run's main task
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(root, host, port, token=token, show_text=show_text, interval=interval, on_ready=on_ready)

    asyncio.run(main())


@contextlib.contextmanager
def serve_in_background(run_dir: Path, port: int, *, host: str = "127.0.0.1") -> Iterator[subprocess.Popen[bytes]]:
    """A `batchrun serve` process on run_dir's parent, printing the run's page URL; stopped on exit.

    A separate process reads the run directory like any other page would: the run's
    event loop never serves a page."""
    run_dir = Path(run_dir).resolve()
    command = [sys.executable, "-m", "batchrun.cli", "serve", str(run_dir.parent), "--host", host,
               "--port", str(port), "--open-run", run_dir.name]
    process = subprocess.Popen(command, env=dict(os.environ), stdin=subprocess.DEVNULL)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def linger(seconds: float | None, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait `seconds` (None: until SIGINT or SIGTERM) while a `serve_in_background` process keeps the
    finished run's page up; returns early when that server process ends. A signal ends the wait, never
    the caller: the run is over, its exit code stands."""
    import threading
    import time

    stop = threading.Event()
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, lambda *_: stop.set())
    try:
        deadline = None if seconds is None else time.monotonic() + seconds
        while not stop.is_set():
            if process is not None and process.poll() is not None:
                return
            left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if left <= 0:
                return
            stop.wait(left)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
