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
    │   ├── DiskFullError       its disk is full (no space left on device, a quota)
    │   ├── RunLockedError      another process holds the run directory's lock
    │   └── RunMismatchError    resuming with a different job or input
    ├── ReportError             a path a report, an export or `show` cannot read (exit 2)
    │   └── NotARunDirError     a path given as a run directory holds no run (exit 2, every command)
    ├── PreflightError          several of the above, found before anything was sent, each once
    ├── BatchEndpointError      batch mode: a files or batches endpoint refused (one line, its exit code)
    └── RequestError            one provider call failed (kind, status, retry_after)
        ├── RetryableError      worth another attempt: rate limit, timeout, connection, 5xx
        │   ├── RateLimitedError    a 429, maybe with the server's Retry-After
        │   └── InvalidResponseError  a 200 that cannot be used (kind invalid_response)
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
Each kind is permanent or transient (PERMANENT_KINDS, `is_permanent`): the same
request would fail the same way again (context window, content policy, invalid
request, auth, not found), or it may pass later (every other kind, budget_exceeded
too: the tickets are fine once the budget is raised). A re-run retries a ticket whose
latest failure is transient and keeps one whose failure is permanent (unless
--retry-permanent). `connection` means no answer arrived: the connection was refused, or reset
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
    invalid_response a 200 whose body is not a usable chat completion (no
                     choice, usage that is not an object, a JSON array ...):
                     retried like invalid_output (at once, up to
                     max_invalid_output_retries), its usage priced as
                     rejected spend
    local_resource   this machine ran out of something a request needs (file
                     descriptors: EMFILE, ENFILE): not retried; the run stops
                     admitting new requests
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Sequence

