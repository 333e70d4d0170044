"""What the in-flight journal costs per request: one unbuffered append to inflight.jsonl.

    python benchmarks/journal_write.py [--entries 100000]

Appends N entries with `checkpoint.InflightJournal.note` (what the coordinator
does before each request is sent) into a temporary run directory and prints
the mean time per entry and the bytes per entry.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batchrun.rundir.layout import INFLIGHT
from batchrun.rundir.journal import InflightJournal  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    n = parser.parse_args().entries
    run_dir = Path(tempfile.mkdtemp(prefix="batchrun-journal-"))
    try:
        journal = InflightJournal(run_dir, 1)
        journal.open()
        t0 = time.perf_counter()
        for i in range(n):
            journal.note(f"T{i:07d}", 1)
        elapsed = time.perf_counter() - t0
        journal.close()
        size = (run_dir / INFLIGHT).stat().st_size
        print(f"{elapsed / n * 1e6:.2f} us per journal entry ({n:,} entries, {size / n:.0f} bytes each)")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
