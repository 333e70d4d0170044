"""Batch mode: a job's tickets through a provider's Batch API, on the online run's contract
(the same preparation, result lines, checks, manifest and finish).

    run.py     execute_batch_run: parts built, submitted, polled, collected, retried
    ledger.py  batches.json: what parts exist and where each stands
    adoption.py  the batch a lost create made, found in the provider's listing
    refusal.py the one line a run ends with when a files or batches endpoint refused
    steps.py   the named steps of a batch run (the kill tests watch them)
    cancel.py  `batchrun cancel`: cancel the parts still running
"""
