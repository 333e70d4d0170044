"""The Makefile's first minute: `make` alone lists the targets and installs
nothing; `make run` installs only what running needs (Anthropic's SDK included,
for batch mode with Claude) and says so; the test
tools come with `make test`. Checked with `make -n` (nothing is run)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make(*args: str, venv: str) -> str:
    result = subprocess.run(["make", "--no-print-directory", f"VENV={venv}", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_alone_lists_the_targets_and_installs_nothing(tmp_path):
    out = make(venv=str(tmp_path / "venv"))
    for target in ("run", "test", "test-fast", "status", "plan", "report", "bench", "compare", "clean"):
        assert f"\n  {target} " in out, out
    assert not (tmp_path / "venv").exists()


def test_make_run_installs_run_dependencies_only_and_says_so(tmp_path):
    plan = make("-n", "run", venv=str(tmp_path / "venv"))
    assert "installing batchrun, litellm and Anthropic's SDK into" in plan and "about a minute, once" in plan
    # Anthropic's SDK: batch mode for Claude (make run JOB=jobs/classify_batch_claude.toml)
    assert "install --quiet --disable-pip-version-check -e '.[anthropic]'" in plan
    assert "[test]" not in plan and "test," not in plan
    test_plan = make("-n", "test", venv=str(tmp_path / "venv"))
    assert "-e '.[test,ray,proxy]'" in test_plan and "pytest" in test_plan  # the ray and proxy tests run in CI
    fast_plan = make("-n", "test-fast", venv=str(tmp_path / "venv"))  # installs what it needs too
    assert "-e '.[test,ray,proxy]'" in fast_plan
    assert '-m "not slow and not ray and not browser and not service and not proxy"' in fast_plan
