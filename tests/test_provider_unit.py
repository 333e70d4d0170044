"""Unit tests of the provider seam (`batchrun.provider`) that need no server:
litellm exceptions onto batchrun's error tree, Retry-After parsing, secret
scrubbing, and `_completion_from` on responses made by litellm's own
`mock_response` (no network)."""

from __future__ import annotations

import email.utils
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import httpx
import pytest

from batchrun.errors import RateLimitedError, RequestError, RetryableError, TerminalError, redact_secrets
from batchrun.providers.online import _completion_from
from batchrun.providers.pricing import Pricing
from batchrun.providers.litellm_setup import import_litellm
from batchrun.providers.error_mapping import translate_error
from batchrun.records import Usage
from batchrun.job.sections import PricesSpec

lm = import_litellm()

M, P = "gpt-4o-mini", "openai"
REQUEST = httpx.Request("POST", "https://api.openai.com/v1/chat/completions")


def response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers or {}, request=REQUEST)


# -- translate_error ------------------------------------------------------------------------

CASES = [
    (lambda: lm.RateLimitError("slow down", llm_provider=P, model=M), RateLimitedError, "rate_limited", 429),
    (lambda: lm.Timeout("took too long", model=M, llm_provider=P), RetryableError, "timeout", 408),
    (lambda: lm.APIConnectionError("refused", llm_provider=P, model=M), RetryableError, "connection", None),
    (lambda: lm.InternalServerError("oops", llm_provider=P, model=M), RetryableError, "server_error", 500),
    (lambda: lm.ServiceUnavailableError("busy", llm_provider=P, model=M), RetryableError, "server_error", 503),
    (lambda: lm.BadGatewayError("gateway", llm_provider=P, model=M), RetryableError, "server_error", 502),
    (lambda: lm.BadRequestError("bad", model=M, llm_provider=P), TerminalError, "bad_request", 400),
    (lambda: lm.ContextWindowExceededError("too long", model=M, llm_provider=P), TerminalError,
     "context_window", 400),
    (lambda: lm.ContentPolicyViolationError("no", model=M, llm_provider=P), TerminalError, "content_policy", 400),
    (lambda: lm.AuthenticationError("who", llm_provider=P, model=M), TerminalError, "auth", 401),
    (lambda: lm.NotFoundError("gone", model=M, llm_provider=P), TerminalError, "not_found", 404),
    (lambda: lm.PermissionDeniedError("forbidden", llm_provider=P, model=M, response=response(403)),
     TerminalError, "permission", 403),
]


@pytest.mark.parametrize(("factory", "cls", "kind", "status"), CASES,
                         ids=[c[2] + "-" + str(c[3]) for c in CASES])
def test_litellm_exceptions_map_onto_the_error_tree(factory, cls, kind, status):
    exc = factory()
    error = translate_error(exc)
    assert type(error) is cls
    assert error.kind == kind
    assert error.status_code == status
    assert error.error_type == type(exc).__name__
    assert error.retryable is issubclass(cls, RetryableError)
    assert error.message  # never empty
    assert kind in str(error)


def test_subclass_kinds_win_over_bad_request():
    assert issubclass(lm.ContextWindowExceededError, lm.BadRequestError)  # the reason order matters
    assert translate_error(lm.ContextWindowExceededError("x", model=M, llm_provider=P)).kind == "context_window"


@pytest.mark.parametrize(("code", "kind"), [("content_policy_violation", "content_policy"),
                                             ("context_length_exceeded", "context_window")])
def test_a_plain_bad_request_is_named_by_the_providers_code(code, kind):
    """litellm 1.110 with the OpenAI SDK 3.x raises a plain BadRequestError for a content-policy refusal
    (1.106 with SDK 2.x: ContentPolicyViolationError); the provider's code names the kind either way."""
    exc = lm.BadRequestError("refused", model=M, llm_provider=P)
    exc.code = code  # as litellm copies it from the SDK's error (its body: {"code": ...})
    assert translate_error(exc).kind == kind
    under = lm.BadRequestError("refused", model=M, llm_provider=P)
    under.body = {"message": "refused", "type": "invalid_request_error", "code": code}
    assert translate_error(under).kind == kind


