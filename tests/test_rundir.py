"""rundir.py: the read side of a run directory (checkpoint lines, compare units, status)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from batchrun.rundir.status import MODELS_DIR, find_units, run_status
from batchrun.rundir.manifest import read_manifest
from batchrun.errors import ReportError
from batchrun.rundir.lines import iter_lines

from test_report import known_run, make_run, result_line  # type: ignore[import-not-found]


def test_iter_lines_skips_a_torn_last_line_and_lines_without_an_id(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"no_id": 1}\nnot json\n{"id": true}\n{"id": 7}\n{"id": "torn"')
    assert [line["id"] for line in iter_lines(path)] == ["a", 7]
    assert list(iter_lines(tmp_path / "missing.jsonl")) == []


def test_a_run_directory_is_one_unit(tmp_path: Path) -> None:
    run = known_run(tmp_path / "run", labels=["a", "b", "c"])
    kind, units = find_units(run)
    assert kind == "run" and len(units) == 1
    unit = units[0]
    assert (unit.key, unit.model, unit.run_dir) == ("handmade", "openai/gpt-4o-mini", run)
    assert unit.id_field == "id" and unit.job_labels == ["a", "b", "c"]
    assert read_manifest(run)["state"] == "done"


def test_a_compare_directory_has_one_unit_per_model(tmp_path: Path) -> None:
    root = tmp_path / "cmp"
    for key in ("small", "big"):
        make_run(root / MODELS_DIR / key, [{"id": "t1", "body": "x"}], [result_line("t1", "a")],
                 model=f"openai/{key}")
    kind, units = find_units(root)
    assert kind == "compare"
    assert [(u.key, u.model) for u in units] == [("big", "openai/big"), ("small", "openai/small")]


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no such directory"):
        find_units(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no manifest.json"):
        find_units(tmp_path / "empty")
    assert read_manifest(tmp_path / "empty") is None


def test_status_counts_come_from_the_checkpoint_files(tmp_path: Path) -> None:
    run = known_run(tmp_path / "run")
    # a torn line being written is not counted yet
    with (run / "results.jsonl").open("ab") as handle:
        handle.write(orjson.dumps(result_line("t99", "a"))[:20])
    status = run_status(run)
    assert (status["done"], status["failed"], status["pending"], status["tickets"]) == (11, 1, 0, 12)
    assert status["unpriced_results"] == 1 and status["state"] == "done" and status["job"] == "handmade"
