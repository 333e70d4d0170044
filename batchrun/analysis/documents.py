"""The JSON documents analysis builds, as TypedDicts (types only), and what it reads back.

    StoredJSON    a JSON object read back from a run directory: a checkpoint line, a manifest
    Report        `batchrun report` (report.json): one UnitReport per model, their agreement
    Diff          `batchrun diff`: one PairDiff per pair of models compared
    Plan          `batchrun plan`: one PlanRow per model, the totals and the budget

Each document is built in one place (grading.analyze, diffing.diff_analyses, plan.make_plan)
and read by its formatter, the charts, the live pages and the commands.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NotRequired, TypeAlias, TypedDict

#: A JSON object read back from a run directory (a results/errors line, manifest.json): any
#: batchrun version may have written it, so a key may be missing, and each value is checked
#: (or trusted, as the writer's own) where it is read.
StoredJSON: TypeAlias = Mapping[str, Any]


# -- the report (grading.py) -----------------------------------------------------------------


class LatencyStats(TypedDict):
    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    max: float | None
    n: int


class LabelScores(TypedDict):
    precision: float
    recall: float
    f1: float
    support: int  # gold
    predicted: int
    true_positives: int


class MacroScores(TypedDict):
    precision: float | None
    recall: float | None
    f1: float | None


class Confusion(TypedDict):
    rows: list[str]  # gold labels
    columns: list[str]  # predicted labels, then "(other)" when some answer was outside them
    matrix: list[list[int]]


class Grading(TypedDict):
    graded: int
    correct: int
    accuracy: float | None
    labels: list[str]
    per_label: dict[str, LabelScores]
    macro: MacroScores
    confusion: Confusion
    unexpected_predictions: dict[str, int]  # the most frequent answers outside the label set
    unexpected_total: int


class Agreement(TypedDict):
    both_answered: int
    agree: int
    rate: float | None
    kappa: float | None


class AgreementPair(Agreement):
    a: str  # unit keys
    b: str


class Throughput(TypedDict):
    results: int
    wall_s: float
    results_per_s: float | None


class TokenCounts(TypedDict):
    prompt: int
    completion: int
    total: int
    cached: int  # of prompt: read from the provider's prompt cache
    cache_write: int  # of prompt: written to it
    reasoning: int  # of completion


class PromptCacheUse(TypedDict):
    cached_share: float | None  # cached / prompt tokens of the results whose provider said (None: none said)
    saved_usd: float  # what prompt caching saved


class ReportCost(TypedDict):
    usd: float  # results, rejected answers and errors that were paid for
    results_usd: float
    rejected_usd: float
    unpriced_results: int
    by_status: dict[str, int]  # cost_status -> results
    per_1000_tickets_usd: float | None


class CacheUse(TypedDict):
    hits: int
    saved_usd: float


class ResultNumbers(TypedDict):
    """The numbers of a set of result lines (a unit, or one answering model or route of it)."""

    done: int
    latency_ms: LatencyStats | None
    ttft_ms: LatencyStats | None
    throughput: dict[str, Throughput]  # run number -> its results over its wall time
    tokens: TokenCounts
    cost: ReportCost
    cache: CacheUse
    prompt_cache: PromptCacheUse
    service_tiers: dict[str, int]  # results by the tier that answered them
    attempts: int
    truncated: int
    answered_after_fallback: int
    label_distribution: dict[str, int]  # answer -> results, most frequent first
    grading: Grading | None


class Brief(TypedDict):
    """One answering model's or route's line of a unit report."""

    done: int
    accuracy: float | None
    graded: int | None
    macro_f1: float | None
    latency_ms: LatencyStats | None
    cost_usd: float
    per_1000_tickets_usd: float | None
    label_distribution: dict[str, int]
    grading: Grading | None


class UnitCounts(TypedDict):
    tickets: int
    done: int
    failed: int
    not_run: int
    failed_by_kind: dict[str, int]


class GoldInfo(TypedDict):
    field: str | None
    input: str | None
    tickets_with_gold: int
    results_without_gold: int
    input_changed: bool
    note: str | None  # why nothing was graded


class UnitReport(ResultNumbers):
    """One model's run directory (a plain run, or one model of a compare directory)."""

    key: str
    model: str
    run_dir: str
    job: str | None  # from the manifest
    state: str | None
    run: int | None
    endpoint: str | None
    counts: UnitCounts
    gold: GoldInfo
    by_model: NotRequired[dict[str, Brief]]  # with fallbacks or routes
    by_route: NotRequired[dict[str, Brief]]


class Report(TypedDict):
    path: str
    kind: str  # "run" or "compare"
    models: list[UnitReport]
    agreement: list[AgreementPair]  # compare directories
    charts: NotRequired[list[str]]  # `batchrun report --out`: the chart files written


# -- the diff (diffing.py) ---------------------------------------------------------------------


class Change(TypedDict):
    a: float | None
    b: float | None
    delta: float | None
    relative: float | None


class DiffSide(TypedDict):
    key: str
    model: str
    run_dir: str


class Answered(TypedDict):
    a: int
    b: int
    both: int
    only_a: int
    only_b: int


class FailedCounts(TypedDict):
    a: int
    b: int


