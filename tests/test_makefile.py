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
    test_plan = make("-n", "test", f"PROXY_VENV={tmp_path / 'proxy'}", venv=str(tmp_path / "venv"))
    assert "-e '.[test,ray]'" in test_plan and "pytest" in test_plan  # the ray and proxy tests run in CI
    # the LiteLLM Proxy gets its own virtualenv: in .venv, litellm[proxy] would hold batchrun's litellm back
    # from the newest release in range (1.110's proxy extra needs a litellm-proxy package the index may lack)
    assert f"{tmp_path / 'proxy'}/bin/python -m pip install" in test_plan and "'litellm[proxy]==1.106.0'" in test_plan
    assert "proxy" not in test_plan.split("-e '.[test,ray]'")[0].rsplit("\n", 1)[-1]
    fast_plan = make("-n", "test-fast", f"PROXY_VENV={tmp_path / 'proxy'}", venv=str(tmp_path / "venv"))
    assert "-e '.[test,ray]'" in fast_plan and "litellm[proxy]" not in fast_plan  # installs what it needs
    assert '-m "not slow and not ray and not browser and not service and not proxy"' in fast_plan
