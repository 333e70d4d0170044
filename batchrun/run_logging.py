"""Where a run's log lines go: stderr (or a log file), never stdout, with API keys scrubbed.

`batchrun run` prints its summary on stdout and everything else on stderr, so
a cron job can keep the two apart. This module holds that rule:

    setup_logging(verbose, log_file, secrets)   -v: batchrun's retries and failures;
                                                -vv: debug, litellm's too; a redacting
                                                filter on every handler
    route_litellm_logs(verbose)                 litellm's own logger: off stdout, its
                                                INFO/DEBUG lines only at -vv
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

__all__ = ["LITELLM_LOGGERS", "route_litellm_logs", "setup_logging"]


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


def setup_logging(verbose: int, log_file: Path | None, secrets: list[str]) -> None:
    """-v: batchrun's retries and failures; -vv: debug, litellm's too. Keys scrubbed. Every log
    line goes to stderr (or the log file): stdout holds the summary only."""
    route_litellm_logs(verbose)
    if not verbose and log_file is None:
        return
    level = logging.DEBUG if verbose >= 2 else logging.INFO
    handlers: list[logging.Handler] = []
    if verbose:
        handlers.append(logging.StreamHandler(sys.stderr))
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    redact = _RedactingFilter(secrets)
    for handler in handlers:
        handler.addFilter(redact)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(level)
    root = logging.getLogger()
    root.setLevel(level)
    for handler in handlers:
        root.addHandler(handler)
    logging.getLogger("batchrun").setLevel(level)


LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")


def route_litellm_logs(verbose: int) -> None:
    """litellm's own log lines: never on stdout (it holds the summary), INFO and DEBUG only at -vv.

    litellm's handler writes records below WARNING to stdout, at the level
    LITELLM_LOG gives it when litellm is imported (DEBUG by default): it starts
    at ERROR unless the user set LITELLM_LOG. With -v or -vv its handler is
    removed and litellm's records go through batchrun's (redacting) stderr
    handler: WARNING and up at -v, everything at -vv. Called before litellm is
    imported and again after (its handler is added by the import)."""
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    if not verbose:
        return
    for name in LITELLM_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
