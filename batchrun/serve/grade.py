"""`python -m batchrun.serve.grade RUN_DIR [PREVIOUS_RUN_DIR]`: what the run page shows of
grading, as one JSON object on stdout (runs.grade_run).

`batchrun serve` runs it as a child process for each stopped run it grades, so
that reading every result of a run (grading.analyze holds each ticket's answer)
never stays in the server's memory, and a shutdown can simply kill it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from batchrun.serve.runs import grade_run


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python -m batchrun.serve.grade RUN_DIR [PREVIOUS_RUN_DIR]", file=sys.stderr)
        return 2
    previous = Path(argv[1]) if len(argv) == 2 else None
    sys.stdout.buffer.write(orjson.dumps(grade_run(Path(argv[0]), previous)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
