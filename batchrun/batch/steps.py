"""The named steps of a batch-mode run, for whoever wants to watch them.

A batch run calls `reached(point)` at each step where a crash leaves a
different state behind: "building" (a line written into a part), "uploaded",
"created", "polled", "downloaded", "writing" (result lines written),
"anomalies" (a part's output lines not believed written) and "errors" (a part's
failures written). Here that does nothing. The kill tests
replace it, in a process they start themselves (tests/crashing_batchrun.py),
with a function that kills that process at the n-th pass through a point; no
setting a user can make reaches it.
"""

from __future__ import annotations

__all__ = ["POINTS", "reached"]

POINTS = ("building", "uploaded", "created", "polled", "downloaded", "writing", "anomalies", "errors")


def reached(point: str) -> None:
    """A batch run passed `point` (one of POINTS)."""
    return None
