"""`batchrun report`: grade a run against gold labels, with latency and cost.

This module computes and returns the report (`analyze`, `build_report`) and its
text (`format_report`); run directories are read through rundir.py, the charts
are drawn by charts.py, the command is commands/report.py.

SYNOPSIS

    batchrun report RUN_DIR [--out DIR] [--gold-field FIELD] [--input PATH] [--json]

WHAT IT READS

RUN_DIR is either

  * a run directory (`manifest.json`, `results.jsonl`, `errors.jsonl`), or
  * a compare directory: `RUN_DIR/models/<model-key>/` subdirectories, each a
    run directory of its own (its manifest's `job.fingerprint.model` names
    the model). Every model gets its own section, and the report adds the
    label distribution per model and the agreement rate between every pair
    of models.

Nothing is written to RUN_DIR and no lock is taken: a run in progress can be
reported on (a torn last line is simply not counted yet).

GRADING

The gold answer of a ticket is its `--gold-field` (default: the job's
`gold_field` when the job has one, else `label`; a dotted path reaches into
nested objects: `meta.label`), read from the run's input file: the manifest's
`input.path`, or `--input PATH`. A relative manifest path is tried from the
current directory, then from each parent of RUN_DIR. When the file's sha256
differs from the one the run recorded, the report says so.

The prediction is the result's `label` (jobs with `labels`) or else its
`output`; both sides are compared after `outputs.normalize_label` (NFKC,
surrounding whitespace, quotes, brackets and punctuation stripped, case
folded): `"Bug."` and `bug` are the same answer.

    graded     results whose ticket has a gold label (failed and pending
               tickets are not graded: they are counted separately)
    accuracy   correct / graded
    per label  precision = TP / predicted, recall = TP / gold, F1 their
               harmonic mean; an undefined ratio (nothing predicted, or no
               gold ticket) counts as 0, as scikit-learn's zero_division=0 does
    macro avg  the unweighted mean over the labels (gold labels, plus the
               job's own labels that were predicted)
    confusion  rows: gold label, columns: predicted label; predictions
               outside the label set share one column, "(other)", and the
               most frequent of them are listed

When no ticket carries the gold field, the report says so and shows the
rest (counts, label distribution, latency, tokens, cost).

A run directory whose results come from several models (a routed job, or
fallbacks: the result's `model_key`, else its `model`, differs) or carry a
`route` also gets a breakdown by answering model and by route, and the count
of results answered by a fallback (`attempts_by_model` names several models).

AND ALSO

    counts     tickets in the input, done, failed (by error kind), not run yet
    latency    p50 / p95 / p99 / mean of the successful attempt (nearest rank
               over every result, exact), TTFT likewise when streamed
    throughput results per second of each run (first start to last finish)
    tokens     prompt + completion
    cost       the results' cost_usd plus rejected answers (results and
               errors lines): what was spent; cost per 1,000 tickets done

OUTPUT

A table on stdout (`--json`: the report as JSON instead). With `--out DIR`:
`DIR/report.json` and, with matplotlib (`pip install 'batchrun[plots]'`,
Agg backend), `DIR/confusion_matrix.png` (one heatmap per graded model),
`DIR/latency_histogram.png` and `DIR/throughput.png` (results finished per
second over time). Without matplotlib only report.json is written, with a
note.

Exit codes: 0; 2 when RUN_DIR is not a run or compare directory, or
`--input` cannot be read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Mapping, Sequence

from batchrun.analysis.documents import (
    Agreement,
    AgreementPair,
    Brief,
    Grading,
    LabelScores,
    LatencyStats,
    MacroScores,
    Report,
    ResultNumbers,
    StoredJSON,
    Throughput,
    UnitReport,
)
from batchrun.analysis.stats import cached_share, format_prompt_cache, percentile, round1
from batchrun.analysis.textfmt import kv, ms, num, pct, table, terminal_safe, usd
from batchrun.errors import ReportError
from batchrun.records import line_money, line_time
from batchrun.rundir.lines import iter_lines
from batchrun.rundir.status import RunUnit, find_units

DEFAULT_GOLD_FIELD = "label"
OTHER = "(other)"  # the confusion column of predictions outside the label set
EMPTY = "(empty)"  # an empty answer
TOP_UNEXPECTED = 10  # unexpected predictions listed by name


# --------------------------------------------------------------------------------------------
# Gold labels and predictions
# --------------------------------------------------------------------------------------------


def _norm(value: object) -> str | None:
    """The comparable form of a gold value or an answer; None for no value."""
    from batchrun.job.answer_checks import normalize_label

    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        value = "true" if value else "false"
    text = normalize_label(str(value))
    return text


def prediction(line: StoredJSON) -> str:
    """A result line's answer: its `label`, else its `output`, normalized ("(empty)" if blank)."""
    value = line.get("label")
    if not isinstance(value, str):
        value = line.get("output")
    text = _norm(value) if isinstance(value, str) else None
    return text or EMPTY


