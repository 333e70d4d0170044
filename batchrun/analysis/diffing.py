"""`batchrun diff`: the nightly regression check between two runs.

This module computes and returns the diff (`diff_runs`, `accuracy_check`) and its
text (`format_diff`); run directories are read through grading/rundir.py, the
command is commands/diff.py.

SYNOPSIS

    batchrun diff RUN_A RUN_B [--fail-on-accuracy-drop POINTS] [--gold-field FIELD]
                              [--show N] [--json]

RUN_A is the reference (last night, the current model), RUN_B the candidate.
Each is a run directory or a compare directory (`models/<key>/` run
directories, see `batchrun report`). What is compared:

  * two run directories: with each other, whatever their models (a changed
    model is exactly what a diff is for);
  * two compare directories: model by model, matched by key;
  * a run directory and a compare directory: matched by model string.

Everything is read with `grading.analyze` (the same numbers as `batchrun
report`: answers normalized with `outputs.normalize_label`, gold labels from
each run's own input file and `--gold-field`, default the job's `gold_field`
or `label`). Nothing is written.

PER PAIR

    tickets      answered in A, in B, in both; only in one of them
    changed      tickets both answered whose answer differs: the count, and
                 the first `--show` (20) ids, in id order, with `old -> new`
                 and, when graded, the gold label and whether the change
                 fixed or broke the ticket
    distribution each answer's count and share in A and B, the shift in
                 percentage points
    accuracy     A's and B's accuracy (each over its own graded results, as
                 `report` shows it) and the delta in points (B - A); also on
                 the tickets graded in both, when the two sets differ
    cost         total spent and per 1,000 tickets done, with the change
    latency      p50 and p95 of the successful attempt, with the change

--fail-on-accuracy-drop POINTS
    Exit 6 when B's accuracy is more than POINTS percentage points below A's
    (for any pair of models), after printing everything: `make` stops on it.
    When the graded tickets of A and B differ but overlap (a partial run, a
    different --limit), the check compares them on the tickets graded in
    both; otherwise (the same tickets, or two nights' different inputs) on
    each run's accuracy.
    `--fail-on-accuracy-drop 0` fails on any drop. Without gold labels on
    either side the check cannot be made: exit 2, never a silent pass.

Exit codes: 0; 2 a path is not a run or compare directory, nothing pairs up,
or the accuracy check has no gold labels; 6 accuracy dropped by more than
allowed.
"""

from __future__ import annotations

from pathlib import Path

from batchrun.analysis.documents import (
    Change,
    ChangedExample,
    Diff,
    OnCommon,
    PairDiff,
    Shift,
    UnitReport,
)
from batchrun.analysis.grading import Analysis, Series, macro_f1, analyze
from batchrun.analysis.textfmt import kv, ms, num, pct, table, terminal_safe, usd
from batchrun.errors import ReportError

ACCURACY_DROPPED = 6  # exit code of --fail-on-accuracy-drop
DEFAULT_SHOW = 20


def _change(a: float | None, b: float | None) -> Change:
    if a is None or b is None:
        return {"a": a, "b": b, "delta": None, "relative": None}
    return {"a": a, "b": b, "delta": round(b - a, 9), "relative": round((b - a) / a, 6) if a else None}


