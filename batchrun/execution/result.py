"""RunResult: what a run did, as `batchrun run`, `batchrun.run` and `bench` get it.

For a notebook: `results()` gives one dict per ticket of the input, in input order (the rows of
`batchrun export`: status, output, tokens, cost, ...), `to_pandas()` the same as a DataFrame
(pandas is optional: a clear ImportError names it), `iter_results()` / `iter_errors()` the
checkpoint lines as written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from batchrun.records import Line
from batchrun.rundir.lines import iter_lines, load_failed_ids


@dataclass
class RunResult:
    """What a run did. `summary` is this run's (RunStats.summary()); `totals` counts the
    whole run directory (input_tickets, asked, done, failed, remaining) when the caller
    (batchrun.run, `batchrun run`) filled it; a compare run has one RunResult per model
    in `models` and sums of their counts here."""

    state: str  # done, interrupted, failed, budget_exhausted
    exit_code: int
    summary: dict[str, Any]  # RunStats.summary(): numbers, and None where unknown
    error: str | None = None
    run_dir: Path | None = None
    run_number: int | None = None
    totals: dict[str, int] | None = None
    models: dict[str, "RunResult"] = field(default_factory=dict)  # compare runs: one per [[models]] name
    nothing_to_do: bool = False  # every ticket was done (or skipped) before this run

    @property
    def done(self) -> int:
        """Tickets that succeeded in this run."""
        return int(self.summary.get("done", 0))

    @property
    def failed(self) -> int:
        """Tickets that ended in errors.jsonl in this run."""
        return int(self.summary.get("failed", 0))

    @property
    def cost_usd(self) -> float:
        """What this run spent on results it saw priced (see summary's unpriced_results)."""
        return float(self.summary.get("cost_usd") or 0.0)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def paths(self) -> dict[str, Path]:
        """The run directory's files: manifest, results, errors."""
        base = self.run_dir or Path(".")
        return {"run_dir": base, "manifest": base / "manifest.json", "results": base / "results.jsonl",
                "errors": base / "errors.jsonl"}

    def results(self, *, with_input: bool = False) -> Iterator[dict[str, object]]:
        """One dict per ticket of the run's input, in input order, streamed: the rows `batchrun export`
        writes (`id`, `status` done/failed/pending, `output` and `label`/`parsed`/`tool_calls`, tokens,
        `cost_usd`, `attempts`, `model`, `error_kind`...; a compare run's under "models"); with
        `with_input`, the ticket's fields under "input"."""
        from batchrun.analysis.export import iter_rows

        yield from iter_rows(self.paths["run_dir"], with_input=with_input)

    def to_pandas(self, *, with_input: bool = False) -> Any:
        """`results()` as a pandas DataFrame, one row per ticket in input order, nested fields as
        dotted columns ("models.cheap.output", "input.customer.tier"). pandas is optional."""
        try:
            import pandas
        except ImportError:
            raise ImportError("RunResult.to_pandas() needs pandas, which batchrun does not install: "
                              "pip install pandas (or pip install 'batchrun[pandas]'); "
                              "RunResult.results() gives the same rows as dicts") from None
        return pandas.json_normalize(list(self.results(with_input=with_input)))

    def iter_results(self) -> Iterator[Line]:
        """Every result line of the run directory (all runs), streamed, in the order they finished (not
        input order: `results()`); a compare run's models in order."""
        if self.models:
            for each in self.models.values():
                yield from each.iter_results()
            return
        yield from iter_lines(self.paths["results"])

    def iter_errors(self) -> Iterator[Line]:
        """The latest error line of each ticket that has no result (what a re-run would retry)."""
        if self.models:
            for each in self.models.values():
                yield from each.iter_errors()
            return
        failed = load_failed_ids(self.paths["run_dir"])
        latest: dict[str, Line] = {}
        for line in iter_lines(self.paths["errors"]):
            if str(line.get("id")) in failed:
                latest[str(line["id"])] = line
        yield from latest.values()

    @classmethod
    def combined(cls, models: dict[str, "RunResult"], run_dir: Path) -> "RunResult":
        """One result for a compare run: the worst state and exit code, counts summed."""
        worst = max(models.values(), key=lambda r: (r.exit_code != 0, r.exit_code))
        keys = ("done", "failed", "requests", "retries", "total_tokens", "cost_usd", "unpriced_results")
        summary = {key: sum(r.summary.get(key) or 0 for r in models.values()) for key in keys}
        return cls(state=worst.state, exit_code=worst.exit_code, summary=summary, error=worst.error,
                   run_dir=run_dir, models=models)