def _field(obj: Mapping[str, object], path: str) -> object:
    if path in obj:
        return obj[path]
    value: object = obj
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


@dataclass
class GoldLabels:
    path: Path
    field: str
    labels: dict[str, str]  # ticket id -> normalized gold label
    tickets: int  # parseable tickets with an id
    sha256: str


def load_gold(path: Path, id_field: str = "id", gold_field: str = DEFAULT_GOLD_FIELD) -> GoldLabels:
    """Gold labels from an input file, read as a stream (bad lines passed over)."""
    import orjson

    digest = hashlib.sha256()
    labels: dict[str, str] = {}
    tickets = 0
    try:
        handle = Path(path).open("rb")
    except OSError as exc:
        raise ReportError(f"{path}: cannot read input: {exc.strerror}") from None
    with handle:
        for raw in handle:
            digest.update(raw)
            try:
                obj = orjson.loads(raw.removeprefix(b"\xef\xbb\xbf") if tickets == 0 else raw)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            ticket_id = obj.get(id_field)
            if isinstance(ticket_id, bool) or not isinstance(ticket_id, (str, int)) or ticket_id == "":
                continue
            tickets += 1
            gold = _norm(_field(obj, gold_field))
            if gold:
                labels.setdefault(str(ticket_id), gold)
    return GoldLabels(Path(path), gold_field, labels, tickets, digest.hexdigest())


def resolve_gold_field(unit: RunUnit, override: str | None) -> str:
    """--gold-field, else the job's `gold_field` (manifest, or the job file via getattr), else "label"."""
    if override:
        return override
    job_info = unit.manifest.get("job") or {}
    if isinstance(job_info.get("gold_field"), str) and job_info["gold_field"]:
        return job_info["gold_field"]
    job_path = job_info.get("path")
    if isinstance(job_path, str) and Path(job_path).is_file():
        try:
            from batchrun.job.spec import load_job

            value = getattr(load_job(job_path), "gold_field", None)
        except Exception:  # an edited or moved job file: fall back to the default
            value = None
        if isinstance(value, str) and value:
            return value
    return DEFAULT_GOLD_FIELD


def resolve_input(unit: RunUnit, override: Path | None) -> tuple[Path | None, str | None]:
    """(the input file, None) or (None, why not): rundir.manifest.find_input, from any directory."""
    from batchrun.rundir.manifest import find_input

    if override is not None and not Path(override).is_file():
        raise ReportError(f"{override}: no such input file (--input)")
    found, why = find_input(unit.run_dir, unit.manifest, override)
    if found is not None:
        return found, None
    recorded = (unit.manifest.get("input") or {}).get("path")
    if not recorded:
        return None, why
    return None, f"input {recorded} (from the manifest) not found: pass --input PATH to grade"


# --------------------------------------------------------------------------------------------
# Metrics: pure functions
# --------------------------------------------------------------------------------------------


