"""A files or batches endpoint that refused, as the one line a batch run ends with.

    endpoint_refusal(error)  a RequestError (after the retries a retry could make) -> the
                             BatchEndpointError naming the endpoint, the status and the provider's
                             message, with the online path's exit code
    REFUSAL_EXIT, REFUSAL_HINTS  the exit code and the hint per error kind
"""

from __future__ import annotations

import re

from batchrun.errors import BatchEndpointError, ExitCode, RequestError

#: what a files or batches endpoint's refusal ends a batch run with: the online path's exit codes
REFUSAL_EXIT = {"auth": ExitCode.ABORTED, "permission": ExitCode.ABORTED, "budget_exceeded": ExitCode.BUDGET_EXHAUSTED}
REFUSAL_HINTS = {
    "auth": "check the key",
    "permission": "check the key",
    "not_found": "this endpoint has no files/batches API (a LiteLLM proxy needs files_settings: docs/batch.md)",
    "configuration": "a LiteLLM proxy needs files_settings for batch mode (docs/batch.md, \"Through a LiteLLM Proxy\")",
    "budget_exceeded": "raise the budget or quota there",
}


def endpoint_refusal(error: RequestError) -> BatchEndpointError:
    """One line for a files or batches endpoint that refused (after the retries a retry could make):
    the endpoint, the status, the provider's message; exit 4 for auth, 5 for a spent budget, 1 when
    it stayed unreachable or kept failing, 2 otherwise (the endpoint, model or configuration)."""
    message = " ".join(error.message.split())
    inner = re.search(r"""['"]message['"]\s*:\s*['"]((?:[^'"\\]|\\.)*)['"]""", message)  # an OpenAI error body
    if inner:
        message = inner.group(1)
    message = re.sub(r"^(?:(?:litellm\.)?[A-Za-z]+(?:Error|Exception)\s*[-:]\s*)+", "", message) or message
    if len(message) > 400:
        message = message[:399] + "…"
    status = f"answered HTTP {error.status_code}" if error.status_code else f"failed ({error.kind})"
    where = error.endpoint or "the provider's files/batches API"
    code = REFUSAL_EXIT.get(error.kind, ExitCode.ERROR if error.retryable else ExitCode.BAD_INPUT)
    hint = REFUSAL_HINTS.get(error.kind, "it kept failing after the retries" if error.retryable else "")
    return BatchEndpointError(
        f"batch mode: {where} {status}: {message}" + (f" ({hint})" if hint else "")
        + "; nothing is lost: batches.json keeps every part, re-run the same command to resume", code)
