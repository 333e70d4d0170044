"""Issue 26, point 11: litellm as a tested range. pyproject names a range (1.106 to 1.110.x, 1.107.0
excluded), each patch of providers/tuning.py checks its target when it is installed and says at -v
when it does not apply, and the patches installed are the ones expected for the installed release
(`make test` runs this on the newest in range, `make test-litellm-min` on the oldest)."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from batchrun.providers import tuning
from batchrun.providers.litellm_setup import import_litellm, litellm_version
from conftest import ROOT


def litellm_requirement() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [spec] = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "litellm"]
    return spec


def test_litellm_is_a_tested_range_without_the_compromised_release():
    spec = litellm_requirement().specifier
    assert Version("1.106.0") in spec and Version("1.110.2") in spec and Version("1.110.9") in spec
    assert Version("1.107.0") not in spec  # a compromised release
    assert Version("1.105.9") not in spec and Version("1.111.0") not in spec  # only what was tested
    assert Version(litellm_version()) in spec  # the installed one is in range


def test_the_patches_installed_are_those_expected_for_this_litellm():
    import_litellm()
    minor = ".".join(litellm_version().split(".")[:2])
    if minor not in tuning.EXPECTED:
        pytest.skip(f"litellm {litellm_version()}: no expectation recorded (tested: {sorted(tuning.EXPECTED)})")
    installed = {name for name, status in tuning.STATUS.items() if status == tuning.INSTALLED}
    assert installed == tuning.EXPECTED[minor], tuning.STATUS
    assert set(tuning.STATUS) == tuning.EXPECTED["1.106"]  # every patch reports, applied or not


def test_a_patch_whose_target_changed_is_not_applied_and_says_so_at_v(monkeypatch, caplog):
    litellm = import_litellm()
    import litellm.utils

    monkeypatch.setattr(litellm.utils, "_schedule_async_success_logging", lambda result, when: None)
    with caplog.at_level(logging.INFO, logger="batchrun"):
        status = tuning.install(litellm)
    assert status["quiet_success_logging"] == ("litellm.utils._schedule_async_success_logging no longer takes "
                                               "logging_obj first")
    assert not getattr(litellm.utils._schedule_async_success_logging, "batchrun_quiet", False)  # untouched
    assert any("quiet_success_logging patch is not applied" in r.getMessage() and r.levelno == logging.INFO
               for r in caplog.records)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_litellm_min_tests_the_oldest_release(tmp_path):
    out = subprocess.run(["make", "--no-print-directory", "-n", "test-litellm-min"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60).stdout
    assert re.search(r"litellm==1\.106\.0", out) and "pytest" in out