def latency_stats(values: Iterable[float]) -> LatencyStats | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return {"p50": round1(percentile(ordered, 50)), "p95": round1(percentile(ordered, 95)),
            "p99": round1(percentile(ordered, 99)), "mean": round1(sum(ordered) / len(ordered)),
            "max": round1(ordered[-1]), "n": len(ordered)}


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def classification_metrics(pairs: Iterable[tuple[str, str]], job_labels: Sequence[str] = ()) -> Grading:
    """Accuracy, per-label precision/recall/F1, macro averages and the confusion matrix.

    `pairs` are (gold, predicted), both normalized. The label set is the gold
    labels (sorted) plus, after them, the job's labels that were predicted but
    never gold; other predictions go to the "(other)" column."""
    pairs = list(pairs)
    gold_labels = sorted({g for g, _ in pairs})
    known = set(gold_labels)
    job_norm = [n for n in (_norm(label) for label in job_labels) if n]
    predicted = {p for _, p in pairs}
    labels = gold_labels + [label for label in dict.fromkeys(job_norm)
                            if label not in known and label in predicted]
    label_set = set(labels)
    index = {label: i for i, label in enumerate(labels)}
    columns = list(labels)
    unexpected: dict[str, int] = {}
    for _, p in pairs:
        if p not in label_set:
            unexpected[p] = unexpected.get(p, 0) + 1
    if unexpected:
        columns.append(OTHER)
    matrix = [[0] * len(columns) for _ in labels]
    correct = 0
    for g, p in pairs:
        column = index.get(p, len(columns) - 1)
        matrix[index[g]][column] += 1
        correct += g == p
    per_label: dict[str, LabelScores] = {}
    for label, i in index.items():
        tp = matrix[i][i]
        support = sum(matrix[i])
        predicted_n = sum(row[i] for row in matrix)
        precision = _ratio(tp, predicted_n)
        recall = _ratio(tp, support)
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_label[label] = {"precision": round(precision, 6), "recall": round(recall, 6), "f1": round(f1, 6),
                            "support": support, "predicted": predicted_n, "true_positives": tp}
    n = len(labels)

    def macro_of(key: Literal["precision", "recall", "f1"]) -> float | None:
        return round(sum(v[key] for v in per_label.values()) / n, 6) if n else None

    macro: MacroScores = {"precision": macro_of("precision"), "recall": macro_of("recall"), "f1": macro_of("f1")}
    return {
        "graded": len(pairs),
        "correct": correct,
        "accuracy": round(correct / len(pairs), 6) if pairs else None,
        "labels": labels,
        "per_label": per_label,
        "macro": macro,
        "confusion": {"rows": labels, "columns": columns, "matrix": matrix},
        "unexpected_predictions": dict(sorted(unexpected.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_UNEXPECTED]),
        "unexpected_total": sum(unexpected.values()),
    }


def agreement(a: Mapping[str, str], b: Mapping[str, str]) -> Agreement:
    """How often two models gave the same answer on the tickets both answered (and Cohen's kappa)."""
    both = [key for key in a if key in b]
    agree = sum(1 for key in both if a[key] == b[key])
    n = len(both)
    kappa = None
    if n:
        observed = agree / n
        counts_a: dict[str, int] = {}
        counts_b: dict[str, int] = {}
        for key in both:
            counts_a[a[key]] = counts_a.get(a[key], 0) + 1
            counts_b[b[key]] = counts_b.get(b[key], 0) + 1
        expected = sum(counts_a[k] * counts_b.get(k, 0) for k in counts_a) / (n * n)
        kappa = round((observed - expected) / (1 - expected), 6) if expected < 1 else None
    return {"both_answered": n, "agree": agree, "rate": round(agree / n, 6) if n else None, "kappa": kappa}


# --------------------------------------------------------------------------------------------
# One unit's numbers
# --------------------------------------------------------------------------------------------


@dataclass
class Series:
    """What charts and diffs need beyond the JSON summary (not written to report.json)."""

    predictions: dict[str, str] = field(default_factory=dict)  # id -> normalized answer
    latencies: list[float] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)  # epoch seconds
    first_start: float | None = None  # the earliest started_at, epoch seconds
    gold: GoldLabels | None = None


