"""Text formatting for every table and line batchrun prints: each helper spelled once.

    num(value, spec=",.0f")    a number, "-" for None: num(1234.5) -> "1,234"
    pct(value, digits=1)       a fraction as percent: pct(0.123) -> "12.3%"
    usd(value)                 dollars to six places: usd(0.5) -> "$0.500000"
    ms(value, unit="")         milliseconds, no decimals: ms(1234.4) -> "1,234";
                               ms(12, unit=" ms") -> "12 ms"
    duration(seconds)          "42 s", "3 min 05 s", "2 h 07 min"
    table(headers, rows, left=1) -> list[str]
                               aligned columns (the first `left` left-aligned, the
                               rest right-aligned), a dashed rule under the header
    kv(rows, indent="") -> list[str]
                               "label  value" lines with the labels padded
    terminal_safe(text)        ticket or model text made safe for a terminal: control,
                               format (bidi, zero-width) and separator characters shown
                               as escapes (ESC becomes the four characters \\x1b);
                               newlines kept
    error_line(exc, secrets)   "batchrun: error: ..." for stderr: keys redacted, terminal-safe

Model text and ticket fields are data: whatever a command prints passes through
`terminal_safe` (table and kv cells here, and each command's whole text), so an
answer cannot set the window title, clear the screen or reorder a line.

Every helper answers "-" for None (an unknown value is shown as unknown, never
as 0). Charts are in charts.py; percentiles (data, not text) in stats.py.
"""

from __future__ import annotations

from typing import Sequence

#: the Unicode categories a terminal acts on or that reorder or hide what it shows: control characters
#: (C0, DEL, C1; a newline stays), format characters (bidirectional embeddings, overrides, isolates and
#: marks, zero-width characters), surrogates, private use, the line and paragraph separators
_TERMINAL_ACTIVE = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def error_line(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    """The one line a command prints for an error: keys redacted, terminal-safe."""
    from batchrun.errors import redact_secrets

    return f"batchrun: error: {terminal_safe(redact_secrets(str(exc), secrets))}"


def terminal_safe(text: str) -> str:
    """`text` (ticket or model text: data) safe to print on a terminal or show on a page: each
    character of the categories above is written as its escape (ESC -> \\x1b, U+202E -> \\u202e),
    so no text can move the cursor, recolour, set the title or reorder what is shown; newlines stay."""
    if text.isprintable():  # no control, format or separator character: the common case, one C call
        return text
    import unicodedata

    out = []
    for char in text:
        if char == "\n" or unicodedata.category(char) not in _TERMINAL_ACTIVE:
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                       else f"\\U{code:08x}")
    return "".join(out)


def num(value: float | None, spec: str = ",.0f") -> str:
    """`value` through format(value, spec), "-" for None."""
    return "-" if value is None else format(value, spec)


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction (0.123) as a percentage ("12.3%"), "-" for None."""
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def usd(value: float | None) -> str:
    """Dollars with six decimals ("$0.001234"), "-" for None."""
    return "-" if value is None else f"${value:,.6f}"


def ms(value: float | None, unit: str = "") -> str:
    """Milliseconds without decimals, thousands separated, then `unit`; "-" for None."""
    return "-" if value is None else f"{value:,.0f}{unit}"


def duration(seconds: float | None) -> str:
    """A duration for a person: "42 s", "3 min 05 s", "2 h 07 min"; "-" for None (or not finite)."""
    if seconds is None or seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "-"
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, left: int = 1) -> list[str]:
    """Aligned text columns: the first `left` columns left-aligned, the rest right-aligned."""
    cells = [[terminal_safe(str(c)) for c in headers]] + [[terminal_safe(str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [cell.ljust(widths[i]) if i < left else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def kv(rows: Sequence[tuple[str, object]], indent: str = "") -> list[str]:
    """"label  value" lines, labels padded to the longest."""
    width = max(len(k) for k, _ in rows)
    return [f"{indent}{k:<{width}}  {terminal_safe(str(v))}" for k, v in rows]
