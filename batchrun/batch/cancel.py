"""TODO: from batchrun.batch_mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from batchrun.batch.ledger import Ledger
from batchrun.batch.run import TERMINAL
from batchrun.errors import RequestError
from batchrun.providers.batch_api import LiteLLMBatchAPI


async def cancel_batches(run_dir: Path, apis: Mapping[str, LiteLLMBatchAPI]) -> list[dict[str, Any]]:
    """Ask the provider to cancel every submitted part of `run_dir` that is still running; what
    completed is kept, and the next `batchrun run` collects it (and resubmits the rest). Returns
    the parts asked. While a run holds the directory, only the provider is asked (that run sees
    the cancel at its next poll and collects); otherwise the ledger notes it too."""
    import fcntl

    run_dir = Path(run_dir)
    lock = open(run_dir / "run.lock", "a+")
    try:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            owned = True
        except BlockingIOError:
            owned = False
        ledger = Ledger.load(run_dir)
        asked = []
        for part in ledger.parts:
            if part["state"] != "submitted" or part.get("status") in TERMINAL:
                continue
            api = apis.get(part["model_key"])
            if api is None:
                continue
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
            part.update(cancel_requested=True, status=batch.get("status"), note="cancelled by batchrun cancel")
            if owned:
                ledger.save()
            asked.append(part)
        return asked
    finally:
        lock.close()