class _Acc:
    """Accumulates the numbers of a set of result lines."""

    def __init__(self) -> None:
        self.done = 0
        self.latencies: list[float] = []
        self.ttfts: list[float] = []
        self.prompt = self.completion = self.total = 0
        self.cached = self.cache_write = self.reasoning = 0  # token kinds (of prompt, of completion)
        self.cache_reported_prompt = 0  # prompt tokens of results whose provider said what it cached
        self.prompt_cache_saved = 0.0
        self.tiers: dict[str, int] = {}  # results by the service tier that answered them
        self.cost = 0.0
        self.rejected_cost = 0.0
        self.priced = self.unpriced = 0
        self.cost_status: dict[str, int] = {}
        self.attempts = 0
        self.truncated = 0
        self.fallbacks = 0  # results answered by a fallback model (attempts_by_model names several)
        self.cache_hits = 0  # reused answers (cache_hit): no request, no latency, no tokens used
        self.cost_saved = 0.0  # their cost_saved_usd
        self.distribution: dict[str, int] = {}
        self.pairs: list[tuple[str, str]] = []
        self.runs: dict[object, list[float]] = {}  # the line's run -> [first start, last finish, results]

    def add(self, line: StoredJSON, pred: str, gold: str | None) -> None:
        self.done += 1
        money = line_money(line)
        hit = money.cache_hit
        if hit:
            self.cache_hits += 1
            self.cost_saved += money.cost_saved_usd
        latency = line.get("latency_ms")
        if isinstance(latency, (int, float)) and not hit:
            self.latencies.append(float(latency))
        ttft = line.get("ttft_ms")
        if isinstance(ttft, (int, float)):
            self.ttfts.append(float(ttft))
        self.prompt += money.prompt_tokens
        self.completion += money.completion_tokens
        self.total += money.total_tokens
        self.cached += money.cached_tokens
        self.cache_write += money.cache_write_tokens
        self.reasoning += money.reasoning_tokens
        self.cache_reported_prompt += money.prompt_tokens if money.cache_reported else 0
        self.prompt_cache_saved += money.prompt_cache_saved_usd
        if money.service_tier is not None:
            self.tiers[money.service_tier] = self.tiers.get(money.service_tier, 0) + 1
        if money.cost_usd is not None:
            self.cost += money.cost_usd
            self.priced += 1
        else:
            self.unpriced += 1
        self.rejected_cost += money.rejected_cost_usd
        status = str(line.get("cost_status") or "unknown")
        self.cost_status[status] = self.cost_status.get(status, 0) + 1
        self.attempts += int(line.get("attempts") or 0)
        self.truncated += bool(line.get("truncated"))
        by_model = line.get("attempts_by_model")
        self.fallbacks += isinstance(by_model, dict) and len(by_model) > 1
        self.distribution[pred] = self.distribution.get(pred, 0) + 1
        if gold is not None:
            self.pairs.append((gold, pred))
        start, end = line_time(line.get("started_at")), line_time(line.get("finished_at"))
        if end is not None:
            span = self.runs.setdefault(line.get("run"), [start if start is not None else end, end, 0])
            span[0] = min(span[0], start if start is not None else end)
            span[1] = max(span[1], end)
            span[2] += 1

    def summary(self, job_labels: Sequence[str], graded: bool, errors_cost: float = 0.0) -> ResultNumbers:
        spent = self.cost + self.rejected_cost + errors_cost
        runs: dict[str, Throughput] = {str(run): {"results": int(n), "wall_s": round(end - start, 3),
                           "results_per_s": round(n / (end - start), 2) if end > start else None}
                for run, (start, end, n) in sorted(self.runs.items(), key=lambda kv: str(kv[0]))}
        out: ResultNumbers = {
            "done": self.done,
            "latency_ms": latency_stats(self.latencies),
            "ttft_ms": latency_stats(self.ttfts),
            "throughput": runs,
            "tokens": {"prompt": self.prompt, "completion": self.completion, "total": self.total,
                       "cached": self.cached, "cache_write": self.cache_write, "reasoning": self.reasoning},
            "prompt_cache": {"cached_share": cached_share(self.cached, self.cache_reported_prompt),
                             "saved_usd": round(self.prompt_cache_saved, 9)},
            "service_tiers": dict(sorted(self.tiers.items())),
            "cost": {
                "usd": round(spent, 9),
                "results_usd": round(self.cost, 9),
                "rejected_usd": round(self.rejected_cost + errors_cost, 9),
                "unpriced_results": self.unpriced,
                "by_status": dict(sorted(self.cost_status.items())),
                "per_1000_tickets_usd": round(spent / self.priced * 1000, 6) if self.priced else None,
            },
            "cache": {"hits": self.cache_hits, "saved_usd": round(self.cost_saved, 9)},
            "attempts": self.attempts,
            "truncated": self.truncated,
            "answered_after_fallback": self.fallbacks,
            "label_distribution": dict(sorted(self.distribution.items(), key=lambda kv: (-kv[1], kv[0]))),
            "grading": classification_metrics(self.pairs, job_labels) if graded else None,
        }
        return out


