"""`batchrun init NAME`: a commented job file that runs at once against the simulator.

    write_starter(name, directory, model=..., input_path=None) -> StarterFiles

writes `NAME.toml` (and, without an input, a three-line sample `NAME.jsonl`)
into `directory`. The job classifies tickets into four labels; its prompt
names the fields of the input's first line (with `--input`) or of the
sample. A [simulator] section makes `batchrun run NAME.toml` work with no key;
the comments say how to go live. Existing files are never overwritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import orjson

from batchrun.errors import ConfigurationError, TicketError

SAMPLE_TICKETS = [
    {"id": "1", "subject": "App crashes on login", "body": "Since this morning the app closes as soon as I sign in."},
    {"id": "2", "subject": "Dark mode please", "body": "Could you add a dark theme to the dashboard?"},
    {"id": "3", "subject": "Charged twice", "body": "My card was charged twice for the March invoice."},
]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
_PROVIDER_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY",
                  "mistral": "MISTRAL_API_KEY", "groq": "GROQ_API_KEY", "together_ai": "TOGETHERAI_API_KEY"}

JOB_TEXT = '''\
# {name}: classify each ticket as one of four labels.
#
#   batchrun run {job_file}            # now: against the embedded simulator, no key needed
#   batchrun plan {job_file}           # tokens, cost and duration before a live run
#   {key_env}=... batchrun run {job_file} --live --run-dir runs/{name}-live   # the real model
#
# Re-running the same command resumes: tickets already in the run directory's
# results.jsonl are never sent again. Relative paths are taken from this file's folder.
# Every field: docs/job-file.md in the batchrun repository.

name = "{name}"
input = "{input}"             # JSONL, one ticket per line, each with an "{id_field}"
run_dir = "runs/{name}"       # results.jsonl, errors.jsonl, manifest.json
model = "{model}"             # any litellm model string
api_key_env = "{key_env}"     # the NAME of the variable holding the key (never the key)
id_field = "{id_field}"
concurrency = 8               # requests in flight at most ("auto" adapts)
timeout_s = 30                # per attempt
# max_cost_usd = 5.0          # stop before the run directory's spend passes this

# The answer must be one of these (case and punctuation ignored); anything else is retried.
labels = ["bug", "feature", "billing", "other"]

[prompt]
system = """Classify the customer message. Answer with exactly one word:
bug, feature, billing or other."""
# {{field}} inserts a ticket's field (a nested one: {{customer.tier}}); ticket text is data, never code.
user = """{user}"""

[params]                      # sent with every request; unknown keys are refused ("did you mean ...?")
temperature = 0
max_tokens = 5

[retry]
max_attempts = 5              # requests per ticket, the first included

# With this section `batchrun run` talks to the embedded simulator unless --live
# or --api-base is given. Delete it once you only run live.
[simulator]
latency_ms = 150
seed = 0
'''


@dataclass
class StarterFiles:
    job: Path
    sample_input: Path | None  # written when no input was given


def _fields_of(input_path: Path, id_field: str) -> list[str]:
    """Up to three text fields of the input's first line, for the prompt."""
    try:
        with input_path.open("rb") as handle:
            first = handle.readline()
    except OSError as exc:
        raise ConfigurationError(f"{input_path}: cannot read the input: {exc.strerror}") from None
    try:
        record = orjson.loads(first)
    except orjson.JSONDecodeError:
        raise TicketError(f"{input_path}:1: not a JSON object (the input is JSONL: one object per line)") from None
    if not isinstance(record, dict):
        raise TicketError(f"{input_path}:1: not a JSON object (the input is JSONL: one object per line)")
    fields = [key for key, value in record.items() if key != id_field and isinstance(value, str)
              and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", key)]
    if not fields:
        raise TicketError(f"{input_path}:1: no text field besides {id_field!r} to put in the prompt")
    return fields[:3]


def _align_comment(line: str, column: int = 34) -> str:
    """`key = value   # note` with the notes of consecutive settings in one column."""
    match = re.fullmatch(r"([A-Za-z_\[][^#]*?)\s{2,}(# .*)", line)
    if not match or '"""' in line:
        return line
    return f"{match.group(1):<{column - 1}} {match.group(2)}"


def _toml_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def write_starter(name: str, directory: Path, *, model: str = "openai/gpt-4o-mini",
                  input_path: Path | None = None, id_field: str = "id") -> StarterFiles:
    """Write NAME.toml (and NAME.jsonl without an input) into `directory`; see the module docstring."""
    if not _NAME.fullmatch(name):
        raise ConfigurationError(f"{name!r}: a job name is letters, digits, '_', '-' and '.' (starting with "
                                 "a letter or digit)")
    directory.mkdir(parents=True, exist_ok=True)
    job_path = directory / f"{name}.toml"
    sample = None if input_path is not None else directory / f"{name}.jsonl"
    for path in (job_path, sample):
        if path is not None and path.exists():
            raise ConfigurationError(f"{path} exists: not overwritten (choose another NAME or delete it)")
    if input_path is not None:
        fields = _fields_of(input_path, id_field)
        try:
            input_text = str(input_path.resolve().relative_to(directory.resolve()))
        except ValueError:
            input_text = str(input_path.resolve())
    else:
        assert sample is not None  # no input given: a sample is written
        fields = ["subject", "body"]
        input_text = sample.name
    user = "\n\n".join(f"{field.capitalize()}: {{{field}}}" for field in fields)
    provider = model.split("/", 1)[0] if "/" in model else "openai"
    text = JOB_TEXT.format(name=name, job_file=job_path.name, input=_toml_string(input_text),
                           model=_toml_string(model), key_env=_PROVIDER_KEYS.get(provider, f"{provider.upper()}_API_KEY"),
                           id_field=id_field, user=user)
    text = "\n".join(_align_comment(line) for line in text.splitlines()) + "\n"
    if sample is not None:
        sample.write_bytes(b"".join(orjson.dumps(ticket) + b"\n" for ticket in SAMPLE_TICKETS))
    job_path.write_text(text, encoding="utf-8")
    return StarterFiles(job=job_path, sample_input=sample)


def describe(files: StarterFiles) -> str:
    """What `batchrun init` prints: the files and the next command."""
    lines = [f"wrote {files.job}"]
    if files.sample_input is not None:
        lines.append(f"wrote {files.sample_input} (three sample tickets)")
    lines.append(f"next: batchrun run {files.job}    (the embedded simulator: no key, nothing leaves the machine)")
    return "\n".join(lines)
