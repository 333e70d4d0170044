"""`batchrun export`: one row per ticket, in input order, as JSON Lines, CSV, TSV or Parquet.

    export_run(run_dir, out=None, fmt="jsonl", with_input=False, input=None, raw_cells=False) -> ExportResult
    iter_rows(run_dir, with_input=False, input=None)  the JSON Lines rows as dicts, streamed
    inert_cell(text)   a CSV/TSV cell a spreadsheet will not evaluate

A row holds the ticket's id and `status` ("done", "failed" or "pending": not
finished yet), the answer (`output`, and `label`, `parsed` or `tool_calls`
when the job asks for them), `finish_reason`, token counts, `cost_usd`,
`cost_status`, `cache_hit` and `cost_saved_usd` (reused answers), `attempts`,
the `model` that answered, and for a failed ticket `error_kind` and
`error_message`. With `with_input` the input row's fields come along
(JSON Lines: an "input" object; CSV and Parquet: one `input.<field>` column
per top-level field, non-strings as JSON text). A compare directory
(models/<key>/, found by rundir.find_units) gives one column group per model: JSON Lines nests them
under "models": {key: {...}}; CSV and Parquet prefix the columns with
"<key>.". Bad input rows skipped by the run (rejects.jsonl) are not tickets
and are left out.

How it stays streamed (a run of 1,000,000 tickets in bounded memory):
input order comes from reading the input again (tickets.read_tickets, one
row at a time), and each ticket's outcome is found through a SQLite index
in a temporary file: one row per id with the byte offset of its line in
results.jsonl or errors.jsonl. The index is built in one pass over the two
files (errors first, so that a later success replaces an earlier failure,
and a later failure an earlier one: the same rule as `batchrun status`);
each ticket is then one primary-key lookup and one read of its line.
Memory holds SQLite's page cache (capped at PAGE_CACHE_KB) and one output
batch, never the results. (An external sort was the other way: it needs
the input sorted by id and the output sorted back into input order, two
sorts where the index needs none; and SQLite is in the standard library.)
The run's input must be unchanged (its sha256 is checked against the
manifest), or the rows would not be the run's tickets.

The output is written to a temporary file next to it and renamed into
place: an interrupted export leaves no half file.

CSV and TSV cells are safe to open in a spreadsheet (OWASP "CSV injection"):
a text cell (an answer, an input field, an id, an error message) that begins
with `=`, `+`, `-`, `@`, a tab or a carriage return is written with a leading
`'`, which spreadsheets read as "this is text" and do not show; numbers are
written as numbers. `raw_cells=True` (`--raw-cells`) writes the text as it is.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Mapping, Protocol

import orjson

from batchrun.analysis.documents import StoredJSON
from batchrun.errors import BatchrunError, ExitCode
from batchrun.job.input_formats import (
    csv_header,
    input_format_of,
    parquet_columns,
    require_pyarrow,
)
from batchrun.job.tickets import file_digest, read_tickets
from batchrun.records import line_money
from batchrun.rundir.layout import ERRORS, REJECTS, RESULTS

EXPORT_FORMATS = ("jsonl", "csv", "tsv", "parquet")
#: what a spreadsheet may take for the start of a formula (OWASP, "CSV injection")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PAGE_CACHE_KB = 32 * 1024  # SQLite page cache of the outcome index
BATCH_ROWS = 8192  # Parquet rows written at a time; SQLite rows inserted per statement batch

#: One row of the export (or one model's group of columns in it): values as the lines have them.
Row = dict[str, object]

#: The columns of one model's group, in order (those after "output" only when the job has them).
_BASE = ("status", "output")
_AFTER = ("finish_reason", "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens",
          "cache_write_tokens", "reasoning_tokens", "cost_usd", "cost_status", "service_tier",
          "prompt_cache_saved_usd", "cache_hit", "cost_saved_usd", "attempts", "model", "error_kind", "error_message")
_INT = {"prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "cache_write_tokens",
        "reasoning_tokens", "attempts"}
_FLOAT = {"cost_usd", "cost_saved_usd", "prompt_cache_saved_usd"}
_BOOL = {"cache_hit"}


class ExportError(BatchrunError):
    """The run directory cannot be exported (not a run, input gone or changed)."""

    exit_code = ExitCode.BAD_INPUT


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    rows: int  # tickets written
    done: int  # outcomes by status (a compare directory: per ticket and model)
    failed: int
    pending: int
    models: tuple[str, ...]  # column groups ("" for a single run)
    cached_tokens: int = 0  # of the results written: prompt tokens read from the provider's cache ...
    cache_reported_prompt_tokens: int = 0  # ... of the prompt tokens of results whose provider said (the share)
    cache_write_tokens: int = 0
    prompt_cache_saved_usd: float = 0.0  # what prompt caching saved on them


@dataclass
class _Unit:
    key: str  # "" for a single run, else the [[models]] name
    run_dir: Path
    manifest: StoredJSON
    answer_fields: tuple[str, ...]  # label / parsed / tool_calls


def _units(run_dir: Path) -> list[_Unit]:
    """The run directory's units (rundir.find_units): one, or one per model of a compare directory."""
    from batchrun.errors import NotARunDirError, ReportError
    from batchrun.rundir.status import find_units

    try:
        kind, found = find_units(Path(run_dir))
    except NotARunDirError:
        raise
    except ReportError as exc:
        raise ExportError(str(exc)) from None
    units = []
    for unit in found:
        output = ((unit.manifest.get("job") or {}).get("fingerprint") or {}).get("output") or {}
        fields = tuple(name for name, on in (("label", "labels" in output), ("parsed", "json_schema" in output),
                                             ("tool_calls", "tools" in output)) if on)
        units.append(_Unit(unit.key if kind == "compare" else "", unit.run_dir, unit.manifest, fields))
    return units


