"""[params] checked against the parameter names litellm knows, with "did you mean":

    check_param_names(job, path)  typos against every parameter name litellm takes for any provider
                                  (no litellm import: its list is read from the installed package)
    raw_param_typos(path)         the same typos read from a job file the schema refused for another
                                  reason, so that one answer names them all
    check_params(job)             keys against what litellm lists for the model (imports litellm)

A key sent on purpose goes in the job's `unchecked_params`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Mapping, Sequence

from batchrun.errors import JobSpecError
from batchrun.job.spec import JobSpec

__all__ = ["PARAMS_ON_PURPOSE", "check_param_names", "check_params", "raw_param_typos"]


PARAMS_ON_PURPOSE = "\n  (a key you send on purpose: list it in `unchecked_params` at the top of the job file)"


def _param_typo_lines(entries: Sequence[tuple[str, Mapping[str, object]]], unchecked: Collection[str]) -> list[str]:
    """`  field `params.temprature`: no such parameter: did you mean `temperature`?` for each key of
    each (where, params) entry that is close to a parameter name litellm takes (misspelled_params)."""
    from batchrun.providers.litellm_setup import misspelled_params

    lines = []
    for where, params in entries:
        typos = misspelled_params({k: v for k, v in params.items() if k not in unchecked})
        lines += [f"  field `{where}.{key}`: no such parameter: did you mean `{guess}`?" for key, guess in typos.items()]
    return lines


def raw_param_typos(path: Path) -> list[str]:
    """The [params] typos of a job file the schema refused for another reason, read from its TOML as
    it is (the job's [params] and each [[models]] entry's), so that one answer names them all."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    unchecked = data.get("unchecked_params")
    unchecked = [str(k) for k in unchecked] if isinstance(unchecked, list) else []
    entries: list[tuple[str, Mapping[str, object]]] = []
    if isinstance(data.get("params"), dict):
        entries.append(("params", data["params"]))
    models = data.get("models")
    for entry in models if isinstance(models, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("params"), dict):
            entries.append((f"models[{entry.get('name', '?')}].params", entry["params"]))
    return _param_typo_lines(entries, unchecked)


def check_param_names(job: JobSpec, job_path: Path | None = None) -> None:
    """Raise JobSpecError for a [params] key (the job's, or a [[models]] entry's) that is no parameter
    name litellm takes for any provider but close to one ("did you mean temperature?"): a typo is
    found with the job's other problems, before litellm loads (providers.misspelled_params); a job
    the schema refuses gets its typos in the same answer (the launcher)."""
    entries = [("params", job.params)] + [(f"models[{e.name}].params", e.params) for e in job.models]
    problems = _param_typo_lines(entries, job.unchecked_params)
    if problems:
        raise JobSpecError(f"{job_path or 'job'}: invalid job:\n" + "\n".join(problems) + PARAMS_ON_PURPOSE
                           + "; nothing was sent")


def check_params(job: JobSpec) -> None:
    """Raise JobSpecError for a [params] key (the job's, or a [[models]] entry's) that litellm does
    not list for the model and that is not in `unchecked_params`: "did you mean temperature?".
    Imports litellm (through providers/)."""
    from batchrun.providers.litellm_setup import unknown_params

    entries = [(f"models[{e.name}].params", e.model, {**job.params, **e.params}) for e in job.models] \
        or [("params", job.model, job.params)]
    problems = []
    for where, model, params in entries:
        unknown = unknown_params(model, {k: v for k, v in params.items() if k not in job.unchecked_params})
        for key, guess in (unknown or {}).items():
            problems.append(f"  field `{where}.{key}`: litellm knows no such parameter for {model}"
                            + (f": did you mean `{guess}`?" if guess else ""))
    if problems:
        names = ", ".join(f'"{n}"' for n in sorted({line.split("`")[1].rsplit(".", 1)[1] for line in problems}))
        raise JobSpecError("invalid job:\n" + "\n".join(problems) + "\n  (keys you send on purpose: add "
                           f"`unchecked_params = [{names}]` at the top of the job file); nothing was sent")
