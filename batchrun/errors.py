"""The exception tree and the process exit codes.

Every error batchrun raises on purpose derives from `BatchrunError`, so the
CLI can print one clear line for it instead of a traceback. Provider errors
are translated once, in `provider.py`, into `RequestError` subclasses: the
retry policy and the engine never look at litellm's own exception types.

    BatchrunError
    ├── JobSpecError            the job file is invalid (names file and field)
    ├── TicketError             an input line is invalid (names file and line)
    ├── ConfigurationError      the environment is missing something (an API key variable)
    ├── CheckpointError         the run directory cannot be used
    │   ├── RunLockedError      another process holds the run directory's lock
    │   └── RunMismatchError    resuming with a different job or input
    ├── BatchEndpointError      batch mode: a files or batches endpoint refused (one line, its exit code)
    └── RequestError            one provider call failed (kind, status, retry_after)
        ├── RetryableError      worth another attempt: rate limit, timeout, connection, 5xx
        │   └── RateLimitedError    a 429, maybe with the server's Retry-After
        └── TerminalError       never retried: 4xx (bad request, auth, not found, ...)

Error kinds (the `kind` attribute, written to errors.jsonl) are short stable
strings: rate_limited, resource_unavailable (OpenAI's flex 429: no capacity at
the flex tier; a RateLimitedError, retried, and after flex_fallback_after of
them sent at the standard tier), timeout, connection, server_error,
bad_request, context_window, content_policy, auth, permission, not_found,
unknown, and budget_exceeded: the endpoint says a budget or quota is spent
(LiteLLM's "crossed budget", budget_exceeded; OpenAI's insufficient_quota),
never retried, and the run stops at the first (exit 5). `configuration` (batch
mode's files and batches endpoints only): a server error that names missing
configuration, such as a LiteLLM proxy's "files_settings is not set".
`connection` means no answer arrived: the connection was refused, or reset
before the response headers or in the body (litellm calls these a 500;
`provider.translate_error` finds the transport error under it); it is
retried and has no status_code. For answers that arrived but cannot be used
(ticket_runner.py, outputs.py):

    stream_cut       a stream ended without a finish_reason (a cut connection,
                     a truncated SSE body): retried, never a success
    invalid_output   the answer is not one of the job's labels, not JSON valid
                     against its schema, or a tool call with bad arguments:
                     retried up to max_invalid_output_retries, then terminal
    truncated        finish_reason "length" with on_truncated = "fail", or a
                     truncated answer that does not pass the output check:
                     terminal (the same request would be cut again)
    content_filter   finish_reason "content_filter" with on_content_filter =
                     "fail": terminal
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "BatchEndpointError",
    "BatchrunError",
    "CheckpointError",
    "ConfigurationError",
    "ExitCode",
    "JobSpecError",
    "RateLimitedError",
    "RequestError",
    "RetryableError",
    "RunLockedError",
    "RunMismatchError",
    "TerminalError",
    "TicketError",
    "redact_secrets",
    "redact_url",
]


class ExitCode(IntEnum):
    """What `batchrun run` exits with; documented in the README."""

    OK = 0  # every ticket is done
    ERROR = 1  # an unexpected error (a bug, or an unreadable file)
    BAD_INPUT = 2  # bad job file, bad input lines, missing key: nothing was requested
    TICKETS_FAILED = 3  # the run finished, but some tickets ended in errors.jsonl
    ABORTED = 4  # fail-fast: tickets in a row failed with 401/403/404; resumable
    BUDGET_EXHAUSTED = 5  # max_cost_usd reached; resumable with a larger budget
    ACCURACY_DROPPED = 6  # batchrun diff --fail-on-accuracy-drop: the nightly check failed
    INTERRUPTED = 130  # SIGINT (Ctrl-C); 143 for SIGTERM (128 + signal number)


class BatchrunError(Exception):
    """Base of every error batchrun raises on purpose."""

    exit_code: ExitCode = ExitCode.ERROR


class JobSpecError(BatchrunError):
    """The job file is missing, unreadable or invalid."""

    exit_code = ExitCode.BAD_INPUT


class TicketError(BatchrunError):
    """One or more input lines are invalid; the message names file:line."""

    exit_code = ExitCode.BAD_INPUT


class ConfigurationError(BatchrunError):
    """Something the run needs from the environment is missing."""

    exit_code = ExitCode.BAD_INPUT


class CheckpointError(BatchrunError):
    """The run directory cannot be used (unwritable, corrupt, ...)."""


class RunLockedError(CheckpointError):
    """Another live process is running on this run directory."""


class RunMismatchError(CheckpointError):
    """The run directory belongs to a different job or input."""

    exit_code = ExitCode.BAD_INPUT


class BatchEndpointError(BatchrunError):
    """Batch mode: a provider's files or batches endpoint refused, after the retries a retry could
    make; the message is one line naming the endpoint, the status and the provider's message, the
    exit code the online path would give (auth 4, configuration 2, a budget 5, transient 1)."""

    def __init__(self, message: str, exit_code: ExitCode) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ReportError(BatchrunError):
    """The path given is not something a report can be made of."""

    exit_code = ExitCode.BAD_INPUT


class RequestError(BatchrunError):
    """One provider call failed.

    kind:        a stable short string (see the module docstring)
    status_code: the HTTP status when there was one
    retry_after: seconds the server asked us to wait, when it said so
    """

    retryable: bool = False
    endpoint: str | None = None  # batch mode: "POST http://host/v1/files", set by the BatchAPI

    def __init__(
        self,
        message: str,
        *,
        kind: str = "unknown",
        status_code: int | None = None,
        retry_after: float | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status_code = status_code
        self.retry_after = retry_after
        self.error_type = error_type or type(self).__name__

    def __str__(self) -> str:
        status = f" (HTTP {self.status_code})" if self.status_code else ""
        return f"{self.kind}{status}: {self.message}"


class RetryableError(RequestError):
    """A failure worth another attempt."""

    retryable = True


class RateLimitedError(RetryableError):
    """The provider answered 429."""


class TerminalError(RequestError):
    """A failure that another attempt would repeat (4xx)."""


_SECRET_PATTERNS = None


def redact_secrets(text: str, secrets: "tuple[str, ...] | list[str]" = ()) -> str:
    """Remove API keys from text meant for a log, a checkpoint or the terminal.

    Every exact secret given is replaced, then anything shaped like a key:
    `sk-...` tokens, `Bearer ...` credentials and `key=`/`token=` query values.
    """
    global _SECRET_PATTERNS
    import re

    if _SECRET_PATTERNS is None:
        _SECRET_PATTERNS = (
            # (?<!...): "task-classifier" or "monkey=" are words, not credentials
            re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-*]{8,}"),
            re.compile(r"(?i)(bearer\s+)[^\s\"',]+"),
            re.compile(r"(?i)((?<![A-Za-z0-9])(?:api[_-]?key|key|token|access_token|sig|signature)=)[^&\s\"']+"),
            re.compile(r"(?i)(x-api-key[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
        )
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[REDACTED]")
    plain, bearer, query, header = _SECRET_PATTERNS
    text = plain.sub("[REDACTED]", text)
    text = bearer.sub(r"\1[REDACTED]", text)
    text = query.sub(r"\1[REDACTED]", text)
    text = header.sub(r"\1[REDACTED]", text)
    return text


def redact_url(url: str) -> str:
    """An api_base fit for a manifest, a report or a log: no credentials, no query string."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