def diff_pair(a: UnitReport, sa: Series, b: UnitReport, sb: Series, *, show: int = DEFAULT_SHOW) -> PairDiff:
    """Compare one model's report in A (`a`, raw `sa`) with one in B."""
    pa, pb = sa.predictions, sb.predictions
    common = [key for key in pa if key in pb]
    gold = {**(sa.gold.labels if sa.gold else {}), **(sb.gold.labels if sb.gold else {})}
    changed = sorted((key for key in common if pa[key] != pb[key]), key=_id_order)
    fixed = broken = still_wrong = 0
    examples: list[ChangedExample] = []
    for key in changed:
        g = gold.get(key)
        if g is not None:
            if pb[key] == g:
                fixed += 1
            elif pa[key] == g:
                broken += 1
            else:
                still_wrong += 1
        if len(examples) < show:
            examples.append({"id": key, "a": pa[key], "b": pb[key], "gold": g})
    ga, gb = a.get("grading"), b.get("grading")
    acc_a, acc_b = ga.get("accuracy") if ga else None, gb.get("accuracy") if gb else None
    graded_a, graded_b = ga.get("graded") if ga else None, gb.get("graded") if gb else None
    delta = None if acc_a is None or acc_b is None else round((acc_b - acc_a) * 100, 4)
    both_graded = [key for key in common if key in gold]
    on_common: OnCommon | None = None
    if both_graded and (len(both_graded) != graded_a or len(both_graded) != graded_b):
        ca = sum(pa[key] == gold[key] for key in both_graded) / len(both_graded)
        cb = sum(pb[key] == gold[key] for key in both_graded) / len(both_graded)
        on_common = {"tickets": len(both_graded), "a": round(ca, 6), "b": round(cb, 6),
                     "delta_points": round((cb - ca) * 100, 4)}
    labels = sorted(set(a["label_distribution"]) | set(b["label_distribution"]),
                    key=lambda k: (-(a["label_distribution"].get(k, 0) + b["label_distribution"].get(k, 0)), k))
    distribution: dict[str, Shift] = {}
    for label in labels:
        na, nb = a["label_distribution"].get(label, 0), b["label_distribution"].get(label, 0)
        sha = na / a["done"] if a["done"] else 0.0
        shb = nb / b["done"] if b["done"] else 0.0
        distribution[label] = {"a": na, "b": nb, "share_a": round(sha, 6), "share_b": round(shb, 6),
                               "shift_points": round((shb - sha) * 100, 4)}
    lat_a, lat_b = a.get("latency_ms"), b.get("latency_ms")
    return {
        "a": {"key": a["key"], "model": a["model"], "run_dir": a["run_dir"]},
        "b": {"key": b["key"], "model": b["model"], "run_dir": b["run_dir"]},
        "answered": {"a": len(pa), "b": len(pb), "both": len(common), "only_a": len(pa) - len(common),
                     "only_b": len(pb) - len(common)},
        "failed": {"a": a["counts"]["failed"], "b": b["counts"]["failed"]},
        "changed": {"count": len(changed), "rate": round(len(changed) / len(common), 6) if common else None,
                    "fixed": fixed, "broken": broken, "wrong_both": still_wrong, "examples": examples},
        "distribution": distribution,
        "accuracy": {"a": acc_a, "b": acc_b, "graded_a": graded_a, "graded_b": graded_b,
                     "correct_a": ga.get("correct") if ga else None, "correct_b": gb.get("correct") if gb else None,
                     "delta_points": delta, "on_common": on_common},
        "macro_f1": _change(macro_f1(ga), macro_f1(gb)),
        "cost_usd": _change(a["cost"]["usd"], b["cost"]["usd"]),
        "cost_per_1000_usd": _change(a["cost"]["per_1000_tickets_usd"], b["cost"]["per_1000_tickets_usd"]),
        "latency_p50_ms": _change(lat_a.get("p50") if lat_a else None, lat_b.get("p50") if lat_b else None),
        "latency_p95_ms": _change(lat_a.get("p95") if lat_a else None, lat_b.get("p95") if lat_b else None),
    }


def _id_order(key: str) -> tuple[int, int | str]:
    return (0, int(key)) if key.isdigit() else (1, key)


def _pairs(an_a: Analysis, an_b: Analysis) -> tuple[list[tuple[int, int]], list[str]]:
    ma, mb = an_a.report["models"], an_b.report["models"]
    notes: list[str] = []
    if an_a.report["kind"] == "run" and an_b.report["kind"] == "run":
        return [(0, 0)], notes
    if an_a.report["kind"] == "compare" and an_b.report["kind"] == "compare":
        keys_b = {m["key"]: j for j, m in enumerate(mb)}
        pairs = [(i, keys_b[m["key"]]) for i, m in enumerate(ma) if m["key"] in keys_b]
        lonely = sorted({m["key"] for m in ma} ^ {m["key"] for m in mb})
        if lonely:
            notes.append("model key(s) in only one of the two directories, not compared: " + ", ".join(lonely))
    else:
        models_b: dict[str, int] = {}
        for j, m in enumerate(mb):
            models_b.setdefault(m["model"], j)
        pairs = [(i, models_b[m["model"]]) for i, m in enumerate(ma) if m["model"] in models_b]
    if not pairs:
        raise ReportError(f"nothing to compare: no model of {an_a.report['path']} matches one of "
                          f"{an_b.report['path']} (by key for two compare directories, else by model)")
    return pairs, notes


