"""Finding the batch a part's lost create made, in the provider's listing, before creating another.

    find_batch(api, part, ledger, ...)   the batch to adopt, or None (nothing to find, or nothing found)

A create whose answer never came (a timeout, a 5xx after the batch was made, a crash between the
create and the ledger write) may have made a batch all the same. The provider's batches are read
page by page (newest first; no provider filters on metadata, so batchrun does) and each is asked
of the part's BatchAPI (`match_batch`): the batch whose metadata names the part is adopted at
once; a provider whose batches carry no metadata (Anthropic) gives candidates instead (created
around the part's creates, with its request count), and the oldest not recorded for another part
is adopted, the others named in a warning. A provider that cannot list is named in a warning
with the part, so that its console can be checked before paying twice. docs/batch.md says what
this can and cannot recover.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable, Mapping

from batchrun.batch.ledger import Ledger, Part
from batchrun.providers.seam import BatchAPI, BatchClaim, Reply

__all__ = ["find_batch", "warn"]

log = logging.getLogger("batchrun")

#: what pages of a listing are fetched through: (what, call) -> the page, under the run's retry policy
Retrying = Callable[[str, Callable[[], Awaitable[Reply]]], Awaitable[Reply]]


def warn(note: str) -> None:
    """A warning for the person running the command: stderr and --log-file, dated (run_logging.py)."""
    logging.getLogger("batchrun.console").warning("warning: %s", note)


async def find_batch(api: BatchAPI, part: Part, ledger: Ledger, metadata: Mapping[str, str], retrying: Retrying,
                     page_size: int) -> Reply | None:
    """The batch a create of `part` made (module docstring), or None."""
    if not part.get("create_attempts"):
        return None  # never created: nothing to find
    if not api.can_list:
        warn(f"part {part['number']}: {api.provider} cannot list batches, so a create that may have reached it "
             f"cannot be found; check the provider's console for a batch with metadata batchrun_part="
             f"{part['number']}, batchrun_run={ledger.run_key} before paying twice")
        return None
    claim = BatchClaim(metadata=metadata, requests=part["tickets"], created_after=part.get("create_sent_at") or 0.0,
                       created_before=part.get("create_last_sent_at") or time.time())
    recorded = {p["batch_id"] for p in ledger.parts if p.get("batch_id")}
    candidates: list[Reply] = []
    after = None
    while True:
        page = await retrying("list batches", lambda: api.list_batches(after=after, limit=page_size))
        data = page.get("data") or []
        older = False
        for batch in data:
            match = api.match_batch(batch, claim) if batch.get("id") not in recorded else "other"
            if match == "ours":
                log.info("part %d: adopted batch %s", part["number"], batch["id"])
                return batch
            if match == "candidate":
                candidates.append(batch)
            older = older or match == "older"
        if older or not page.get("has_more") or not data:
            break
        after = data[-1]["id"]
    if not candidates:
        return None
    chosen = min(candidates, key=lambda b: b.get("created_at") or 0)
    if len(candidates) > 1:
        warn(f"part {part['number']}: {len(candidates)} batches of {part['tickets']} requests were created since "
             f"its first create; adopting the oldest, {chosen['id']}; the others ("
             f"{', '.join(b['id'] for b in candidates if b is not chosen)}) may be another program's, or a "
             "duplicate of this part that is paid for: check them in the provider's console")
    log.info("part %d: adopted batch %s (created after its first create, %d requests)", part["number"], chosen["id"],
             part["tickets"])
    return chosen
