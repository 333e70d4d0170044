"""Every token kind and every service tier, recorded as the provider billed it (issue 25, points 1-4).

Each job runs as `batchrun run` runs a simulated job (priced as the named model), but against a
simulator process this test started with the job's own [simulator] settings, so its invoice
(`/sim/stats`: billed tokens per model, tier, kind and ticket) can be read afterwards:

* usage in full: cached prompt tokens, cache writes, reasoning tokens on every line, equal to
  what the simulator billed for that ticket, plain and streamed; what prompt caching saved;
* prices: litellm's cost (with the cached tokens and the tier) within 1% of the invoice priced
  by litellm's map; [prices] with cached and write prices, and without (cost_status says the
  cached price was assumed);
* tiers: flex sent and recorded as served, 429 resource_unavailable retried and, after
  flex_fallback_after attempts, sent at the standard tier; every attempt counted;
* prompt caching: a prompt_cache_key for OpenAI models, cache_control on the system prompt and
  the shared prefix for Claude models;
* load checks: flex for a model litellm has no flex price for is refused, naming those that have
  one; flex's longer default timeout.
"""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

import batchrun
import batchrun.launcher as launcher
from batchrun.errors import JobSpecError
from batchrun.job.spec import FLEX_TIMEOUT_S, load_job
from batchrun.providers.litellm_setup import import_litellm
from batchrun.sim.process import start_simulator
from conftest import read_jsonl, write_tickets

LONG_SYSTEM = ("You classify customer support tickets for a SaaS product. " + " ".join(
    f"Rule {n}: a ticket that mentions topic {n} belongs to the label its text suggests most strongly."
    for n in range(1, 80)))


def job_file(tmp_path: Path, n: int, *, model: str, top: str = "", extra: str = "", system: str = LONG_SYSTEM,
             simulator: str = "") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_tickets(tmp_path / "tickets.jsonl", n)
    path = tmp_path / "job.toml"
    path.write_text(textwrap.dedent(f'''\
        name = "kinds"
        input = "tickets.jsonl"
        run_dir = "run"
        model = "{model}"
        concurrency = 4
        timeout_s = 20
        ''') + textwrap.dedent(top) + textwrap.dedent(f'''
        [prompt]
        system = """{system}"""
        user = "Subject: {{subject}}\\n\\n{{body}}"

        [params]
        max_tokens = 300

        [retry]
        max_attempts = 6
        max_elapsed_s = 60
        initial_backoff_s = 0.01
        max_backoff_s = 0.05

        [simulator]
        latency_ms = 5
        jitter = 0
        ''') + textwrap.dedent(simulator) + textwrap.dedent(extra))
    return path


