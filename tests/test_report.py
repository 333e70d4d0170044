"""`batchrun report`: grading on hand-made run directories with known answers,
charts, compare directories (agreement), and one real compare directory made
by two runs against the simulator."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any, Sequence

import orjson
import pytest
from click.testing import CliRunner

from batchrun.analysis.grading import (
    OTHER,
    agreement,
    analyze,
    build_report,
    classification_metrics,
    format_report,
    prediction,
)
from batchrun.analysis.charts import write_charts
from batchrun.commands.report import report_command
from batchrun.commands.status import format_status
from batchrun.rundir.status import run_status
from batchrun.analysis.stats import percentile

from conftest import batchrun_cmd, cli_run, invoke_cli  # type: ignore[import-not-found]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Ten graded tickets with known answers (gold -> predicted):
#   t01..t04 gold a: a a a b      t05..t07 gold b: b b c      t08..t10 gold c: b c c
# accuracy 7/10; a: P 3/3 R 3/4; b: P 2/4 R 2/3; c: P 2/3 R 2/3
GOLD = {"t01": "a", "t02": "a", "t03": "a", "t04": "a", "t05": "b", "t06": "b", "t07": "b",
        "t08": "c", "t09": "c", "t10": "c"}
PRED = {"t01": "a", "t02": "a", "t03": "a", "t04": "b", "t05": "b", "t06": "b", "t07": "c",
        "t08": "b", "t09": "c", "t10": "c"}


def result_line(ticket_id: str, answer: str, *, latency: float = 100.0, cost: float | None = 0.001,
                label: str | None = None, run: int = 1, second: int = 0, **extra: Any) -> dict[str, Any]:
    line: dict[str, Any] = {"id": ticket_id, "output": answer}
    if label is not None:
        line["label"] = label
    line.update({
        "finish_reason": "stop", "truncated": False, "content_filtered": False, "model": "gpt-4o-mini",
        "usage": {"prompt_tokens": 100, "completion_tokens": 2, "total_tokens": 102},
        "usage_source": "provider", "cost_usd": cost, "cost_status": "litellm" if cost is not None else "unpriced_model",
        "latency_ms": latency, "ttft_ms": None, "output_tokens_per_s": 20.0, "elapsed_ms": latency + 1,
        "attempts": 1, "started_at": f"2026-11-22T01:00:{second:02d}.000Z",
        "finished_at": f"2026-11-22T01:00:{second:02d}.100Z", "run": run,
    })
    line.update(extra)
    return line


def make_run(run_dir: Path, tickets: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]],
             errors: Sequence[dict[str, Any]] = (), *, model: str = "openai/gpt-4o-mini",
             input_path: Path | None = None, labels: Sequence[str] | None = None, name: str = "handmade") -> Path:
    """A run directory as batchrun writes it: manifest.json, results.jsonl, errors.jsonl, and its input."""
    run_dir.mkdir(parents=True, exist_ok=True)
    input_path = input_path or run_dir.parent / f"{run_dir.name}-tickets.jsonl"
    blob = b"".join(orjson.dumps(t) + b"\n" for t in tickets)
    input_path.write_bytes(blob)
    fingerprint: dict[str, Any] = {"model": model, "id_field": "id", "params": {"max_tokens": 5},
                                   "prompt": {"system": None, "user": "{body}"}}
    if labels:
        fingerprint["output"] = {"labels": list(labels)}
    manifest = {
        "job": {"name": name, "fingerprint": fingerprint, "fingerprint_sha256": "x" * 64, "path": None},
        "input": {"path": str(input_path), "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob),
                  "tickets": len(tickets)},
        "endpoint": "simulator", "state": "done", "run": 1, "started_at": "2026-11-22T01:00:00.000Z",
        "finished_at": "2026-11-22T01:01:00.000Z", "summary": None,
    }
    (run_dir / "manifest.json").write_bytes(orjson.dumps(manifest))
    (run_dir / "results.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in results))
    (run_dir / "errors.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in errors))
    return run_dir


def known_run(run_dir: Path, **kwargs: Any) -> Path:
    """The ten known answers (messy spellings that normalize to them), latencies 10..100 ms,
    plus t11 without a gold label and t12 failed."""
    tickets = [{"id": key, "body": f"ticket {key}", "label": gold} for key, gold in GOLD.items()]
    tickets += [{"id": "t11", "body": "no gold here"}, {"id": "t12", "body": "fails", "label": "a"}]
    spellings = {"a": " A.", "b": "'b'", "c": "**C**"}
    results = []
    for n, (key, pred) in enumerate(PRED.items()):
        if key == "t09":  # a label job's `label` wins over the raw output
            results.append(result_line(key, "something else", label="c", latency=10.0 * (n + 1), second=n))
        else:
            results.append(result_line(key, spellings[pred], latency=10.0 * (n + 1), second=n,
                                       **({"rejected_outputs": 1, "rejected_cost_usd": 0.0005} if key == "t01" else {})))
    results.append(result_line("t11", "a", latency=10.0 * 10, second=10, cost=None))
    errors = [{"id": "t12", "error_kind": "timeout", "error_type": "RetryableError", "message": "slow",
               "status_code": None, "attempts": 3, "started_at": "x", "time": "y", "run": 1}]
    return make_run(run_dir, tickets, results, errors, **kwargs)


# --------------------------------------------------------------------------------------------


def test_metrics_on_known_answers(tmp_path: Path) -> None:
    report = build_report(known_run(tmp_path / "run"))
    assert report["kind"] == "run" and len(report["models"]) == 1
    m = report["models"][0]
    g = m["grading"]
    assert g["graded"] == 10 and g["correct"] == 7
    assert g["accuracy"] == pytest.approx(0.7)
    assert g["labels"] == ["a", "b", "c"]
    per = g["per_label"]
    assert per["a"]["precision"] == pytest.approx(1.0) and per["a"]["recall"] == pytest.approx(0.75)
    assert per["a"]["f1"] == pytest.approx(2 * 0.75 / 1.75, abs=1e-6)
    assert per["b"]["precision"] == pytest.approx(0.5) and per["b"]["recall"] == pytest.approx(2 / 3, abs=1e-6)
    assert per["b"]["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3), abs=1e-6)
    assert per["c"]["precision"] == pytest.approx(2 / 3, abs=1e-6) and per["c"]["recall"] == pytest.approx(2 / 3, abs=1e-6)
    assert (per["a"]["support"], per["b"]["support"], per["c"]["support"]) == (4, 3, 3)
    assert (per["a"]["predicted"], per["b"]["predicted"], per["c"]["predicted"]) == (3, 4, 3)
    assert g["macro"]["precision"] == pytest.approx((1.0 + 0.5 + 2 / 3) / 3, abs=1e-6)
    assert g["macro"]["recall"] == pytest.approx((0.75 + 2 / 3 + 2 / 3) / 3, abs=1e-6)
    assert g["confusion"]["columns"] == ["a", "b", "c"]
    assert g["confusion"]["matrix"] == [[3, 1, 0], [0, 2, 1], [0, 1, 2]]
    # counts: 12 tickets, 11 results (t11 has no gold), t12 failed
    assert m["counts"] == {"tickets": 12, "done": 11, "failed": 1, "not_run": 0, "failed_by_kind": {"timeout": 1}}
    assert m["gold"]["results_without_gold"] == 1 and m["gold"]["input_changed"] is False


def test_latency_tokens_and_cost(tmp_path: Path) -> None:
    m = build_report(known_run(tmp_path / "run"))["models"][0]
    lat = m["latency_ms"]  # 10, 20, ..., 100 and t11's 100: nearest rank over 11 values
    assert (lat["p50"], lat["p95"], lat["p99"], lat["n"]) == (60.0, 100.0, 100.0, 11)
    assert m["ttft_ms"] is None
    assert m["tokens"] == {"prompt": 1100, "completion": 22, "total": 1122, "cached": 0, "cache_write": 0,
                           "reasoning": 0}
    cost = m["cost"]
    assert cost["usd"] == pytest.approx(10 * 0.001 + 0.0005)  # ten priced results + one rejected answer
    assert cost["unpriced_results"] == 1
    assert cost["per_1000_tickets_usd"] == pytest.approx((0.0105 / 10) * 1000)
    assert cost["by_status"] == {"litellm": 10, "unpriced_model": 1}
    assert m["throughput"]["1"]["results"] == 11


def test_terminal_table_shows_the_numbers(tmp_path: Path) -> None:
    result = CliRunner().invoke(report_command, [str(known_run(tmp_path / "run"))])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "accuracy             70.0% (7 of 10)" in out
    assert "confusion matrix (rows: gold, columns: predicted)" in out
    assert "macro avg" in out and "1 failed" in out and "timeout 1" in out
    assert "60 / 100 / 100 ms" in out


def test_predictions_outside_the_label_set_go_to_other(tmp_path: Path) -> None:
    metrics = classification_metrics([("a", "a"), ("a", "maybe"), ("b", "b"), ("b", "feature request")])
    assert metrics["confusion"]["columns"] == ["a", "b", OTHER]
    assert metrics["confusion"]["matrix"] == [[1, 0, 1], [0, 1, 1]]
    assert metrics["unexpected_predictions"] == {"feature request": 1, "maybe": 1}
    assert metrics["accuracy"] == pytest.approx(0.5)
    # a job label predicted but never gold gets its own column and row (precision 0)
    metrics = classification_metrics([("a", "a"), ("a", "z")], job_labels=["a", "Z"])
    assert metrics["labels"] == ["a", "z"] and metrics["per_label"]["z"]["precision"] == 0.0
    assert metrics["macro"]["recall"] == pytest.approx((0.5 + 0.0) / 2)


def test_prediction_normalization() -> None:
    assert prediction({"output": "  **Billing.** "}) == "billing"
    assert prediction({"output": "ignored", "label": "Bug"}) == "bug"
    assert prediction({"output": ""}) == "(empty)"
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile([], 50) is None


def test_gold_field_and_input_flags(tmp_path: Path) -> None:
    tickets = [{"id": 1, "body": "x", "meta": {"truth": "Yes"}}, {"id": 2, "body": "y", "meta": {"truth": "no"}}]
    run = make_run(tmp_path / "run", tickets, [result_line("1", "yes"), result_line("2", "yes")])
    assert build_report(run)["models"][0]["grading"] is None  # no `label` field anywhere
    graded = build_report(run, gold_field="meta.truth")["models"][0]["grading"]
    assert graded["accuracy"] == pytest.approx(0.5) and graded["labels"] == ["no", "yes"]
    # another input file: its gold labels are used, and the report says the input changed
    other = tmp_path / "other.jsonl"
    other.write_bytes(b'{"id": 1, "label": "yes"}\n{"id": 2, "label": "yes"}\n')
    m = build_report(run, input_path=other)["models"][0]
    assert m["grading"]["accuracy"] == pytest.approx(1.0) and m["gold"]["input_changed"] is True


def test_missing_input_is_reported_not_fatal(tmp_path: Path) -> None:
    run = known_run(tmp_path / "run")
    (tmp_path / "run-tickets.jsonl").unlink()
    result = CliRunner().invoke(report_command, [str(run)])
    assert result.exit_code == 0, result.output
    assert "not found: pass --input PATH to grade" in result.output
    assert "latency p50/p95/p99" in result.output


def test_not_a_run_directory_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(report_command, [str(tmp_path)])
    assert result.exit_code == 2
    assert "not a batchrun run or compare directory" in result.output


def test_out_writes_json_and_png_charts(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    result = CliRunner().invoke(report_command, [str(known_run(tmp_path / "run")), "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = orjson.loads((out / "report.json").read_bytes())
    assert data["models"][0]["grading"]["accuracy"] == pytest.approx(0.7)
    assert sorted(data["charts"]) == ["confusion_matrix.png", "latency_histogram.png", "throughput.png"]
    for name in data["charts"]:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name


def test_without_matplotlib_only_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    run = known_run(tmp_path / "run")
    assert write_charts(analyze(run), tmp_path / "charts") is None
    out = tmp_path / "out"
    result = CliRunner().invoke(report_command, [str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.json").exists() and not list(out.glob("*.png"))
    assert "matplotlib is not installed" in result.output


def _compare_dir(root: Path) -> Path:
    tickets = [{"id": key, "body": key, "label": gold} for key, gold in GOLD.items()]
    input_path = root / "tickets.jsonl"
    # model a: the known answers; model b answers t01..t09 (not t10), differing on t04 and t07
    b_pred = {**PRED, "t04": "a", "t07": "b"}
    make_run(root / "models" / "a", tickets, [result_line(k, v) for k, v in PRED.items()],
             model="openai/gpt-4o-mini", input_path=input_path)
    make_run(root / "models" / "b", tickets, [result_line(k, v, cost=0.002) for k, v in b_pred.items() if k != "t10"],
             model="openai/gpt-4o", input_path=input_path)
    return root


def test_compare_directory_per_model_and_agreement(tmp_path: Path) -> None:
    report = build_report(_compare_dir(tmp_path / "cmp"))
    assert report["kind"] == "compare"
    a, b = report["models"]
    assert (a["key"], a["model"], b["key"], b["model"]) == ("a", "openai/gpt-4o-mini", "b", "openai/gpt-4o")
    assert a["grading"]["accuracy"] == pytest.approx(0.7)
    assert b["grading"]["correct"] == 8 and b["grading"]["graded"] == 9  # t04 and t07 now right, t10 missing
    assert a["label_distribution"] == {"b": 4, "a": 3, "c": 3}
    assert b["label_distribution"] == {"a": 4, "b": 4, "c": 1}
    assert b["cost"]["per_1000_tickets_usd"] == pytest.approx(2.0)
    [pair] = report["agreement"]
    assert (pair["a"], pair["b"], pair["both_answered"], pair["agree"]) == ("a", "b", 9, 7)
    assert pair["rate"] == pytest.approx(7 / 9, abs=1e-6)
    text = format_report(report)
    assert "agreement between models" in text and "a vs b" in text and "77.8%" in text
    assert "label distribution per model" in text


def test_agreement_and_kappa() -> None:
    same = agreement({"1": "x", "2": "y"}, {"1": "x", "2": "y", "3": "z"})
    assert same["both_answered"] == 2 and same["rate"] == 1.0 and same["kappa"] == pytest.approx(1.0)
    none = agreement({"1": "x"}, {"2": "x"})
    assert none["both_answered"] == 0 and none["rate"] is None


def test_routed_run_breaks_down_by_route_and_model(tmp_path: Path) -> None:
    tickets = [{"id": key, "body": key, "label": gold} for key, gold in GOLD.items()]
    results = []
    for n, (key, pred) in enumerate(PRED.items()):
        strong = n < 4
        results.append(result_line(key, pred, model="gpt-4o" if strong else "gpt-4o-mini",
                                   model_key="strong" if strong else "cheap",
                                   route="tier=enterprise" if strong else "default",
                                   **({"attempts_by_model": {"cheap": 1, "strong": 1}} if key == "t10" else {})))
    m = build_report(make_run(tmp_path / "run", tickets, results))["models"][0]
    assert set(m["by_route"]) == {"tier=enterprise", "default"}
    assert m["by_route"]["tier=enterprise"]["done"] == 4
    assert m["by_route"]["tier=enterprise"]["accuracy"] == pytest.approx(0.75)  # t01..t04: a a a b
    assert m["by_model"]["cheap"]["accuracy"] == pytest.approx(4 / 6)  # grouped by model_key
    assert m["answered_after_fallback"] == 1
    assert "by route" in format_report(build_report(tmp_path / "run"))


def test_status_is_unchanged(tmp_path: Path) -> None:
    run = known_run(tmp_path / "run")
    status = run_status(run)
    assert (status["done"], status["failed"], status["tickets"]) == (11, 1, 12)
    assert "done" in format_status(status) and "cost (all runs)" in format_status(status)


@pytest.mark.slow  # two simulated runs in real processes, one per model
def test_real_compare_directory_from_two_simulated_runs(make_job: Any, tmp_path: Path,
                                                        cli_env: dict[str, str]) -> None:
    """Two real runs (through litellm, against the simulator) faked into a compare directory."""
    job = make_job(16, extra="[simulator]\nlatency_ms = 5\njitter = 0\n")
    for key, model in (("mini", "openai/gpt-4o-mini"), ("big", "openai/gpt-4o")):
        proc = cli_run(batchrun_cmd("run", str(job), "--run-dir", str(tmp_path / "cmp" / "models" / key),
                                    "--model", model, "--no-progress"),
                       capture_output=True, text=True, env=cli_env, timeout=180, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    shown = invoke_cli("report", str(tmp_path / "cmp"))
    assert shown.returncode == 0, shown.stderr
    assert "compare directory: 2 models" in shown.stdout
    report = build_report(tmp_path / "cmp")
    big, mini = report["models"]
    assert (big["key"], big["model"], mini["key"], mini["model"]) == ("big", "openai/gpt-4o", "mini", "openai/gpt-4o-mini")
    for m in (big, mini):
        assert m["counts"]["done"] == 16 and m["grading"]["graded"] == 16  # the sample tickets carry `label`
        assert m["cost"]["usd"] > 0 and m["latency_ms"]["n"] == 16
    [pair] = report["agreement"]
    assert pair["both_answered"] == 16 and 0.0 <= pair["rate"] <= 1.0
