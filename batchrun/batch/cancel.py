"""`batchrun cancel`: ask the provider to cancel a batch run's parts still running.

What completed is kept, and the next `batchrun run` collects it (and resubmits
the rest). While a run holds the directory only the provider is asked (that
run sees the cancel at its next poll and collects); otherwise the ledger notes
it too, under the run directory's lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from batchrun.batch.ledger import Ledger, Part
from batchrun.batch.run import TERMINAL
from batchrun.errors import RequestError
from batchrun.providers.seam import BatchAPI
from batchrun.rundir.checkpoint import lock_if_free

__all__ = ["cancel_batches"]


async def cancel_batches(run_dir: Path, apis: Mapping[str, BatchAPI]) -> list[Part]:
    """Cancel every submitted part of `run_dir` still running (module docstring); the parts asked."""
    run_dir = Path(run_dir)
    try:
        return await _cancel(run_dir, apis)
    finally:
        for api in apis.values():
            await api.aclose()


async def _cancel(run_dir: Path, apis: Mapping[str, BatchAPI]) -> list[Part]:
    with lock_if_free(run_dir) as owned:
        ledger = Ledger.load(run_dir)
        asked: list[Part] = []
        for part in ledger.parts:
            if part["state"] != "submitted" or part.get("status") in TERMINAL:
                continue
            api = apis.get(part["model_key"])
            if api is None:
                continue
            assert part["batch_id"] is not None  # submitted
            try:
                batch = await api.cancel_batch(part["batch_id"])
            except RequestError as exc:
                if exc.status_code != 409:  # 409: it finished meanwhile
                    raise
                part["note"] = "finished before batchrun cancel reached it"
                if owned:
                    ledger.save()
                asked.append({**part, "status": "finished already"})
                continue
            part.update({"cancel_requested": True, "status": batch.get("status"), "note": "cancelled by batchrun cancel"})
            if owned:
                ledger.save()
            asked.append(part)
        return asked
