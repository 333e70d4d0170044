"""Reading tickets: a streaming JSONL reader and a one-pass input check.

Input is JSON Lines: one JSON object per line, each with a unique id in the
job's `id_field` (a string or an integer). The file is read line by line in
binary, so memory does not grow with its size; a line longer than the
job's `max_line_bytes` (default MAX_LINE_BYTES) is read past in bounded
chunks, never held whole.

    read_tickets(path, id_field)      yields Ticket objects in file order;
                                      raises TicketError naming file:line,
                                      or passes over `skip_lines` (the bad
                                      lines of an on_bad_input="skip" run)
    scan_input(path, id_field, ...)   one pass over the whole file before any
                                      request: size, sha256, ticket count, and
                                      every bad line (up to a limit) with its
                                      reason, including missing template fields
                                      and duplicate ids
    InputScan                         what scan_input found, and the resume
                                      plan: which lines to send (`dispatch`)
    scan_from_index(path, index)      the same InputScan from a saved index of
                                      unchanged bytes (`InputScan.to_index`),
                                      so a resume of 1,000,000 tickets does not
                                      parse them again

CSV, TSV and Parquet inputs (by extension, or the job's `input_format`) are
read by input_formats.py; `read_tickets` and `scan_input` dispatch to it and
apply the same checks to each row (id, duplicates, template fields), with the
row number where JSON Lines has the line number (`InputScan.unit` says which).

Checked per line: valid UTF-8 (a BOM on line 1 is accepted and dropped),
not blank, valid JSON, a JSON object, an id that is a non-empty string or an
integer (at most MAX_ID_CHARS = 512 characters, and one a person can see:
`check_id`), no id seen before, and every field the prompt templates use.

An id names checkpoint lines, log lines, export rows and the terminal's
output, so it must be visible and unambiguous. Refused (`check_id`): an id
holding a control character (NUL, newline, tab, C1 controls, the Unicode line
and paragraph separators) or a bidirectional control (a right-to-left
override reorders what a terminal shows); an id that is empty once its
invisible characters are set aside (Unicode format characters such as the
zero-width space, spaces of any kind, fillers), compared after NFKC
normalisation; an id with leading or trailing whitespace or invisible
characters. Refused, not normalised: "A1 " and "A1" would otherwise be two
tickets or one depending on where the id was read, and the input's id is
the one export joins on.

A field the prompt uses that no ticket has (a typo in the template, or the
wrong file) is one problem of the file (`InputScan.file_problems`), named
once with the fields the tickets have and the closest one, not one problem
per line; a CSV, TSV or Parquet file is checked against its header before any
row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Container, Iterable, Iterator, Mapping, NotRequired, Sequence, TypedDict

import orjson

from batchrun.errors import TicketError
from batchrun.job.input_formats import describe_row, input_format_of, iter_rows
from batchrun.job.templates import PromptTemplate
from batchrun.records import Fields, Ticket

_BOM = b"\xef\xbb\xbf"
MAX_LINE_BYTES = 1_000_000  # a line longer than this is rejected as bad input
MAX_ID_CHARS = 512  # a longer id is bad input (it names files, logs and checkpoint lines)


@dataclass(frozen=True, slots=True)
class LineProblem:
    line: int
    reason: str


class InputIndex(TypedDict):
    """input.index.json (InputScan.to_index): what a resume needs to plan without parsing the input."""

    version: int  # 1
    key: str  # what else makes it valid besides the input's bytes (preparation.py)
    sha256: str
    size: int
    problem_count: int
    problems: list[tuple[int, str]]  # (line, reason) of the first problems kept (JSON arrays once read back)
    ids: list[str | None]  # each line's id (None: a bad line)
    unit: NotRequired[str]  # "line" or "row"; absent in older indexes ("line")


@dataclass(slots=True)
class InputScan:
    path: Path
    size: int = 0  # bytes
    sha256: str = ""  # of the whole file
    tickets: int = 0  # valid tickets
    problems: list[LineProblem] = field(default_factory=list)  # first `max_problems`
    problem_count: int = 0  # all bad lines, even those not kept
    bad_lines: set[int] = field(default_factory=set)  # line numbers of every bad line
    selected: int = 0  # good tickets within the limit
    already_done: int = 0  # of those, in done_ids
    skipped_failed: int = 0  # of those, in failed_ids
    dispatch: bytearray = field(default_factory=bytearray)  # line number -> 1 if it is to be sent
    ids: list[str | None] | None = None  # with keep_ids: each line's id (None: a bad line)
    unit: str = "line"  # "row" for CSV, TSV and Parquet inputs (row 1: the first data row)
    # problems of the whole file, each once: a field the prompt uses that no ticket has
    file_problems: list[str] = field(default_factory=list)
    skipped_permanent: int = 0  # of the selected, in permanent_ids: failed for good in an earlier run

    def select(self, line_no: int, ticket_id: str, done_ids: Container[str], failed_ids: Container[str],
               limit: int | None, permanent_ids: Container[str] = frozenset()) -> None:
        """Count a good ticket for the resume plan and mark its line if it is to be sent."""
        self.tickets += 1
        if limit is not None and self.selected >= limit:
            return
        self.selected += 1
        if ticket_id in done_ids:
            self.already_done += 1
        elif ticket_id in failed_ids:
            self.skipped_failed += 1
        elif ticket_id in permanent_ids:
            self.skipped_permanent += 1
        else:
            dispatch = self.dispatch
            if len(dispatch) <= line_no:
                dispatch.extend(bytes(line_no + 1 - len(dispatch)))
            dispatch[line_no] = 1

    def to_index(self, key: str) -> InputIndex:
        """What a later resume needs to plan without parsing the input again."""
        assert self.ids is not None, "scan with keep_ids=True"
        return {"version": 1, "key": key, "sha256": self.sha256, "size": self.size,
                "problem_count": self.problem_count,
                "problems": [(p.line, p.reason) for p in self.problems], "ids": self.ids, "unit": self.unit}

    def describe_problems(self) -> str:
        if self.file_problems:
            head = [f"{self.path}: {problem}" for problem in self.file_problems]
            rest = [p for p in self.problems if p.line > 0]
            if not rest:
                return "\n".join(head) + "; nothing was requested"
            return "\n".join(head) + "\n" + InputScan(path=self.path, problems=rest, unit=self.unit,
                                                     problem_count=len(rest)).describe_problems()
        if self.unit == "row":
            lines = [f"{self.path}: {self.problem_count} bad row(s); nothing was requested:"]
            lines += [f"  {self.path}: row {p.line}: {p.reason}" for p in self.problems]
        else:
            lines = [f"{self.path}: {self.problem_count} bad line(s); nothing was requested:"]
            lines += [f"  {self.path}:{p.line}: {p.reason}" for p in self.problems]
        if self.problem_count > len(self.problems):
            lines.append(f"  ... and {self.problem_count - len(self.problems)} more")
        return "\n".join(lines)


def _missing_fields(templates: Iterable[PromptTemplate], fields: Fields) -> list[str]:
    """Every field the prompt templates use that the ticket lacks, in template order."""
    missing: list[str] = []
    for template in templates:
        for path in template.fields:
            if path not in missing and template.missing_field_of(path, fields):
                missing.append(path)
    return missing


def field_hint(path: str, sample: object) -> str:
    """For a field the tickets lack: the fields they have where it was looked for, and the closest
    one ("did you mean `subject`?"), from one ticket (`sample`)."""
    import difflib

    parts = path.split(".")
    where: object = sample
    prefix = ""
    for part in parts[:-1]:
        if not isinstance(where, Mapping) or part not in where:
            break
        where, prefix = where[part], prefix + part + "."
    else:
        if isinstance(where, Mapping):
            names = [str(name) for name in where]
            close = difflib.get_close_matches(parts[-1], names, n=1, cutoff=0.6)
            shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
            guess = f"did you mean `{{{prefix}{close[0]}}}`? " if close else ""
            return f"{guess}(fields{' of ' + prefix.rstrip('.') if prefix else ''}: {shown})"
    return ""


class _FieldCheck:
    """The fields the prompt uses, counted over the tickets checked: a field no ticket has is one
    problem of the file (InputScan.file_problems), and its per-line problems are dropped."""

    def __init__(self, templates: Sequence[PromptTemplate]) -> None:
        self.templates = templates
        self.checked = 0
        self.missing: dict[str, int] = {}
        self.sample: Fields | None = None

    def first_missing(self, obj: Fields) -> str | None:
        if self.sample is None:
            self.sample = obj
        self.checked += 1
        missing = _missing_fields(self.templates, obj)
        for path in missing:
            self.missing[path] = self.missing.get(path, 0) + 1
        return missing[0] if missing else None

    def finish(self, scan: InputScan) -> None:
        nowhere = [path for path, count in self.missing.items() if count == self.checked]
        if not nowhere:
            return
        for path in nowhere:
            hint = field_hint(path, self.sample)
            scan.file_problems.append(
                f"the prompt uses {{{path}}}, which none of its {self.checked:,} ticket(s) has" + (f": {hint}" if hint else ""))
        # every ticket checked had one per-line "no field" problem: the file's problem says it once
        scan.problems = [p for p in scan.problems if not p.reason.endswith(" used by the prompt")]
        scan.problem_count -= self.checked


def _too_long(size: int, limit: int) -> ValueError:
    return ValueError(f"line is {size:,} bytes, over the {limit:,}-byte limit (max_line_bytes)")


#: bidirectional controls: embeddings, overrides, isolates, marks (they reorder what a terminal shows)
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
#: letters that show nothing (Hangul fillers, the braille blank)
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _invisible(char: str) -> bool:
    import unicodedata

    return (char.isspace() or char in _BLANK_LETTERS
            or unicodedata.category(char) in ("Cf", "Zs", "Zl", "Zp", "Mn", "Me"))


def check_id(ticket_id: str, id_field: str) -> str | None:
    """Why `ticket_id` cannot be an id (module docstring), or None. The id is shown escaped."""
    import unicodedata

    if ticket_id.isascii() and ticket_id.isprintable() and ticket_id.strip() == ticket_id:
        return None  # the common case, at once
    shown = repr(ticket_id)  # escapes every character a terminal would act on
    for char in ticket_id:
        if unicodedata.category(char) == "Cc" or char in "\u2028\u2029":
            return (f"id field {id_field!r} holds a control character (U+{ord(char):04X}) in {shown}: "
                    "an id must be visible")
        if char in _BIDI:
            return (f"id field {id_field!r} holds a bidirectional control (U+{ord(char):04X}) in {shown}: "
                    "it changes how the id is shown")
    if not any(not _invisible(char) for char in unicodedata.normalize("NFKC", ticket_id)):
        return f"id field {id_field!r} is only invisible characters ({shown}): an id must be visible"
    if _invisible(ticket_id[0]) or _invisible(ticket_id[-1]):
        return (f"id field {id_field!r} has leading or trailing whitespace or invisible characters ({shown}): "
                "remove them (ids are compared as they are)")
    return None


def _parse_line(raw: bytes | None, line_no: int, id_field: str, size: int = 0,
                max_line_bytes: int | None = None) -> tuple[str, Fields]:
    """The id and object of one line, or ValueError with the reason.

    `raw` is None for a line `_read_lines` found too long (`size` bytes)."""
    limit = max_line_bytes or MAX_LINE_BYTES
    if raw is None:
        raise _too_long(size, limit)
    if line_no == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    if len(raw) > limit:
        raise _too_long(len(raw), limit)
    try:
        obj = orjson.loads(raw)  # validates UTF-8 too: the reasons below are worked out on failure only
    except orjson.JSONDecodeError as exc:
        if not raw.strip():
            raise ValueError("blank line") from None
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise ValueError(f"invalid UTF-8 at byte {bad.start}") from None
        raise ValueError(f"invalid JSON: {exc}") from None
    if type(obj) is not dict:
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if id_field not in obj:
        raise ValueError(f"missing id field {id_field!r}")
    value = obj[id_field]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ValueError(f"id field {id_field!r} must be a non-empty string or an integer, got {value!r}")
    ticket_id = str(value)
    if len(ticket_id) > MAX_ID_CHARS:
        raise ValueError(f"id field {id_field!r} is {len(ticket_id):,} characters long, over the "
                         f"{MAX_ID_CHARS}-character limit for an id")
    problem = check_id(ticket_id, id_field)
    if problem is not None:
        raise ValueError(problem)
    return ticket_id, obj


def _read_lines(
    handle: BinaryIO, seen: Callable[[bytes], object] | None = None, max_line_bytes: int | None = None,
    skip: int = 0,
) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, line without its ending or None if too long, bytes read).

    Reads at most about MAX_LINE_BYTES at a time: a longer line is consumed
    in chunks (each passed to `seen`, like every complete line) and yielded
    as None, so one huge line cannot fill the memory."""
    limit = (max_line_bytes or MAX_LINE_BYTES) + len(_BOM) + 2  # room for a BOM and a CRLF
    line_no = 0
    while line_no < skip and (chunk := handle.readline(limit)):  # pass over `skip` lines unseen
        if chunk.endswith(b"\n"):
            line_no += 1
    while chunk := handle.readline(limit):
        line_no += 1
        if seen is not None:
            seen(chunk)
        if len(chunk) < limit or chunk.endswith(b"\n"):
            yield line_no, chunk.rstrip(b"\r\n"), len(chunk)
            continue
        size = len(chunk)
        while not chunk.endswith(b"\n"):
            chunk = handle.readline(limit)
            if not chunk:
                break
            if seen is not None:
                seen(chunk)
            size += len(chunk)
        yield line_no, None, size - (len(chunk) - len(chunk.rstrip(b"\r\n")))


