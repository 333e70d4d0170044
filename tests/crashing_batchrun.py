"""`batchrun` that kills itself (SIGKILL) at the n-th pass through a named step of a batch run.

    python tests/crashing_batchrun.py POINT[:N] run JOB ...   (POINT: batch/steps.py's POINTS)

The kill tests start this instead of `python -m batchrun.cli`: the crash point is
injected here, by replacing batch/steps.reached in this process only; nothing in
batchrun reads it from the environment.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    point, _, count = sys.argv[1].partition(":")
    limit = int(count or 1)

    from batchrun.batch import steps

    if point not in steps.POINTS:
        raise SystemExit(f"unknown step {point!r}; one of {', '.join(steps.POINTS)}")
    passes = {"n": 0}

    def reached(name: str) -> None:
        if name == point:
            passes["n"] += 1
            if passes["n"] >= limit:
                os.kill(os.getpid(), signal.SIGKILL)

    steps.reached = reached
    from batchrun.cli import main as cli

    cli(sys.argv[2:], prog_name="batchrun")


if __name__ == "__main__":
    main()
