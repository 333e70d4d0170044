"""The run directory: the files a run leaves, written safely and read by everyone.

    layout.py      file names; open_no_follow; write_atomic (temp + fsync + rename, no link followed)
    lines.py       the one JSONL reader (iter_lines), the resume scan (scan_jsonl), done/failed ids
    checkpoint.py  the write side: lock, repair of a torn last line, the single writer of result
                   and error lines, the input index, rejects
    journal.py     the in-flight journal: requests that may have been paid for when a run died
    manifest.py    manifest.json, read and written atomically
    status.py      the read side of a whole run directory: counts, compare units, batch parts

A line's money (cost_usd, rejected cost, unpriced, cache hits, tokens) is read
by records.line_money, the one reader of it.
"""