def _lines(path: Path, max_line_bytes: int | None = None, skip: int = 0) -> Iterator[tuple[int, bytes | None, int]]:
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise TicketError(f"{path}: cannot read input: {exc.strerror}") from None
    with handle:
        yield from _read_lines(handle, None, max_line_bytes, skip)


def read_tickets(
    path: Path | str,
    id_field: str = "id",
    *,
    skip_lines: Container[int] = frozenset(),
    max_line_bytes: int | None = None,
    only_lines: bytearray | None = None,
    input_format: str | None = None,
) -> Iterator[Ticket]:
    """Yield tickets in file order; the first bad line raises TicketError.

    Line numbers in `skip_lines` (bad lines a scan already rejected, with
    on_bad_input = "skip") are passed over without being parsed; with
    `only_lines` (a scan's `dispatch` map), so is every line whose byte is 0,
    and reading stops after the last line marked 1. CSV, TSV and Parquet
    (by extension or `input_format`) are read by rows (input_formats.py).
    `path` may be a str."""
    path = Path(path)
    fmt = input_format_of(path, input_format)
    if fmt != "jsonl":
        yield from _read_rows(path, fmt, id_field, skip_lines, max_line_bytes, only_lines)
        return
    last = only_lines.rfind(1) if only_lines is not None else -1
    first = only_lines.find(1) if only_lines is not None else 1
    if first < 0:
        return
    for line_no, raw, size in _lines(path, max_line_bytes, skip=first - 1):
        if only_lines is not None:
            if line_no > last:
                return
            if not only_lines[line_no]:
                continue
        if line_no in skip_lines:
            continue
        try:
            ticket_id, obj = _parse_line(raw, line_no, id_field, size, max_line_bytes)
        except ValueError as exc:
            raise TicketError(f"{path}:{line_no}: {exc}") from None
        yield Ticket(id=ticket_id, fields=obj, line=line_no)


