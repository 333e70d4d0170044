"""Issue 26, points 1 and 2: everything checkable is checked before litellm loads, in one pass,
each problem once; the model is checked in every run, simulated or live.

The CLI runs in a subprocess whose exit hook reports whether litellm was imported, so "before
litellm loads" is a fact the test reads, not a timing (timings belong in benchmarks)."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, write_tickets

# `batchrun ARGS`, then on stderr whether litellm was imported by the time the process exits
PROBE = textwrap.dedent("""
    import atexit, sys
    atexit.register(lambda: print("LITELLM_IMPORTED=" + str("litellm" in sys.modules), file=sys.stderr))
    from batchrun.cli import main
    sys.argv = ["batchrun"] + sys.argv[1:]
    main()
""")


def probe(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True,
                          timeout=180, cwd=cwd)


def litellm_imported(result: subprocess.CompletedProcess) -> bool:
    return "LITELLM_IMPORTED=True" in result.stderr


JOB = """\
name = "pre"
input = "{input}"
run_dir = "run"
model = "{model}"
{top}

[prompt]
user = "Subject: {{{field}}}\\n\\n{{body}}"

[params]
{param} = 0
max_tokens = 5
{extra}
"""


def job_file(tmp_path: Path, *, input: str = "tickets.jsonl", model: str = "openai/gpt-4o-mini", field: str = "subject",
             param: str = "temperature", top: str = "", simulator: bool = True) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(JOB.format(input=input, model=model, field=field, param=param, top=top,
                               extra="[simulator]\nlatency_ms = 1\njitter = 0" if simulator else ""))
    return path


def test_a_bad_job_is_answered_with_every_problem_once_before_litellm_loads(tmp_path, cli_env):
    (tmp_path / "t.csv").write_text("id,subject,body\n" + "".join(f"{i},s{i},b{i}\n" for i in range(10)))
    job = job_file(tmp_path, input="t.csv", field="subjct", param="temperatur",
                   top='api_key_env = "BATCHRUN_NO_SUCH_KEY"', simulator=False)
    env = {k: v for k, v in cli_env.items() if k != "BATCHRUN_NO_SUCH_KEY"}
    result = probe(["run", str(job)], env)
    assert result.returncode == 2, result.stderr
    err = result.stderr
    assert "3 problems; nothing was sent" in err
    assert "field `params.temperatur`: no such parameter: did you mean `temperature`?" in err
    # the input's missing column: once (not once per row), with the columns the file has and a guess
    assert err.count("subjct") == 1 and "did you mean `{subject}`?" in err and "id, subject, body" in err
    assert "BATCHRUN_NO_SUCH_KEY is not set" in err
    assert err.count("nothing was sent") == 1
    assert not litellm_imported(result) and "loading litellm" not in err


def test_an_unknown_job_field_is_reported_with_the_params_typos_in_the_same_answer(tmp_path, cli_env):
    """A job the schema refuses (an unknown top-level key) still gets its [params] typos (the job's and
    a [[models]] entry's) in the same answer: one run finds every job-field problem."""
    write_tickets(tmp_path / "tickets.jsonl", 3)
    job = job_file(tmp_path, param="temprature", top="concurency = 4")
    job.write_text(job.read_text() + '\n[[models]]\nname = "b"\nmodel = "openai/gpt-4o"\n[models.params]\nmax_token = 3\n')
    result = probe(["run", str(job)], cli_env)
    assert result.returncode == 2, result.stderr
    err = result.stderr
    assert "field `concurency`: unknown field: did you mean `concurrency`?" in err
    assert err.count("field `params.temprature`: no such parameter: did you mean `temperature`?") == 1
    assert err.count("field `models[b].params.max_token`: no such parameter: did you mean `max_tokens`?") == 1
    assert not litellm_imported(result)


def test_a_prompt_field_no_jsonl_ticket_has_is_one_problem_with_a_guess(tmp_path, cli_env):
    write_tickets(tmp_path / "tickets.jsonl", 10)
    job = job_file(tmp_path, field="customer.tir")
    result = probe(["run", str(job)], cli_env)
    assert result.returncode == 2
    assert result.stderr.count("customer.tir") == 1, result.stderr
    assert "none of its 10 ticket(s) has" in result.stderr and "did you mean `{customer.tier}`?" in result.stderr
    assert "fields of customer: name, tier" in result.stderr
    assert not litellm_imported(result)


def test_a_field_only_some_tickets_lack_is_still_named_per_line(tmp_path):
    from batchrun.job.templates import PromptTemplate
    from batchrun.job.tickets import scan_input

    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a", "x": 1}\n{"id": "b"}\n{"id": "c", "x": 2}\n')
    scan = scan_input(path, "id", [PromptTemplate("{x}")])
    assert scan.file_problems == [] and [p.line for p in scan.problems] == [2]


def test_a_missing_key_is_answered_before_litellm_loads(tmp_path, cli_env):
    write_tickets(tmp_path / "tickets.jsonl", 5)
    job = job_file(tmp_path, top='api_key_env = "BATCHRUN_NO_SUCH_KEY"', simulator=False)
    result = probe(["run", str(job)], cli_env)
    assert result.returncode == 2
    assert "environment variable BATCHRUN_NO_SUCH_KEY is not set" in result.stderr
    assert not litellm_imported(result)


def test_a_held_lock_is_answered_before_litellm_loads(tmp_path, cli_env):
    write_tickets(tmp_path / "tickets.jsonl", 5)
    job = job_file(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / "run.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("4242\n")
        lock.flush()
        result = probe(["run", str(job)], cli_env)
    assert result.returncode == 1, result.stderr
    assert "in use by another batchrun process (pid 4242)" in result.stderr
    assert not litellm_imported(result)


def test_params_typos_checked_without_litellm_know_every_openai_parameter():
    """The static list behind the cheap check holds every chat parameter the installed litellm
    lists (OPENAI_CHAT_COMPLETION_PARAMS), except those batchrun sets itself."""
    from batchrun.job.spec import RESERVED_PARAMS
    from batchrun.providers.litellm_setup import CHAT_PARAM_NAMES, import_litellm, misspelled_params

    litellm = import_litellm()
    ignored = RESERVED_PARAMS | {"request_timeout", "api_version", "deployment_id", "organization",
                                 "default_headers"}  # endpoint settings, not request parameters
    assert set(litellm.OPENAI_CHAT_COMPLETION_PARAMS) - ignored <= CHAT_PARAM_NAMES
    assert misspelled_params({"temperatur": 0, "max_token": 5, "top_k": 3, "my_vendor_flag": 1}) == {
        "temperatur": "temperature", "max_token": "max_tokens"}


# -- point 2: the model, in every run --------------------------------------------------------


@pytest.mark.parametrize("model, message", [
    ("opnai/gpt-4o-mini", "litellm cannot tell which provider serves it"),
    ("openai/gpt-4o-mnii", "litellm's price list does not know this model"),
])
def test_a_model_typo_is_refused_in_a_simulated_run_too(tmp_path, cli_env, model, message):
    write_tickets(tmp_path / "tickets.jsonl", 3)
    result = probe(["run", str(job_file(tmp_path, model=model))], cli_env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Did you mean openai/gpt-4o-mini?" in result.stderr
    assert not (tmp_path / "run" / "results.jsonl").exists()


@pytest.mark.slow  # three real runs
def test_an_unpriced_model_runs_with_allow_unpriced_or_prices_and_the_header_shows_it_as_given(tmp_path, cli_env):
    write_tickets(tmp_path / "tickets.jsonl", 3)
    job = job_file(tmp_path, model="anthropic/acme-internal-v3", top="allow_unpriced = true")
    result = probe(["run", str(job), "--no-progress"], cli_env)
    assert result.returncode == 0, result.stderr
    assert "model anthropic/acme-internal-v3 via simulator" in result.stderr  # not openai/acme-...
    assert "its cost_usd stays null (allow_unpriced)" in result.stderr
    priced = job_file(tmp_path, model="anthropic/acme-internal-v3",
                      top='run_dir = "run2"\n[prices]\ninput_per_million = 1.0\noutput_per_million = 2.0')
    priced.write_text(priced.read_text().replace('run_dir = "run"\n', ""))
    assert probe(["run", str(priced), "--no-progress"], cli_env).returncode == 0


def test_a_self_hosted_model_through_api_base_runs_with_a_note():
    from batchrun.providers.litellm_setup import check_model

    note = check_model("openai/our-llama", "http://127.0.0.1:8000/v1")
    assert note is not None and "not in litellm's price list" in note and "cost_usd null" in note


def test_preflight_runs_without_importing_litellm_in_process(tmp_path):
    """The launcher's preflight, in a fresh interpreter: prepared runs, and litellm not loaded."""
    write_tickets(tmp_path / "tickets.jsonl", 4)
    job = job_file(tmp_path)
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from batchrun.launcher import LaunchOptions, preflight, resolve_job, runs_of
        spec, path = resolve_job({str(job)!r}, LaunchOptions())
        targets, preps = preflight(spec, runs_of(spec), path, LaunchOptions(), True, [])
        print(sorted(preps), preps[spec.name].to_do, "litellm" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout.split() == ["['pre']", "4", "False"], out.stderr
