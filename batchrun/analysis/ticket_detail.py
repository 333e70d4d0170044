"""One ticket at a glance: what `batchrun show RUN_DIR ID` prints and a serve page shows on a click.

    ticket_detail(run_dir, ticket_id, input=None) -> dict
        the ticket's input row (found from the manifest, from any directory), its messages
        rendered from the job's prompt templates as recorded in the manifest, every line the
        run directory holds for it (one per run that failed it, one result), every attempt of
        each (its time, kind, status, latency; for the answer kept, tokens, cost and model), the
        answer and the check's verdict; a compare directory has one such part per model
    format_ticket_detail(detail) -> str
        the text `batchrun show` prints: ticket and model text through textfmt.terminal_safe

An id that is neither in the input nor in a checkpoint file raises TicketNotFoundError (exit 2).
Nothing is sent and nothing is written: it reads the run directory and its input only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from batchrun.analysis.textfmt import kv, ms, terminal_safe, usd
from batchrun.errors import ReportError, is_permanent

__all__ = ["ANSWER_QUOTING_KINDS", "TicketNotFoundError", "format_ticket_detail", "ticket_detail"]

#: Failure kinds whose message quotes the model's answer: hidden where answers are (a page served
#: without --show-text).
ANSWER_QUOTING_KINDS = frozenset({"invalid_output", "truncated", "content_filter"})
HIDDEN = "(quotes the answer: shown with --show-text)"


class TicketNotFoundError(ReportError):
    """No ticket with this id in the run directory nor its input (exit 2)."""


def _lines_of(path: Path, ticket_id: str) -> list[dict[str, Any]]:
    from batchrun.rundir.lines import iter_lines

    return [line for line in iter_lines(path) if str(line.get("id")) == ticket_id]


def _find_ticket(path: Path, manifest: Mapping[str, Any], run_dir: Path, ticket_id: str) -> tuple[Any, str]:
    """(the Ticket, "") or (None, why not): read the input until the id, bad lines passed over."""
    from batchrun.errors import TicketError
    from batchrun.job.tickets import read_tickets
    from batchrun.rundir.layout import REJECTS
    from batchrun.rundir.lines import iter_lines

    fingerprint = (manifest.get("job") or {}).get("fingerprint") or {}
    id_field = str(fingerprint.get("id_field") or "id")
    declared = (manifest.get("input") or {}).get("format")
    skip = {int(line["line"]) for line in iter_lines(run_dir / REJECTS, with_id=False)
            if isinstance(line.get("line"), int)}
    try:
        for ticket in read_tickets(path, id_field, skip_lines=skip, input_format=declared):
            if ticket.id == ticket_id:
                return ticket, ""
    except TicketError as exc:
        return None, f"the input cannot be read to the end: {exc}"
    return None, f"no ticket {ticket_id!r} in {path}"


def _messages(manifest: Mapping[str, Any], fields: Mapping[str, Any]) -> tuple[list[dict[str, str]] | None, str]:
    """The ticket's chat messages as the job's templates (from the manifest) render them."""
    from batchrun.job.templates import MissingFieldError, PromptTemplate

    prompt = ((manifest.get("job") or {}).get("fingerprint") or {}).get("prompt") or {}
    if not isinstance(prompt, Mapping) or not isinstance(prompt.get("user"), str):
        return None, "the manifest holds no prompt template (a prompt given as a Python callable)"
    messages = []
    try:
        if isinstance(prompt.get("system"), str):
            messages.append({"role": "system", "content": PromptTemplate(prompt["system"]).render(fields)})
        messages.append({"role": "user", "content": PromptTemplate(prompt["user"]).render(fields)})
    except (MissingFieldError, ValueError) as exc:
        return None, f"the prompt cannot be rendered for this ticket: {exc}"
    return messages, ""


def _attempts(line: Mapping[str, Any], ok: bool) -> list[dict[str, Any]]:
    """Every attempt a checkpoint line records: its failed attempts, then the answer kept."""
    attempts = [dict(a) for a in line.get("failed_attempts") or [] if isinstance(a, Mapping)]
    if ok:
        usage = line.get("usage") if isinstance(line.get("usage"), Mapping) else {}
        attempts.append({"attempt": line.get("attempts"), "at": None, "kind": "ok", "status_code": None,
                         "latency_ms": line.get("latency_ms"), "model": line.get("model"),
                         "model_key": line.get("model_key"), "cost_usd": line.get("cost_usd"),
                         "tokens": [usage.get("prompt_tokens"), usage.get("completion_tokens")] if usage else None,
                         "cache_hit": line.get("cache_hit") is True, "finished_at": line.get("finished_at")})
    elif not attempts:  # a line written before attempts were recorded: its last failure only
        attempts.append({"attempt": line.get("attempts"), "at": line.get("time"), "kind": line.get("error_kind"),
                         "status_code": line.get("status_code"), "latency_ms": None,
                         "message": line.get("message"), "model_key": line.get("model_key")})
    return attempts


def _verdict(result: Mapping[str, Any] | None, last_error: Mapping[str, Any] | None,
             fingerprint: Mapping[str, Any], fail_fast: bool = False) -> str:
    if result is not None:
        output = fingerprint.get("output") or {}
        if "label" in result:
            text = f"accepted: label {result['label']!r} (one of the job's labels)"
        elif "parsed" in result:
            text = "accepted: JSON valid against the job's schema"
        elif "tool_calls" in result:
            names = [str((c or {}).get("name")) for c in result.get("tool_calls") or []]
            text = f"accepted: tool call(s) {', '.join(names)} with valid arguments"
        else:
            text = "accepted (the job checks no label, schema or tool)" if not output else "accepted"
        flags = [name for name, on in (("truncated at max_tokens", result.get("truncated")),
                                       ("content-filtered", result.get("content_filtered")),
                                       ("a reused answer (cache)", result.get("cache_hit"))) if on]
        if result.get("rejected_outputs"):
            flags.append(f"after {result['rejected_outputs']} rejected answer(s)")
        return text + (f"; {', '.join(flags)}" if flags else "")
    if last_error is not None:
        kind = str(last_error.get("error_kind") or "unknown")
        status = f" (HTTP {last_error['status_code']})" if last_error.get("status_code") else ""
        how = "permanent: a re-run keeps it, --retry-permanent sends it" if is_permanent(kind, fail_fast=fail_fast) else \
            "transient: a re-run retries it"
        return f"failed: {kind}{status}, {how}"
    return "pending: no run has finished this ticket yet"


def _unit_detail(run_dir: Path, manifest: Mapping[str, Any], ticket_id: str, ticket: Any, input_note: str,
                 show_text: bool) -> dict[str, Any]:
    from batchrun.rundir.layout import ERRORS, RESULTS
    from batchrun.rundir.manifest import fail_fast_runs

    fingerprint = (manifest.get("job") or {}).get("fingerprint") or {}
    results = _lines_of(run_dir / RESULTS, ticket_id)
    errors = _lines_of(run_dir / ERRORS, ticket_id)
    result = results[-1] if results else None
    runs: list[dict[str, Any]] = [{"run": line.get("run"), "outcome": "failed", "kind": line.get("error_kind"),
             "message": line.get("message"), "started_at": line.get("started_at"), "finished_at": line.get("time"),
             "attempts": _attempts(line, ok=False)} for line in errors]
    if result is not None:
        runs.append({"run": result.get("run"), "outcome": "done", "started_at": result.get("started_at"),
                     "finished_at": result.get("finished_at"), "attempts": _attempts(result, ok=True)})
    runs.sort(key=lambda r: (r["run"] if isinstance(r["run"], int) else 0, r["outcome"] == "done"))
    last_error = errors[-1] if errors else None
    status = "done" if result is not None else "failed" if last_error is not None else "pending"
    messages, messages_note = (None, input_note) if ticket is None else _messages(manifest, ticket.fields)
    answer = None
    if result is not None:
        answer = {key: result.get(key) for key in ("output", "label", "parsed", "tool_calls", "finish_reason",
                                                    "model", "usage", "cost_usd", "cost_status") if key in result}
    fail_fast = last_error is not None and last_error.get("run") in fail_fast_runs(manifest)
    verdict = _verdict(result, last_error, fingerprint, fail_fast)
    if not show_text:
        if verdict.startswith("accepted: label"):
            verdict = "accepted: one of the job's labels"  # the label is the answer
        for run in runs:
            items: list[dict[str, Any]] = [run, *run["attempts"]]
            for item in items:
                if item.get("message") and item.get("kind") in ANSWER_QUOTING_KINDS:
                    item["message"] = HIDDEN
    return {
        "model": fingerprint.get("model"),
        "status": status,
        "permanent": (is_permanent(str(last_error.get("error_kind")), fail_fast=fail_fast)
                      if status == "failed" and last_error else None),
        "line": ticket.line if ticket is not None else None,
        "messages": messages if show_text else None,
        "messages_note": messages_note if messages is None else ("" if show_text else "hidden (--show-text)"),
        "runs": runs,
        "answer": answer if show_text else None,
        "verdict": verdict,
    }


def ticket_detail(run_dir: Path | str, ticket_id: str, input: Path | str | None = None, *,
                  show_text: bool = True) -> dict[str, Any]:
    """Everything the run directory and its input say about one ticket (module docstring).
    `show_text=False` (a page served without --show-text) leaves the messages and the answer out."""
    from batchrun.rundir.manifest import find_input
    from batchrun.rundir.status import find_units

    run_dir = Path(run_dir)
    kind, units = find_units(run_dir)
    first = units[0]
    path, why = find_input(first.run_dir, first.manifest, Path(input) if input is not None else None)
    ticket, note = (_find_ticket(path, first.manifest, first.run_dir, ticket_id) if path is not None
                    else (None, why))
    parts = {unit.key if kind == "compare" else "": _unit_detail(unit.run_dir, unit.manifest, ticket_id, ticket, note,
                                                                  show_text) for unit in units}
    if ticket is None and all(part["status"] == "pending" for part in parts.values()):
        raise TicketNotFoundError(f"{run_dir}: no ticket {ticket_id!r} in its checkpoint files"
                                  + (f" nor its input ({path})" if path is not None else f" ({why})"))
    return {"id": ticket_id, "run_dir": str(run_dir), "job": (first.manifest.get("job") or {}).get("name"),
            "input": str(path) if path is not None else None, "input_note": note, "models": parts}


def _attempt_line(a: Mapping[str, Any]) -> str:
    when = str(a.get("at") or a.get("finished_at") or "-")
    kind = str(a.get("kind") or "?")
    status = f" HTTP {a['status_code']}" if a.get("status_code") else ""
    latency = ms(a.get("latency_ms"), " ms") if isinstance(a.get("latency_ms"), (int, float)) else "-"
    parts = [f"#{a.get('attempt') or '?'}", when, f"{kind}{status}", latency]
    tokens = a.get("tokens")
    if tokens:
        parts.append(f"tokens {tokens[0]}+{tokens[1]}")
    if a.get("cost_usd") is not None or kind == "ok":
        parts.append(usd(a.get("cost_usd")) if a.get("cost_usd") is not None else "cost unknown")
    model = a.get("model") or ""
    if a.get("model_key"):
        model = f"{a['model_key']}" + (f" ({model})" if model else "")
    if model:
        parts.append(f"model {model}")
    if a.get("cache_hit"):
        parts.append("reused answer, nothing sent")
    text = "  ".join(terminal_safe(str(p)) for p in parts)
    if a.get("message"):
        text += "\n      " + terminal_safe(" ".join(str(a["message"]).split()))[:300]
    return text


def format_ticket_detail(detail: Mapping[str, Any]) -> str:
    """What `batchrun show` prints (module docstring)."""
    lines = [f"ticket {terminal_safe(detail['id'])} in {detail['run_dir']} (job {detail['job']})"]
    if detail.get("input"):
        lines.append(f"input: {detail['input']}")
    elif detail.get("input_note"):
        lines.append(f"input: {detail['input_note']}")
    for key, part in detail["models"].items():
        lines.append("")
        if key:
            lines.append(f"== model {key} ({part.get('model')}) ==")
        rows = [("status", part["status"]), ("verdict", terminal_safe(part["verdict"]))]
        if part.get("line"):
            rows.insert(1, ("input line", str(part["line"])))
        lines += kv(rows)
        lines.append("")
        if part.get("messages"):
            lines.append("messages:")
            for message in part["messages"]:
                body = terminal_safe(message["content"]).split("\n")
                lines.append(f"  [{message['role']}] " + body[0])
                lines += ["    " + row for row in body[1:]]
        else:
            lines.append(f"messages: {part.get('messages_note') or '-'}")
        lines.append("")
        if not part["runs"]:
            lines.append("attempts: none yet")
        for run in part["runs"]:
            lines.append(f"run {run['run']}: {run['outcome']}" + (f" ({run['kind']})" if run.get("kind") else "")
                         + f", {len(run['attempts'])} attempt(s) recorded")
            lines += ["  " + _attempt_line(a) for a in run["attempts"]]
        answer = part.get("answer")
        if answer is not None:
            lines += ["", "answer:"]
            shown = answer.get("output")
            lines.append("  " + terminal_safe(str(shown if shown is not None else "")).replace("\n", "\n  "))
            for key in ("label", "parsed", "tool_calls"):
                if key in answer:
                    import orjson

                    lines.append(f"  {key}: " + terminal_safe(orjson.dumps(answer[key]).decode()))
            usage = answer.get("usage") or {}
            lines.append(f"  finish_reason {answer.get('finish_reason')}, model {terminal_safe(str(answer.get('model')))}, "
                         f"tokens {usage.get('prompt_tokens', '-')}+{usage.get('completion_tokens', '-')}, "
                         f"cost {usd(answer.get('cost_usd')) if answer.get('cost_usd') is not None else 'unknown'}"
                         f" ({answer.get('cost_status')})")
    return "\n".join(lines)