def scan_input(
    path: Path | str,
    id_field: str = "id",
    templates: Sequence[PromptTemplate] = (),
    *,
    max_problems: int | None = 20,
    max_line_bytes: int | None = None,
    done_ids: Container[str] = frozenset(),
    failed_ids: Container[str] = frozenset(),
    limit: int | None = None,
    keep_ids: bool = False,
    input_format: str | None = None,
    permanent_ids: Container[str] = frozenset(),
) -> InputScan:
    """Check the whole input in one pass; see the module docstring.

    Every bad line number lands in `bad_lines`; the reasons are kept for
    the first `max_problems` (all of them with None). The same pass plans a
    resume: among the first `limit` good tickets, those in `done_ids` are
    counted as `already_done`, those in `failed_ids` (pass the failed ids
    only when they are to be skipped) as `skipped_failed`, and the line of
    every other one is marked 1 in `dispatch`, so the run's producer skips
    the rest without parsing them; those in `permanent_ids` (failed for good
    in an earlier run, not to be retried) count as `skipped_permanent`. CSV,
    TSV and Parquet inputs are checked row by row the same way (`_scan_rows`)."""
    path = Path(path)
    fmt = input_format_of(path, input_format)
    if fmt != "jsonl":
        return _scan_rows(path, fmt, id_field, templates, max_problems=max_problems, max_line_bytes=max_line_bytes,
                          done_ids=done_ids, failed_ids=failed_ids, limit=limit, keep_ids=keep_ids,
                          permanent_ids=permanent_ids)
    scan = InputScan(path=path, dispatch=bytearray(1))  # dispatch[0] unused: lines start at 1
    fields = _FieldCheck(templates)
    digest = hashlib.sha256()
    seen: dict[str, int] = {}
    ids: list[str | None] | None = [] if keep_ids else None

    def problem(line_no: int, reason: str) -> None:
        scan.problem_count += 1
        scan.bad_lines.add(line_no)
        if max_problems is None or len(scan.problems) < max_problems:
            scan.problems.append(LineProblem(line_no, reason))

    try:
        handle = path.open("rb")
    except OSError as exc:
        raise TicketError(f"{path}: cannot read input: {exc.strerror}") from None

    def read(chunk: bytes) -> None:
        digest.update(chunk)
        scan.size += len(chunk)

    with handle:
        for line_no, raw, size in _read_lines(handle, read, max_line_bytes):
            if ids is not None:
                ids.append(None)
            try:
                ticket_id, obj = _parse_line(raw, line_no, id_field, size, max_line_bytes)
            except ValueError as exc:
                problem(line_no, str(exc))
                continue
            if ticket_id in seen:
                problem(line_no, f"duplicate id {ticket_id!r} (first on line {seen[ticket_id]})")
                continue
            seen[ticket_id] = line_no
            missing = fields.first_missing(obj)
            if missing is not None:
                problem(line_no, f"ticket {ticket_id!r} has no field {missing!r} used by the prompt")
                continue
            if ids is not None:
                ids[-1] = ticket_id
            scan.select(line_no, ticket_id, done_ids, failed_ids, limit, permanent_ids)
    fields.finish(scan)
    scan.ids = ids
    scan.sha256 = digest.hexdigest()
    return scan


