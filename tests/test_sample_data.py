"""Checks on the committed sample tickets and their generator."""

from __future__ import annotations

import collections
import datetime as dt
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "sample_data" / "tickets.jsonl"
SCRIPT = ROOT / "sample_data" / "make_tickets.py"

LABELS = {"bug", "feature", "billing", "other"}
TIERS = {"free", "pro", "enterprise"}
CHANNELS = {"email", "chat", "web", "phone"}
FIELDS = {"id", "subject", "body", "customer", "channel", "created_at", "language", "label"}


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_tickets_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def raw() -> bytes:
    return DATA.read_bytes()


@pytest.fixture(scope="module")
def tickets(raw: bytes) -> list[dict]:
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


def test_file_shape(raw: bytes) -> None:
    text = raw.decode("utf-8")  # must be valid UTF-8
    assert text.endswith("\n")
    assert "\r" not in text
    lines = text.split("\n")[:-1]
    assert len(lines) >= 1000
    assert all(line.strip() for line in lines), "no blank lines"


def test_every_line_is_a_documented_ticket(tickets: list[dict]) -> None:
    for t in tickets:
        assert isinstance(t, dict)
        assert set(t) == FIELDS, t.get("id")
        assert re.fullmatch(r"T\d{6}", t["id"])
        assert isinstance(t["subject"], str) and t["subject"].strip()
        assert isinstance(t["body"], str) and t["body"].strip()
        assert set(t["customer"]) == {"name", "tier"}
        assert isinstance(t["customer"]["name"], str) and t["customer"]["name"].strip()
        assert t["customer"]["tier"] in TIERS
        assert t["channel"] in CHANNELS
        assert t["language"] == "en"
        assert t["label"] in LABELS
        assert t["created_at"].endswith("Z")
        stamp = dt.datetime.fromisoformat(t["created_at"].replace("Z", "+00:00"))
        assert stamp.utcoffset() == dt.timedelta(0)


def test_ids_unique_zero_padded_in_order(tickets: list[dict]) -> None:
    ids = [t["id"] for t in tickets]
    assert len(set(ids)) == len(ids)
    assert ids == [f"T{i:06d}" for i in range(1, len(ids) + 1)]


def test_created_at_is_chronological(tickets: list[dict]) -> None:
    stamps = [t["created_at"] for t in tickets]
    assert stamps == sorted(stamps)


def test_label_distribution(tickets: list[dict]) -> None:
    counts = collections.Counter(t["label"] for t in tickets)
    assert set(counts) == LABELS
    share = {k: v / len(tickets) for k, v in counts.items()}
    expected = {"bug": 0.35, "feature": 0.20, "billing": 0.25, "other": 0.20}
    for label, want in expected.items():
        assert abs(share[label] - want) <= 0.05, (label, share[label])


def test_variety(tickets: list[dict]) -> None:
    assert len({t["body"] for t in tickets}) >= 0.8 * len(tickets)
    assert {t["channel"] for t in tickets} == CHANNELS
    assert {t["customer"]["tier"] for t in tickets} == TIERS
    lengths = sorted(len(t["body"]) for t in tickets)
    assert lengths[0] < 60, "some one-liners"
    assert lengths[-1] > 500, "some long multi-paragraph bodies"
    assert sum("\n\n" in t["body"] for t in tickets) > 100
    assert any(not t["body"].isascii() for t in tickets)
    assert any("€" in t["body"] for t in tickets)
    assert any("Traceback (most recent call last)" in t["body"] for t in tickets)


def test_literal_braces_present(tickets: list[dict]) -> None:
    bodies = [t["body"] for t in tickets]
    assert sum("{" in b and "}" in b for b in bodies) >= 10
    for literal in ("{0.__class__}", "{{x}}", "{name}", "${HOME}"):
        assert any(literal in b for b in bodies), literal


def test_generator_has_many_templates_per_label() -> None:
    gen = _load_generator()
    assert set(gen.TEMPLATES) == LABELS
    for label, templates in gen.TEMPLATES.items():
        assert len(templates) >= 25, label
        assert len({body for _subjects, body in templates}) == len(templates), label


def test_regeneration_is_byte_identical(tmp_path: Path, raw: bytes) -> None:
    gen = _load_generator()
    out = tmp_path / "tickets.jsonl"
    assert gen.main(["--out", str(out)]) == 0
    assert out.read_bytes() == raw


def test_seed_and_count_options(tmp_path: Path, raw: bytes) -> None:
    gen = _load_generator()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    gen.main(["--out", str(a), "--count", "40", "--seed", "1"])
    gen.main(["--out", str(b), "--count", "40", "--seed", "2"])
    lines_a = a.read_text(encoding="utf-8").splitlines()
    assert len(lines_a) == 40
    assert a.read_bytes() != b.read_bytes()
    assert not raw.startswith(a.read_bytes())
