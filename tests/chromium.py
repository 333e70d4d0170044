"""A headless Chromium driven over the DevTools protocol, for the browser tests.

Debian's `chromium` package is started with `--remote-debugging-port=0`; the
websocket address it prints is driven with aiohttp (already a dependency), so
no WebDriver, no Selenium and no browser download are needed. Only what the
tests use: open a page, evaluate an expression, take a screenshot.

    async with Chromium.launch() as browser:
        page = await browser.new_page(width=1280, height=1000)
        await page.goto("http://127.0.0.1:8765/")
        text = await page.evaluate("document.querySelector('#done-count').textContent")
        await page.screenshot(Path("shot.png"))
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    def __init__(self, browser: "Chromium", session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, session_id=self.session_id, **params)

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        reply = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        result = reply.get("result", {})
        if "exceptionDetails" in reply:
            return None
        return result.get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Evaluate until the value is truthy; that value, or TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                shown = await self.evaluate("document.body ? document.body.innerText.slice(0, 800) : ''")
                raise TimeoutError(f"still false after {timeout} s: {expression}\npage text: {shown!r}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> Path:
        reply = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(reply["data"]))
        return path


class Chromium:
    def __init__(self, process: subprocess.Popen, ws: aiohttp.ClientWebSocketResponse, http: aiohttp.ClientSession,
                 profile: str) -> None:
        self.process = process
        self.ws = ws
        self.http = http
        self.profile = profile
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, timeout: float = 30.0) -> AsyncIterator["Chromium"]:
        binary = chromium_path()
        if binary is None:
            raise RuntimeError("chromium is not installed (apt-get install chromium)")
        profile = tempfile.mkdtemp(prefix="batchrun-chromium-")
        stderr_path = Path(profile) / "stderr.log"
        stderr = open(stderr_path, "wb")
        process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=stderr, stdin=subprocess.DEVNULL)
        http = aiohttp.ClientSession()
        browser = None
        try:
            deadline = time.monotonic() + timeout
            url = None
            while url is None:
                match = re.search(rb"DevTools listening on (ws://\S+)", stderr_path.read_bytes())
                if match:
                    url = match.group(1).decode()
                elif process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("chromium did not start: " + stderr_path.read_text(errors="replace")[-2000:])
                else:
                    await asyncio.sleep(0.05)
            ws = await http.ws_connect(url, max_msg_size=0)
            browser = cls(process, ws, http, profile)
            yield browser
        finally:
            if browser is not None:
                await browser.close()
            await http.close()
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            stderr.close()
            shutil.rmtree(profile, ignore_errors=True)

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = message.json()
            future = self._waiting.pop(data.get("id"), None) if "id" in data else None
            if future is not None and not future.done():
                if "error" in data:
                    future.set_exception(RuntimeError(f"DevTools: {data['error']}"))
                else:
                    future.set_result(data.get("result", {}))
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(RuntimeError("DevTools connection closed"))

    async def send(self, method: str, session_id: str | None = None, timeout: float = 30.0,
                   **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session_id:
            message["sessionId"] = session_id
        await self.ws.send_json(message)
        return await asyncio.wait_for(future, timeout)

    async def new_page(self, width: int = 1280, height: int = 1000) -> Page:
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=False)
        return page

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send("Browser.close"), 5)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await self.ws.close()


__all__ = ["Chromium", "Page", "chromium_path"]