def _row_id(row: Fields, id_field: str) -> str:
    """The id of a CSV/TSV/Parquet row, or ValueError with the reason."""
    if id_field not in row:
        raise ValueError(f"missing id field {id_field!r}")
    value = row[id_field]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ValueError(f"id field {id_field!r} must be a non-empty string or an integer, got {value!r}")
    problem = check_id(str(value), id_field)
    if problem is not None:
        raise ValueError(problem)
    return str(value)


def _check_columns(path: Path, fmt: str, id_field: str, templates: Sequence[PromptTemplate] = ()) -> None:
    """The header against the job, before any row: a file with no id column, or without a column a
    prompt field needs, is one error naming the file's columns, not one per row."""
    import difflib

    from batchrun.job.input_formats import csv_header, parquet_columns

    columns = parquet_columns(path) if fmt == "parquet" else csv_header(path, fmt)
    if not columns:
        return
    shown = ", ".join(columns[:30]) + (", ..." if len(columns) > 30 else "")
    where = "column" if fmt == "parquet" else "header field"
    problems = []
    if id_field not in columns:
        problems.append(f"no {where} {id_field!r} (the job's id_field)")
    for template in templates:
        for name in template.fields:
            top = name.split(".", 1)[0]
            if fmt != "parquet" and "." in name and name in columns:
                problems.append(f"the prompt uses {{{name}}}: a dot in a placeholder reaches into a nested "
                                f"field, and {fmt.upper()} columns are flat; rename the column (no dot)")
            elif top not in columns and not any(f"{{{name}}}" in text for text in problems):
                close = difflib.get_close_matches(top, columns, n=1, cutoff=0.6)
                problems.append(f"the prompt uses {{{name}}}, a {where} the file does not have"
                                + (f": did you mean `{{{close[0]}}}`?" if close else ""))
    if problems:
        raise TicketError(f"{path}: " + "; ".join(problems) + f" (its {where}s: {shown}); nothing was requested")