def _unit_report(unit: RunUnit, gold: GoldLabels | None, gold_note: str | None) -> tuple[UnitReport, Series]:
    from batchrun.rundir.layout import ERRORS, RESULTS

    series = Series(gold=gold)
    overall = _Acc()
    by_model: dict[str, _Acc] = {}
    by_route: dict[str, _Acc] = {}
    seen: set[str] = set()
    gold_map = gold.labels if gold is not None else {}
    missing_gold = 0
    for line in iter_lines(unit.run_dir / RESULTS):
        ticket_id = str(line["id"])
        if ticket_id in seen:  # never written twice, but a hand-edited file might
            continue
        seen.add(ticket_id)
        pred = prediction(line)
        g = gold_map.get(ticket_id)
        if gold is not None and g is None:
            missing_gold += 1
        overall.add(line, pred, g)
        answered_by = str(line.get("model_key") or line.get("model") or "?")  # [[models]] name when there is one
        by_model.setdefault(answered_by, _Acc()).add(line, pred, g)
        if "route" in line:
            by_route.setdefault(str(line.get("route")), _Acc()).add(line, pred, g)
        series.predictions[ticket_id] = pred
        t = line_time(line.get("finished_at"))
        if t is not None:
            series.finished.append(t)
        t = line_time(line.get("started_at"))
        if t is not None and (series.first_start is None or t < series.first_start):
            series.first_start = t
    series.latencies = list(overall.latencies)
    failed: dict[str, StoredJSON] = {}
    errors_cost = 0.0
    for line in iter_lines(unit.run_dir / ERRORS):
        errors_cost += line_money(line).spent_usd  # answers paid for, then rejected
        if str(line["id"]) not in seen:
            failed[str(line["id"])] = line
    by_kind: dict[str, int] = {}
    for error_line in failed.values():
        kind = str(error_line.get("error_kind") or "unknown")
        by_kind[kind] = by_kind.get(kind, 0) + 1
    total = int((unit.manifest.get("input") or {}).get("tickets") or 0)
    graded = gold is not None and bool(gold.labels)
    report: UnitReport = {
        "key": unit.key,
        "model": unit.model,
        "run_dir": str(unit.run_dir),
        "job": (unit.manifest.get("job") or {}).get("name"),
        "state": unit.manifest.get("state"),
        "run": unit.manifest.get("run"),
        "endpoint": unit.manifest.get("endpoint"),
        "counts": {"tickets": total, "done": overall.done, "failed": len(failed),
                   "not_run": max(total - overall.done - len(failed), 0),
                   "failed_by_kind": dict(sorted(by_kind.items()))},
        "gold": {
            "field": gold.field if gold is not None else None,
            "input": str(gold.path) if gold is not None else None,
            "tickets_with_gold": len(gold.labels) if gold is not None else 0,
            "results_without_gold": missing_gold,
            "input_changed": (gold is not None and bool((unit.manifest.get("input") or {}).get("sha256"))
                              and gold.sha256 != unit.manifest["input"]["sha256"]),
            "note": gold_note if gold is None else (
                None if gold.labels else f"no ticket in {gold.path} has a {gold.field!r} field: nothing to grade"),
        },
        **overall.summary(unit.job_labels, graded, errors_cost),
    }
    if len(by_model) > 1 or by_route:
        report["by_model"] = {name: _brief(acc.summary(unit.job_labels, graded)) for name, acc in sorted(by_model.items())}
    if by_route:
        report["by_route"] = {name: _brief(acc.summary(unit.job_labels, graded)) for name, acc in sorted(by_route.items())}
    return report, series