__all__ = [
    "BatchEndpointError",
    "BatchrunError",
    "CheckpointError",
    "ConfigurationError",
    "DiskFullError",
    "ExitCode",
    "FAIL_FAST_KINDS",
    "InvalidResponseError",
    "JobSpecError",
    "NotARunDirError",
    "PERMANENT_KINDS",
    "PreflightError",
    "RateLimitedError",
    "RequestError",
    "RetryableError",
    "RunLockedError",
    "RunMismatchError",
    "TerminalError",
    "TicketError",
    "is_permanent",
    "redact_endpoint",
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


class DiskFullError(CheckpointError):
    """The run directory's disk is full. Before a run: nothing was sent (exit 2); during one, the run
    ends "failed" with its summary, like any checkpoint error."""

    exit_code = ExitCode.BAD_INPUT


class RunMismatchError(CheckpointError):
    """The run directory belongs to a different job or input."""

    exit_code = ExitCode.BAD_INPUT


class PreflightError(BatchrunError):
    """Every problem found before anything was sent (job fields, input fields, key variables, a
    run directory's lock), each once. Exit 2 when any of them is bad input, else the first's code."""

    def __init__(self, problems: "list[BatchrunError]") -> None:
        self.problems = list(problems)
        codes = [problem.exit_code for problem in self.problems]
        self.exit_code = ExitCode.BAD_INPUT if ExitCode.BAD_INPUT in codes else codes[0]
        body = "\n".join("  - " + str(problem).removesuffix("; nothing was sent").removesuffix(
            "; nothing was requested").replace("\n", "\n    ") for problem in self.problems)
        super().__init__(f"{len(self.problems)} problems; nothing was sent:\n{body}")
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


class NotARunDirError(ReportError):
    """A path given as a run directory (status, show, export, report, diff) holds no run: one
    exit code, 2, for every command."""


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


#: Failure kinds another attempt would repeat (the same request is refused again): a re-run keeps
#: these tickets as they are unless --retry-permanent. Every other kind is transient.
PERMANENT_KINDS = frozenset({"context_window", "content_policy", "bad_request", "auth", "permission",
                             "not_found"})
#: Kinds about the key or the model rather than the ticket: a run of them in a row stops the run
#: (fail-fast), and then they are the endpoint's failures, not the tickets'.
FAIL_FAST_KINDS = frozenset({"auth", "permission", "not_found"})


def is_permanent(kind: str | None, *, fail_fast: bool = False) -> bool:
    """Is a failure of this kind permanent (PERMANENT_KINDS)? `fail_fast`: it belongs to a run that
    fail-fast stopped, where an auth, permission or not-found failure says the key or the model was
    wrong for every ticket: transient then, so the re-run after the fix sends those tickets again."""
    return kind in PERMANENT_KINDS and not (fail_fast and kind in FAIL_FAST_KINDS)
class InvalidResponseError(RetryableError):
    """A 200 answer that cannot be used (kind invalid_response). It may have been billed:
    `reported_usage` is the usage its body carried (as sent, None without one) and
    `spent_usd` what that usage cost, once the provider priced it (None: unknown)."""

    def __init__(self, message: str, *, reported_usage: object = None, status_code: int | None = None,
                 retry_after: float | None = None, error_type: str | None = "InvalidResponse") -> None:
        super().__init__(message, kind="invalid_response", status_code=status_code, retry_after=retry_after,
                         error_type=error_type)
        self.reported_usage = reported_usage
        self.spent_usd: float | None = None


_SECRET_PATTERNS = None
_URL_PATTERN = None

#: path segments that start like an API key (OpenAI, Anthropic, Groq, xAI, Perplexity, Google, Hugging
#: Face, NVIDIA, Replicate, Fireworks, GitHub, GitLab, ...)
KEY_PREFIXES = ("sk-", "sk_", "pk-", "rk-", "gsk_", "xai-", "pplx-", "AIza", "hf_", "nvapi-", "r8_", "fw_",
                "ghp_", "gho_", "glpat-")
MASK = "***"


def _entropy(text: str) -> float:
    import math
    from collections import Counter

    return -sum(n / len(text) * math.log2(n / len(text)) for n in Counter(text).values())


def key_shaped(segment: str) -> bool:
    """Does a URL path segment look like a credential? A known key prefix (KEY_PREFIXES), 32 or
    more hex digits (a hex key, a UUID), a run of 20+ letters and digits holding both, or 24+
    characters of high entropy. Model and deployment names (gpt-4o-mini-2024-07-18,
    meta-llama-3.1-8b-instruct) are words joined by dashes: not keys."""
    import re

    if len(segment) < 8:
        return False
    if segment.startswith(KEY_PREFIXES) and len(segment) >= 12:
        return True
    if re.fullmatch(r"[0-9a-fA-F-]+", segment) and sum(c in "0123456789abcdefABCDEF" for c in segment) >= 32:
        return True
    for run in re.findall(r"[A-Za-z0-9_]{20,}", segment):
        if re.search(r"[0-9]", run) and re.search(r"[A-Za-z]", run):
            return True
    return len(segment) >= 24 and _entropy(segment) >= 4.4


def _masked_path(path: str) -> str:
    return "/".join(MASK if key_shaped(part) else part for part in path.split("/"))


def redact_secrets(text: str, secrets: "Sequence[str]" = ()) -> str:
    """Remove API keys from text meant for a log, a checkpoint or the terminal.

    Every exact secret given is replaced, then anything shaped like a key:
    `sk-...` tokens, `Bearer ...` credentials, `key=`/`token=` query values, and
    in every URL its userinfo (`user:password@`) and its key-shaped path segments
    and query values (`key_shaped`).
    """
    global _SECRET_PATTERNS, _URL_PATTERN
    import re

    if _SECRET_PATTERNS is None:
        _SECRET_PATTERNS = (
            # (?<!...): "task-classifier" or "monkey=" are words, not credentials
            re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-*]{8,}"),
            re.compile(r"(?i)(bearer\s+)[^\s\"',]+"),
            re.compile(r"(?i)((?<![A-Za-z0-9])(?:api[_-]?key|key|token|access_token|sig|signature)=)[^&\s\"']+"),
            re.compile(r"(?i)(x-api-key[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
        )
        _URL_PATTERN = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^\s/?#@\"'<>]*@)?([^\s/?#\"'<>]*)"
                                  r"([^\s?#\"'<>]*)(\?[^\s#\"'<>]*)?")
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[REDACTED]")
    assert _URL_PATTERN is not None
    if "://" in text:
        text = _URL_PATTERN.sub(_redacted_url_match, text)
    plain, bearer, query, header = _SECRET_PATTERNS
    text = plain.sub("[REDACTED]", text)
    text = bearer.sub(r"\1[REDACTED]", text)
    text = query.sub(r"\1[REDACTED]", text)
    text = header.sub(r"\1[REDACTED]", text)
    return text


def _redacted_url_match(match: "re.Match[str]") -> str:
    import re

    scheme, userinfo, host, path, query = match.groups()
    shown = scheme + (MASK + "@" if userinfo else "") + host + _masked_path(path)
    if query:  # key-shaped values (and, below, any key=, token=, sig= ...); page=2 stays
        shown += re.sub(r"=([^&]*)", lambda m: "=" + (MASK if key_shaped(m.group(1)) else m.group(1)), query)
    return shown


def redact_url(url: str) -> str:
    """An api_base fit for a manifest, a header, a report or a log: scheme://host[:port] and the
    path with its key-shaped segments (`key_shaped`) replaced by ***; no userinfo, no query."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    try:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
    except ValueError:  # a port that is not a number
        host = (parts.hostname or "")
    return urlunsplit((parts.scheme, host, _masked_path(parts.path), "", ""))


def redact_endpoint(label: object) -> object:
    """A stored endpoint label ("simulator", "provider default", or api_bases joined by ", ") with
    every URL in it through redact_url: a manifest written before keys in paths were masked."""
    if not isinstance(label, str) or "://" not in label:
        return label
    return ", ".join(redact_url(part) if "://" in part else part for part in label.split(", "))