def diff_analyses(an_a: Analysis, an_b: Analysis, *, show: int = DEFAULT_SHOW) -> Diff:
    pairs, notes = _pairs(an_a, an_b)
    ma, mb = an_a.report["models"], an_b.report["models"]
    return {
        "a": an_a.report["path"],
        "b": an_b.report["path"],
        "pairs": [diff_pair(ma[i], an_a.series[ma[i]["key"]], mb[j], an_b.series[mb[j]["key"]], show=show)
                  for i, j in pairs],
        "notes": notes,
    }


def diff_runs(path_a: Path, path_b: Path, *, gold_field: str | None = None, show: int = DEFAULT_SHOW) -> Diff:
    """The diff of two run (or compare) directories as a JSON-ready dict."""
    return diff_analyses(analyze(path_a, gold_field=gold_field), analyze(path_b, gold_field=gold_field), show=show)


def accuracy_check(diff: Diff, max_drop: float) -> tuple[int, list[str]]:
    """(exit code, lines) of --fail-on-accuracy-drop: 0 pass, 6 dropped too far, 2 cannot tell."""
    code, lines = 0, []
    for pair in diff["pairs"]:
        name = pair["b"]["key"] if pair["a"]["key"] == pair["b"]["key"] else f"{pair['a']['key']} -> {pair['b']['key']}"
        common = pair["accuracy"]["on_common"]
        # apples to apples: the tickets graded in both when the sets differ (a partial run, a
        # different --limit), else each run's accuracy (the same tickets, or disjoint inputs)
        delta = common["delta_points"] if common else pair["accuracy"]["delta_points"]
        basis = f"on the {common['tickets']:,} tickets graded in both" if common else "over each run's graded results"
        if delta is None:
            lines.append(f"accuracy check [{name}]: CANNOT CHECK: no graded results in "
                         + ("A" if pair["accuracy"]["a"] is None else "B") + " (gold labels missing?)")
            if code != ACCURACY_DROPPED:
                code = 2
        elif -delta > max_drop:
            a, b = (common["a"], common["b"]) if common else (pair["accuracy"]["a"], pair["accuracy"]["b"])
            lines.append(f"accuracy check [{name}]: FAILED: accuracy fell by {-delta:.2f} points "
                         f"({pct(a)} -> {pct(b)} {basis}), more than the {max_drop:g} allowed "
                         f"(exit {ACCURACY_DROPPED})")
            code = ACCURACY_DROPPED
        else:
            lines.append(f"accuracy check [{name}]: ok: {delta:+.2f} points {basis} "
                         f"(a drop of more than {max_drop:g} fails)")
    return code, lines


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


def _points(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f} pts"


def _rel(change: Change) -> str:
    relative = change.get("relative")
    return "" if relative is None else f", {relative * 100:+.1f}%"


