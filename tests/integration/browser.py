"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol (CDP), logged in to Label Studio.

Login as a person would, with requests (the login form's CSRF token, then email and password), and hand
the session cookies to Chromium with Network.setCookie; then navigate, evaluate JavaScript on the page and
take screenshots. One fresh profile per browser; the process is stopped by its own handle.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import requests
import websocket

from .stack import wait_until

CHROMIUM = "chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",  # Chromium picks a port and writes it to <profile>/DevToolsActivePort
    "--remote-allow-origins=*",
)
WINDOW = (1400, 900)


def chromium_binary() -> str | None:
    return shutil.which(CHROMIUM)


def login_cookies(base_url: str, email: str, password: str) -> dict[str, str]:
    """Session cookies (csrftoken, sessionid) of a Label Studio login through its HTML form."""
    session = requests.Session()
    session.trust_env = False
    session.get(f"{base_url}/user/login/", timeout=30).raise_for_status()
    form = {"email": email, "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]}
    answer = session.post(
        f"{base_url}/user/login/", data=form, headers={"Referer": f"{base_url}/user/login/"}, allow_redirects=False
    )
    if answer.status_code != 302 or "sessionid" not in session.cookies:
        raise RuntimeError(f"Label Studio login failed: {answer.status_code} {answer.text[:300]}")
    return {name: session.cookies[name] for name in ("csrftoken", "sessionid")}


class Browser:
    """One headless Chromium with one page, spoken to over CDP."""

    def __init__(self, binary: str, log_path: Path, window: tuple[int, int] = WINDOW) -> None:
        self._profile = tempfile.mkdtemp(prefix="tagclip-chromium-")
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", f"--window-size={window[0]},{window[1]}"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._ids = itertools.count(1)
        try:
            port = wait_until(self._devtools_port, 60, what="Chromium's DevTools port")
            page = wait_until(lambda: self._page_target(port), 30, what="a Chromium page target")
            self._socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        except Exception:
            self.close()
            raise
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _devtools_port(self) -> int | None:
        if self.process.poll() is not None:
            raise RuntimeError(f"chromium exited with {self.process.returncode}")
        marker = Path(self._profile) / "DevToolsActivePort"
        lines = marker.read_text().splitlines() if marker.exists() else []
        return int(lines[0]) if lines and lines[0].strip() else None

    @staticmethod
    def _page_target(port: int) -> dict | None:
        targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
        return next((t for t in targets if t.get("type") == "page"), None)

    def call(self, method: str, **params: Any) -> dict:
        """Send one CDP command and return its result (events in between are dropped)."""
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") != message_id:
                continue
            if "error" in message:
                raise RuntimeError(f"CDP {method} failed: {message['error']}")
            return message.get("result", {})

    def set_cookies(self, url: str, cookies: dict[str, str]) -> None:
        for name, value in cookies.items():
            if not self.call("Network.setCookie", name=name, value=value, url=url, path="/").get("success", True):
                raise RuntimeError(f"Chromium refused cookie {name}")

    def navigate(self, url: str) -> None:
        answer = self.call("Page.navigate", url=url)
        if answer.get("errorText"):
            raise RuntimeError(f"navigation to {url} failed: {answer['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression on the page (promises awaited)."""
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            raise RuntimeError(f"page script failed: {answer['exceptionDetails'].get('text')}: {expression[:200]}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        return wait_until(lambda: self.evaluate(expression), timeout, interval=0.5, what=what)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        socket = getattr(self, "_socket", None)
        if socket is not None:
            socket.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)