@contextlib.contextmanager
def simulated(job_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The job's simulator, started here and kept after the run (its invoice), used by the run as
    the embedded one would be."""
    job = load_job(job_path)
    with start_simulator(launcher.sim_config(job)) as sim:
        @contextlib.contextmanager
        def this_simulator(job: Any, use_sim: bool, say: Any) -> Iterator[str | None]:
            yield sim.base_url if use_sim else None

        monkeypatch.setattr(launcher, "_simulator", this_simulator)
        yield sim


def litellm_price(model: str, tier: str, kinds: dict[str, int]) -> float:
    """What litellm's map says the invoice's tokens cost."""
    lm = import_litellm()
    cached, written = kinds["cached_tokens"], kinds["cache_write_tokens"]
    prompt = kinds["input_tokens"] + cached + written
    usage = lm.Usage(prompt_tokens=prompt, completion_tokens=kinds["output_tokens"],
                     total_tokens=prompt + kinds["output_tokens"],
                     prompt_tokens_details={"cached_tokens": cached, "cache_write_tokens": written},
                     completion_tokens_details={"reasoning_tokens": kinds["reasoning_tokens"]})
    prompt_cost, completion_cost = lm.cost_per_token(model=model, usage_object=usage,
                                                     service_tier=None if tier == "default" else tier)
    return prompt_cost + completion_cost


def rows_of(tmp_path: Path) -> list[dict[str, Any]]:
    return read_jsonl(tmp_path / "run" / "results.jsonl")


def check_kinds_against_invoice(rows: list[dict[str, Any]], invoice: dict[str, Any]) -> None:
    """Each line's usage kinds equal what the simulator billed for its ticket, at the tier it says."""
    for row in rows:
        billed = invoice["tickets"][row["id"]]
        assert list(billed) == [row["service_tier"] or "default"], row["id"]
        kinds = billed[row["service_tier"] or "default"]
        usage = row["usage"]
        assert (usage["cached_tokens"] or 0, usage["cache_write_tokens"] or 0, usage["reasoning_tokens"] or 0) == (
            kinds["cached_tokens"], kinds["cache_write_tokens"], kinds["reasoning_tokens"]), row["id"]
        assert usage["prompt_tokens"] == kinds["input_tokens"] + kinds["cached_tokens"] + kinds["cache_write_tokens"]
        assert usage["completion_tokens"] == kinds["output_tokens"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_cached_tokens_recorded_equal_those_billed_and_the_cost_is_the_invoice(tmp_path, monkeypatch, stream):
    path = job_file(tmp_path, 40, model="openai/gpt-4o-mini",
                    top=f"prompt_cache = true\nstream = {'true' if stream else 'false'}\n")
    with simulated(path, monkeypatch) as sim:
        result = batchrun.run(path)
        stats = sim.stats()
    assert result.state == "done"
    rows = rows_of(tmp_path)
    invoice = stats["invoice"]
    check_kinds_against_invoice(rows, invoice)
    cached = sum(row["usage"]["cached_tokens"] for row in rows)
    assert cached == invoice["models"]["gpt-4o-mini"]["default"]["cached_tokens"] > 0
    assert all(row["usage"]["cache_write_tokens"] is None and row["usage"]["reasoning_tokens"] is None
               for row in rows)  # not said by the provider: null, never 0
    billed = litellm_price("openai/gpt-4o-mini", "default", invoice["models"]["gpt-4o-mini"]["default"])
    recorded = sum(row["cost_usd"] for row in rows)
    assert recorded == pytest.approx(billed, rel=0.01)
    # what caching saved: the cached tokens at the input price minus at the cached price (litellm's map)
    saved = sum(row.get("prompt_cache_saved_usd") or 0.0 for row in rows)
    assert saved == pytest.approx(cached * (0.15e-6 - 0.075e-6), rel=1e-6)
    assert result.summary["cached_tokens"] == cached
    assert result.summary["prompt_cache_saved_usd"] == pytest.approx(saved)


def test_reasoning_tokens_are_recorded_as_billed_and_priced_as_output(tmp_path, monkeypatch):
    path = job_file(tmp_path, 12, model="openai/o4-mini", system="Classify the ticket: bug, feature, billing, other.")
    with simulated(path, monkeypatch) as sim:
        result = batchrun.run(path)
        invoice = sim.stats()["invoice"]
    assert result.state == "done"
    rows = rows_of(tmp_path)
    check_kinds_against_invoice(rows, invoice)
    assert all(row["usage"]["reasoning_tokens"] > 0 for row in rows)
    assert result.summary["reasoning_tokens"] == invoice["models"]["o4-mini"]["default"]["reasoning_tokens"]
    billed = litellm_price("openai/o4-mini", "default", invoice["models"]["o4-mini"]["default"])
    assert sum(row["cost_usd"] for row in rows) == pytest.approx(billed, rel=0.01)


def test_claude_prompt_cache_marks_the_system_prompt_and_the_shared_prefix(tmp_path, monkeypatch):
    prefix = "Examples of labelled tickets follow. " + " ".join(f"Example {n}: 'it crashes' is a bug."
                                                                  for n in range(120)) + "\n\n"
    path = job_file(tmp_path, 20, model="anthropic/claude-haiku-4-5", top="prompt_cache = true\n",
                    system="Answer with one label: bug, feature, billing or other.")
    text = path.read_text().replace('user = "Subject:', f'shared_prefix = """{prefix}"""\nuser = "Subject:')
    path.write_text(text)
    with simulated(path, monkeypatch) as sim:
        result = batchrun.run(path)
        invoice = sim.stats()["invoice"]
    assert result.state == "done"
    rows = rows_of(tmp_path)
    check_kinds_against_invoice(rows, invoice)
    kinds = invoice["models"]["claude-haiku-4-5"]["default"]
    assert kinds["cache_write_tokens"] > 0 and kinds["cached_tokens"] > kinds["cache_write_tokens"]
    assert all(row["service_tier"] is None for row in rows)  # Anthropic names no OpenAI tier
    # priced as the named model (litellm's anthropic/claude-haiku-4-5: reads 0.1x, writes 1.25x)
    billed = litellm_price("anthropic/claude-haiku-4-5", "default", kinds)
    assert sum(row["cost_usd"] for row in rows) == pytest.approx(billed, rel=0.01)
    assert {row["cost_status"] for row in rows} == {"litellm"}
    saved = sum(row.get("prompt_cache_saved_usd") or 0.0 for row in rows)
    expected = (kinds["cached_tokens"] * (1e-6 - 0.1e-6) + kinds["cache_write_tokens"] * (1e-6 - 1.25e-6))
    assert saved == pytest.approx(expected, rel=1e-6) and saved > 0


def test_the_providers_a_run_builds_get_the_tier_the_cache_settings_and_the_price_model(tmp_path):
    from batchrun.providers.online import build_providers

    path = job_file(tmp_path, 3, model="openai/gpt-5-mini", top='prompt_cache = true\nservice_tier = "flex"\n')
    job = load_job(path)
    targets = launcher.provider_targets(job, True, [])
    assert targets[""]["prompt_cache_key"] == job.prompt_cache_key()
    assert job.prompt_cache_key() != job.with_overrides(prompt={"user": "{subject}"}).prompt_cache_key()
    provider = build_providers(targets)[""]  # as the run (in this process) builds it
    assert provider.prompt_cache_key == job.prompt_cache_key() and not provider.marks_cache
    assert (provider.service_tier, provider.fallback_tier) == ("flex", "default")
    assert provider.pricing.price_model == "openai/gpt-5-mini"
    claude = load_job(job_file(tmp_path / "claude", 3, model="anthropic/claude-haiku-4-5", top="prompt_cache = true\n"))
    provider = build_providers(launcher.provider_targets(claude, True, []))[""]
    assert provider.marks_cache and provider.prompt_cache_key is None
    assert provider.model == "openai/claude-haiku-4-5" and provider.pricing.price_model == "anthropic/claude-haiku-4-5"


def test_flex_is_sent_recorded_and_falls_back_to_the_standard_tier(tmp_path, monkeypatch):
    path = job_file(tmp_path, 60, model="openai/gpt-5-mini", top='service_tier = "flex"\nflex_fallback_after = 2\n',
                    system="Classify the ticket: bug, feature, billing, other.",
                    simulator="flex_unavailable_rate = 0.4\nseed = 5\n")
    with simulated(path, monkeypatch) as sim:
        result = batchrun.run(path)
        stats = sim.stats()
    assert result.state == "done"
    rows = rows_of(tmp_path)
    invoice = stats["invoice"]
    check_kinds_against_invoice(rows, invoice)
    tiers = {row["id"]: row["service_tier"] for row in rows}
    fell_back = {row["id"] for row in rows if row.get("flex_fallback")}
    assert fell_back and {tiers[i] for i in fell_back} == {"default"}  # the tier that answered
    assert {tiers[i] for i in tiers if i not in fell_back} == {"flex"}
    # every attempt counted: the lines' attempts are the requests the simulator received
    assert {row["id"]: row["attempts"] for row in rows} == stats["requests_by_ticket"]
    assert result.summary["requests"] == stats["total_requests"]
    assert result.summary["errors_by_kind"]["resource_unavailable"] == stats["flex_unavailable"]
    for row in rows:
        if row["id"] in fell_back:
            assert row["attempts"] >= 3  # two flex refusals, then the standard tier
    for tier in ("flex", "default"):
        billed = litellm_price("openai/gpt-5-mini", tier, invoice["models"]["gpt-5-mini"][tier])
        recorded = sum(row["cost_usd"] for row in rows if row["service_tier"] == tier)
        assert recorded == pytest.approx(billed, rel=0.01), tier


def test_flex_without_fallback_keeps_retrying_at_flex(tmp_path, monkeypatch):
    path = job_file(tmp_path, 30, model="openai/gpt-5-mini", top='service_tier = "flex"\nflex_fallback_after = 0\n',
                    system="Classify the ticket: bug, feature, billing, other.",
                    simulator="flex_unavailable_rate = 0.4\nseed = 5\n")
    with simulated(path, monkeypatch) as sim:
        batchrun.run(path)
        stats = sim.stats()
    rows = rows_of(tmp_path)
    assert {row["service_tier"] for row in rows} == {"flex"} and not any(row.get("flex_fallback") for row in rows)
    assert list(stats["invoice"]["models"]["gpt-5-mini"]) == ["flex"]


@pytest.mark.parametrize("cached_price", [0.03, None], ids=["cached_price", "no_cached_price"])
def test_job_prices_price_every_kind(tmp_path, monkeypatch, cached_price):
    prices = "[prices]\ninput_per_million = 0.2\noutput_per_million = 0.8\n"
    if cached_price is not None:
        prices += f"cached_input_per_million = {cached_price}\n"
    path = job_file(tmp_path, 30, model="openai/gpt-4o-mini", top="prompt_cache = true\n", extra=prices)
    with simulated(path, monkeypatch) as sim:
        batchrun.run(path)
        kinds = sim.stats()["invoice"]["models"]["gpt-4o-mini"]["default"]
    rows = rows_of(tmp_path)
    cached_rate = cached_price if cached_price is not None else 0.2
    billed = (kinds["input_tokens"] * 0.2 + kinds["cached_tokens"] * cached_rate + kinds["output_tokens"] * 0.8) / 1e6
    assert sum(row["cost_usd"] for row in rows) == pytest.approx(billed, rel=1e-9)
    with_cache = [row for row in rows if row["usage"]["cached_tokens"]]
    assert with_cache
    expected_status = "job_prices" if cached_price is not None else "job_prices_cached_price_assumed"
    assert {row["cost_status"] for row in with_cache} == {expected_status}
    assert {row["cost_status"] for row in rows if not row["usage"]["cached_tokens"]} == {"job_prices"}
    saved = sum(row["prompt_cache_saved_usd"] for row in with_cache)
    assert saved == pytest.approx(kinds["cached_tokens"] * (0.2 - cached_rate) / 1e6)


def test_flex_for_a_model_without_a_flex_price_is_refused_at_load_naming_those_with_one(tmp_path):
    path = job_file(tmp_path, 3, model="openai/gpt-4o-mini", top='service_tier = "flex"\n')
    with pytest.raises(JobSpecError) as refused:
        batchrun.run(path)
    message = str(refused.value)
    assert "gpt-4o-mini" in message and "flex" in message
    assert "gpt-5-mini" in message and "o4-mini" in message  # the openai models litellm has a flex price for
    assert not (tmp_path / "run" / "results.jsonl").exists()


def test_flex_gets_a_longer_default_timeout_unless_the_job_sets_one(tmp_path):
    flex = load_job(job_file(tmp_path, 3, model="openai/gpt-5-mini", top='service_tier = "flex"\n'))
    assert flex.timeout_s == 20  # the job sets it
    text = (tmp_path / "job.toml").read_text().replace("timeout_s = 20\n", "").replace("max_elapsed_s = 60\n", "")
    (tmp_path / "job.toml").write_text(text)
    flex = load_job(tmp_path / "job.toml")
    assert flex.timeout_s == FLEX_TIMEOUT_S == 900 and flex.retry.max_elapsed_s >= FLEX_TIMEOUT_S
    standard = flex.with_overrides(service_tier="default")
    assert standard.timeout_s == 60 and standard.retry.max_elapsed_s == 300
    assert standard.with_overrides(service_tier="flex").timeout_s == FLEX_TIMEOUT_S


def test_status_report_serve_and_export_show_the_cached_share_and_the_dollars_saved(tmp_path, monkeypatch):
    import asyncio

    import orjson
    from aiohttp.test_utils import TestClient, TestServer

    from batchrun.analysis.export import export_run
    from batchrun.analysis.grading import build_report, format_report
    from batchrun.commands.status import format_status
    from batchrun.rundir.status import run_status
    from batchrun.serve.app import build_app

    path = job_file(tmp_path, 30, model="openai/gpt-4o-mini", top="prompt_cache = true\n")
    with simulated(path, monkeypatch):
        result = batchrun.run(path)
    rows = rows_of(tmp_path)
    cached = sum(row["usage"]["cached_tokens"] for row in rows)
    prompt = sum(row["usage"]["prompt_tokens"] for row in rows)
    saved = sum(row.get("prompt_cache_saved_usd") or 0.0 for row in rows)
    share = round(cached / prompt, 4)
    assert cached > 0 and saved > 0
    text = f"{share * 100:.1f}% of input tokens read from the provider's cache ({cached:,})"
    # the summary of the run
    assert result.summary["cached_share"] == share
    from batchrun.analysis.stats import format_summary

    assert text in format_summary(result.summary)
    # batchrun status
    status = run_status(tmp_path / "run")
    assert (status["cached_tokens"], status["cached_share"]) == (cached, share)
    assert status["prompt_cache_saved_usd"] == pytest.approx(saved, abs=1e-6)
    assert text in format_status(status)
    # batchrun report
    report = build_report(tmp_path / "run")
    assert text in format_report(report)
    # batchrun export: per ticket, and the totals it prints
    exported = export_run(tmp_path / "run", None, "jsonl")
    lines = [orjson.loads(line) for line in exported.path.read_bytes().splitlines()]
    assert sum(line["cached_tokens"] for line in lines) == cached
    assert sum(line["prompt_cache_saved_usd"] or 0 for line in lines) == pytest.approx(saved)
    assert exported.cached_tokens == cached and exported.prompt_cache_saved_usd == pytest.approx(saved)

    # batchrun serve: the run's JSON (its page draws the "prompt cache" card from it)
    async def served() -> dict[str, Any]:
        async with TestClient(TestServer(build_app(tmp_path, interval=0.1))) as client:
            return await (await client.get("/api/runs/run")).json()

    body = asyncio.run(served())
    assert body["status"]["cached_share"] == share and body["status"]["cached_tokens"] == cached
    assert body["status"]["prompt_cache_saved_usd"] == pytest.approx(saved, abs=1e-6)


# -- every path keeps every kind: batch mode, reused answers, kinds litellm normalizes -----------


@pytest.mark.slow  # batch mode through several simulator round trips
def test_batch_mode_lines_keep_the_token_kinds_the_provider_billed(tmp_path, monkeypatch):
    path = job_file(tmp_path, 12, model="openai/o4-mini", system="Classify the ticket: bug, feature, billing, other.",
                    top='prompt_cache = true\nmode = "batch"\nbatch_poll_s = 0.1\nbatch_poll_max_s = 0.2\n',
                    simulator="batch_time_scale = 7200\nbatch_duration_s = 60\n")
    with simulated(path, monkeypatch):
        result = batchrun.run(path)
    assert result.state == "done"
    rows = rows_of(tmp_path)
    assert len(rows) == 12
    # the batch output's usage details, as on an online line: reasoning within completion_tokens,
    # the cached tokens the provider said (the simulator's Batch API caches nothing: 0, not null)
    assert all(0 < row["usage"]["reasoning_tokens"] <= row["usage"]["completion_tokens"] for row in rows)
    assert all(row["usage"]["cached_tokens"] == 0 and row["usage"]["cache_write_tokens"] is None for row in rows)
    assert result.summary["reasoning_tokens"] == sum(row["usage"]["reasoning_tokens"] for row in rows)


def test_reused_answers_keep_the_token_kinds_of_the_answer_they_reuse(tmp_path, monkeypatch):
    cache = f'cache = true\ncache_dir = "{tmp_path / "answers"}"\nprompt_cache = true\n'
    first = job_file(tmp_path / "first", 12, model="openai/o4-mini", top=cache)
    with simulated(first, monkeypatch):
        batchrun.run(first)
    second = job_file(tmp_path / "second", 12, model="openai/o4-mini", top=cache)
    with simulated(second, monkeypatch):
        batchrun.run(second)
    paid = {row["id"]: row["usage"] for row in rows_of(tmp_path / "first")}
    reused = rows_of(tmp_path / "second")
    assert reused and all(row.get("cache_hit") for row in reused)
    assert any(usage["reasoning_tokens"] for usage in paid.values())
    assert {row["id"]: row["usage"] for row in reused} == paid


def test_audio_and_image_tokens_are_kept_when_the_provider_says_them():
    from batchrun.records import Completion, Outcome, usage_from_provider

    lm = import_litellm()
    raw = lm.Usage(prompt_tokens=120, completion_tokens=30, total_tokens=150,
                   prompt_tokens_details={"cached_tokens": 0, "audio_tokens": 40, "image_tokens": 50},
                   completion_tokens_details={"reasoning_tokens": 10, "audio_tokens": 5})
    usage = usage_from_provider(raw)
    assert usage is not None
    line = Outcome(ticket_id="T1", attempts=1, started_at="", finished_at="", elapsed_ms=1.0, run=1,
                   completion=Completion(text="x", finish_reason="stop", model="m", usage=usage, cost_usd=None,
                                         cost_status="unpriced_model"),
                   latency_ms=1.0).to_line()
    kept = line["usage"]
    assert (kept["prompt_audio_tokens"], kept["prompt_image_tokens"], kept["completion_audio_tokens"]) == (40, 50, 5)
    assert kept["reasoning_tokens"] == 10 and kept["cached_tokens"] == 0
    assert "completion_image_tokens" not in kept  # not said: absent (the three main kinds are always there)
    plain = usage_from_provider({"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
    assert plain is not None and "prompt_audio_tokens" not in plain.as_dict()


@pytest.mark.parametrize("write_price", [1.25, None], ids=["write_price", "no_write_price"])
def test_job_prices_price_cache_writes_and_reasoning_as_output(tmp_path, monkeypatch, write_price):
    prefix = "Examples of labelled tickets follow. " + " ".join(f"Example {n}: 'it crashes' is a bug."
                                                                  for n in range(120)) + "\n\n"
    prices = "[prices]\ninput_per_million = 1.0\noutput_per_million = 5.0\ncached_input_per_million = 0.1\n"
    if write_price is not None:
        prices += f"cache_write_per_million = {write_price}\n"
    path = job_file(tmp_path, 12, model="anthropic/claude-haiku-4-5", top="prompt_cache = true\n",
                    system="Answer with one label: bug, feature, billing or other.", extra=prices)
    path.write_text(path.read_text().replace('user = "Subject:', f'shared_prefix = """{prefix}"""\nuser = "Subject:'))
    with simulated(path, monkeypatch) as sim:
        batchrun.run(path)
        kinds = sim.stats()["invoice"]["models"]["claude-haiku-4-5"]["default"]
    rows = rows_of(tmp_path)
    assert kinds["cache_write_tokens"] > 0
    rate = write_price if write_price is not None else 1.0
    billed = (kinds["input_tokens"] * 1.0 + kinds["cached_tokens"] * 0.1 + kinds["cache_write_tokens"] * rate
              + kinds["output_tokens"] * 5.0) / 1e6
    assert sum(row["cost_usd"] for row in rows) == pytest.approx(billed, rel=1e-9)
    writers = [row for row in rows if row["usage"]["cache_write_tokens"]]
    expected = "job_prices" if write_price is not None else "job_prices_cached_price_assumed"
    assert writers and {row["cost_status"] for row in writers} == {expected}
    # reasoning tokens are within completion_tokens: billed at the output price
    reasoning = job_file(tmp_path / "reasoning", 6, model="openai/o4-mini",
                         system="Classify the ticket: bug, feature, billing, other.",
                         extra="[prices]\ninput_per_million = 1.0\noutput_per_million = 5.0\n")
    with simulated(reasoning, monkeypatch) as sim:
        batchrun.run(reasoning)
        kinds = sim.stats()["invoice"]["models"]["o4-mini"]["default"]
    rows = rows_of(tmp_path / "reasoning")
    assert kinds["reasoning_tokens"] > 0 and sum(row["usage"]["reasoning_tokens"] for row in rows) == kinds["reasoning_tokens"]
    assert sum(row["cost_usd"] for row in rows) == pytest.approx(
        (kinds["input_tokens"] + 5.0 * kinds["output_tokens"]) / 1e6, rel=1e-9)


def test_the_service_tier_option_of_batchrun_run(tmp_path, cli_env):
    from conftest import batchrun_cmd, cli_run, invoke_cli

    path = job_file(tmp_path, 4, model="openai/gpt-5-mini", system="Classify the ticket: bug, feature, billing, other.")
    done = cli_run(batchrun_cmd("run", str(path), "--service-tier", "flex"), env=cli_env, capture_output=True,
                   text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert {row["service_tier"] for row in rows_of(tmp_path)} == {"flex"}
    other = job_file(tmp_path / "no_flex", 2, model="openai/gpt-4o-mini")
    refused = invoke_cli("run", str(other), "--service-tier", "flex")
    assert refused.returncode == 2 and "no flex price" in refused.stderr and "o4-mini" in refused.stderr
    assert not (tmp_path / "no_flex" / "run" / "results.jsonl").exists()
