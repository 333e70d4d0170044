"""Tests of the job file (`batchrun.spec`): loading, validation messages that
name the field, relative paths, overrides, the fingerprint, and
`PromptTemplate`, which must treat ticket values as data."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from batchrun.errors import JobSpecError
from batchrun.job.spec import JobSpec, load_job
from batchrun.job.templates import MissingFieldError, PromptTemplate

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """\
name = "t"
input = "tickets.jsonl"
model = "openai/gpt-4o-mini"

[prompt]
user = "Classify: {subject}"
"""


def write_job(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def job_error(tmp_path: Path, text: str) -> str:
    path = write_job(tmp_path, text)
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    message = str(info.value)
    assert str(path) in message  # every load error names the file
    return message


def with_top(extra: str, *, prompt: str = 'user = "Classify: {subject}"', tail: str = "") -> str:
    """A minimal job with extra top-level keys, a prompt section and more sections."""
    return (
        'name = "t"\ninput = "tickets.jsonl"\nmodel = "openai/gpt-4o-mini"\n'
        f"{extra}\n\n[prompt]\n{prompt}\n{tail}"
    )


# -- loading -----------------------------------------------------------------------


def test_minimal_job_loads_with_defaults(tmp_path):
    job = load_job(write_job(tmp_path, MINIMAL))
    assert job.name == "t"
    assert job.model == "openai/gpt-4o-mini"
    assert job.id_field == "id"
    assert job.concurrency == 16
    assert job.timeout_s == 60.0
    assert job.retry.max_attempts == 5
    assert job.params == {}
    assert job.prices is None and job.simulator is None
    assert job.user_template.fields == ("subject",)
    assert job.system_template is None
    assert job.resolved_run_dir() == Path("runs") / "t"


def test_relative_paths_resolve_against_the_job_files_folder(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write_job(
        tmp_path,
        with_top('run_dir = "../runs/r"').replace('"tickets.jsonl"', '"../data/tickets.jsonl"'),
        name="jobs/job.toml",
    )
    job = load_job(path)
    assert job.input == tmp_path / "data" / "tickets.jsonl"
    assert job.run_dir == tmp_path / "runs" / "r"
    assert job.resolved_run_dir() == tmp_path / "runs" / "r"


def test_relative_job_path_gives_paths_that_work_from_the_same_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_job(tmp_path, MINIMAL, name="jobs/job.toml")
    job = load_job(Path("jobs/job.toml"))
    assert job.input.resolve() == (tmp_path / "jobs" / "tickets.jsonl").resolve()


def test_absolute_paths_are_kept(tmp_path):
    target = tmp_path / "abs" / "in.jsonl"
    job = load_job(write_job(tmp_path, MINIMAL.replace('"tickets.jsonl"', f'"{target}"')))
    assert job.input == target


def test_missing_job_file_names_the_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(JobSpecError, match="nope.toml"):
        load_job(path)


def test_bad_toml_syntax_names_the_file(tmp_path):
    message = job_error(tmp_path, 'name = "t"\ninput = \n')
    assert "not valid TOML" in message


def test_non_utf8_job_file(tmp_path):
    path = tmp_path / "job.toml"
    path.write_bytes(b'name = "\xff"\n')
    with pytest.raises(JobSpecError, match="UTF-8"):
        load_job(path)


# -- field errors name the field -----------------------------------------------------


def test_unknown_top_level_field(tmp_path):
    message = job_error(tmp_path, with_top("concurency = 4"))
    assert "`concurency`" in message
    assert "unknown field" in message


def test_unknown_field_in_a_section(tmp_path):
    message = job_error(tmp_path, with_top("", tail="[retry]\nmax_atempts = 3\n"))
    assert "`retry.max_atempts`" in message
    assert "unknown field" in message


def test_concurrency_zero(tmp_path):
    message = job_error(tmp_path, with_top("concurrency = 0"))
    assert "`concurrency`" in message


def test_max_attempts_zero(tmp_path):
    message = job_error(tmp_path, with_top("", tail="[retry]\nmax_attempts = 0\n"))
    assert "`retry.max_attempts`" in message


def test_negative_timeout(tmp_path):
    message = job_error(tmp_path, with_top("timeout_s = -1"))
    assert "`timeout_s`" in message


def test_missing_prompt_user(tmp_path):
    message = job_error(tmp_path, with_top("", prompt='system = "You help with {subject}"'))
    assert "`prompt.user`" in message


def test_missing_name_and_model(tmp_path):
    message = job_error(tmp_path, 'input = "x"\n[prompt]\nuser = "{x}"\n')
    assert "`name`" in message and "`model`" in message


@pytest.mark.parametrize(
    ("extra", "tail", "field"),
    [
        ("timeout_s = inf", "[retry]\nmax_elapsed_s = inf\n", "`timeout_s`"),
        ("", "[retry]\ninitial_backoff_s = inf\nmax_backoff_s = inf\n", "`retry.max_backoff_s`"),
        ("timeout_s = nan", "", "`timeout_s`"),
        ("", "[prices]\ninput_per_million = inf\noutput_per_million = 1\n", "`prices.input_per_million`"),
    ],
)
def test_infinite_and_nan_numbers_are_rejected(tmp_path, extra, tail, field):
    """TOML accepts `inf` and `nan`; an infinite timeout or backoff would hang a ticket."""
    assert field in job_error(tmp_path, with_top(extra, tail=tail))


def test_api_key_env_holding_a_key_is_rejected_without_echoing_it(tmp_path):
    key = "sk-abc123def456ghi789jkl"
    message = job_error(tmp_path, with_top(f'api_key_env = "{key}"'))
    assert "`api_key_env`" in message
    assert key not in message
    assert "NAME of an environment variable" in message


def test_api_key_env_name_is_accepted(tmp_path):
    job = load_job(write_job(tmp_path, with_top('api_key_env = "OPENAI_API_KEY"')))
    assert job.api_key_env == "OPENAI_API_KEY"


@pytest.mark.parametrize("param", ["stream", "api_key", "messages", "timeout", "num_retries", "api_base"])
def test_reserved_params_are_rejected(tmp_path, param):
    message = job_error(tmp_path, with_top("", tail=f'[params]\n{param} = "x"\n'))
    assert "`params`" in message
    assert param in message
    assert "batchrun sets them itself" in message


def test_ordinary_params_pass_through(tmp_path):
    job = load_job(write_job(tmp_path, with_top("", tail="[params]\ntemperature = 0\nmax_tokens = 5\n")))
    assert job.params == {"temperature": 0, "max_tokens": 5}


# -- cross-field checks --------------------------------------------------------------


def test_initial_backoff_above_max_backoff(tmp_path):
    message = job_error(tmp_path, with_top("", tail="[retry]\ninitial_backoff_s = 10\nmax_backoff_s = 5\n"))
    assert "initial_backoff_s" in message and "max_backoff_s" in message


def test_timeout_longer_than_retry_budget(tmp_path):
    message = job_error(tmp_path, with_top("timeout_s = 100", tail="[retry]\nmax_elapsed_s = 50\n"))
    assert "timeout_s" in message and "retry.max_elapsed_s" in message


def test_prompt_without_any_placeholder(tmp_path):
    message = job_error(tmp_path, with_top("", prompt='system = "Be brief."\nuser = "Classify this."'))
    assert "no {field} placeholder" in message


def test_placeholder_in_system_only_is_enough(tmp_path):
    job = load_job(write_job(tmp_path, with_top("", prompt='system = "About {subject}"\nuser = "Go."')))
    assert job.system_template is not None and job.system_template.fields == ("subject",)


@pytest.mark.parametrize(
    "template",
    ["{x:>10}", "{x!r}", "{x[0]}", "{0}", "{}", "{x", "x}", "a {x} b }", "{x.}"],
)
def test_template_errors_name_the_prompt_field(tmp_path, template):
    message = job_error(tmp_path, with_top("", prompt=f"user = '{template}'"))
    assert "`prompt.user`" in message


@pytest.mark.parametrize(
    ("template", "hint"),
    [("{x:>10}", "format specs"), ("{x!r}", "conversions"), ("{x[0]}", "indexes"), ("{x", "literal braces"),
     ("}", "literal braces")],
)
def test_template_error_messages_explain(template, hint):
    with pytest.raises(ValueError, match=hint):
        PromptTemplate(template)


def test_system_template_error_names_prompt_system(tmp_path):
    message = job_error(tmp_path, with_top("", prompt="system = '{a!s}'\nuser = '{x}'"))
    assert "`prompt.system`" in message


# -- overrides -----------------------------------------------------------------------


def test_with_overrides_applies_and_keeps(tmp_path):
    job = load_job(write_job(tmp_path, with_top("concurrency = 4")))
    changed = job.with_overrides(concurrency=8, model=None, input=None)
    assert changed.concurrency == 8
    assert changed.model == job.model
    assert changed.input == job.input
    assert job.concurrency == 4  # the original is untouched


def test_with_overrides_revalidates(tmp_path):
    job = load_job(write_job(tmp_path, MINIMAL))
    with pytest.raises(JobSpecError) as info:
        job.with_overrides(concurrency=0)
    assert "`concurrency`" in str(info.value)
    assert "command-line options" in str(info.value)


def test_with_overrides_revalidates_cross_checks(tmp_path):
    job = load_job(write_job(tmp_path, MINIMAL))
    with pytest.raises(JobSpecError, match="max_elapsed_s"):
        job.with_overrides(timeout_s=10_000)


# -- fingerprint ---------------------------------------------------------------------


def test_fingerprint_hash_follows_what_decides_the_answers(tmp_path):
    base = load_job(write_job(tmp_path, with_top("", tail="[params]\ntemperature = 0\n")))
    same = base.fingerprint_hash()
    assert len(same) == 64
    assert base.with_overrides(concurrency=99).fingerprint_hash() == same
    assert base.with_overrides(timeout_s=5).fingerprint_hash() == same
    assert base.with_overrides(model="openai/gpt-4o").fingerprint_hash() != same
    assert base.with_overrides(params={"temperature": 1}).fingerprint_hash() != same
    assert base.with_overrides(prompt={"user": "Other: {subject}"}).fingerprint_hash() != same
    assert base.with_overrides(prompt={"user": "Classify: {subject}", "system": "s"}).fingerprint_hash() != same
    assert base.with_overrides(id_field="ticket_id").fingerprint_hash() != same


def test_fingerprint_hash_is_stable_across_loads(tmp_path):
    a = load_job(write_job(tmp_path, MINIMAL, name="a/job.toml"))
    b = load_job(write_job(tmp_path, MINIMAL, name="b/job.toml"))
    assert a.input != b.input  # the input path is not part of the fingerprint
    assert a.fingerprint_hash() == b.fingerprint_hash()


# -- PromptTemplate ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["{0.__class__}", "{{x}}", "{name}", "${HOME}", "{", "}", "%s %(x)s"])
def test_ticket_values_are_inserted_literally(value):
    template = PromptTemplate("A: {text} :Z")
    assert template.render({"text": value, "name": "SHOULD-NOT-APPEAR"}) == f"A: {value} :Z"


def test_doubled_braces_in_the_template_are_literal():
    template = PromptTemplate('{{"label": "{x}"}} {{y}}')
    assert template.fields == ("x",)
    assert template.render({"x": "bug"}) == '{"label": "bug"} {y}'


def test_dotted_paths():
    template = PromptTemplate("{customer.tier}/{customer.address.city}")
    assert template.fields == ("customer.tier", "customer.address.city")
    ticket = {"customer": {"tier": "gold", "address": {"city": "Oslo"}}}
    assert template.render(ticket) == "gold/Oslo"


def test_repeated_fields_listed_once():
    template = PromptTemplate("{a} {b} {a}")
    assert template.fields == ("a", "b")
    assert template.render({"a": 1, "b": 2}) == "1 2 1"


def test_non_string_values_render_sensibly():
    template = PromptTemplate("[{n}] [{none}] [{obj}] [{items}] [{f}] [{b}]")
    rendered = template.render({"n": 42, "none": None, "obj": {"k": "v", "n": 1}, "items": [1, "a"], "f": 1.5,
                                "b": True})
    assert rendered == '[42] [] [{"k":"v","n":1}] [[1,"a"]] [1.5] [True]'


def test_unicode_values_survive():
    assert PromptTemplate("{t}").render({"t": "naïve — 日本語 🚀"}) == "naïve — 日本語 🚀"


@pytest.mark.parametrize(
    ("template", "values", "missing"),
    [
        ("{subject}", {}, "subject"),
        ("{customer.tier}", {"customer": {}}, "customer.tier"),
        ("{customer.tier}", {"customer": "gold"}, "customer.tier"),
        ("{customer.tier}", {}, "customer.tier"),
    ],
)
def test_missing_field_raises_naming_it(template, values, missing):
    with pytest.raises(MissingFieldError) as info:
        PromptTemplate(template).render(values)
    assert info.value.args[0] == missing
    assert isinstance(info.value, KeyError)


# -- shipped jobs --------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((ROOT / "jobs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_jobs_load(path):
    job = load_job(path)
    assert isinstance(job, JobSpec)
    assert job.input.is_absolute()  # resolved against jobs/, not the cwd
    assert job.user_template.fields


def test_there_are_shipped_jobs():
    assert list((ROOT / "jobs").glob("*.toml"))


def test_classify_job_uses_the_sample_data():
    job = load_job(ROOT / "jobs" / "classify_tickets.toml")
    assert job.input == ROOT / "sample_data" / "tickets.jsonl"
    assert set(job.user_template.fields) == {"subject", "customer.tier", "body"}
    assert job.simulator is not None


def test_worker_count_auto_uses_every_core_only_for_big_concurrent_runs():
    from batchrun.job.spec import JobSpec

    base = {"name": "w", "input": "t.jsonl", "model": "m", "prompt": {"user": "{b}"}, "concurrency": 64}
    job = JobSpec.model_validate(base)
    assert job.worker_count(10_000, cpus=4) == 4
    assert job.worker_count(4_999, cpus=4) == 1  # start-up would not pay off
    assert job.worker_count(10_000, cpus=1) == 1
    assert JobSpec.model_validate({**base, "concurrency": 8}).worker_count(10_000, cpus=4) == 1
    assert JobSpec.model_validate({**base, "workers": 3}).worker_count(10, cpus=1) == 3
    with pytest.raises(Exception, match="between 1 and 64"):
        JobSpec.model_validate({**base, "workers": 0})
