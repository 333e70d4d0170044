"""The public API of `batchrun` is pinned here, and so is the promise that
neither `import batchrun` nor `batchrun --help` imports litellm (whose
import is slow and, without LITELLM_LOCAL_MODEL_COST_MAP, goes to the
network). The import checks run in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import batchrun

ROOT = Path(__file__).resolve().parent.parent

EXPECTED_ALL = [
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
    "arun",
    "execute_run",
    "export",
    "load_done_ids",
    "load_failed_ids",
    "load_job",
    "prepare_run",
    "read_tickets",
    "render_messages",
    "run",
    "scan_input",
    "scan_jsonl",
]


def run_python(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("LITELLM_LOCAL_MODEL_COST_MAP", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=ROOT)


def test_all_is_pinned_and_sorted():
    assert EXPECTED_ALL == sorted(EXPECTED_ALL)
    assert list(batchrun.__all__) == EXPECTED_ALL


def test_every_exported_name_resolves():
    for name in batchrun.__all__:
        assert getattr(batchrun, name) is not None, name
    assert batchrun.__version__ == "0.1.0"


def test_exports_are_the_real_objects():
    from batchrun.rundir.lines import scan_jsonl
    from batchrun.execution.engine import execute_run
    from batchrun.errors import BatchrunError
    from batchrun.providers.online import LiteLLMProvider
    from batchrun.job.spec import load_job

    assert batchrun.load_job is load_job
    assert batchrun.BatchrunError is BatchrunError
    assert batchrun.LiteLLMProvider is LiteLLMProvider
    assert batchrun.execute_run is execute_run
    assert batchrun.scan_jsonl is scan_jsonl


def test_star_import_gives_exactly_all():
    namespace: dict = {}
    exec("from batchrun import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(EXPECTED_ALL)


def test_import_batchrun_does_not_import_litellm():
    result = run_python("-c", "import batchrun, sys; assert 'litellm' not in sys.modules, 'litellm imported'")
    assert result.returncode == 0, result.stderr


def test_touching_every_export_does_not_import_litellm():
    code = textwrap.dedent("""
        import sys, batchrun
        for name in batchrun.__all__:
            getattr(batchrun, name)
        import batchrun.execution.engine, batchrun.rundir.status, batchrun.cli, batchrun.providers.online
        assert 'litellm' not in sys.modules, 'litellm imported'
        print('ok')
    """)
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_help_does_not_import_litellm():
    code = textwrap.dedent("""
        import sys
        import batchrun.cli
        for argv in (['--help'], ['run', '--help'], ['status', '--help'], ['sim', '--help']):
            batchrun.cli.main(argv, standalone_mode=False)
        assert 'litellm' not in sys.modules, 'litellm imported'
        print('ok')
    """)
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert "JOB_FILE" in result.stdout  # `run --help` really printed
    assert result.stdout.strip().endswith("ok")


def test_python_m_cli_help_does_not_import_litellm():
    result = run_python("-X", "importtime", "-m", "batchrun.cli", "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "run" in result.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")]
    assert "click" in imported and "batchrun" in imported  # -X importtime did report the imports
    assert not [m for m in imported if m == "litellm" or m.startswith("litellm.")]