def _brief(summary: ResultNumbers) -> Brief:
    grading = summary.get("grading")
    return {"done": summary["done"], "accuracy": grading.get("accuracy") if grading else None,
            "graded": grading.get("graded") if grading else None, "macro_f1": macro_f1(grading),
            "latency_ms": summary["latency_ms"],
            "cost_usd": summary["cost"]["usd"], "per_1000_tickets_usd": summary["cost"]["per_1000_tickets_usd"],
            "label_distribution": summary["label_distribution"], "grading": summary.get("grading")}


@dataclass
class Analysis:
    report: Report  # JSON-ready
    series: dict[str, Series]  # unit key -> raw series


def analyze(path: Path, *, gold_field: str | None = None, input_path: Path | None = None) -> Analysis:
    """Read a run or compare directory and compute its report (see the module docstring)."""
    kind, units = find_units(Path(path))
    cache: dict[tuple[str, str, str], GoldLabels] = {}
    reports: list[UnitReport] = []
    series: dict[str, Series] = {}
    for unit in units:
        field_name = resolve_gold_field(unit, gold_field)
        source, note = resolve_input(unit, input_path)
        gold = None
        if source is not None:
            key = (str(source.resolve()), unit.id_field, field_name)
            if key not in cache:
                cache[key] = load_gold(source, unit.id_field, field_name)
            gold = cache[key]
        report, data = _unit_report(unit, gold, note)
        reports.append(report)
        series[unit.key] = data
    pairs: list[AgreementPair] = []
    for i, a in enumerate(units):
        for b in units[i + 1:]:
            pairs.append({"a": a.key, "b": b.key,
                          **agreement(series[a.key].predictions, series[b.key].predictions)})
    return Analysis({"path": str(path), "kind": kind, "models": reports,
                     "agreement": pairs if kind == "compare" else []}, series)


def build_report(path: Path, *, gold_field: str | None = None, input_path: Path | None = None) -> Report:
    """The report as a JSON-ready dict."""
    return analyze(path, gold_field=gold_field, input_path=input_path).report


# --------------------------------------------------------------------------------------------
# The terminal table
# --------------------------------------------------------------------------------------------


def _latency_line(stats: LatencyStats | None) -> str:
    if not stats:
        return "-"
    return f"{ms(stats['p50'])} / {ms(stats['p95'])} / {ms(stats['p99'])} ms (mean {ms(stats['mean'])}, n={stats['n']:,})"


