"""`batchrun bench`: the recommendation, the efficiency arithmetic, and tiny real sweeps.

The sweeps run against the embedded simulator on 127.0.0.1 at 5 ms latency.
Nothing here asserts on a timing: only that fields are present and sane.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from batchrun.bench.recommend import (
    Recommendation,
    build_row,
    compare_auto,
    format_baseline_table,
    format_table,
    ideal_throughput,
    parse_concurrency,
    recommend,
    tickets_for,
)
from batchrun.bench.sweep import redact_url, sim_model
from batchrun.bench.baseline import write_sample
from batchrun.commands.bench import bench_command
from batchrun.job.spec import JobSpec, load_job

from conftest import write_tickets  # type: ignore[import-not-found]

# litellm's first streaming/typing use makes pydantic warn about one of litellm's own TypedDicts.
pytestmark = pytest.mark.filterwarnings("ignore:Item 'summary' on TypedDict:UserWarning")


def row(c: int, tps: float, p95: float | None = 200.0, rate_429: float = 0.0, error_rate: float = 0.0) -> dict[str, Any]:
    return {"concurrency": c, "tickets_per_s": tps, "latency_ms": {"p50": p95, "p95": p95, "p99": p95},
            "rate_429": rate_429, "error_rate": error_rate}


# -- recommend ----------------------------------------------------------------------------------


def test_recommend_picks_highest_throughput() -> None:
    rec = recommend([row(1, 5), row(4, 19), row(16, 70), row(64, 60)])
    assert isinstance(rec, Recommendation)
    assert rec.concurrency == 16
    assert "70.0 tickets/s" in rec.reason
    assert rec.max_p95_ms == 600.0  # 3 x the lowest p95


def test_recommend_skips_settings_over_the_429_rate() -> None:
    rows = [row(16, 70), row(64, 120, rate_429=0.02), row(256, 130, rate_429=0.3)]
    rec = recommend(rows)
    assert rec.concurrency == 16
    assert "C=256 was faster" in rec.reason and "429 rate 30.0% > 1.0%" in rec.reason
    assert recommend(rows, max_429_rate=0.05).concurrency == 64
    # exactly at the threshold is allowed
    assert recommend([row(4, 10), row(8, 20, rate_429=0.01)]).concurrency == 8


def test_recommend_skips_settings_over_the_p95_limit() -> None:
    rows = [row(1, 5, p95=210), row(64, 300, p95=500), row(256, 320, p95=700)]
    rec = recommend(rows)  # limit 630 ms
    assert rec.concurrency == 64
    assert "p95 700 ms > 630 ms" in rec.reason
    assert recommend(rows, max_p95_ms=1000).concurrency == 256
    assert recommend(rows, max_p95_ms=400).concurrency == 1


def test_recommend_ties_go_to_the_lower_concurrency() -> None:
    assert recommend([row(256, 100), row(64, 100), row(128, 100)]).concurrency == 64
    assert "C=" not in recommend([row(64, 100), row(256, 100)]).reason  # nothing faster was ruled out


def test_recommend_near_ties_go_to_the_lower_concurrency() -> None:
    rec = recommend([row(64, 100), row(256, 104)])  # within 5%: the same work with fewer in flight
    assert rec.concurrency == 64
    assert "within 5% of the best (C=256: 104.0/s)" in rec.reason
    assert recommend([row(64, 100), row(256, 104)], tie_within=0).concurrency == 256
    assert recommend([row(64, 100), row(256, 110)]).concurrency == 256
    # the tie band is measured from the best acceptable setting, not a rejected one
    assert recommend([row(16, 96), row(64, 100), row(256, 200, rate_429=0.5)]).concurrency == 16


def test_recommend_skips_failed_tickets_missing_latency_and_interrupted_runs() -> None:
    rec = recommend([row(4, 10), row(16, 40, error_rate=0.05), row(64, 90, p95=None), {**row(256, 99), "not_finished": 3}])
    assert rec.concurrency == 4
    assert "C=256 was faster (99.0/s) but interrupted" in rec.reason


def test_recommend_never_a_setting_the_sweep_did_not_reach() -> None:
    rows = [row(16, 70), row(64, 110), row(256, 130)]
    rows[1].update(tickets=256, server={"peak_in_flight": 64})
    rows[2].update(tickets=512, server={"peak_in_flight": 90})  # the sweep: 256 asked, 90 reached
    rec = recommend(rows)
    assert rec.concurrency == 64
    assert "C=256 (at most 90 in flight" in rec.reason
    assert "the sample of 512 tickets was too small to test it: it would need about 2,048 (--tickets 2048)" in rec.reason


def test_an_unreached_setting_with_a_big_sample_blames_the_client() -> None:
    rows = [row(16, 33, p95=370), row(64, 34, p95=370)]
    rows[0].update(tickets=1024, server={"peak_in_flight": 16})
    rows[1].update(tickets=1024, server={"peak_in_flight": 13})
    rec = recommend(rows)
    assert rec.concurrency == 16
    assert "C=64 (at most 13 in flight, 34.0 tickets/s x p50 370 ms = 13 on average, " in rec.reason
    assert "1,024 tickets: this client could not send faster" in rec.reason


def test_recommend_with_nothing_acceptable() -> None:
    rec = recommend([row(64, 100, rate_429=0.5), row(256, 90, rate_429=0.6)])
    assert rec.concurrency is None
    assert "no setting met the thresholds" in rec.reason and "C=64" in rec.reason
    assert recommend([]).concurrency is None


# -- efficiency arithmetic ------------------------------------------------------------------


def test_ideal_is_concurrency_over_latency() -> None:
    assert ideal_throughput(128, 0.2, 2000) == (pytest.approx(2000 / (math.ceil(2000 / 128) * 0.2)), "tickets")
    assert ideal_throughput(64, 0.2, 256) == (pytest.approx(320.0), "concurrency")
    assert ideal_throughput(1, 0.2, 32) == (pytest.approx(5.0), "concurrency")
    # more in flight than tickets: one wave of all the tickets
    assert ideal_throughput(256, 0.2, 50) == (pytest.approx(250.0), "concurrency")
    assert ideal_throughput(4, None, 10) == (None, "unknown")
    assert ideal_throughput(4, 0.0, 10) == (None, "unknown")


def test_ideal_capped_by_rate_limits() -> None:
    # 600 rpm: a full bucket admits 600 at once, then 10/s; 1200 tickets need 60 s
    ideal, limit = ideal_throughput(256, 0.2, 1200, rpm=600)
    assert limit == "rpm" and ideal == pytest.approx(20.0)
    # under the burst the limit does not bind
    assert ideal_throughput(64, 0.2, 512, rpm=600)[1] == "concurrency"
    # tpm with 100 tokens a request = 600 rpm
    ideal, limit = ideal_throughput(256, 0.2, 1200, tpm=60_000, tokens_per_request=100)
    assert limit == "tpm" and ideal == pytest.approx(20.0)
    assert ideal_throughput(256, 0.2, 1200, tpm=60_000, tokens_per_request=None)[1] != "tpm"


def test_ideal_capped_by_capacity() -> None:
    # capacity 64, 20 ms per extra request in flight: 256 in flight means 0.2 + 192 * 0.02 = 4.04 s each
    ideal, limit = ideal_throughput(256, 0.2, 1024, capacity=64, overload_ms=20)
    assert limit == "capacity"
    assert ideal == pytest.approx(1024 / (16 * 0.2))  # better to hold 64 in flight: 320/s
    assert ideal_throughput(32, 0.2, 128, capacity=64, overload_ms=20) == (pytest.approx(160.0), "concurrency")


def test_build_row_arithmetic() -> None:
    summary = {"done": 60, "failed": 4, "not_finished": 0, "requests": 80, "retries": 16, "rate_limited": 8,
               "errors_by_kind": {"rate_limited": 8, "timeout": 8}, "wall_s": 2.0, "requests_per_s": 40.0,
               "output_tokens_per_s": 45.0, "latency_ms": {"p50": 200.0, "p95": 250.0, "p99": 300.0, "mean": 210.0},
               "prompt_tokens": 6000, "completion_tokens": 90, "cost_usd": 0.01, "cost_per_1000_tickets_usd": 0.16}
    r = build_row(16, 64, "done", summary, cpu_s=0.8, latency_s=0.2, server={"peak_in_flight": 16})
    assert r["tickets_per_s"] == 30.0
    assert r["rate_429"] == 0.1
    assert r["error_rate"] == 0.0625
    assert r["ideal_rps"] == 80.0 and r["ideal_limited_by"] == "concurrency"
    assert r["efficiency"] == 0.375
    assert r["cpu_ms_per_request"] == 10.0
    assert r["ttft_ms"] is None and r["baseline"] is None
    summary["ttft_ms"] = {"p50": 50.0, "p95": 60.0, "p99": 70.0}
    assert "ttft p95" in format_table([build_row(16, 64, "done", summary, cpu_s=0.8, latency_s=0.2)], wide=True)


def test_build_row_and_table_keep_start_up_apart() -> None:
    # 2 worker processes: 3 s of a 5 s run went to start-up, 6 CPU-s of 8 to their litellm imports.
    summary = {"done": 100, "failed": 0, "not_finished": 0, "requests": 100, "wall_s": 5.0, "requests_per_s": 20.0,
               "output_tokens_per_s": 1.0, "latency_ms": {"p50": 200.0, "p95": 250.0, "p99": 300.0, "mean": 210.0},
               "startup_s": 3.0, "requests_per_s_after_startup": 50.0, "worker_startup_cpu_s": 6.0}
    r = build_row(16, 100, "done", summary, cpu_s=8.0, latency_s=0.2)
    assert r["startup_s"] == 3.0 and r["requests_per_s_after_startup"] == 50.0
    assert r["cpu_ms_per_request"] == 80.0 and r["cpu_ms_per_request_after_startup"] == 20.0
    r["workers"] = 2
    r["baseline"] = {"requests_per_s": 25.0, "cpu_ms_per_request": 10.0, "speed_ratio": 0.8, "cpu_ratio": 8.0,
                     "speed_ratio_after_startup": 2.0, "cpu_ratio_after_startup": 2.0, "error_rate": 0.0,
                     "server": {"peak_in_flight": 16}}
    lines = format_baseline_table([r], after_startup=True).splitlines()
    assert lines[0].split()[:3] == ["conc", "batchrun", "req/s"] and "start-up" in lines[0]
    assert lines[2].split() == ["16", "50.0", "25.0", "2.00x", "20.00", "10.00", "2.00x", "3.00", "2"]
    assert format_baseline_table([r]).splitlines()[2].split()[:4] == ["16", "20.0", "25.0", "0.80x"]


def test_small_helpers() -> None:
    assert parse_concurrency("64, 1,4,4") == [1, 4, 64]
    assert parse_concurrency("auto,16,AUTO,4") == [4, 16, "auto"]
    assert parse_concurrency("auto") == ["auto"]
    for bad in ("", "0", "a", "5000"):
        with pytest.raises(ValueError):
            parse_concurrency(bad)
    assert [tickets_for(c, None) for c in (1, 4, 16, 64, 256, 1024)] == [32, 32, 64, 256, 512, 512]
    assert tickets_for(256, 10) == 10
    assert sim_model("openai/gpt-4o-mini") == "openai/gpt-4o-mini"
    assert sim_model("anthropic/claude-3-5-haiku-latest") == "openai/claude-3-5-haiku-latest"
    assert sim_model("gpt-4o") == "openai/gpt-4o"
    assert redact_url("https://user:secret@proxy.example:4000/v1?key=abc") == "https://proxy.example:4000/v1"


def test_sample_skips_bad_lines_and_cycles(tmp_path: Path, make_job: Any) -> None:
    job_path = make_job(3)
    lines = tmp_path / "src.jsonl"
    write_tickets(lines, 3)
    raw = lines.read_bytes().splitlines(keepends=True)
    lines.write_bytes(raw[0] + b"not json\n" + raw[0] + raw[1] + raw[2])  # a bad line, a duplicate id
    job = load_job(job_path).with_overrides(input=lines)
    out = tmp_path / "sample.jsonl"
    assert write_sample(job, 7, out) == 3
    ids = [orjson.loads(line)["id"] for line in out.read_bytes().splitlines()]
    assert len(ids) == len(set(ids)) == 7
    assert ids[:3] == [orjson.loads(raw[i])["id"] for i in range(3)]
    assert ids[3].endswith("~r2")


def test_compare_auto_against_the_best_fixed_setting() -> None:
    auto = {**row(256, 80), "concurrency": "auto", "concurrency_settled": 48}
    result = compare_auto(auto, [row(16, 50), row(64, 100), {**row(256, 120), "failed": 3}])
    assert result["settled"] == 48
    assert result["best_fixed_concurrency"] == 64  # a setting with failed tickets is no yardstick
    assert result["share_of_best"] == 0.8
    assert compare_auto(auto, [])["share_of_best"] is None


# -- tiny real sweeps through the command -------------------------------------------------------


def _invoke(tmp_path: Path, make_job: Any, *extra: str) -> tuple[Any, dict[str, Any]]:
    job = make_job(12)
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        bench_command,
        [str(job), "--concurrency", "1,4", "--tickets", "8", "--latency-ms", "5", "--jitter", "0",
         "--warmup", "2", "--out", str(out), *extra],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "run").exists()  # the job's own run directory is never touched
    return result, orjson.loads((out / "bench.json").read_bytes())


def _sane(r: dict[str, Any], tickets: int) -> None:
    assert r["requests"] > 0 and r["requests_per_s"] > 0 and r["tickets_per_s"] > 0
    assert r["done"] == tickets and r["failed"] == 0 and r["error_rate"] == 0.0
    lat = r["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]


@pytest.mark.slow  # a sweep: warm-up and a timed run per setting
def test_sweep_writes_json_and_prints_table(tmp_path: Path, make_job: Any) -> None:
    result, report = _invoke(tmp_path, make_job)
    rows = report["rows"]
    assert [r["concurrency"] for r in rows] == [1, 4]
    for r in rows:
        _sane(r, 8)
        assert r["tickets"] == 8 and r["state"] == "done"
        assert r["requests"] == 8 and r["rate_429"] == 0.0
        assert r["output_tokens_per_s"] > 0 and r["cost_usd"] is not None and r["cost_usd"] > 0
        assert r["ideal_rps"] > 0 and r["efficiency"] > 0
        assert r["cpu_s"] >= 0 and r["cpu_ms_per_request"] is not None
        assert r["server"]["peak_in_flight"] <= r["concurrency"]
        assert r["server"]["total_requests"] == 8  # counters reset per setting; warm-up not counted
        assert r["baseline"] is None
    assert report["mode"] == "simulator" and report["simulator"]["latency_ms"] == 5.0
    assert report["recommendation"]["concurrency"] in (1, 4)
    out = result.stdout
    assert "conc" in out and "tickets/s" in out and "p95 ms" in out
    assert "recommendation: concurrency = " in out
    assert ("bench.png" in out)


@pytest.mark.slow  # a sweep: warm-up and a timed run per setting
def test_sweep_with_baseline(tmp_path: Path, make_job: Any) -> None:
    result, report = _invoke(tmp_path, make_job, "--baseline")
    for r in report["rows"]:
        _sane(r, 8)
        b = r["baseline"]
        assert b is not None
        assert b["requests"] == 8 and b["done"] == 8 and b["failed"] == 0
        assert b["requests_per_s"] > 0 and b["cpu_s"] >= 0
        assert b["cpu_ms_per_request"] is not None
        assert b["speed_ratio"] is not None and b["speed_ratio"] > 0
        assert "cpu_ratio" in b
        assert b["server"]["total_requests"] == 8
        assert b["latency_ms"]["p95"] > 0
    assert "bare req/s" in result.stdout and "ratio" in result.stdout
    assert "bare req/s" in format_baseline_table(report["rows"])
    assert report["transport"] == {"batchrun": "litellm-http", "baseline": "openai-sdk"}
    assert all(r["baseline"]["transport"] == "openai-sdk" for r in report["rows"])


@pytest.mark.slow  # a sweep: warm-up and a timed run per setting
def test_auto_concurrency_is_compared_with_the_fixed_settings(tmp_path: Path, make_job: Any) -> None:
    job = make_job(12)
    out = tmp_path / "bench"
    result = CliRunner().invoke(bench_command, [str(job), "--concurrency", "2,auto", "--tickets", "8",
                                                "--latency-ms", "5", "--warmup", "1", "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = orjson.loads((out / "bench.json").read_bytes())
    assert [r["concurrency"] for r in report["rows"]] == [2]  # auto is not a recommendation candidate
    auto = report["auto"]
    _sane(auto["row"], 8)
    assert auto["row"]["concurrency"] == "auto"
    assert auto["best_fixed_concurrency"] == 2 and auto["share_of_best"] > 0
    assert report["recommendation"]["concurrency"] == 2
    assert 'concurrency = "auto"' in result.stdout and "of the best fixed setting" in result.stdout


@pytest.mark.slow  # a sweep: warm-up and a timed run per setting
def test_stream_flag_is_accepted(tmp_path: Path, make_job: Any) -> None:
    result, report = _invoke(tmp_path, make_job, "--stream")
    supported = "stream" in JobSpec.model_fields  # the field is being added: skip gracefully until then
    assert report["stream"] is supported
    assert supported or "no `stream` field" in result.stderr
    assert len(report["rows"]) == 2
    for r in report["rows"]:
        _sane(r, 8)


@pytest.mark.slow  # a sweep: warm-up and a timed run per setting
def test_live_uses_the_jobs_endpoint_and_key(make_job: Any, sim: Any, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """--live: the job's model, api_base and key (here pointed at a simulator: nothing leaves 127.0.0.1)."""
    monkeypatch.setenv("BATCHRUN_TEST_KEY", "sim-key")
    job = make_job(8, top=f'api_base = "{sim.base_url}"')
    out = tmp_path / "live"
    result = CliRunner().invoke(bench_command, [str(job), "--live", "--concurrency", "2", "--tickets", "6",
                                                "--warmup", "1", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = orjson.loads((out / "bench.json").read_bytes())
    assert report["mode"] == "live" and report["simulator"] is None and report["model"] == "openai/gpt-4o-mini"
    (r,) = report["rows"]
    _sane(r, 6)
    assert r["server"] is None  # no simulator of ours to ask
    assert r["ideal_latency_ms"] == r["latency_ms"]["mean"]  # live: the measured mean latency
    assert "sim-key" not in (out / "bench.json").read_text()


def test_live_without_key_fails_before_sending(tmp_path: Path, make_job: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHRUN_TEST_KEY", raising=False)
    job = make_job(4)
    result = CliRunner().invoke(bench_command, [str(job), "--live", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "BATCHRUN_TEST_KEY is not set" in result.output
    assert not (tmp_path / "b").exists()


@pytest.mark.slow  # a sweep with worker processes
def test_a_multi_process_sweep_reuses_its_worker_processes(tmp_path: Path, make_job: Any) -> None:
    # the workers import litellm once, during the warm-up: no setting pays for it, and their CPU
    # (not in the OS's count of ended children while they live) is what they report per run
    result, report = _invoke(tmp_path, make_job, "--workers", "2", "--wide")
    rows = report["rows"]
    for r in rows:
        _sane(r, 8)
        assert r["workers"] == 2 and r["requests"] == 8
        assert r["cpu_s_workers"] > 0 and r["cpu_s"] >= r["cpu_s_workers"]
        # their start-up figures (seconds, CPU-s) are measured in benchmarks/worker_startup.py
        assert r["worker_startup_cpu_s"] >= 0 and r["startup_s"] >= 0
    assert "procs" in result.stdout  # the wide table shows the processes each run used