def test_unprocessable_entity_is_terminal():
    exc = lm.UnprocessableEntityError("422", model=M, llm_provider=P, response=response(422))
    error = translate_error(exc)
    assert isinstance(error, TerminalError) and error.kind == "bad_request"


@pytest.mark.parametrize(
    ("exc", "cls", "kind"),
    [
        (TimeoutError("slow"), RetryableError, "timeout"),
        (ConnectionResetError("reset"), RetryableError, "connection"),
        (httpx.ConnectError("refused", request=REQUEST), RetryableError, "connection"),
        (httpx.ReadTimeout("read", request=REQUEST), RetryableError, "connection"),
        (ValueError("a bug"), TerminalError, "unknown"),
    ],
)
def test_other_exceptions(exc, cls, kind):
    error = translate_error(exc)
    assert type(error) is cls and error.kind == kind


@pytest.mark.parametrize(("status", "cls", "kind"), [
    (500, RetryableError, "server_error"), (504, RetryableError, "server_error"), (408, RetryableError, "timeout"),
    (409, RetryableError, "server_error"), (400, TerminalError, "bad_request"), (418, TerminalError, "bad_request"),
])
def test_unknown_exceptions_with_a_status_code(status, cls, kind):
    exc = Exception("http error")
    exc.status_code = status
    error = translate_error(exc)
    assert type(error) is cls and error.kind == kind and error.status_code == status


def test_request_errors_pass_through_unchanged():
    original = TerminalError("x", kind="auth")
    assert translate_error(original) is original


def test_empty_message_falls_back_to_the_type_name():
    assert translate_error(ValueError()).message == "ValueError"


# -- Retry-After ------------------------------------------------------------------------------


def rate_limit(headers: dict[str, str]) -> RequestError:
    return translate_error(lm.RateLimitError("slow down", llm_provider=P, model=M, response=response(429, headers)))


def test_retry_after_seconds():
    error = rate_limit({"retry-after": "7"})
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 7.0


def test_retry_after_ms_wins():
    assert rate_limit({"retry-after-ms": "1500"}).retry_after == 1.5
    assert rate_limit({"Retry-After-Ms": "1500", "Retry-After": "9"}).retry_after == 1.5


def test_retry_after_http_date():
    when = datetime.now(timezone.utc) + timedelta(seconds=60)
    error = rate_limit({"retry-after": email.utils.format_datetime(when, usegmt=True)})
    assert error.retry_after is not None
    assert 55.0 <= error.retry_after <= 60.0  # whole seconds in the header