# -- the outcome index -------------------------------------------------------------------------------

def _line_id(raw: bytes) -> str | None:
    if raw.startswith(b'{"id":"'):  # the writer's own lines: the id is the first key
        end = raw.find(b'"', 7)
        if end > 7 and raw.find(b"\\", 7, end) < 0:
            return raw[7:end].decode()
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    value = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value)


def _build_index(db: sqlite3.Connection, table: str, run_dir: Path) -> None:
    db.execute(f"CREATE TABLE {table} (id TEXT PRIMARY KEY, ok INTEGER, offset INTEGER) WITHOUT ROWID")
    for ok, name in ((0, ERRORS), (1, RESULTS)):  # a success replaces a failure; a later failure an earlier
        path = run_dir / name
        if not path.exists():
            continue
        batch: list[tuple[str, int, int]] = []
        offset = 0
        with path.open("rb") as handle:
            for raw in handle:
                if raw.endswith(b"\n"):
                    ticket_id = _line_id(raw)
                    if ticket_id is not None:
                        batch.append((ticket_id, ok, offset))
                        if len(batch) >= BATCH_ROWS:
                            db.executemany(f"INSERT OR REPLACE INTO {table} VALUES (?, ?, ?)", batch)
                            batch.clear()
                offset += len(raw)
        db.executemany(f"INSERT OR REPLACE INTO {table} VALUES (?, ?, ?)", batch)
    db.commit()


class _Lookup:
    """One model's outcomes: id -> its line, through the index."""

    def __init__(self, db: sqlite3.Connection, table: str, unit: _Unit) -> None:
        self.unit = unit
        self.query = f"SELECT ok, offset FROM {table} WHERE id = ?"
        self.db = db
        self.files: dict[int, BinaryIO | None] = {}
        for ok, name in ((0, ERRORS), (1, RESULTS)):
            path = unit.run_dir / name
            self.files[ok] = path.open("rb") if path.exists() else None

    def get(self, ticket_id: str) -> tuple[bool, StoredJSON] | None:
        found = self.db.execute(self.query, (ticket_id,)).fetchone()
        if found is None:
            return None
        ok, offset = found
        handle = self.files[ok]
        assert handle is not None
        handle.seek(offset)
        return bool(ok), orjson.loads(handle.readline())

    def close(self) -> None:
        for handle in self.files.values():
            if handle is not None:
                handle.close()