def _format_pair(p: PairDiff) -> list[str]:
    a, b = p["a"], p["b"]
    if a["model"] == b["model"]:
        title = f"model {a['model']}" + (f" [{a['key']}]" if a["key"] == b["key"] else "")
    elif a["key"] == b["key"]:
        title = f"model {a['model']} -> {b['model']}"
    else:
        title = f"model {a['model']} [{a['key']}] -> {b['model']} [{b['key']}]"
    lines = [title, "=" * min(len(title), 100)]
    ans = p["answered"]
    rows: list[tuple[str, str]] = [
        ("tickets answered", f"A {ans['a']:,}, B {ans['b']:,}, both {ans['both']:,} "
                             f"(only in A {ans['only_a']:,}, only in B {ans['only_b']:,}); "
                             f"failed A {p['failed']['a']:,}, B {p['failed']['b']:,}"),
    ]
    ch = p["changed"]
    changed = f"{ch['count']:,} of {ans['both']:,} tickets both answered"
    if ch["rate"] is not None:
        changed += f" ({ch['rate'] * 100:.1f}%)"
    if ch["fixed"] or ch["broken"] or ch["wrong_both"]:
        changed += f": {ch['fixed']:,} fixed, {ch['broken']:,} broken, {ch['wrong_both']:,} wrong both times"
    rows.append(("answers changed", changed))
    acc = p["accuracy"]
    if acc["a"] is None and acc["b"] is None:
        rows.append(("accuracy", "- (no gold labels)"))
    else:
        rows.append(("accuracy", f"A {pct(acc['a'])} ({acc['correct_a'] or 0:,}/{acc['graded_a'] or 0:,}) -> "
                                 f"B {pct(acc['b'])} ({acc['correct_b'] or 0:,}/{acc['graded_b'] or 0:,}): "
                                 + (f"{acc['delta_points']:+.1f} points" if acc["delta_points"] is not None else "-")))
        if acc["on_common"]:
            oc = acc["on_common"]
            rows.append(("  on common tickets", f"{oc['tickets']:,} graded in both: A {pct(oc['a'])} -> "
                                                f"B {pct(oc['b'])}: {oc['delta_points']:+.1f} points"))
    f1 = p["macro_f1"]
    if f1["a"] is not None or f1["b"] is not None:
        rows.append(("macro F1", f"{num(f1['a'], '.3f')} -> {num(f1['b'], '.3f')}"
                                 + (f" ({f1['delta']:+.3f})" if f1["delta"] is not None else "")))
    c, k = p["cost_usd"], p["cost_per_1000_usd"]
    rows.append(("cost", f"{usd(c['a'])} -> {usd(c['b'])}" + (f" ({c['delta']:+,.6f}{_rel(c)})" if c["delta"] is not None else "")))
    rows.append(("cost per 1,000 tickets", f"{usd(k['a'])} -> {usd(k['b'])}"
                 + (f" ({k['relative'] * 100:+.1f}%)" if k["relative"] is not None else "")))
    for label, lat in (("latency p50", p["latency_p50_ms"]), ("latency p95", p["latency_p95_ms"])):
        rows.append((label, f"{ms(lat['a'])} -> {ms(lat['b'])} ms"
                            + (f" ({lat['delta']:+,.0f} ms{_rel(lat)})" if lat["delta"] is not None else "")))
    lines += kv(rows)
    if ch["examples"]:
        shown = len(ch["examples"])
        lines += ["", f"changed answers (first {shown:,} of {ch['count']:,}, by id)" if shown < ch["count"]
                  else "changed answers"]
        body = []
        for e in ch["examples"]:
            verdict = ""
            if e["gold"] is not None:
                verdict = "fixed" if e["b"] == e["gold"] else "broken" if e["a"] == e["gold"] else "wrong both times"
            body.append([e["id"], f"{_short(e['a'])} -> {_short(e['b'])}", _short(e["gold"]), verdict])
        lines += ["  " + x for x in table(["id", "A -> B", "gold", "verdict"], body, left=4)]
    if p["distribution"]:
        lines += ["", "answer distribution"]
        body = [[_short(label), f"{d['a']:,} ({d['share_a'] * 100:.1f}%)", f"{d['b']:,} ({d['share_b'] * 100:.1f}%)",
                 _points(d["shift_points"])] for label, d in list(p["distribution"].items())[:20]]
        if len(p["distribution"]) > 20:
            body.append([f"({len(p['distribution']) - 20:,} more)", "", "", ""])
        lines += ["  " + x for x in table(["answer", "A", "B", "shift"], body)]
    return lines


def _short(text: str | None, limit: int = 30) -> str:
    if text is None:
        return "-"
    return text if len(text) <= limit else text[:limit] + "..."


def format_diff(diff: Diff) -> str:
    lines = [f"batchrun diff: A {diff['a']}  ->  B {diff['b']}", ""]
    for pair in diff["pairs"]:
        lines += _format_pair(pair) + [""]
    lines += [f"note: {n}" for n in diff["notes"]]
    return terminal_safe("\n".join(lines).rstrip() + "\n")  # answers are the model's text