def test_retry_after_in_the_past_is_zero():
    error = rate_limit({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert error.retry_after == 0.0


@pytest.mark.parametrize("headers", [{}, {"retry-after": "soon"}, {"x-other": "1"}])
def test_no_usable_retry_after(headers):
    assert rate_limit(headers).retry_after is None


def test_retry_after_from_litellm_response_headers():
    exc = lm.RateLimitError("slow down", llm_provider=P, model=M)
    exc.litellm_response_headers = {"retry-after": "3"}
    assert translate_error(exc).retry_after == 3.0


# -- secrets ----------------------------------------------------------------------------------


def test_secrets_passed_in_are_scrubbed():
    secret = "my-very-secret-key-123"
    exc = lm.AuthenticationError(f"Incorrect API key provided: {secret}", llm_provider=P, model=M)
    error = translate_error(exc, (secret,))
    assert secret not in error.message and secret not in str(error)
    assert "[REDACTED]" in error.message


def test_key_shaped_strings_are_scrubbed_without_being_passed():
    exc = lm.AuthenticationError("Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwx", llm_provider=P,
                                 model=M)
    assert "sk-proj-abcdef" not in translate_error(exc).message


def test_long_messages_are_cut():
    assert len(translate_error(ValueError("x" * 5000)).message) == 1000


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        ("Incorrect API key provided: sk-abc123def456ghi789.", "sk-abc123def456ghi789"),
        ("key sk-proj-********************************wxyz was rejected", "wxyz"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGciOiJIUzI1NiJ9"),
        ("GET https://example.com/v1/models?api_key=s3cr3tvalue&page=2", "s3cr3tvalue"),
        ("https://generativelanguage.googleapis.com/v1?key=AIzaSyD-abcdefg", "AIzaSyD-abcdefg"),
        ("url ?token=tok_123456&x=1", "tok_123456"),
        ('headers {"x-api-key": "anthropic-secret-value"}', "anthropic-secret-value"),
    ],
)
def test_redact_secrets_patterns(text, leaked):
    out = redact_secrets(text)
    assert leaked not in out
    assert "[REDACTED]" in out


def test_redact_secrets_keeps_the_rest():
    out = redact_secrets("GET https://example.com/v1/models?api_key=s3cr3t&page=2 Bearer abc", ["unused"])
    assert out == "GET https://example.com/v1/models?api_key=[REDACTED]&page=2 Bearer [REDACTED]"
    assert redact_secrets("nothing to hide here") == "nothing to hide here"


@pytest.mark.parametrize(
    "text",
    [
        "litellm.NotFoundError: model 'task-classifier-v2' does not exist",
        "disk-usage-monitor failed",
        "GET /v1/items?monkey=banana&turkey=club",
        "tokenizer max_tokens=5 design=flat",
    ],
)
def test_redact_secrets_leaves_ordinary_words_alone(text):
    assert redact_secrets(text) == text


def test_redact_exact_secrets():
    assert redact_secrets("a plain-looking-secret b", ("plain-looking-secret",)) == "a [REDACTED] b"
    assert redact_secrets("abc", ("",)) == "abc"  # an empty secret must not blank everything


# -- _completion_from ------------------------------------------------------------------------


async def mock(model: str = "gpt-4o-mini", text: str = "bug"):
    return await lm.acompletion(model=model, messages=[{"role": "user", "content": "hi"}], mock_response=text)


async def test_mock_response_carries_litellm_cost_for_a_priced_model():
    result = await mock()
    cost = result._hidden_params.get("response_cost")
    assert cost is not None and cost > 0  # litellm prices gpt-4o-mini from its bundled price list
    assert result.usage.total_tokens > 0


async def test_priced_model_gives_litellm_cost():
    result = await mock()
    completion = _completion_from(result, None)
    assert completion.text == "bug"
    assert completion.finish_reason == "stop"
    assert completion.model == "gpt-4o-mini"
    assert completion.usage is not None and completion.usage.total_tokens == result.usage.total_tokens
    assert completion.cost_status == "litellm"
    assert completion.cost_usd == pytest.approx(float(result._hidden_params["response_cost"]))


async def test_job_prices_win():
    result = await mock()
    prices = PricesSpec(input_per_million=1.0, output_per_million=2.0)
    completion = _completion_from(result, Pricing("gpt-4o-mini", prices))
    usage = result.usage
    assert completion.cost_status == "job_prices"
    assert completion.cost_usd == pytest.approx((usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1e6)
    assert completion.cost_usd != pytest.approx(float(result._hidden_params["response_cost"]))


async def test_free_job_prices_give_zero_not_unknown():
    completion = _completion_from(await mock(), Pricing("gpt-4o-mini", PricesSpec(input_per_million=0,
                                                                                   output_per_million=0)))
    assert completion.cost_usd == 0.0 and completion.cost_status == "job_prices"


async def test_unpriced_model_gives_none_not_zero():
    result = await mock(model="openai/batchrun-no-such-model")
    assert result._hidden_params.get("response_cost") is None
    for pricing in (None, Pricing("openai/batchrun-no-such-model")):
        completion = _completion_from(result, pricing)
        assert completion.cost_usd is None
        assert completion.cost_status == "unpriced_model"
        assert completion.usage is not None


async def test_a_response_litellm_did_not_price_is_priced_by_its_map_or_unpriced():
    result = await mock()
    expected = float(result._hidden_params.pop("response_cost"))
    assert (_completion_from(result, None).cost_usd, _completion_from(result, None).cost_status) == (
        None, "unpriced_model")  # nothing to price it with
    completion = _completion_from(result, Pricing("openai/gpt-4o-mini"))
    assert completion.cost_status == "litellm" and completion.cost_usd == pytest.approx(expected)


async def test_no_usage():
    result = await mock(model="openai/batchrun-no-such-model")
    result.usage = None
    completion = _completion_from(result, None)
    assert completion.usage is None
    assert (completion.cost_usd, completion.cost_status) == (None, "no_usage")
    priced = _completion_from(result, Pricing("m", PricesSpec(input_per_million=1, output_per_million=1)))
    assert (priced.cost_usd, priced.cost_status) == (None, "no_usage")


def test_response_without_content_gives_empty_text():
    fake = SimpleNamespace(
        choices=[SimpleNamespace(message=SimpleNamespace(content=None), finish_reason="length")],
        usage=SimpleNamespace(prompt_tokens=3, completion_tokens=0, total_tokens=3),
        model="m",
        _hidden_params={"response_cost": 0.0},
    )
    completion = _completion_from(fake, None)
    assert completion.text == ""
    assert completion.finish_reason == "length"
    assert (completion.cost_usd, completion.cost_status) == (0.0, "litellm")



async def test_usage_of_zeros_is_no_usage_never_a_free_answer():
    # litellm fills a body without usage (or "usage": null) with zeros and prices them at 0.0
    result = await mock()
    result.usage.prompt_tokens = result.usage.completion_tokens = result.usage.total_tokens = 0
    result._hidden_params["response_cost"] = 0.0
    completion = _completion_from(result, None)
    assert (completion.usage, completion.cost_usd, completion.cost_status) == (None, None, "no_usage")
    estimated = _completion_from(result, Pricing("openai/gpt-4o-mini"), lambda text, calls: Usage(20, 1, 21))
    assert (estimated.usage, estimated.usage_source) == (Usage(20, 1, 21), "estimated")
    assert estimated.cost_status == "estimated"
    assert estimated.cost_usd == pytest.approx(20 * 0.15e-6 + 1 * 0.6e-6)  # litellm's map, not its zeros
    unpriced = _completion_from(result, Pricing("openai/batchrun-no-such-model"),
                                lambda text, calls: Usage(20, 1, 21))
    assert (unpriced.cost_usd, unpriced.cost_status, unpriced.usage_source) == (None, "unpriced_model", "estimated")
    priced = _completion_from(result, Pricing("m", PricesSpec(input_per_million=1e6, output_per_million=0)),
                              lambda text, calls: Usage(20, 1, 21))
    assert (priced.cost_usd, priced.cost_status) == (20.0, "estimated")


def test_a_transport_error_under_litellms_500_is_a_connection_error_and_a_status_is_not():
    import aiohttp

    def wrapped(cause: BaseException) -> BaseException:
        try:
            try:
                raise cause
            except BaseException as inner:
                raise lm.InternalServerError("Connection error.", llm_provider=P, model=M) from inner
        except BaseException as outer:
            return outer

    refused = wrapped(httpx.ConnectError("Cannot connect to host", request=REQUEST))
    error = translate_error(refused)
    assert (error.kind, error.status_code, error.retryable) == ("connection", None, True)
    assert "ConnectError: Cannot connect to host" in error.message
    timed_out = translate_error(wrapped(httpx.ReadTimeout("read", request=REQUEST)))
    assert (timed_out.kind, timed_out.status_code) == ("timeout", None)
    answered = wrapped(aiohttp.ClientResponseError(None, (), status=500, message="Internal Server Error"))
    assert (translate_error(answered).kind, translate_error(answered).status_code) == ("server_error", 500)
    plain_500 = lm.InternalServerError("oops", llm_provider=P, model=M)
    assert (translate_error(plain_500).kind, translate_error(plain_500).status_code) == ("server_error", 500)
