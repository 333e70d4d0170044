"""What a LiteLLM Proxy hands over, read right, without a proxy (the real one: tests/test_real_proxy.py).

* Retry-After in every spelling litellm passes on (retry-after, retry-after-ms, their
  `llm_provider-` copies, doubled when a proxy and the client both prefix, an HTTP date),
  one parser for the wait and the rate-limit headers, the cap applied to every retryable error;
* budget and quota answers (LiteLLM's "crossed budget" / budget_exceeded, OpenAI's
  insufficient_quota; 429, 400 or 422) are kind `budget_exceeded`: not retried, and the run
  stops admitting after the first, sending nothing more than what was already in flight;
* the upstream requests a proxy reports (x-litellm-attempted-retries / -fallbacks) per line;
* where a line's cost came from (`cost_source`).
"""

from __future__ import annotations

import email.utils
from datetime import datetime, timedelta, timezone

import anyio
import httpx
import pytest

from batchrun import Completion, Usage, execute_run, load_job, prepare_run
from batchrun.errors import ExitCode, RateLimitedError, RetryableError, TerminalError
from batchrun.execution.limits import parse_rate_limit_headers
from batchrun.execution.ticket_runner import run_ticket
from batchrun.providers.error_mapping import error_for_status, parse_retry_after, translate_error
from batchrun.providers.litellm_setup import import_litellm
from batchrun.providers.online import _completion_from
from batchrun.providers.seam import ChatRequest
from batchrun.records import Outcome
from conftest import read_jsonl

lm = import_litellm()
M, P = "gpt-4o-mini", "openai"
REQUEST = httpx.Request("POST", "http://127.0.0.1:4000/v1/chat/completions")


def http_date(seconds_from_now: float) -> str:
    return email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(seconds=seconds_from_now), usegmt=True)


# -- Retry-After: every spelling, one parser --------------------------------------------------


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"retry-after": "7"}, 7.0),
    ({"Retry-After-Ms": "1500"}, 1.5),
    ({"llm_provider-retry-after": "2"}, 2.0),  # a provider's header as litellm passes it on
    ({"llm_provider-retry-after-ms": "250"}, 0.25),
    ({"llm_provider-llm_provider-retry-after": "3"}, 3.0),  # the proxy prefixed it, then the client
    ({"llm_provider-retry-after": "1", "llm_provider-retry-after-ms": "400"}, 0.4),  # ms wins, as unprefixed
    ({"retry-after": "1", "llm_provider-retry-after": "9"}, 1.0),  # the endpoint's own wins over upstream's
])
def test_retry_after_in_every_spelling(headers, seconds):
    assert parse_retry_after(headers) == pytest.approx(seconds)


def test_retry_after_as_an_http_date_behind_the_prefix():
    wait = parse_retry_after({"llm_provider-retry-after": http_date(30)})
    assert wait is not None and 25.0 <= wait <= 30.0


@pytest.mark.parametrize("headers", [None, {}, {"llm_provider-retry-after": "soon"},
                                     {"llm_provider-retry-after": "nan"}, {"x-retry-after-ish": "3"}])
def test_no_usable_retry_after(headers):
    assert parse_retry_after(headers) is None


def test_rate_limit_headers_and_retry_after_share_one_reader():
    headers = parse_rate_limit_headers({"llm_provider-llm_provider-x-ratelimit-remaining-requests": "0",
                                        "llm_provider-x-ratelimit-reset-requests": "6m0s"})
    assert headers.remaining_requests == 0 and headers.reset_requests_s == 360.0


def test_a_proxied_429_carries_its_retry_after():
    exc = lm.RateLimitError("slow down", llm_provider=P, model=M,
                            response=httpx.Response(429, headers={"llm_provider-retry-after": "2"}, request=REQUEST))
    error = translate_error(exc)
    assert isinstance(error, RateLimitedError) and error.retry_after == 2.0


def test_a_503_with_retry_after_is_held_to_the_cap_too(make_job, tmp_path):
    """The cap (max_retry_after_s) applies to every retryable answer that asks for a wait."""
    exc = lm.ServiceUnavailableError("busy", llm_provider=P, model=M,
                                     response=httpx.Response(503, headers={"llm_provider-retry-after": "86400"},
                                                             request=REQUEST))
    error = translate_error(exc)
    assert isinstance(error, RetryableError) and error.retry_after == 86400.0
    job = load_job(make_job(1))
    calls = []

    class Busy:
        async def complete(self, request):
            calls.append(request)
            raise exc

    outcome = anyio.run(lambda: run_ticket(ChatRequest("T1", [], 5.0), Busy(), job, _Hooks(), 1))
    assert len(calls) == 1  # not slept through for a day: ended at once
    assert outcome.error_kind == "server_error" and "max_retry_after_s" in (outcome.error_message or "")