class ChangedExample(TypedDict):
    id: str
    a: str
    b: str
    gold: str | None


class Changed(TypedDict):
    count: int
    rate: float | None
    fixed: int
    broken: int
    wrong_both: int
    examples: list[ChangedExample]


class Shift(TypedDict):
    a: int
    b: int
    share_a: float
    share_b: float
    shift_points: float


class OnCommon(TypedDict):
    tickets: int
    a: float
    b: float
    delta_points: float


class AccuracyDiff(TypedDict):
    a: float | None
    b: float | None
    graded_a: int | None
    graded_b: int | None
    correct_a: int | None
    correct_b: int | None
    delta_points: float | None
    on_common: OnCommon | None  # when the graded tickets differ: both on the tickets graded in both


class PairDiff(TypedDict):
    a: DiffSide
    b: DiffSide
    answered: Answered
    failed: FailedCounts
    changed: Changed
    distribution: dict[str, Shift]  # answer -> its share in A and B
    accuracy: AccuracyDiff
    macro_f1: Change
    cost_usd: Change
    cost_per_1000_usd: Change
    latency_p50_ms: Change
    latency_p95_ms: Change


class AccuracyCheck(TypedDict):
    max_drop_points: float
    exit_code: int
    lines: list[str]


class Diff(TypedDict):
    a: str  # the two paths
    b: str
    pairs: list[PairDiff]
    notes: list[str]
    accuracy_check: NotRequired[AccuracyCheck | None]  # `batchrun diff --json`: --fail-on-accuracy-drop's verdict


# -- the plan (plan.py) ------------------------------------------------------------------------


class PlanTickets(TypedDict):
    input: int
    limit: int | None
    selected: int
    already_done: int
    failed_before_retried: int
    failed_before_skipped: int
    permanent_kept: int  # failed for good in an earlier run: kept (--retry-permanent sends them)
    to_do: int  # this model's (a routed job: the tickets its rules send here)
    job_to_do: int
    bad_lines: int


class InputTokens(TypedDict):
    total: int
    exact: bool
    sampled: int
    counted_as: str  # "tokenizer" or "simulator"
    mean_per_ticket: float
    standard_error: int
    finished_mean_reported: float | None


class OutputTokens(TypedDict):
    total: int
    per_ticket: float
    source: str  # finished, simulator, max_tokens, assumed
    finished_results: int
    max_tokens: int | None


class PlanPrice(TypedDict):
    source: str | None  # job, litellm, finished; None: unpriced
    label: str
    per_ticket_usd: float | None
    priced_results: int | None
    input_per_million_usd: float | None
    output_per_million_usd: float | None


class BatchPrice(TypedDict):
    window: str
    price_source: str | None
    online_cost_usd: float | None
    input_per_million_usd: float | None
    output_per_million_usd: float | None
    parts: int


class PlanDuration(TypedDict):
    seconds: float
    bound: str  # the bound that decides: concurrency, rpm or tpm
    bounds_s: dict[str, float]
    latency_ms: float
    latency_source: str
    latency_results: int
    latency_endpoint: str | None
    concurrency: int | str
    max_in_flight: int
    rpm: int | None
    tpm: int | None


class PlanCachedTokens(TypedDict):
    """The plan's forecast of prompt-cache reads and writes (tier_forecast.forecast_cache)."""

    total: int
    writes: int
    share: float | None  # of the input tokens
    source: str  # "finished" (a pilot) or "prefix" (the job's static prefix)
    prefix_tokens: int | None
    note: str


class TierForecast(TypedDict, total=False):
    """The tickets to do at one tier: cost and time, or why it is unavailable."""

    cost_usd: float | None
    price_source: str
    seconds: float
    time: str
    unavailable: str


class PlanRow(TypedDict):
    key: str
    model: str
    run_dir: str
    route: str | None
    tickets: PlanTickets
    input_tokens: InputTokens
    output_tokens: OutputTokens
    price: PlanPrice
    cost_usd: float | None
    ceiling_usd: float | None  # every answer at max_tokens
    batch: BatchPrice | None  # batch mode: cost_usd is at the batch price, the online one is here
    cached_tokens: PlanCachedTokens
    service_tier: str | None
    tiers: dict[str, TierForecast] | None  # "standard", "flex", "batch" (None: nothing to do)
    spent_usd: float
    duration: PlanDuration
    notes: list[str]


class BudgetScope(TypedDict):
    name: str
    run_dir: str
    spent_usd: float
    expected_usd: float | None
    ceiling_usd: float | None
    unpriced_models: list[str]
    over: bool
    ceiling_over: bool


class PlanTotal(TypedDict):
    to_do: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    spent_usd: float
    seconds: float


class PlanBudget(TypedDict):
    max_cost_usd: float | None
    over: bool
    unpriced_models: list[str]
    scopes: list[BudgetScope]


class Plan(TypedDict):
    job: str
    job_path: str | None
    mode: str  # single, compare, route
    input: str
    run_dir: str
    limit: int | None
    skip_failed: bool
    simulator: bool
    simulated: bool
    models: list[PlanRow]
    total: PlanTotal
    budget: PlanBudget
