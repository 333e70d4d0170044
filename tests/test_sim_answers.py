"""Tests for the simulator's deterministic answers (batchrun.sim.answers)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from batchrun.sim.answers import classify_ticket_text, compose_answer, detect_labels

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "sample_data" / "tickets.jsonl"
LABELS = ["bug", "feature", "billing", "other"]

SYSTEM = (
    "You are a support triage assistant. Classify the customer ticket into exactly one of "
    "these labels: bug, feature, billing, other. Reply with the label only."
)
CRASH = (
    "Subject: App crashes on startup\n\n"
    "Since the latest update the iOS app crashes immediately after the splash screen. "
    "I reinstalled it, still crashes every time. Please fix this."
)
BILLING = "Subject: Charged twice\n\nI was charged twice for March, two charges of $49.00 on my card. Please refund one."
FEATURE = "Subject: Dark mode?\n\nWould be great to have a dark mode. Is it on the roadmap?"


def _chat(user, system=SYSTEM):
    msgs = []
    if system is not None:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": user})
    return msgs


@pytest.fixture(scope="module")
def tickets() -> list[dict]:
    with open(DATA, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _ticket_text(t: dict) -> str:
    return f"Subject: {t['subject']}\n\n{t['body']}"


# -- classification detection ---------------------------------------------------


def test_detect_labels_from_system_message_in_order_of_appearance() -> None:
    msgs = _chat("My invoice is wrong", system="Pick one of: other, billing, bug. Answer with one word.")
    assert detect_labels(msgs) == ["other", "billing", "bug"]
    assert compose_answer(msgs, 0) in {"other", "billing", "bug"}


def test_detect_labels_case_insensitive_whole_words_only() -> None:
    assert detect_labels(_chat("x", system="Labels: BUG or Feature.")) == ["bug", "feature"]
    # "bugs", "featured", "otherwise" are not the label words
    assert detect_labels(_chat("hello", system="No bugs here, otherwise featured.")) is None


def test_single_label_in_system_falls_back_to_whole_prompt() -> None:
    msgs = _chat("Answer with bug, feature, billing or other.\n\nTicket: the export crashes", system="Only mention bug.")
    assert detect_labels(msgs) == ["bug", "feature", "billing", "other"]
    assert compose_answer(msgs, 0) == "bug"


def test_no_labels_is_not_a_classification() -> None:
    msgs = _chat("Write a short note about our quarterly planning meeting.", system="You are helpful.")
    assert detect_labels(msgs) is None
    answer = compose_answer(msgs, 0)
    assert answer not in LABELS
    assert answer.startswith("Summary:")


def test_answer_is_exactly_one_lowercase_label() -> None:
    for text in (CRASH, BILLING, FEATURE, "Subject: hi\n\nWhere is your office located?"):
        for seed in range(5):
            answer = compose_answer(_chat(text), seed)
            assert re.fullmatch(r"[a-z]+", answer), answer
            assert answer in LABELS


def test_answer_only_uses_the_labels_offered() -> None:
    msgs = _chat(FEATURE, system="Classify as bug or billing.")
    for seed in range(20):
        assert compose_answer(msgs, seed) in {"bug", "billing"}


def test_obvious_tickets_classified() -> None:
    assert compose_answer(_chat(CRASH), 0) == "bug"
    assert compose_answer(_chat(BILLING), 0) == "billing"
    assert compose_answer(_chat(FEATURE), 0) == "feature"
    assert compose_answer(_chat("Subject: GDPR\n\nPlease delete my account and all personal data."), 0) == "other"


def test_label_list_in_user_message_does_not_vote() -> None:
    user = "Labels: bug, feature, billing, other\nAnswer with one label.\n\nTicket: I was charged twice, please refund."
    assert compose_answer(_chat(user, system=None), 0) == "billing"


def test_few_shot_classifies_the_current_turn_only() -> None:
    msgs = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": BILLING},
        {"role": "assistant", "content": "billing"},
        {"role": "user", "content": CRASH},
    ]
    assert compose_answer(msgs, 0) == "bug"


# -- content shapes ---------------------------------------------------------------


def test_content_shapes_give_same_answer() -> None:
    as_str = _chat(CRASH)
    as_parts = [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
        {"role": "user", "content": [
            {"type": "text", "text": CRASH[:40]},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": CRASH[40:]},
        ]},
    ]
    with_none = [
        {"role": "system", "content": SYSTEM},
        {"role": "assistant", "content": None},
        {"role": "user", "content": CRASH},
    ]
    assert compose_answer(as_str, 0) == "bug"
    assert compose_answer(as_parts, 0) == "bug"
    assert compose_answer(with_none, 0) == "bug"
    # None content everywhere: still a well-formed prose answer
    prose = compose_answer([{"role": "user", "content": None}], 3)
    assert prose.startswith("Summary:") and 40 <= len(prose.split()) <= 120


def test_list_content_prose_matches_string_content() -> None:
    text = "Summarise the database migration plan: migration of the orders database to the new cluster."
    a = compose_answer([{"role": "user", "content": text}], 5)
    b = compose_answer([{"role": "user", "content": [{"type": "text", "text": text}]}], 5)
    assert a == b
    assert "migration" in a and "database" in a


# -- determinism -----------------------------------------------------------------


def test_deterministic_for_same_input_and_seed(tickets: list[dict]) -> None:
    for t in tickets[:200]:
        msgs = _chat(_ticket_text(t))
        assert compose_answer(msgs, 7) == compose_answer(msgs, 7)
    prose_msgs = _chat("Draft a friendly reply about the delayed shipment of the spare parts.", system=None)
    assert compose_answer(prose_msgs, 1) == compose_answer(prose_msgs, 1)


def test_stable_across_interpreter_hash_seeds() -> None:
    code = (
        "import json,sys\n"
        "from batchrun.sim.answers import compose_answer, classify_ticket_text\n"
        "rows=[json.loads(l) for l in open(sys.argv[1], encoding='utf-8')][:300]\n"
        "out=[classify_ticket_text(r['subject']+' '+r['body'], ['bug','feature','billing','other'], 3) for r in rows]\n"
        "out.append(compose_answer([{'role':'user','content':rows[0]['body']}], 3))\n"
        "print(json.dumps(out))\n"
    )
    results = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(ROOT))
        proc = subprocess.run([sys.executable, "-c", code, str(DATA)], env=env, capture_output=True, text=True, check=True)
        results.append(proc.stdout)
    assert results[0] == results[1]


def test_seed_changes_some_answers(tickets: list[dict]) -> None:
    texts = [_ticket_text(t) for t in tickets]
    a = [classify_ticket_text(x, LABELS, 0) for x in texts]
    b = [classify_ticket_text(x, LABELS, 1) for x in texts]
    assert a != b, "the noise must depend on the seed"
    same = sum(x == y for x, y in zip(a, b)) / len(a)
    assert same > 0.85, "but only for a small fraction"


# -- non-classification prose ------------------------------------------------------


def test_prose_is_plausible_and_bounded() -> None:
    text = (
        "Please summarize these notes. The team reviewed the onboarding checklist, agreed to shorten the "
        "onboarding survey and asked marketing to update the onboarding emails before the spring launch."
    )
    for seed in range(10):
        answer = compose_answer([{"role": "user", "content": text}], seed)
        assert answer.startswith("Summary:")
        assert 40 <= len(answer.split()) <= 120
        assert "onboarding" in answer
        assert answer.endswith(".")
        assert answer not in LABELS


def test_prose_wording_depends_on_seed() -> None:
    msgs = [{"role": "user", "content": "Explain the new vacation policy for contractors and full-time staff."}]
    answers = {compose_answer(msgs, seed) for seed in range(10)}
    assert len(answers) >= 2


def test_braces_in_prompt_are_not_interpreted() -> None:
    text = "Summarize: template {0.__class__} and {{x}} and {name} and ${HOME} rendering"
    answer = compose_answer([{"role": "user", "content": text}], 0)
    assert "<class" not in answer
    assert 40 <= len(answer.split()) <= 120
    assert compose_answer(_chat(text), 0) in LABELS


def test_empty_messages_do_not_crash() -> None:
    answer = compose_answer([], 0)
    assert answer.startswith("Summary:") and 40 <= len(answer.split()) <= 120


# -- the classifier ----------------------------------------------------------------


def test_classify_rejects_empty_labels_and_handles_one() -> None:
    with pytest.raises(ValueError):
        classify_ticket_text(CRASH, [], 0)
    assert classify_ticket_text(CRASH, ["billing"], 0) == "billing"


def test_classify_no_evidence_means_other() -> None:
    answers = [classify_ticket_text(f"Subject: hello {i}\n\nhello there number {i}", LABELS, 0) for i in range(50)]
    assert answers.count("other") >= 40


def test_crash_ticket_is_bug() -> None:
    assert classify_ticket_text(CRASH, LABELS, 0) == "bug"
    votes = [classify_ticket_text(CRASH, LABELS, seed) for seed in range(100)]
    assert votes.count("bug") >= 85


def test_crash_tickets_in_sample_mostly_bug(tickets: list[dict]) -> None:
    crash = [t for t in tickets if "crash" in t["subject"].lower() and t["label"] == "bug"]
    assert len(crash) >= 10
    answers = [classify_ticket_text(_ticket_text(t), LABELS, 0) for t in crash]
    assert answers.count("bug") / len(answers) >= 0.8


def test_accuracy_on_sample_data_is_realistic(tickets: list[dict]) -> None:
    agree = sum(classify_ticket_text(_ticket_text(t), LABELS, 0) == t["label"] for t in tickets)
    accuracy = agree / len(tickets)
    assert 0.80 <= accuracy <= 0.95, accuracy


def test_every_label_is_predicted(tickets: list[dict]) -> None:
    predicted = {classify_ticket_text(_ticket_text(t), LABELS, 0) for t in tickets}
    assert predicted == set(LABELS)


def test_fast_scanner_matches_plain_alternation(tickets: list[dict]) -> None:
    """The first-character dispatch must score exactly like one big regex."""
    import collections

    from batchrun.sim import answers

    parts = "|".join(f"(?P<r{i}>{p})" for i, (_label, _w, p) in enumerate(answers._RULES))
    big = re.compile(r"(?<!\w)(?:" + parts + r")(?!\w)")

    def reference(text: str) -> dict[str, float]:
        scores = {label: 0.0 for label in answers.KNOWN_LABELS}
        hits: collections.Counter[str] = collections.Counter()
        for m in big.finditer(text.lower()):
            hits[m.lastgroup] += 1
            if hits[m.lastgroup] <= answers._MAX_HITS_PER_RULE:
                label, weight = answers._GROUP_INFO[m.lastgroup]
                scores[label] += weight
        return scores

    texts = [_ticket_text(t) for t in tickets] + [CRASH, BILLING, FEATURE, "€49 and 49 € and USD 5, $3"]
    assert any(sum(reference(t).values()) > 0 for t in texts)
    for text in texts:
        assert answers._scores(text) == reference(text), text[:80]
