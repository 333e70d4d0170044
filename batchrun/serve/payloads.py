"""The JSON the pages get, as TypedDicts (types only).

    Listing        GET /api/runs: every run's line (RunLine), grouped by job
    RunSnapshot    GET /api/runs/{name} and each event of its stream: the run's line, one
                   UnitDetail per run directory, and its grading once stopped (GradingView)
    GradeResult    what `python -m batchrun.serve.grade` prints (runs.grade_run)

A run's `status` is rundir.status_from_counts (`batchrun status --json`), as it is.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from batchrun.analysis.documents import (
    AccuracyDiff,
    Answered,
    Change,
    Changed,
    Confusion,
    DiffSide,
    StoredJSON,
)
from batchrun.analysis.stats import Percentiles


class FailureMessage(TypedDict):
    """One of the latest failures of an error kind (follow.UnitNumbers)."""

    id: str
    message: str | None
    status_code: int | None
    time: str | None
    run: int | None


class FailedTicket(FailureMessage):
    """A failed ticket on a run's page (follow.UnitNumbers.failed_tickets): its latest failure."""

    kind: str
    attempts: int


class FailedTicketShown(FailedTicket):
    """The same as a page lists it (runs.RunWatch.detail)."""

    permanent: bool


class FailureGroup(TypedDict):
    kind: str
    tickets: int  # failed tickets of this kind now
    lines: int  # errors.jsonl lines of this kind, every run
    permanent: bool  # a re-run keeps these tickets (errors.PERMANENT_KINDS)
    latest: list[FailureMessage]  # newest first


class RecentAnswer(TypedDict):
    id: str
    answer: str | None  # at most 200 characters
    model: str | None


class SeriesPoints(TypedDict):
    """The latest run over time (follow.TimeSeries): one value per bucket of `width_s` seconds."""

    origin: float | None  # epoch seconds of the first bucket
    width_s: float
    t: list[float]  # seconds since the origin
    requests_per_s: list[float]
    output_tokens_per_s: list[float]
    results_per_s: list[float]
    failed_per_s: list[float]
    concurrency: list[float]  # busy time / wall time (Little's law)
    results: list[int]


class LatencyView(Percentiles):
    n: int


class TokenTotals(TypedDict):
    prompt: int
    completion: int
    total: int


class BatchPart(TypedDict):
    """A batch-mode part, from whatever layout its file has: values as the file gives them."""

    part: object
    state: str
    requests: object
    completed: object
    failed: object
    model: object


class UnitDetail(TypedDict):
    """One run directory of a run."""

    key: str  # "" for a plain run, the [[models]] name in a compare directory
    model: str | None
    state: str
    status: StoredJSON  # rundir.status_from_counts
    progress: float | None
    requests: int  # sent by batchrun, as the lines record them (all runs)
    upstream_requests: int | None  # what the endpoint (a LiteLLM proxy) reported sending upstream; None: never said
    latest_run: int | None
    tokens: TokenTotals
    latency_ms: LatencyView
    ttft_ms: LatencyView | None
    series: SeriesPoints
    failures: list[FailureGroup]
    failed_tickets: list[FailedTicketShown]  # the latest failed tickets: a click shows one
    max_cost_usd: float | None
    concurrency_settled: int | None
    batches: list[BatchPart] | None
    recent_answers: list[RecentAnswer] | None  # only with --show-text
    caught_up: bool
    last_finished_at: str | None


class GradedModel(TypedDict):
    key: str
    model: str
    accuracy: float | None
    graded: int
    correct: int
    macro_f1: float | None
    confusion: Confusion | None
    gold_note: str | None


class DiffView(TypedDict):
    """The part of diffing's PairDiff the page shows."""

    a: DiffSide
    b: DiffSide
    accuracy: AccuracyDiff
    changed: Changed
    answered: Answered
    cost_usd: Change
    latency_p50_ms: Change
    latency_p95_ms: Change


class GradeResult(TypedDict):
    models: list[GradedModel]
    diff: list[DiffView] | None  # against the previous run of the same job
    note: str | None  # why something is missing


class GradingView(TypedDict):
    models: list[GradedModel]
    previous: str | None  # the run compared against
    diff: list[DiffView] | None  # changed examples only with --show-text
    note: str | None


class RunLine(TypedDict):
    """A run's line in the listing (a run directory or a compare directory)."""

    name: str
    kind: str  # "run" or "compare"
    job: str | None
    state: str
    models: list[str] | None  # a compare directory's keys
    tickets: int
    done: int
    failed: int
    pending: int
    progress: float | None
    cost_usd: float
    unpriced_results: int
    accuracy: float | None
    started_at: str | None
    finished_at: str | None


class RunSnapshot(RunLine):
    status: NotRequired[StoredJSON]  # a plain run: exactly `batchrun status --json`
    units: list[UnitDetail]
    grading: GradingView | None


class JobRuns(TypedDict):
    job: str
    runs: list[str]  # run names, newest first


class Listing(TypedDict):
    root: str
    runs: list[RunLine]
    jobs: list[JobRuns]
