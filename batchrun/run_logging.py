"""Where a run's log lines go: stderr (and a log file), never stdout, dated, with API keys scrubbed.

`batchrun run` prints its summary on stdout and everything else on stderr, so
a cron job can keep the two apart. This module holds the rules of stderr and
of `--log-file`:

  * every line starts with one ISO 8601 date-time format, local time with
    its UTC offset (`2026-11-22T03:00:30+01:00`), multi-line messages too
    (each line);
  * what a person should see (the header, notes, progress lines, a stop, the
    end) goes to the logger CONSOLE ("batchrun.console": `batchrun: ...`);
    the detail (each retry and failure) to "batchrun" at -v; litellm's own
    lines at -vv only (WARNING and up at -v), never on stdout;
  * the log file gets the same lines as stderr, plus the progress lines when
    the terminal shows a bar instead.

    setup_logging(verbose, log_file, secrets, bar)   the handlers, once per process
    route_litellm_logs(verbose)                      litellm's own loggers
    console                                          the CONSOLE logger
    stamp()                                          the date-time of a line, now

Lower tiers write to CONSOLE through `logging.getLogger("batchrun.console")`
(the name, not this module): a progress line carries `extra={"progress":
True}`. With no handler set up (the Python API), Python's last-resort
handler shows CONSOLE's warnings (a stop) on stderr and nothing else.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["CONSOLE", "LITELLM_LOGGERS", "console", "route_litellm_logs", "setup_logging", "stamp"]

CONSOLE = "batchrun.console"
console = logging.getLogger(CONSOLE)
LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")


def stamp(when: float | None = None) -> str:
    """The date-time every stderr and log-file line starts with: ISO 8601, local time, its offset."""
    return datetime.fromtimestamp(time.time() if when is None else when).astimezone().isoformat(timespec="seconds")


class _RedactingFilter(logging.Filter):
    """Scrubs API keys from every log record before any handler sees it, and escapes what a
    terminal would act on (a provider's message may hold escape sequences)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        from batchrun.analysis.textfmt import terminal_safe
        from batchrun.errors import redact_secrets

        record.msg = terminal_safe(redact_secrets(record.getMessage(), self.secrets))
        record.args = ()
        if record.exc_info:
            import traceback

            record.msg += "\n" + redact_secrets("".join(traceback.format_exception(*record.exc_info)),
                                                self.secrets)
            record.exc_info = None
            record.exc_text = None
        return True


class _NoProgress(logging.Filter):
    """Drops progress lines: stderr shows a bar instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "progress", False)


class _Stamped(logging.Formatter):
    """`DATE-TIME batchrun: message` (CONSOLE) or `DATE-TIME LEVEL logger: message`, each line."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        when = stamp(record.created)
        if record.name == CONSOLE:
            level = {logging.WARNING: "warning: ", logging.ERROR: "error: "}.get(record.levelno, "")
            prefix = f"{when} batchrun: {level}"
        else:
            prefix = f"{when} {record.levelname} {record.name}: "
        return "\n".join(prefix + line for line in text.split("\n"))


class _StderrHandler(logging.StreamHandler[Any]):
    """A stream handler on whatever sys.stderr is when a line is written (click's test runner
    swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


_INSTALLED: list[tuple[logging.Logger, logging.Handler]] = []  # what setup_logging added, for the next call


def setup_logging(verbose: int, log_file: Path | None, secrets: list[str], *, bar: bool = False) -> None:
    """The handlers of one `batchrun` command (module docstring): CONSOLE on stderr and in the log
    file; the detail at -v (-vv: debug, litellm's too); keys scrubbed from every line. `bar`: the
    terminal shows a progress bar, so progress lines go to the log file only. A second call (the
    tests run several commands in one process) replaces the handlers of the first."""
    for logger, handler in _INSTALLED:
        logger.removeHandler(handler)
        handler.close()
    _INSTALLED.clear()
    route_litellm_logs(verbose)
    redact = _RedactingFilter(secrets)
    formatter = _Stamped()
    stderr = _StderrHandler()
    if bar:
        stderr.addFilter(_NoProgress())
    outputs: list[logging.Handler] = [stderr]
    if log_file is not None:
        outputs.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in outputs:
        handler.addFilter(redact)
        handler.setFormatter(formatter)
    console.setLevel(logging.INFO)
    console.propagate = False
    # the detail: batchrun's retries and failures at -v, debug at -vv; litellm's per route_litellm_logs;
    # every other library's warnings. The same handlers: levels are the loggers'.
    detail = logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING
    logging.getLogger().setLevel(detail)
    logging.getLogger("batchrun").setLevel(detail)
    for handler in outputs:
        _add(console, handler)
        _add(logging.getLogger(), handler)


def _add(logger: logging.Logger, handler: logging.Handler) -> None:
    logger.addHandler(handler)
    _INSTALLED.append((logger, handler))


def route_litellm_logs(verbose: int) -> None:
    """litellm's own log lines: never on stdout (it holds the summary), INFO and DEBUG only at -vv,
    WARNING and up at -v (through batchrun's dated, redacting handlers).

    litellm's handler writes records below WARNING to stdout, at the level
    LITELLM_LOG gives it when litellm is imported (DEBUG by default): it starts
    at ERROR unless the user set LITELLM_LOG. Its handler is removed and its
    loggers' levels set here; called before litellm is imported and again
    after (its handler and levels come with the import)."""
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    for name in LITELLM_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING if verbose else logging.ERROR)
