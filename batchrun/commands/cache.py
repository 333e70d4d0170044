"""`batchrun cache clear`: empty the response cache (`cache = true` in a job).

The cache is found the way a run finds it: the job's `cache_url` (Redis) or
`cache_dir`, else --cache-url / --cache-dir, else the default folder
($BATCHRUN_CACHE_DIR, else ~/.cache/batchrun/responses). On Redis only
batchrun's keys ("batchrun:*") are removed. The cache itself is
provider.ResponseCache (litellm's cache layer).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batchrun.analysis.textfmt import error_line

CLEAR_EXAMPLES = """
\b
Examples:
  batchrun cache clear                              # the default folder
  batchrun cache clear jobs/classify_tickets.toml   # where that job's cache lives
  batchrun cache clear --cache-url redis://127.0.0.1:6379/0
"""


@click.group(name="cache")
def cache_command() -> None:
    """The response cache: answers reused across runs (`cache = true`)."""


@cache_command.command(name="clear", epilog=CLEAR_EXAMPLES)
@click.argument("job_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="The disk cache's folder.")
@click.option("--cache-url", help="A Redis URL (redis://host:port/db).")
def clear_command(job_file: Path | None, cache_dir: Path | None, cache_url: str | None) -> None:
    """Remove every stored answer from the response cache."""
    from batchrun.errors import BatchrunError, redact_url
    from batchrun.job.spec import cache_location, load_job

    try:
        if job_file is not None:
            job = load_job(job_file)
            location = cache_location(cache_url or job.cache_url, cache_dir or job.cache_dir)
        else:
            location = cache_location(cache_url, cache_dir)
        from batchrun.providers.cache import ResponseCache

        if "dir" in location and not Path(location["dir"]).exists():
            click.echo(f"batchrun: no response cache in {location['dir']}: nothing to clear")
            return
        cache = ResponseCache(location)
        removed = cache.clear()
    except BatchrunError as exc:
        click.echo(error_line(exc), err=True)
        sys.exit(int(exc.exit_code))
    where = redact_url(location["url"]) if "url" in location else location["dir"]
    click.echo(f"batchrun: removed {removed:,} stored answer(s) from the response cache in {where}")
