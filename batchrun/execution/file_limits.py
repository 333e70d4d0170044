"""File descriptors against the concurrency, before a run sends anything.

    fit_concurrency(in_flight) -> FileLimitFit   the in-flight requests this process can hold

Every request in flight holds a socket, and a process may open at most `ulimit
-n` files (RLIMIT_NOFILE). With fewer than a request needs, the connection
fails with EMFILE ("too many open files") before it reaches the server: a run
at concurrency 1,000 under `ulimit -n 256` would fail hundreds of tickets with
errors that point nowhere. So before the run: a process needs about
`in_flight + BASE_DESCRIPTORS` (litellm's import, checkpoint files, the
journal, pipes, the event loop); a soft limit below that is raised (as far as
the hard limit allows: any process may); if the hard limit is still too low,
the concurrency is lowered to what fits, and the caller says so in one line
(the careful choice for a 3 a.m. cron run: it runs, slower, and the log says
why and how to fix it). A limit that runs out anyway (other processes, ENFILE:
the whole system's table) is error kind `local_resource` during the run
(providers/error_mapping.py): not retried, and the run stops admitting.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

__all__ = ["BASE_DESCRIPTORS", "FileLimitFit", "fit_concurrency"]

BASE_DESCRIPTORS = 128  # what a run holds besides its connections (measured: about 60 after litellm's import)
MIN_IN_FLIGHT = 1


@dataclass(frozen=True)
class FileLimitFit:
    in_flight: int  # what this process may hold in flight (the asked number when it fits)
    soft_before: int
    soft: int  # the soft limit now
    hard: int
    needed: int

    @property
    def lowered(self) -> bool:
        return self.soft < self.needed

    def describe(self, asked: int, workers: int = 1) -> str:
        per = f" per process ({workers} worker processes)" if workers > 1 else ""
        return (f"this process may open at most {self.soft:,} file descriptors (ulimit -n; hard limit "
                f"{self.hard:,}) and concurrency {asked} needs about {self.needed:,}{per}: concurrency lowered "
                f"to {self.in_flight * workers}; raise the limit (ulimit -n {_round_up(self.needed)} in the shell "
                "or the cron line) to send them all at once")


def _round_up(value: int) -> int:
    size = 1024
    while size < value:
        size *= 2
    return size


def fit_concurrency(in_flight: int) -> FileLimitFit:
    """How many requests this process can hold in flight (module docstring), raising its soft
    limit where the hard one allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = in_flight + BASE_DESCRIPTORS
    infinite = resource.RLIM_INFINITY
    before = soft
    if soft != infinite and soft < needed:
        target = needed if hard == infinite else min(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # a platform that refuses: keep what there is
            pass
    if soft == infinite or soft >= needed:
        return FileLimitFit(in_flight, before, soft, hard, needed)
    return FileLimitFit(max(MIN_IN_FLIGHT, soft - BASE_DESCRIPTORS), before, soft, hard, needed)