def _group(unit: _Unit, found: tuple[bool, StoredJSON] | None) -> tuple[str, Row]:
    """One model's status and columns for one ticket."""
    row: Row = dict.fromkeys(_BASE + unit.answer_fields + _AFTER)
    if found is None:
        row["status"] = "pending"
        return "pending", row
    ok, line = found
    status = row["status"] = "done" if ok else "failed"
    row["attempts"] = line.get("attempts")
    if ok:
        row["output"] = line.get("output")
        for name in unit.answer_fields:
            row[name] = line.get(name)
        usage = line.get("usage") or {}
        for name in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "cache_write_tokens",
                     "reasoning_tokens"):
            row[name] = usage.get(name)
        for name in ("finish_reason", "cost_status", "model", "service_tier", "prompt_cache_saved_usd"):
            row[name] = line.get(name)
        money = line_money(line)
        row["cost_usd"] = money.cost_usd
        row["cache_hit"] = money.cache_hit
        row["cost_saved_usd"] = money.cost_saved_usd if money.cache_hit and line.get("cost_saved_usd") is not None \
            else None  # a reused answer whose first cost was unknown saved an unknown amount
    else:
        row["error_kind"] = line.get("error_kind")
        row["error_message"] = line.get("message")
        row["cost_usd"] = line_money(line).spent_usd or None  # answers paid for and turned down
        row["model"] = line.get("model_key")
    return status, row


def _number(value: object) -> float:
    """A row's count or amount (int or float), 0 when absent."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


# -- writers ------------------------------------------------------------------------------------------

def _as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return orjson.dumps(value, default=str).decode()


def inert_cell(text: str) -> str:
    """A text cell that begins like a formula, with a leading `'` (module docstring)."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


class _JsonlWriter:
    def __init__(self, path: Path, columns: list[str]) -> None:
        self.handle = path.open("wb")

    def write(self, row: Row) -> None:
        self.handle.write(orjson.dumps(row, default=str) + b"\n")

    def close(self) -> None:
        self.handle.close()


class _CsvWriter:
    """CSV, or TSV with `delimiter="\t"`; text cells made inert unless `raw_cells` (module docstring)."""

    def __init__(self, path: Path, columns: list[str], *, delimiter: str = ",", raw_cells: bool = False) -> None:
        import csv

        self.handle = path.open("w", encoding="utf-8", newline="")
        self.writer = csv.writer(self.handle, delimiter=delimiter)
        self.text = (lambda text: text) if raw_cells else inert_cell
        self.writer.writerow([self.text(c) for c in columns])
        self.columns = columns

    def _cell(self, value: object) -> object:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return value
        return self.text(value if isinstance(value, str) else _as_text(value) or "")

    def write(self, row: Row) -> None:
        self.writer.writerow([self._cell(row.get(c)) for c in self.columns])

    def close(self) -> None:
        self.handle.close()


class _ParquetWriter:
    def __init__(self, path: Path, columns: list[str]) -> None:
        require_pyarrow()
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        self.columns = columns
        self.kinds = [c.rsplit(".", 1)[-1] if not c.startswith("input.") else "input" for c in columns]
        types = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "text": pa.string()}
        self.schema = pa.schema([(c, types[self._kind(k)]) for c, k in zip(columns, self.kinds)])
        self.writer = pq.ParquetWriter(path, self.schema)
        self.batch: list[Row] = []

    @staticmethod
    def _kind(name: str) -> str:
        return "int" if name in _INT else "float" if name in _FLOAT else "bool" if name in _BOOL else "text"

    def write(self, row: Row) -> None:
        self.batch.append(row)
        if len(self.batch) >= BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        data = {}
        for column, kind in zip(self.columns, self.kinds):
            values = [row.get(column) for row in self.batch]
            if self._kind(kind) == "text":
                values = [_as_text(v) for v in values]
            data[column] = values
        self.writer.write_table(self.pa.Table.from_pydict(data, schema=self.schema))
        self.batch.clear()

    def close(self) -> None:
        self.flush()
        self.writer.close()