def _format_unit(m: UnitReport) -> list[str]:
    title = f"model {m['model']}" + (f" [{m['key']}]" if m["key"] != m["job"] else "")
    title += f": {m['run_dir']} (job {m['job']}, {m['state']}, run {m['run']}, endpoint {m['endpoint']})"
    lines = [title, "=" * min(len(title), 100)]
    c = m["counts"]
    counts = f"{c['tickets']:,} in input: {c['done']:,} done, {c['failed']:,} failed, {c['not_run']:,} not run yet"
    if c["failed_by_kind"]:
        counts += " (failed: " + ", ".join(f"{k} {v}" for k, v in c["failed_by_kind"].items()) + ")"
    rows = [("tickets", counts)]
    g, grading = m["gold"], m["grading"]
    if grading:
        rows.append(("gold labels", f"field {g['field']!r} of {g['input']}: {grading['graded']:,} of "
                     f"{m['done']:,} results graded" + (f", {g['results_without_gold']:,} without gold"
                                                       if g["results_without_gold"] else "")))
        if g["input_changed"]:
            rows.append(("warning", "the input file changed since the run (sha256 differs): gold labels may not match"))
        rows.append(("accuracy", f"{pct(grading['accuracy'])} ({grading['correct']:,} of {grading['graded']:,})"))
        macro = grading["macro"]
        rows.append(("macro P / R / F1", f"{num(macro['precision'], '.3f')} / {num(macro['recall'], '.3f')} / {num(macro['f1'], '.3f')}"))
    else:
        rows.append(("gold labels", f"none: {g['note']}"))
    rows.append(("latency p50/p95/p99", _latency_line(m["latency_ms"])))
    if m["ttft_ms"]:
        rows.append(("TTFT p50/p95/p99", _latency_line(m["ttft_ms"])))
    if m["throughput"]:
        rows.append(("throughput", "; ".join(
            f"run {run}: {t['results']:,} results in {t['wall_s']:,.2f} s"
            + (f" ({t['results_per_s']:,.1f}/s)" if t["results_per_s"] else "")
            for run, t in m["throughput"].items())))
    if m.get("answered_after_fallback"):
        rows.append(("fallbacks", f"{m['answered_after_fallback']:,} result(s) answered by a fallback model"))
    tok = m["tokens"]
    rows.append(("tokens", f"{tok['total']:,} ({tok['prompt']:,} prompt + {tok['completion']:,} completion)"
                 + (f"; {tok['reasoning']:,} of the completion tokens reasoning" if tok.get("reasoning") else "")))
    pc = m.get("prompt_cache") or {}
    cache_line = format_prompt_cache(tok.get("cached") or 0, pc.get("cached_share"), tok.get("cache_write") or 0,
                                     pc.get("saved_usd") or 0.0)
    if cache_line:
        rows.append(("prompt cache", cache_line))
    tiers = m.get("service_tiers") or {}
    if set(tiers) - {"default"}:
        rows.append(("service tiers", ", ".join(f"{k} {v:,}" for k, v in tiers.items())))
    cost = m["cost"]
    cost_text = f"{usd(cost['usd'])}; {usd(cost['per_1000_tickets_usd'])} per 1,000 tickets done"
    if cost["by_status"]:
        cost_text += " (cost_status: " + ", ".join(f"{k} {v:,}" for k, v in cost["by_status"].items()) + ")"
    if cost["rejected_usd"]:
        cost_text += f"; includes {usd(cost['rejected_usd'])} for rejected answers"
    if cost["unpriced_results"]:
        cost_text += f"; {cost['unpriced_results']:,} result(s) unpriced"
    rows.append(("cost", cost_text))
    cache = m.get("cache") or {}
    if cache.get("hits"):
        rows.append(("reused answers", f"{cache['hits']:,} (cache), {usd(cache['saved_usd'])} saved"))
    lines += kv(rows)
    if grading and grading["labels"]:
        lines += ["", "per label"]
        body = [[label, num(v["precision"], '.3f'), num(v["recall"], '.3f'), num(v["f1"], '.3f'), f"{v['support']:,}",
                 f"{v['predicted']:,}"] for label, v in grading["per_label"].items()]
        macro = grading["macro"]
        body.append(["macro avg", num(macro["precision"], '.3f'), num(macro["recall"], '.3f'), num(macro["f1"], '.3f'),
                     f"{grading['graded']:,}", ""])
        lines += ["  " + line for line in table(["label", "precision", "recall", "f1", "gold", "predicted"], body)]
        conf = grading["confusion"]
        lines += ["", "confusion matrix (rows: gold, columns: predicted)"]
        body = [[label, *(f"{n:,}" for n in row)] for label, row in zip(conf["rows"], conf["matrix"])]
        lines += ["  " + line for line in table(["gold \\ predicted", *conf["columns"]], body)]
        if grading["unexpected_total"]:
            shown = ", ".join(f"{_quote(k)} {v:,}" for k, v in grading["unexpected_predictions"].items())
            lines.append(f"  {OTHER}: {grading['unexpected_total']:,} answer(s) outside the label set: {shown}")
    for name, title_, briefs in (("by_model", "by answering model", m.get("by_model")),
                                 ("by_route", "by route", m.get("by_route"))):
        if briefs:
            lines += ["", title_]
            body = [[k, f"{v['done']:,}", pct(v["accuracy"]), num(v["macro_f1"], '.3f'),
                     ms(_latency(v["latency_ms"], "p50")), ms(_latency(v["latency_ms"], "p95")),
                     usd(v["cost_usd"]), usd(v["per_1000_tickets_usd"])] for k, v in briefs.items()]
            lines += ["  " + line for line in table(
                [name.split("_")[1], "done", "accuracy", "macro F1", "p50 ms", "p95 ms", "cost", "per 1k"], body)]
    return lines


