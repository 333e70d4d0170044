"""Checks made when a job or its input loads, before anything is sent:
ids that are blank or too long, an api_base with a query string, a model string
litellm cannot route."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from batchrun.errors import JobSpecError, TicketError
from batchrun.job.spec import load_job
from batchrun.job.tickets import read_tickets, scan_input
from conftest import invoke_cli

MINIMAL = """\
name = "t"
input = "tickets.jsonl"
model = "openai/gpt-4o-mini"
{top}

[prompt]
user = "Classify: {{subject}}"
{extra}
"""


def write_job(tmp_path: Path, top: str = "", extra: str = "") -> Path:
    path = tmp_path / "job.toml"
    path.write_text(MINIMAL.format(top=textwrap.dedent(top), extra=textwrap.dedent(extra)), encoding="utf-8")
    return path


# -- 7c: ids -------------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", [" ", "\t\n", "\u00a0 ", "x" * 513])
def test_blank_or_overlong_ids_are_bad_lines(tmp_path, bad_id):
    path = tmp_path / "in.jsonl"
    path.write_bytes(orjson.dumps({"id": "a", "subject": "s"}) + b"\n"
                     + orjson.dumps({"id": bad_id, "subject": "s"}) + b"\n")
    with pytest.raises(TicketError) as info:
        list(read_tickets(path, "id"))
    assert str(info.value).startswith(f"{path}:2: ")
    scan = scan_input(path, "id", [])
    assert [p.line for p in scan.problems] == [2]


def test_an_id_of_512_characters_is_fine(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(orjson.dumps({"id": "x" * 512}) + b"\n")
    assert [t.id for t in read_tickets(path, "id")] == ["x" * 512]


# -- 7b: api_base with a query string --------------------------------------------------


@pytest.mark.parametrize("where", ["top", "models"])
def test_api_base_with_a_query_string_is_refused_without_echoing_the_key(tmp_path, where):
    url = "https://proxy.example.com/v1?key=sk-secret-12345"
    if where == "top":
        path = write_job(tmp_path, top=f'api_base = "{url}"')
    else:
        path = write_job(tmp_path, extra=f'[[models]]\nname = "a"\nmodel = "openai/gpt-4o-mini"\napi_base = "{url}"\n')
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    message = str(info.value)
    assert "api_base" in message and "query string" in message
    assert "api_key_env" in message  # says how to pass such a key
    assert "sk-secret-12345" not in message


def test_api_base_override_with_a_query_string_is_refused(tmp_path):
    job = load_job(write_job(tmp_path))
    with pytest.raises(JobSpecError) as info:
        job.with_overrides(api_base="http://127.0.0.1:4000/v1?api-key=abcdef123")
    assert "query string" in str(info.value) and "abcdef123" not in str(info.value)


# -- 6a: a model string litellm cannot route -----------------------------------------


@pytest.mark.parametrize(("model", "suggestion"), [("gpt4o-mini", "openai/gpt-4o-mini"),
                                                   ("opnai/gpt-4o-mini", "openai/gpt-4o-mini")])
def test_run_refuses_a_model_litellm_cannot_route_before_sending(make_job, tmp_path, sim, model, suggestion):
    job = make_job(30)
    sim.reset()
    result = invoke_cli("run", str(job), "--model", model, "--api-base", sim.base_url, "--no-progress")
    sent = sim.stats()["total_requests"]
    assert result.returncode == 2, result.stderr
    assert f"model = {model!r}" in result.stderr and f"Did you mean {suggestion}?" in result.stderr
    assert sent == 0 and not (tmp_path / "run" / "errors.jsonl").exists()
    assert result.stderr.count("\n") <= 3  # one clear error, not a line per ticket


def test_every_model_of_a_routed_job_is_checked_at_load(make_job, tmp_path):
    from batchrun.errors import JobSpecError
    from batchrun.providers.litellm_setup import check_models

    job = load_job(make_job(5, extra='''
        [[models]]
        name = "cheap"
        model = "openai/gpt-4o-mini"
        fallbacks = ["strong"]

        [[models]]
        name = "strong"
        model = "antropic/claude-3-5-sonnet-20240620"

        [[routes]]
        model = "cheap"
        default = true
        '''))
    with pytest.raises(JobSpecError) as info:
        check_models(job)
    assert "models[1].model (strong)" in str(info.value) and "Did you mean anthropic/" in str(info.value)


def test_plan_refuses_a_model_litellm_cannot_route(make_job, tmp_path):
    job = make_job(5)
    result = invoke_cli("plan", str(job), "--model", "gpt4o-mini")
    assert result.returncode == 2
    assert "model = 'gpt4o-mini'" in result.stderr + result.stdout


def test_help_does_not_import_litellm(cli_env):
    code = "import sys; from batchrun.cli import main; sys.argv = ['batchrun', '--help']\n" \
           "try:\n    main()\nexcept SystemExit:\n    pass\nassert 'litellm' not in sys.modules, 'litellm imported'"
    result = subprocess.run([sys.executable, "-c", code], env=cli_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