class _Writer(Protocol):
    def write(self, row: Row) -> None: ...

    def close(self) -> None: ...


_WRITERS: dict[str, Callable[[Path, list[str]], _Writer]] = {
    "jsonl": _JsonlWriter, "csv": _CsvWriter, "tsv": _CsvWriter, "parquet": _ParquetWriter}


# -- the export ----------------------------------------------------------------------------------------

def _input_fields(path: Path, fmt: str, id_field: str, skip: set[int], input_format: str | None) -> list[str]:
    """The input's top-level field names, for CSV/Parquet columns (JSON Lines: one pass, first seen first)."""
    if fmt == "parquet":
        return parquet_columns(path)
    if fmt in ("csv", "tsv"):
        return csv_header(path, fmt)
    seen: dict[str, None] = {}
    for ticket in read_tickets(path, id_field, skip_lines=skip, input_format=input_format):
        for name in ticket.fields:
            seen.setdefault(name, None)
    return list(seen)


def _rejected_rows(run_dir: Path) -> set[int]:
    path = run_dir / REJECTS
    if not path.exists():
        return set()
    rows = set()
    with path.open("rb") as handle:
        for raw in handle:
            try:
                rows.add(int(orjson.loads(raw)["line"]))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return rows


@dataclass
class _Source:
    """What reading a run directory's rows in input order needs (`_source`)."""

    units: list[_Unit]
    input_path: Path
    declared: str | None
    id_field: str
    skip: set[int]

    @property
    def compare(self) -> bool:
        return tuple(unit.key for unit in self.units) != ("",)


def _source(run_dir: Path, input: Path | str | None) -> _Source:
    from batchrun.rundir.manifest import find_input

    units = _units(run_dir)
    first = units[0].manifest
    source = first.get("input") or {}
    found, why = find_input(units[0].run_dir, first, Path(input) if input is not None else None)
    if found is None:
        raise ExportError(f"{run_dir}: {why}: export re-reads it for the ticket order (and --with-input fields)")
    sha256, _size = file_digest(found)
    if source.get("sha256") and sha256 != source["sha256"]:
        raise ExportError(f"{found} changed since the run in {run_dir} (sha256 differs): its rows are "
                          "not that run's tickets")
    id_field = str(((first.get("job") or {}).get("fingerprint") or {}).get("id_field") or "id")
    return _Source(units, found, source.get("format"), id_field, _rejected_rows(units[0].run_dir))


def _rows(src: _Source, *, nested: bool, with_input: bool, in_fields: list[str]) -> Iterator[Row]:
    """One row per ticket of the input, in its order (module docstring). `nested`: a compare
    directory's groups under "models" and the input as an "input" object (JSON Lines, the Python
    API); else flat "<key>.<column>" and "input.<field>" columns (CSV, Parquet). The index lives
    in a temporary directory for as long as the rows are read."""
    with tempfile.TemporaryDirectory(prefix="batchrun-export-") as scratch:
        db = sqlite3.connect(os.path.join(scratch, "index.sqlite"))
        lookups: list[_Lookup] = []
        try:
            db.execute("PRAGMA journal_mode = OFF")
            db.execute("PRAGMA synchronous = OFF")
            db.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KB}")
            db.execute("PRAGMA temp_store = FILE")
            for number, unit in enumerate(src.units):
                _build_index(db, f"o{number}", unit.run_dir)
                lookups.append(_Lookup(db, f"o{number}", unit))
            for ticket in read_tickets(src.input_path, src.id_field, skip_lines=src.skip, input_format=src.declared):
                row: Row = {"id": ticket.id}
                groups: dict[str, Row] = {}
                for lookup in lookups:
                    _status, group = _group(lookup.unit, lookup.get(ticket.id))
                    if not src.compare:
                        row.update(group)
                    elif nested:
                        groups[lookup.unit.key] = group
                    else:
                        row.update({f"{lookup.unit.key}.{k}": v for k, v in group.items()})
                if groups:
                    row["models"] = groups
                if with_input:
                    if nested:
                        row["input"] = ticket.fields
                    else:
                        row.update({f"input.{name}": ticket.fields.get(name) for name in in_fields})
                yield row
        finally:
            for lookup in lookups:
                lookup.close()
            db.close()


