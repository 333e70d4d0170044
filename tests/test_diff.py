"""`batchrun diff`: two hand-made runs with known changes, deltas and the
--fail-on-accuracy-drop exit code; compare directories paired by key."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from batchrun.commands.diff import diff_command
from batchrun.analysis.diffing import ACCURACY_DROPPED, diff_runs

from test_report import GOLD, PRED, make_run, result_line  # type: ignore[import-not-found]

# B against A (the known answers): t04 b -> a (fixed), t01 a -> c and t05 b -> a (broken),
# t08 b -> a (wrong both times). A: 7/10 right; B: 6/10.
B_PRED = {**PRED, "t04": "a", "t01": "c", "t05": "a", "t08": "a"}


def _runs(tmp_path: Path, *, with_gold: bool = True) -> tuple[Path, Path]:
    tickets = [{"id": key, "body": key, **({"label": gold} if with_gold else {})} for key, gold in GOLD.items()]
    a = make_run(tmp_path / "a", tickets, [result_line(k, v, latency=10.0 * (n + 1), cost=0.001)
                                           for n, (k, v) in enumerate(PRED.items())])
    b = make_run(tmp_path / "b", tickets, [result_line(k, v, latency=20.0 * (n + 1), cost=0.002)
                                           for n, (k, v) in enumerate(B_PRED.items())])
    return a, b


def test_changed_labels_and_deltas(tmp_path: Path) -> None:
    a, b = _runs(tmp_path)
    diff = diff_runs(a, b, show=2)
    [pair] = diff["pairs"]
    ch = pair["changed"]
    assert (ch["count"], ch["fixed"], ch["broken"], ch["wrong_both"]) == (4, 1, 2, 1)
    assert ch["rate"] == pytest.approx(0.4)
    assert ch["examples"] == [{"id": "t01", "a": "a", "b": "c", "gold": "a"},
                              {"id": "t04", "a": "b", "b": "a", "gold": "a"}]  # the first two by id
    acc = pair["accuracy"]
    assert (acc["a"], acc["b"]) == (pytest.approx(0.7), pytest.approx(0.6))
    assert acc["delta_points"] == pytest.approx(-10.0)
    assert acc["on_common"] is None  # same ten tickets graded on both sides
    dist = pair["distribution"]  # A: a 3, b 4, c 3; B: a 5, b 1, c 4
    assert (dist["a"]["a"], dist["a"]["b"], dist["a"]["shift_points"]) == (3, 5, pytest.approx(20.0))
    assert (dist["b"]["a"], dist["b"]["b"], dist["b"]["shift_points"]) == (4, 1, pytest.approx(-30.0))
    assert (dist["c"]["a"], dist["c"]["b"], dist["c"]["shift_points"]) == (3, 4, pytest.approx(10.0))
    assert pair["cost_usd"]["delta"] == pytest.approx(0.01) and pair["cost_usd"]["relative"] == pytest.approx(1.0)
    assert pair["cost_per_1000_usd"]["a"] == pytest.approx(1.0) and pair["cost_per_1000_usd"]["b"] == pytest.approx(2.0)
    assert (pair["latency_p50_ms"]["a"], pair["latency_p50_ms"]["b"]) == (50.0, 100.0)
    assert pair["latency_p50_ms"]["delta"] == pytest.approx(50.0)
    assert (pair["latency_p95_ms"]["a"], pair["latency_p95_ms"]["b"]) == (100.0, 200.0)


def test_terminal_output(tmp_path: Path) -> None:
    a, b = _runs(tmp_path)
    result = CliRunner().invoke(diff_command, [str(a), str(b)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "4 of 10 tickets both answered (40.0%): 1 fixed, 2 broken, 1 wrong both times" in out
    assert "A 70.0% (7/10) -> B 60.0% (6/10): -10.0 points" in out
    assert "t05" in out and "broken" in out and "+20.0 pts" in out and "-30.0 pts" in out
    assert "50 -> 100 ms (+50 ms, +100.0%)" in out


@pytest.mark.parametrize(("allowed", "code"), [("5", ACCURACY_DROPPED), ("9.9", ACCURACY_DROPPED),
                                               ("10", 0), ("15", 0)])
def test_fail_on_accuracy_drop(tmp_path: Path, allowed: str, code: int) -> None:
    a, b = _runs(tmp_path)
    result = CliRunner().invoke(diff_command, [str(a), str(b), "--fail-on-accuracy-drop", allowed])
    assert result.exit_code == code, result.output
    assert ("FAILED: accuracy fell by 10.00 points" in result.output) == (code == ACCURACY_DROPPED)


def test_an_improvement_passes_even_at_zero(tmp_path: Path) -> None:
    a, b = _runs(tmp_path)
    result = CliRunner().invoke(diff_command, [str(b), str(a), "--fail-on-accuracy-drop", "0"])
    assert result.exit_code == 0, result.output
    assert "ok: +10.00 points" in result.output


def test_no_gold_labels_cannot_pass_the_check(tmp_path: Path) -> None:
    a, b = _runs(tmp_path, with_gold=False)
    plain = CliRunner().invoke(diff_command, [str(a), str(b)])
    assert plain.exit_code == 0 and "answers changed         4 of 10" in plain.output
    checked = CliRunner().invoke(diff_command, [str(a), str(b), "--fail-on-accuracy-drop", "1"])
    assert checked.exit_code == 2 and "CANNOT CHECK" in checked.output


def test_json_output(tmp_path: Path) -> None:
    a, b = _runs(tmp_path)
    result = CliRunner().invoke(diff_command, [str(a), str(b), "--json", "--fail-on-accuracy-drop", "1"])
    assert result.exit_code == ACCURACY_DROPPED
    data = orjson.loads(result.output)
    assert data["pairs"][0]["changed"]["count"] == 4
    assert data["accuracy_check"]["exit_code"] == ACCURACY_DROPPED


def test_different_ticket_sets_report_accuracy_on_common_tickets(tmp_path: Path) -> None:
    a, b = _runs(tmp_path)
    lines = (b / "results.jsonl").read_bytes().splitlines(keepends=True)
    (b / "results.jsonl").write_bytes(b"".join(lines[:5]))  # B answered t01..t05 only
    pair = diff_runs(a, b)["pairs"][0]
    assert pair["answered"] == {"a": 10, "b": 5, "both": 5, "only_a": 5, "only_b": 0}
    common = pair["accuracy"]["on_common"]  # t01..t05: A 4/5 right, B 3/5 (t01, t05 broken; t04 fixed)
    assert common["tickets"] == 5
    assert (common["a"], common["b"]) == (pytest.approx(0.8), pytest.approx(0.6))
    assert pair["accuracy"]["delta_points"] == pytest.approx(-10.0)  # A 7/10 -> B 3/5
    # the check compares the 5 common tickets: a 20-point drop, not the headline 10
    result = CliRunner().invoke(diff_command, [str(a), str(b), "--fail-on-accuracy-drop", "15"])
    assert result.exit_code == ACCURACY_DROPPED, result.output
    assert "fell by 20.00 points (80.0% -> 60.0% on the 5 tickets graded in both)" in result.output


def _compare(root: Path, preds: dict[str, dict[str, str]]) -> Path:
    tickets = [{"id": key, "body": key, "label": gold} for key, gold in GOLD.items()]
    for key, pred in preds.items():
        make_run(root / "models" / key, tickets, [result_line(k, v) for k, v in pred.items()],
                 model=f"openai/{key}", input_path=root / "tickets.jsonl")
    return root


def test_compare_directories_pair_by_key(tmp_path: Path) -> None:
    old = _compare(tmp_path / "old", {"m1": PRED, "m2": PRED, "gone": PRED})
    new = _compare(tmp_path / "new", {"m1": PRED, "m2": B_PRED})
    diff = diff_runs(old, new)
    assert [(p["a"]["key"], p["b"]["key"]) for p in diff["pairs"]] == [("m1", "m1"), ("m2", "m2")]
    assert [p["changed"]["count"] for p in diff["pairs"]] == [0, 4]
    assert "gone" in diff["notes"][0]
    result = CliRunner().invoke(diff_command, [str(old), str(new), "--fail-on-accuracy-drop", "5"])
    assert result.exit_code == ACCURACY_DROPPED  # m2 fell by 10 points; m1 did not move
    assert "accuracy check [m1]: ok" in result.output and "accuracy check [m2]: FAILED" in result.output


def test_run_against_compare_directory_pairs_by_model(tmp_path: Path) -> None:
    a, _ = _runs(tmp_path)  # model openai/gpt-4o-mini
    cmp_dir = _compare(tmp_path / "cmp", {"gpt-4o-mini": B_PRED, "other": PRED})
    [pair] = diff_runs(a, cmp_dir)["pairs"]
    assert pair["b"]["key"] == "gpt-4o-mini" and pair["changed"]["count"] == 4
    lonely = _compare(tmp_path / "lonely", {"x": PRED})
    result = CliRunner().invoke(diff_command, [str(a), str(lonely)])
    assert result.exit_code == 2 and "nothing to compare" in result.output


def test_not_a_run_directory(tmp_path: Path) -> None:
    a, _ = _runs(tmp_path)
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(diff_command, [str(a), str(tmp_path / "empty")])
    assert result.exit_code == 2


