"""A real LiteLLM Proxy (`litellm --config`) for tests, in front of the embedded simulator.

    with start_proxy(config, tmp_path) as proxy:     proxy.base_url, proxy.key, proxy.log()
        ...

`config` is the proxy's config.yaml as a dict (written as JSON, which YAML reads); a master
key is added (`general_settings.master_key`, no database). The proxy runs as
`python -m litellm.proxy.proxy_cli --config FILE --host 127.0.0.1 --port PORT` in its own
process group, with LITELLM_LOCAL_MODEL_COST_MAP=True (its price map from the installed
package, never fetched), LITELLM_MODE=PRODUCTION (no .env read) and no proxy settings from the
environment; readiness is polled on /health/liveliness (generous timeout: it takes about 10 s
to start on 2 cores, more when they are busy). On exit: SIGTERM to the group, SIGKILL if it
lingers. Nothing leaves 127.0.0.1.

The proxy runs from its own virtualenv (`proxy_python()`): .venv-proxy, which `make test` fills with
`litellm[proxy]==1.106.0` (BATCHRUN_TEST_PROXY_PYTHON names another interpreter), so that batchrun's
own venv keeps the newest litellm in range; without it, this interpreter if it has the proxy's
dependencies. `proxy_available()` says whether one of them does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

MASTER_KEY = "sk-batchrun-test-master-0123456789"
READY_TIMEOUT_S = 240.0
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


PROXY_MODULES = ("fastapi", "uvicorn", "yaml", "backoff", "litellm")


def proxy_python() -> str:
    """The interpreter that runs the proxy: BATCHRUN_TEST_PROXY_PYTHON, else .venv-proxy's, else this one."""
    named = os.environ.get("BATCHRUN_TEST_PROXY_PYTHON")
    if named:
        return named
    own = Path(__file__).resolve().parent.parent / ".venv-proxy" / "bin" / "python"
    return str(own) if own.exists() else sys.executable


def proxy_available() -> bool:
    python = proxy_python()
    if python == sys.executable:
        return all(importlib.util.find_spec(name) is not None for name in PROXY_MODULES)
    check = f"import importlib.util, sys; sys.exit(any(importlib.util.find_spec(m) is None for m in {PROXY_MODULES!r}))"
    try:
        return subprocess.run([python, "-c", check], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProxyProcess:
    def __init__(self, process: subprocess.Popen, port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.root_url = f"http://127.0.0.1:{port}"
        self.key = MASTER_KEY
        self.log_path = log_path

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        request = urllib.request.Request(self.root_url + path, headers={"Authorization": f"Bearer {self.key}"})
        try:
            with _DIRECT.open(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


@contextlib.contextmanager
def start_proxy(config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None) -> Iterator[ProxyProcess]:
    config = json.loads(json.dumps(config))
    config.setdefault("general_settings", {})["master_key"] = MASTER_KEY
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "proxy_config.yaml"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = workdir / "proxy.log"
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    child_env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION",
                      "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True", "NO_DOCS": "True", "DISABLE_ADMIN_UI": "True",
                      "PYTHONUNBUFFERED": "1", **(env or {})})
    child_env.pop("DATABASE_URL", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [proxy_python(), "-m", "litellm.proxy.proxy_cli", "--config", str(config_path), "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=workdir, env=child_env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    proxy = ProxyProcess(process, port, log_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"litellm --config exited with {process.returncode}:\n{proxy.log()}")
            try:
                status, _ = proxy.get("/health/liveliness", timeout=5.0)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"litellm --config not ready after {READY_TIMEOUT_S:g} s:\n{proxy.log()}")
            time.sleep(0.25)
        yield proxy
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def deployment(sim_base_url: str, name: str = "gpt-4o-mini", model: str = "openai/gpt-4o-mini",
               **litellm_params: Any) -> dict[str, Any]:
    """One model_list entry: `name` served by the simulator as `model`."""
    return {"model_name": name, "litellm_params": {"model": model, "api_base": sim_base_url, "api_key": "sim-key",
                                                   **litellm_params}}