def _read_rows(path: Path, fmt: str, id_field: str, skip_rows: Container[int], max_line_bytes: int | None,
               only_rows: bytearray | None) -> Iterator[Ticket]:
    """read_tickets for CSV, TSV and Parquet: the first bad row raises TicketError naming it."""
    last = only_rows.rfind(1) if only_rows is not None else -1
    if only_rows is not None and last < 0:
        return
    for row_no, line, row in iter_rows(path, fmt, max_field_bytes=max_line_bytes or MAX_LINE_BYTES,
                                       only=only_rows):
        if only_rows is not None:
            if row_no > last:
                return
            if not only_rows[row_no]:
                continue
        if row_no in skip_rows:
            continue
        try:
            if isinstance(row, ValueError):
                raise row
            ticket_id = _row_id(row, id_field)
        except ValueError as exc:
            raise TicketError(f"{path}: {describe_row(row_no, line)}: {exc}") from None
        yield Ticket(id=ticket_id, fields=row, line=row_no)


def _scan_rows(path: Path, fmt: str, id_field: str, templates: Sequence[PromptTemplate], *,
               max_problems: int | None, max_line_bytes: int | None, done_ids: Container[str],
               failed_ids: Container[str], limit: int | None, keep_ids: bool,
               permanent_ids: Container[str] = frozenset()) -> InputScan:
    """scan_input for CSV, TSV and Parquet (see scan_input): rows instead of lines."""
    sha256, size = file_digest(path)
    _check_columns(path, fmt, id_field, templates)
    scan = InputScan(path=path, dispatch=bytearray(1), unit="row", sha256=sha256, size=size)
    fields = _FieldCheck(templates)
    seen: dict[str, int] = {}
    ids: list[str | None] | None = [] if keep_ids else None

    def problem(row_no: int, line: int | None, reason: str) -> None:
        scan.problem_count += 1
        scan.bad_lines.add(row_no)
        if max_problems is None or len(scan.problems) < max_problems:
            scan.problems.append(LineProblem(row_no, reason if line is None else f"(line {line}) {reason}"))

    for row_no, line, row in iter_rows(path, fmt, max_field_bytes=max_line_bytes or MAX_LINE_BYTES):
        if ids is not None:
            ids.append(None)
        if isinstance(row, ValueError):
            problem(row_no, line, str(row))
            continue
        try:
            ticket_id = _row_id(row, id_field)
        except ValueError as exc:
            problem(row_no, line, str(exc))
            continue
        if ticket_id in seen:
            problem(row_no, line, f"duplicate id {ticket_id!r} (first on row {seen[ticket_id]})")
            continue
        seen[ticket_id] = row_no
        missing = fields.first_missing(row)
        if missing is not None:
            problem(row_no, line, f"ticket {ticket_id!r} has no field {missing!r} used by the prompt")
            continue
        if ids is not None:
            ids[-1] = ticket_id
        scan.select(row_no, ticket_id, done_ids, failed_ids, limit, permanent_ids)
    fields.finish(scan)
    scan.ids = ids
    return scan


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256, size) of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
                size += len(block)
    except OSError as exc:
        raise TicketError(f"{path}: cannot read input: {exc.strerror}") from None
    return digest.hexdigest(), size


def scan_from_index(
    path: Path,
    index: InputIndex,
    *,
    max_problems: int | None = 20,
    done_ids: Container[str] = frozenset(),
    failed_ids: Container[str] = frozenset(),
    limit: int | None = None,
    permanent_ids: Container[str] = frozenset(),
) -> InputScan:
    """The InputScan a full `scan_input` would give, from a saved index of
    the same bytes (the caller checks sha256 and key): no line is parsed."""
    scan = InputScan(path=path, size=index["size"], sha256=index["sha256"], dispatch=bytearray(1),
                     problem_count=index["problem_count"], unit=index.get("unit", "line"))
    problems = index["problems"]
    scan.problems = [LineProblem(line, reason) for line, reason in
                     (problems if max_problems is None else problems[:max_problems])]
    select = scan.select
    for line_no, ticket_id in enumerate(index["ids"], start=1):
        if ticket_id is None:
            scan.bad_lines.add(line_no)
        else:
            select(line_no, ticket_id, done_ids, failed_ids, limit, permanent_ids)
    return scan
