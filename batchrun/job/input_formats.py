"""Reading tickets from CSV, TSV and Parquet: rows streamed one chunk at a time.

JSON Lines stays in tickets.py; this module reads the other formats a job's
`input` may be in, and tickets.py dispatches to it (`scan_input`,
`read_tickets`), so the one-pass check, the bad-input rules and the resume
plan are the same for every format.

    input_format_of(path, declared)   "jsonl", "csv", "tsv" or "parquet": the
                                      job's `input_format`, else the file's
                                      extension (.jsonl/.ndjson/.json, .csv,
                                      .tsv/.tab, .parquet/.pq), else "jsonl"
    iter_rows(path, fmt, ...)         (row number, row or ValueError) in file
                                      order; row 1 is the first data row
    describe_row(row, line)           "row 7" (Parquet) or "row 7 (line 9)"
                                      (CSV/TSV), for error messages
    csv_header / parquet_columns      a file's field names (export --with-input)

CSV and TSV (stdlib `csv`): the first row is the header and gives the field
names; every value is a string. The file is read as UTF-8 (a BOM is dropped)
with invalid bytes kept as surrogates, so a row with bad bytes is reported as
bad input and the rows after it still read. A row with more or fewer fields
than the header, a row the csv module cannot parse (a field over
`max_line_bytes`, a NUL byte) and a blank row are bad rows. Column names with
a dot are not split: `{customer.tier}` finds nested fields only in JSON Lines
and Parquet.

Parquet (pyarrow, the optional extra `batchrun[parquet]`, imported on first
use): read one row group at a time, in batches of at most BATCH_ROWS rows, so
memory is bounded by a row group, never the file. Structs become nested
objects (a template's `{customer.tier}` reads a struct column `customer`),
lists become lists, and values keep their types (an int64 id stays an
integer). With `only` (the scan's dispatch map) row groups holding no row to
send are not read at all.

Row numbers count data rows from 1 (the header of a CSV file is not a row).
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Iterator

from batchrun.errors import TicketError
from batchrun.records import Fields

if TYPE_CHECKING:
    import pyarrow.parquet as pq  # an optional extra without type information

FORMATS = ("jsonl", "csv", "tsv", "parquet")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv",
               ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}
BATCH_ROWS = 4096  # Parquet rows turned into Python objects at a time


def input_format_of(path: Path, declared: str | None = None) -> str:
    """The format of an input: `declared` when given, else from the extension (see module docstring)."""
    if declared:
        return declared
    suffixes = [s.lower() for s in Path(path).suffixes]
    for suffix in reversed(suffixes):
        if suffix in _EXTENSIONS:
            return _EXTENSIONS[suffix]
    return "jsonl"


def require_pyarrow() -> ModuleType:
    """pyarrow.parquet, or a TicketError saying how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TicketError("reading or writing Parquet needs pyarrow: pip install 'batchrun[parquet]'") from None
    return pq


def describe_row(row: int, line: int | None = None) -> str:
    return f"row {row}" if line is None else f"row {row} (line {line})"


class _CsvRows:
    """Data rows of a CSV/TSV file with the line each starts on."""

    def __init__(self, path: Path, delimiter: str, max_field_bytes: int) -> None:
        self.path = path
        self.delimiter = delimiter
        csv.field_size_limit(max(max_field_bytes, 1 << 16))

    def __iter__(self) -> Iterator[tuple[int, int, Fields | ValueError]]:
        try:
            handle = self.path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="")
        except OSError as exc:
            raise TicketError(f"{self.path}: cannot read input: {exc.strerror}") from None
        with handle:
            reader = csv.reader(handle, delimiter=self.delimiter, strict=True)
            try:
                header = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise TicketError(f"{self.path}: line 1: cannot read the header row: {exc}") from None
            bad = [name for name in header if _has_surrogates(name)]
            if bad:
                raise TicketError(f"{self.path}: line 1: the header row is not valid UTF-8")
            if not any(name.strip() for name in header):
                raise TicketError(f"{self.path}: line 1: the header row is empty (it names the fields)")
            dupes = sorted({name for name in header if header.count(name) > 1})
            if dupes:
                raise TicketError(f"{self.path}: line 1: the header names {', '.join(map(repr, dupes))} twice")
            width = len(header)
            row_no = 0
            last_line = reader.line_num
            while True:
                start = last_line + 1
                try:
                    values = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    row_no += 1
                    last_line = reader.line_num
                    yield row_no, start, ValueError(f"cannot parse the row: {exc}")
                    continue
                row_no += 1
                last_line = reader.line_num
                if not values or (len(values) == 1 and not values[0].strip() and width > 1):
                    yield row_no, start, ValueError("blank row")
                    continue
                if len(values) != width:
                    yield row_no, start, ValueError(f"{len(values)} field(s), the header has {width}")
                    continue
                if any(_has_surrogates(value) for value in values):
                    yield row_no, start, ValueError("invalid UTF-8")
                    continue
                yield row_no, start, dict(zip(header, values))


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _parquet_file(path: Path) -> pq.ParquetFile:
    parquet = require_pyarrow()
    import pyarrow

    try:
        return parquet.ParquetFile(path)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) or not path.exists():
            raise TicketError(f"{path}: cannot read input: No such file or directory") from None
        raise TicketError(f"{path}: not a readable Parquet file: {exc}") from None
    except pyarrow.ArrowException as exc:
        raise TicketError(f"{path}: not a readable Parquet file: {exc}") from None


def parquet_columns(path: Path) -> list[str]:
    """The top-level column names of a Parquet file."""
    return list(_parquet_file(path).schema_arrow.names)


def csv_header(path: Path, fmt: str) -> list[str]:
    """The header row of a CSV/TSV file ([] for an empty file)."""
    try:
        with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as handle:
            return next(csv.reader(handle, delimiter="\t" if fmt == "tsv" else ","), [])
    except OSError as exc:
        raise TicketError(f"{path}: cannot read input: {exc.strerror}") from None


def _parquet_rows(path: Path, only: bytearray | None) -> Iterator[tuple[int, None, Fields | ValueError]]:
    import pyarrow

    handle = _parquet_file(path)
    meta = handle.metadata
    first_row = 1
    try:
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            end = first_row + rows  # exclusive
            if only is not None:
                if first_row >= len(only):
                    return
                if only.find(1, first_row, min(end, len(only))) < 0:  # nothing to send in this group
                    first_row = end
                    continue
            row_no = first_row
            for batch in handle.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], use_threads=False):
                for row in batch.to_pylist():
                    yield row_no, None, row
                    row_no += 1
            first_row = end
    except pyarrow.ArrowException as exc:
        raise TicketError(f"{path}: row group {group}: cannot read: {exc}") from None


def iter_rows(path: Path, fmt: str, *, max_field_bytes: int = 1_000_000,
              only: bytearray | None = None) -> Iterator[tuple[int, int | None, Fields | ValueError]]:
    """(row number, line the row starts on or None, the row as a dict or ValueError why it is bad).

    `only`: the scan's dispatch map (row number -> 1 when the row is to be
    sent); for Parquet, row groups with no marked row are not read."""
    if fmt in ("csv", "tsv"):
        yield from _CsvRows(path, "\t" if fmt == "tsv" else ",", max_field_bytes)
    elif fmt == "parquet":
        yield from _parquet_rows(path, only)
    else:  # pragma: no cover - tickets.py reads JSON Lines itself
        raise ValueError(f"not a row format: {fmt}")
