"""batchrun: an async batch job runner for LLM calls, built on litellm.

The public API is small and pinned by tests/test_public_api.py:

    run(job, **overrides) -> RunResult    run or resume a job (a path, JobSpec or dict) to the end
    await arun(job, **overrides)          the same inside a running event loop (Jupyter)
    export(run_dir, out, format)          `batchrun export`: one row per ticket, in input order
    load_job(path) -> JobSpec             read and validate a job file
    read_tickets(path, id_field)          stream Ticket records from JSONL
    scan_input(path, ...)                 check a whole input before any request
    load_done_ids / load_failed_ids       what a run directory already holds
    prepare_run(...) / execute_run(...)   the engine's two phases
    Provider, LiteLLMProvider, ScriptedProvider, ChatRequest
    Ticket, Usage, Completion, Outcome, RunStats, BatchrunError

Names are imported on first use (PEP 562), so `import batchrun` and
`batchrun --help` stay fast; litellm itself is imported only when a
LiteLLMProvider is created.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "BatchrunError": "batchrun.errors",
    "ChatRequest": "batchrun.providers.seam",
    "Completion": "batchrun.records",
    "JobSpec": "batchrun.job.spec",
    "LiteLLMProvider": "batchrun.providers.online",
    "Outcome": "batchrun.records",
    "PreparedRun": "batchrun.execution.preparation",
    "Provider": "batchrun.providers.seam",
    "RunResult": "batchrun.execution.result",
    "RunStats": "batchrun.analysis.stats",
    "ScriptedProvider": "batchrun.providers.fake",
    "Ticket": "batchrun.records",
    "Usage": "batchrun.records",
    "arun": "batchrun.api",
    "execute_run": "batchrun.execution.engine",
    "export": "batchrun.api",
    "load_done_ids": "batchrun.rundir.lines",
    "load_failed_ids": "batchrun.rundir.lines",
    "load_job": "batchrun.job.spec",
    "prepare_run": "batchrun.execution.preparation",
    "read_tickets": "batchrun.job.tickets",
    "render_messages": "batchrun.job.templates",
    "run": "batchrun.api",
    "scan_input": "batchrun.job.tickets",
    "scan_jsonl": "batchrun.rundir.lines",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:  # what __getattr__ hands out, for type checkers (nothing is imported at run time)
    from batchrun.analysis.stats import RunStats
    from batchrun.api import arun, run
    from batchrun.errors import BatchrunError
    from batchrun.execution.engine import execute_run
    from batchrun.execution.preparation import PreparedRun, prepare_run
    from batchrun.execution.result import RunResult
    from batchrun.job.spec import JobSpec, load_job
    from batchrun.job.templates import render_messages
    from batchrun.job.tickets import read_tickets, scan_input
    from batchrun.providers.fake import ScriptedProvider
    from batchrun.providers.online import LiteLLMProvider
    from batchrun.providers.seam import ChatRequest, Provider
    from batchrun.records import Completion, Outcome, Ticket, Usage
    from batchrun.rundir.lines import load_done_ids, load_failed_ids, scan_jsonl


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'batchrun' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