class _Hooks:
    def __init__(self) -> None:
        self.halt = anyio.Event()

    async def before_attempt(self, request, attempt):
        return None

    def attempt_answered(self, request, attempt, completion):
        return None

    def attempt_failed(self, request, attempt, error):
        return None

    def attempt_succeeded(self, request, attempt, completion, latency_ms):
        return None


# -- budget and quota answers -------------------------------------------------------------------

CROSSED = ("No deployments available - crossed budget: Exceeded budget for deployment model_name: gpt-4o-mini, "
           "litellm_params.model: openai/gpt-4o-mini: 1.2e-05 >= 1d")
QUOTA = "You exceeded your current quota, please check your plan and billing details."


@pytest.mark.parametrize("factory", [
    lambda: lm.RateLimitError(CROSSED, llm_provider=P, model=M),
    lambda: lm.RateLimitError(QUOTA, llm_provider=P, model=M),
    lambda: lm.BadRequestError("Budget has been exceeded! Current cost: 1.2, Max budget: 1.0", model=M,
                               llm_provider=P),
    lambda: lm.UnprocessableEntityError("budget_exceeded: Budget has been exceeded", model=M, llm_provider=P,
                                        response=httpx.Response(422, request=REQUEST)),
], ids=["crossed-budget-429", "insufficient-quota-429", "key-budget-400", "key-budget-422"])
def test_budget_and_quota_answers_are_their_own_kind_and_not_retried(factory):
    error = translate_error(factory())
    assert isinstance(error, TerminalError) and not error.retryable
    assert error.kind == "budget_exceeded"


def test_error_for_status_knows_the_codes():
    assert error_for_status(429, "quota", code="insufficient_quota").kind == "budget_exceeded"
    assert error_for_status(400, "x", code="budget_exceeded").kind == "budget_exceeded"
    assert error_for_status(429, CROSSED).kind == "budget_exceeded"
    assert error_for_status(429, "Rate limit reached for requests").kind == "rate_limited"  # still a rate limit
    assert translate_error(lm.RateLimitError("Rate limit reached for gpt-4o-mini", llm_provider=P,
                                             model=M)).kind == "rate_limited"