def _latency(stats: LatencyStats | None, key: Literal["p50", "p95"]) -> float | None:
    return stats.get(key) if stats else None


def macro_f1(grading: Grading | None) -> float | None:
    """A grading's macro-averaged F1 (None without one)."""
    macro = grading.get("macro") if grading else None
    return macro.get("f1") if macro else None


def _quote(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _distribution_table(models: Sequence[UnitReport], top: int = 20) -> list[str]:
    totals: dict[str, int] = {}
    for m in models:
        for label, n in m["label_distribution"].items():
            totals[label] = totals.get(label, 0) + n
    labels = [k for k, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))]
    shown, rest = labels[:top], labels[top:]
    body = []
    for label in shown:
        row = [label if len(label) <= 30 else label[:30] + "..."]
        for m in models:
            n = m["label_distribution"].get(label, 0)
            row.append(f"{n:,} ({pct(n / m['done'] if m['done'] else None)})")
        body.append(row)
    if rest:
        body.append([f"({len(rest):,} more)"] + [f"{sum(m['label_distribution'].get(k, 0) for k in rest):,}"
                                                  for m in models])
    return table(["answer", *(m["key"] for m in models)], body)


def format_report(report: Report) -> str:
    models = report["models"]
    head = f"batchrun report: {report['path']}"
    if report["kind"] == "compare":
        head += f" (compare directory: {len(models)} models)"
    lines = [head, ""]
    if report["kind"] == "compare":
        streamed = any(m["ttft_ms"] for m in models)
        headers = ["key", "model", "done", "failed", "accuracy", "macro F1", "p50 ms", "p95 ms",
                   *(["TTFT p50"] if streamed else []), "cost", "per 1k tickets"]
        body = [[m["key"], m["model"], f"{m['counts']['done']:,}", f"{m['counts']['failed']:,}",
                 pct(m["grading"].get("accuracy") if m["grading"] else None), num(macro_f1(m["grading"]), '.3f'),
                 ms(_latency(m["latency_ms"], "p50")), ms(_latency(m["latency_ms"], "p95")),
                 *([ms(_latency(m["ttft_ms"], "p50"))] if streamed else []),
                 usd(m["cost"]["usd"]), usd(m["cost"]["per_1000_tickets_usd"])] for m in models]
        lines += table(headers, body, left=2) + [""]
    for m in models:
        lines += _format_unit(m) + [""]
    if report["kind"] == "compare":
        lines += ["label distribution per model"] + ["  " + x for x in _distribution_table(models)] + [""]
        if report["agreement"]:
            lines.append("agreement between models (tickets both answered)")
            body = [[f"{p['a']} vs {p['b']}", f"{p['both_answered']:,}", f"{p['agree']:,}", pct(p["rate"]),
                     num(p["kappa"], '.3f')] for p in report["agreement"]]
            lines += ["  " + x for x in table(["pair", "both answered", "agree", "rate", "kappa"], body)] + [""]
    elif models and not models[0]["grading"]:
        lines += ["answers"] + ["  " + x for x in _distribution_table(models)] + [""]
    return terminal_safe("\n".join(lines).rstrip() + "\n")  # answers and labels are the model's text
