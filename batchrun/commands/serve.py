"""`batchrun serve [RUNS_DIR]`: a live page of every run under RUNS_DIR (batchrun/serve/).

Click options, the token rule (serve/server.py's `serve_token`), one call to
`serve_forever`, and the lines it prints (the URL, with the token when one is
needed). The manual is docs/serve.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

__all__ = ["serve_command"]

TOKEN_ENV = "BATCHRUN_SERVE_TOKEN"  # also serve.server.TOKEN_ENV; here so --help imports no server code

SERVE_EXAMPLES = """
\b
Examples:
  batchrun serve                                   # runs/ on http://127.0.0.1:8765/
  batchrun serve runs --port 9000
  batchrun serve /srv/nightly --host 0.0.0.0       # prints a token; open the URL it prints
  batchrun run jobs/classify_tickets.toml --serve  # the page of the run being done
"""


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
    from batchrun.serve.server import serve_forever, serve_token, url

    if not runs_dir.is_dir():
        click.echo(f"batchrun serve: error: {runs_dir}: no such directory", err=True)
        sys.exit(2)
    token, generated = serve_token(host, token)

    def ready(bound: int) -> None:
        path = f"/runs/{open_run}" if open_run else "/"
        click.echo(f"batchrun serve: {runs_dir.resolve()} on {url(host, bound, path, token)}", err=True)
        if generated:
            click.echo("batchrun serve: a token was generated (shown once, in the URL above); "
                       f"set --token or {TOKEN_ENV} to choose it", err=True)
        click.echo("batchrun serve: Ctrl-C stops", err=True)

    try:
        serve_forever(runs_dir, host, port, token=token, show_text=show_text, interval=interval, on_ready=ready)
    except OSError as exc:
        click.echo(f"batchrun serve: error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        sys.exit(1)