class SlowProvider:
    """Answers after a short wait (so several tickets are in flight): ticket T000005 gets the
    budget answer; tickets in flight then get a 503 (retryable) or an answer."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []  # (ticket, started after the budget answer)
        self.budget_seen = False

    async def complete(self, request: ChatRequest) -> Completion:
        self.calls.append((request.ticket_id, self.budget_seen))
        if request.ticket_id == "T000005":
            await anyio.sleep(0.01)
            self.budget_seen = True
            raise lm.RateLimitError(CROSSED, llm_provider=P, model=M)
        await anyio.sleep(0.03)
        if self.budget_seen:
            raise lm.ServiceUnavailableError("busy", llm_provider=P, model=M)
        return Completion(text="bug", finish_reason="stop", model="fake", usage=Usage(10, 1, 11),
                          cost_usd=0.001, cost_status="litellm")

    def estimate_cost(self, request):
        return None

    def estimate_tokens(self, request):
        return (0, 0)

    async def cached(self, request):
        return None

    async def remember(self, request, completion):
        return None

    async def aclose(self):
        return None


def test_a_spent_budget_stops_the_run_after_the_requests_in_flight(make_job, tmp_path):
    job = load_job(make_job(40, concurrency=4))
    provider = SlowProvider()
    prep = prepare_run(job, endpoint="fake")
    try:
        result = anyio.run(lambda: execute_run(prep, provider))
    finally:
        prep.release()
    assert result.state == "budget_exhausted" and result.exit_code == ExitCode.BUDGET_EXHAUSTED
    assert "crossed budget" in (result.error or "")
    assert [ticket for ticket, after in provider.calls if after] == []  # no request, not even a retry, after it
    errors = read_jsonl(tmp_path / "run" / "errors.jsonl")
    assert [e["id"] for e in errors if e["error_kind"] == "budget_exceeded"] == ["T000005"]
    assert result.summary["requests"] == len(provider.calls) <= 4 + 4  # the first tickets, then those in flight


# -- upstream requests a proxy reports ----------------------------------------------------------


async def proxied(headers: dict[str, str]):
    response = await lm.acompletion(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                    mock_response="bug")
    response._hidden_params.setdefault("additional_headers", {}).update(headers)
    return response


async def test_the_upstream_requests_a_proxy_reports():
    retried = _completion_from(await proxied({"llm_provider-x-litellm-attempted-retries": "2",
                                              "llm_provider-x-litellm-attempted-fallbacks": "1"}), None)
    assert retried.upstream_attempts == 4  # the first try, 2 retries, 1 fallback
    first = _completion_from(await proxied({"llm_provider-x-litellm-attempted-retries": "0"}), None)
    assert first.upstream_attempts == 1
    direct = _completion_from(await proxied({}), None)
    assert direct.upstream_attempts is None  # not a proxy: nothing reported, nothing claimed


def test_a_line_sums_the_upstream_requests_of_its_attempts(make_job, tmp_path):
    job = load_job(make_job(1))
    answers = iter([lm.ServiceUnavailableError("busy", llm_provider=P, model=M),
                    Completion(text="bug", finish_reason="stop", model="m", usage=Usage(1, 1, 2), cost_usd=0.0,
                               cost_status="litellm", upstream_attempts=3)])

    class Proxy:
        async def complete(self, request):
            answer = next(answers)
            if isinstance(answer, BaseException):
                raise answer
            return answer

    outcome: Outcome = anyio.run(lambda: run_ticket(ChatRequest("T1", [], 5.0), Proxy(), job, _Hooks(), 1))
    assert outcome.attempts == 2 and outcome.upstream_attempts == 3 and outcome.upstream_unreported == 1
    line = outcome.to_line()
    assert line["upstream_attempts"] == 3 and line["upstream_unreported"] == 1


# -- cost provenance ----------------------------------------------------------------------------


async def test_cost_source_says_where_the_cost_came_from():
    from batchrun.job.sections import PricesSpec
    from batchrun.providers.pricing import Pricing

    assert _completion_from(await proxied({}), None).cost_source == "price_map"
    reported = await proxied({"llm_provider-x-litellm-response-cost": "0.0123"})
    reported._hidden_params["response_cost"] = 0.0123  # what litellm makes of the header
    endpoint = _completion_from(reported, None)
    assert endpoint.cost_source == "endpoint" and endpoint.cost_usd == 0.0123
    job = _completion_from(await proxied({}), Pricing(M, PricesSpec(input_per_million=1, output_per_million=2)))
    assert job.cost_source == "job_prices"
    line = Outcome(ticket_id="T1", attempts=1, started_at="", finished_at="", elapsed_ms=1.0, run=1,
                   completion=endpoint, latency_ms=1.0).to_line()
    assert line["cost_source"] == "endpoint" and line["cost_status"] == "litellm"


def test_summary_status_and_serve_show_both_counts_and_the_proxy_is_named_once(make_job, tmp_path, capsys):
    """Requests batchrun sent next to those the proxy made upstream, in the summary, `batchrun status`
    and serve's numbers; one warning, at the first answer the proxy retried, naming num_retries: 0."""
    from batchrun import ScriptedProvider
    from batchrun.analysis.stats import format_summary
    from batchrun.commands.status import format_status
    from batchrun.rundir.status import run_status
    from batchrun.run_logging import setup_logging
    from batchrun.serve.follow import UnitNumbers

    setup_logging(0, None, [])  # stderr as a command sets it up (not left to an earlier test in this process)
    job = load_job(make_job(10, concurrency=1))

    def answer(request):  # the proxy retried every third ticket once
        retried = int(request.ticket_id[1:]) % 3 == 0
        return Completion(text="bug", finish_reason="stop", model="m", usage=Usage(10, 1, 11), cost_usd=0.001,
                          cost_status="litellm", cost_source="endpoint", upstream_attempts=2 if retried else 1)

    prep = prepare_run(job, endpoint="fake")
    try:
        result = anyio.run(lambda: execute_run(prep, ScriptedProvider(answer)))
    finally:
        prep.release()
    assert result.summary["requests"] == 10 and result.summary["upstream_requests"] == 13
    assert "upstream requests" in format_summary(result.summary) and "13 made upstream" in format_summary(result.summary)
    err = capsys.readouterr().err
    assert err.count("retries on its own") == 1 and "num_retries: 0" in err
    status = run_status(tmp_path / "run")
    assert (status["requests"], status["upstream_requests"], status["upstream_unreported"]) == (10, 13, 0)
    assert "13 made upstream by the endpoint" in format_status(status)
    numbers = UnitNumbers()
    for line in read_jsonl(tmp_path / "run" / "results.jsonl"):
        numbers.add_result(line)
    assert numbers.requests == 10 and numbers.upstream_requests == 13
    assert {line["cost_source"] for line in read_jsonl(tmp_path / "run" / "results.jsonl")} == {"endpoint"}
