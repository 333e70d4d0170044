"""Attempt accounting: every request that may leave the machine is journaled before it can
leave, and counted once, whichever executor sends it.

The in-flight journal (rundir/journal.py) is what lets the next run name the
tickets that may be billed twice after a crash; the count is the run's
`requests`. Executors differ only in when they may count:

    count(id, attempt)            the attempt is about to be sent from here, or
                                  permitted to a process or actor that waits for
                                  the permit: journal, then count
    journal_ahead(id)             a ticket handed to a worker process that sends
                                  its attempts without asking: journaled now
                                  (the entry covers its retries) ...
    count_reported(id, attempts)  ... and its attempts counted from its outcome
    uncount(id, attempt)          counted ahead (a Ray actor's first attempt at
                                  hand-over) and never sent: out of the count and
                                  marked "unsent" in the journal
    lost(ids)                     attempts permitted on a process or actor that
                                  died before it reported on them: the provider
                                  may have billed them; the tickets are sent again
                                  and their lines say maybe_billed_before

A journal that cannot be written stops the run before anything unjournaled
leaves: `count` raises TicketAbandoned after `on_journal_failure`.
"""

from __future__ import annotations

from typing import Callable

from batchrun.analysis.stats import RunStats
from batchrun.errors import CheckpointError
from batchrun.execution.ticket_runner import TicketAbandoned
from batchrun.rundir.checkpoint import CheckpointWriter
from batchrun.rundir.journal import InflightJournal

__all__ = ["AttemptAccounting"]


class AttemptAccounting:
    """The journal and the request count of one run (module docstring)."""

    def __init__(self, stats: RunStats, journal: InflightJournal, writer: CheckpointWriter,
                 on_journal_failure: Callable[[CheckpointError], None]) -> None:
        self.stats = stats
        self.journal = journal
        self.writer = writer
        self.on_journal_failure = on_journal_failure
        self.lost_ids: list[str] = []  # tickets whose attempt was in flight where its answer was lost

    def _journal(self, ticket_id: str, attempt: int) -> None:
        try:
            self.journal.note(ticket_id, attempt)
        except OSError as exc:
            self.on_journal_failure(CheckpointError(
                f"{self.journal.path}: cannot write the in-flight journal: {exc.strerror}; nothing more is sent"))
            raise TicketAbandoned() from None

    def _add(self, attempt: int, sign: int = 1) -> None:
        self.stats.attempts += sign
        if attempt > 1:
            self.stats.retries += sign

    def count(self, ticket_id: str, attempt: int) -> None:
        """Journal the attempt, then count it: call before the request can leave."""
        self._journal(ticket_id, attempt)
        self._add(attempt)

    def journal_ahead(self, ticket_id: str) -> None:
        """Journal a ticket whose attempts another process sends without asking (counted later)."""
        self._journal(ticket_id, 1)

    def count_reported(self, ticket_id: str, attempts: int) -> None:
        """Count the attempts a process reports for a ticket journaled ahead."""
        for attempt in range(1, attempts + 1):
            self._add(attempt)

    def uncount(self, ticket_id: str, attempt: int) -> None:
        """An attempt counted ahead that was never sent: out of the count and the journal."""
        self._add(attempt, -1)
        try:
            self.journal.note_unsent(ticket_id, attempt)
        except OSError:
            pass  # the entry stays: the journal only ever over-reports

    def lost(self, ticket_ids: list[str]) -> None:
        """Attempts whose fate is unknown (their process died): the tickets run again, flagged."""
        for ticket_id in ticket_ids:
            self.writer.mark_maybe_billed(ticket_id)
        self.lost_ids += ticket_ids
