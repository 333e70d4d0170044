"""batchrun: an async batch job runner for LLM calls, built on litellm.

The public API is small and pinned by tests/test_public_api.py:

    load_job(path) -> JobSpec             read and validate a job file
    read_tickets(path, id_field)          stream Ticket records from JSONL
    load_done_ids(run_dir)                ids already in results.jsonl
    prepare_run(...) / execute_run(...)   the engine's two phases
    Provider, LiteLLMProvider, ScriptedProvider, ChatRequest
    RunStats, BatchrunError

Importing batchrun does not import litellm: provider.py imports it on first use.
"""

__version__ = "0.1.0"

from batchrun.checkpoint import load_done_ids, load_failed_ids, scan_jsonl
from batchrun.engine import PreparedRun, RunResult, execute_run, prepare_run, render_messages
from batchrun.errors import BatchrunError
from batchrun.provider import ChatRequest, LiteLLMProvider, Provider, ScriptedProvider
from batchrun.records import Completion, Outcome, Ticket, Usage
from batchrun.spec import JobSpec, load_job
from batchrun.stats import RunStats
from batchrun.tickets import read_tickets, scan_input

__all__ = [
    "BatchrunError",
    "ChatRequest",
    "Completion",
    "JobSpec",
    "LiteLLMProvider",
    "Outcome",
    "PreparedRun",
    "Provider",
    "RunResult",
    "RunStats",
    "ScriptedProvider",
    "Ticket",
    "Usage",
    "__version__",
    "execute_run",
    "load_done_ids",
    "load_failed_ids",
    "scan_jsonl",
    "load_job",
    "prepare_run",
    "read_tickets",
    "render_messages",
    "scan_input",
]