_COUNTED = ("status", "cache_hit", "prompt_tokens", "cached_tokens", "cache_write_tokens", "prompt_cache_saved_usd")


def _groups_of(row: Row, keys: tuple[str, ...], compare: bool) -> list[Mapping[str, object]]:
    """Each model's group of a row (the row itself for a single run), nested or flat: what the
    export's counts read (status, and the prompt-cache token kinds of a done answer)."""
    if not compare:
        return [row]
    groups = row.get("models")
    if isinstance(groups, dict):
        return [group for group in groups.values() if isinstance(group, Mapping)]
    return [{name: row.get(f"{key}.{name}") for name in _COUNTED} for key in keys]


def iter_rows(run_dir: Path | str, *, with_input: bool = False, input: Path | str | None = None) -> Iterator[Row]:
    """The export's JSON Lines rows of `run_dir` as dicts, one per ticket in input order, streamed
    (RunResult.results() and to_pandas() read them); raises as export_run does."""
    return _rows(_source(Path(run_dir), input), nested=True, with_input=with_input, in_fields=[])


def export_run(run_dir: Path | str, out: Path | str | None = None, fmt: str = "jsonl", *,
               with_input: bool = False, input: Path | str | None = None, raw_cells: bool = False) -> ExportResult:
    """Write the export of `run_dir` (see the module docstring); raises ExportError (NotARunDirError for
    a path that holds no run). The input is found from the manifest, from any working directory
    (rundir.manifest.find_input); `input` overrides it."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r} (one of: {', '.join(EXPORT_FORMATS)})")
    run_dir = Path(run_dir)
    src = _source(run_dir, input)
    keys = tuple(unit.key for unit in src.units)
    in_fmt = input_format_of(src.input_path, src.declared)
    in_fields = (_input_fields(src.input_path, in_fmt, src.id_field, src.skip, src.declared)
                 if with_input and fmt != "jsonl" else [])
    columns = ["id"]
    for unit in src.units:
        prefix = f"{unit.key}." if src.compare else ""
        columns += [prefix + c for c in _BASE + unit.answer_fields + _AFTER]
    columns += [f"input.{name}" for name in in_fields]
    out = Path(out) if out is not None else run_dir / f"export.{fmt}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    counts = {"done": 0, "failed": 0, "pending": 0}
    kinds = {"cached": 0, "reported": 0, "write": 0, "saved": 0.0}
    rows = 0
    try:
        writer = (_CsvWriter(tmp, columns, delimiter="\t" if fmt == "tsv" else ",", raw_cells=raw_cells)
                  if fmt in ("csv", "tsv") else _WRITERS[fmt](tmp, columns))
        try:
            for row in _rows(src, nested=fmt == "jsonl", with_input=with_input, in_fields=in_fields):
                for group in _groups_of(row, keys, src.compare):
                    status = str(group["status"])
                    counts[status] += 1
                    if status == "done" and not group.get("cache_hit"):
                        kinds["cached"] += _number(group.get("cached_tokens"))
                        kinds["write"] += _number(group.get("cache_write_tokens"))
                        kinds["saved"] += _number(group.get("prompt_cache_saved_usd"))
                        if group.get("cached_tokens") is not None:
                            kinds["reported"] += _number(group.get("prompt_tokens"))
                writer.write(row)
                rows += 1
        finally:
            writer.close()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return ExportResult(path=out, format=fmt, rows=rows, done=counts["done"], failed=counts["failed"],
                        pending=counts["pending"], models=keys, cached_tokens=int(kinds["cached"]),
                        cache_reported_prompt_tokens=int(kinds["reported"]), cache_write_tokens=int(kinds["write"]),
                        prompt_cache_saved_usd=float(kinds["saved"]))
