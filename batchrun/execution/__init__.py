"""Execution: one online run of a prepared job, however its requests are sent.

    preparation.py  prepare_run: lock, input check, resume plan (no network)
    engine.py       execute_run: coordinator + executor + dispatcher, then the finish
    coordinator.py  the run's shared state and the hooks every attempt reports to
    dispatcher.py   producer, workers, single flight, the single writer, signals
    accounting.py   every attempt journaled before it can leave and counted once
    executors/      who sends: this event loop, worker processes, Ray actors (one seam)
    ticket_runner.py  one ticket's attempts, judged answers, fallbacks
    retrying.py     the tenacity policy: the one retry layer
    limits.py       the shared 429 pause, rpm/tpm buckets, AIMD, the budget
    finish.py       the one finish of every run: state -> exit code -> manifest
    result.py       RunResult
"""
