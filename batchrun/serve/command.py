"""`batchrun serve [RUNS_DIR]`: the live page of every run under RUNS_DIR.

    batchrun serve [RUNS_DIR] [--host 127.0.0.1] [--port 8765] [--token T]
                   [--show-text] [--interval 1.0]

Binds 127.0.0.1 unless told otherwise. Any other host needs a token: `--token`,
the BATCHRUN_SERVE_TOKEN variable, or one generated and printed once; every
request then carries it (`?token=`, or `Authorization: Bearer`). The pages read
the run directories only: serving never slows a run down and works the same for
a run in another process, one started by cron, or one finished last night.

`serve_in_background(run_dir, port)` is what `batchrun run --serve` uses: a
`batchrun serve` child process on the run directory's parent, stopped when the
run ends.
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
from typing import Any, Callable, Iterator

import click

__all__ = ["LOOPBACK", "serve", "serve_command", "serve_in_background", "serve_token"]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
TOKEN_ENV = "BATCHRUN_SERVE_TOKEN"

SERVE_EXAMPLES = """
\b
Examples:
  batchrun serve                                   # runs/ on http://127.0.0.1:8765/
  batchrun serve runs --port 9000
  batchrun serve /srv/nightly --host 0.0.0.0       # prints a token; open the URL it prints
  batchrun run jobs/classify_tickets.toml --serve  # the page of the run being done
"""


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


def _url(host: str, port: int, path: str = "/", token: str | None = None) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}{path}" + (f"?token={token}" if token else "")


@click.command(name="serve", epilog=SERVE_EXAMPLES)
@click.argument("runs_dir", required=False, default="runs", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback requires a token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="0: any free port.")
@click.option("--token", envvar=TOKEN_ENV, help=f"Token every request must carry [env: {TOKEN_ENV}; "
                                                 "generated and printed when another host is bound].")
@click.option("--show-text", is_flag=True, help="Show answers (and error messages quoting them) on the pages.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Seconds between reads of a followed run's files.")
@click.option("--open-run", "open_run", hidden=True, help="Print the URL of this run's page instead of the list.")
def serve_command(runs_dir: Path, host: str, port: int, token: str | None, show_text: bool, interval: float,
                  open_run: str | None) -> None:
    """Serve a live page of every run under RUNS_DIR (default runs/).

    Each run directory (or compare directory) gets a page that follows its
    checkpoint files as they grow and updates over Server-Sent Events: progress,
    rates, latency, cost against the budget, failures, and for a finished run
    with gold labels its accuracy, confusion matrix and the change against the
    previous run of the same job. JSON for scripts: /api/runs, /api/runs/NAME,
    /api/runs/NAME/events.
    """
    if not runs_dir.is_dir():
        click.echo(f"batchrun serve: error: {runs_dir}: no such directory", err=True)
        sys.exit(2)
    token, generated = serve_token(host, token)

    def ready(bound: int) -> None:
        path = f"/runs/{open_run}" if open_run else "/"
        click.echo(f"batchrun serve: {runs_dir.resolve()} on {_url(host, bound, path, token)}", err=True)
        if generated:
            click.echo("batchrun serve: a token was generated (shown once, in the URL above); "
                       f"set --token or {TOKEN_ENV} to choose it", err=True)
        click.echo("batchrun serve: Ctrl-C stops", err=True)

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, task.cancel)  # type: ignore[union-attr]
        with contextlib.suppress(asyncio.CancelledError):
            await serve(runs_dir, host, port, token=token, show_text=show_text, interval=interval, on_ready=ready)

    try:
        asyncio.run(main())
    except OSError as exc:
        click.echo(f"batchrun serve: error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        sys.exit(1)


@contextlib.contextmanager
def serve_in_background(run_dir: Path, port: int, *, host: str = "127.0.0.1") -> Iterator[Any]:
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
