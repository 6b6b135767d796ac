"""Fixtures for the browser tests of the bundled web client.

- `Node` runs the real `palaver` binary (``PALAVER_BIN``, else ``$CARGO_TARGET_DIR/debug/palaver``
  with ``CARGO_TARGET_DIR`` defaulting to ``target``) on a port picked here, so a killed node can
  be started again at the same address on the same data directory.
- `browser` is Debian's Chromium driven by Playwright. Playwright's own browser download cannot
  work on these machines, so the executable is given explicitly. When Chromium or Playwright
  is missing or will not start, the tests are skipped with the reason printed, unless
  ``PALAVER_BROWSER_REQUIRED=1``, which turns that into a failure.
- On failure every page a test opened is screenshotted into ``test-artifacts/`` at the repository
  root, next to the node's log.

Every wait is bounded: process start-up, Playwright's expectations and the polling helper.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
# The signing key every node of a test shares, so tokens survive a restart (32+ bytes).
TOKEN_KEY = "palaver-browser-test-token-key-0123456789"
# Small enough that the oversize case is cheap, and different from the node's default, so the
# test also shows that the page takes its limit from `welcome`.
MAX_BODY_BYTES = 1000
START_TIMEOUT_S = 30
WAIT_MS = 20_000


def palaver_binary() -> Path:
    if os.environ.get("PALAVER_BIN"):
        return Path(os.environ["PALAVER_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    if not target.is_absolute():
        target = REPO_ROOT / target
    return target / "debug" / "palaver"


def frames_of(message) -> list[dict]:
    """The frames of one WebSocket message from the node. The web client asks for batched
    frames (docs/PROTOCOL.md), so a text message is one JSON object per line."""
    if not isinstance(message, str):
        return []
    frames = []
    for line in message.split("\n"):
        try:
            frame = json.loads(line)
        except ValueError:
            continue
        if isinstance(frame, dict):
            frames.append(frame)
    return frames


def joined(frames: list[dict]) -> str:
    """Frames as one batched WebSocket message, as the node would send them."""
    return "\n".join(json.dumps(frame, separators=(",", ":"), ensure_ascii=False) for frame in frames)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Node:
    """One `palaver` process; `kill9` and `start` again keep the address and the data."""

    LISTENING = re.compile(r"palaver node (\S+) listening on (\S+)")

    def __init__(self, binary: Path, data_dir: Path, port: int, name: str = "web-1", env: dict[str, str] | None = None):
        self.binary = binary
        self.data_dir = data_dir
        self.port = port
        self.name = name
        # More PALAVER_* settings for this node (applied last).
        self.extra_env = dict(env or {})
        self.log_path = data_dir / "node.log"
        self.proc: subprocess.Popen | None = None
        self.addr: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.addr}"

    def env(self) -> dict[str, str]:
        # Hermetic: nothing PALAVER_* leaks in from the caller's environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PALAVER_")}
        env.update(
            {
                "PALAVER_NODE__NAME": self.name,
                "PALAVER_NODE__DATA_DIR": str(self.data_dir),
                "PALAVER_NODE__DRAIN_TIMEOUT_MS": "1000",
                "PALAVER_CLIENT__LISTEN": f"127.0.0.1:{self.port}",
                # Any free port: tests run several nodes at once, and use no operator endpoint.
                "PALAVER_ADMIN__LISTEN": "127.0.0.1:0",
                "PALAVER_AUTH__TOKEN_KEY": TOKEN_KEY,
                "PALAVER_AUTH__ARGON2_MEMORY_KIB": "1024",
                "PALAVER_AUTH__ARGON2_ITERATIONS": "1",
                "PALAVER_LIMITS__MAX_BODY_BYTES": str(MAX_BODY_BYTES),
                "PALAVER_LOG__FILTER": "info",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        """Start and wait for the "listening" line; retries briefly while the port is still held."""
        deadline = time.monotonic() + START_TIMEOUT_S
        last_error = ""
        while time.monotonic() < deadline:
            error = self._start_once(deadline)
            if error is None:
                return
            last_error = error
            time.sleep(0.2)
        raise RuntimeError(f"node did not start within {START_TIMEOUT_S} s: {last_error}")

    def _start_once(self, deadline: float) -> str | None:
        log = open(self.log_path, "ab")
        log.write(f"--- starting {self.binary} on port {self.port}\n".encode())
        log.flush()
        # The data directory as working directory: the repository's cluster.toml is not read.
        proc = subprocess.Popen(
            [str(self.binary)],
            cwd=self.data_dir,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        log.close()
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                lines.put(raw.decode(errors="replace"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                proc.kill()
                proc.wait(timeout=10)
                return "no 'listening' line"
            try:
                line = lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                if proc.poll() is not None:
                    return f"exited with {proc.returncode}; see {self.log_path}"
                continue
            if line is None:
                proc.wait(timeout=10)
                return f"exited with {proc.returncode}: {self.log_tail()}"
            match = self.LISTENING.search(line)
            if match:
                self.proc = proc
                self.addr = match.group(2)
                return None

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def skip_or_fail(reason: str):
    """Browser unavailable: say why on stderr, then skip (or fail when it is required)."""
    message = f"browser tests cannot run: {reason}"
    print(f"\n*** {message}", file=sys.__stderr__, flush=True)
    if os.environ.get("PALAVER_BROWSER_REQUIRED") == "1":
        pytest.fail(message + " (PALAVER_BROWSER_REQUIRED=1)", pytrace=False)
    pytest.skip(message)


def chromium_executable() -> str | None:
    for candidate in (
        os.environ.get("PALAVER_CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        "/usr/lib/chromium/chromium",
    ):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        skip_or_fail(f"the Python package `playwright` is not installed ({err}); pip install playwright")
    executable = chromium_executable()
    if executable is None:
        skip_or_fail("no Chromium found (looked at $PALAVER_CHROMIUM, chromium, chromium-browser); apt-get install chromium")
    manager = sync_playwright().start()
    try:
        browser = manager.chromium.launch(executable_path=executable, headless=True, timeout=60_000)
    except Exception as err:  # noqa: BLE001 - any launch failure means "cannot run here"
        manager.stop()
        skip_or_fail(f"Chromium at {executable} did not start: {str(err).splitlines()[0]}")
    yield browser
    browser.close()
    manager.stop()


def started_node(
    request, node_class=None, *, name: str = "web-1", env: dict[str, str] | None = None, port: int | None = None
):
    """Start a node (of `node_class`, default `Node`; named `name`, with more `env` settings, on
    `port` or a free one) for one test, stop it afterwards, and keep its log among the artifacts
    if the test failed. A generator for fixtures to `yield from`."""
    binary = palaver_binary()
    if not binary.exists():
        pytest.fail(f"no palaver binary at {binary}: build it with `cargo build -p node` or set PALAVER_BIN", pytrace=False)
    data_dir = Path(tempfile.mkdtemp(prefix="palaver-web-"))
    started = (node_class or Node)(binary, data_dir, port or free_port(), name, env)
    started.start()
    yield started
    started.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(started.log_path, ARTIFACTS / f"{request.node.name}-{name}-node.log")
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def node(request):
    yield from started_node(request)


class Pages:
    """The browser contexts a test opened, for screenshots on failure and clean-up."""

    def __init__(self, browser):
        self.browser = browser
        self.opened: list[tuple[str, object, object]] = []

    def open(self, label: str, url: str, *, phone: bool = False, before_goto=None):
        if phone:
            context = self.browser.new_context(viewport={"width": 390, "height": 780}, device_scale_factor=2, is_mobile=True, has_touch=True)
        else:
            context = self.browser.new_context(viewport={"width": 1200, "height": 800})
        context.set_default_timeout(WAIT_MS)
        return context, self.reopen(label, context, url, before_goto=before_goto)

    def reopen(self, label: str, context, url: str, *, before_goto=None):
        """A new page in an existing context (the same browser storage: a reload, another tab),
        tracked like the first: errors, dialogs, screenshot on failure."""
        page = context.new_page()
        page.dialogs = []  # type: ignore[attr-defined]
        page.errors = []  # type: ignore[attr-defined]

        def on_dialog(dialog):
            page.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda err: page.errors.append(str(err)))
        if before_goto:
            before_goto(context, page)
        self.opened.append((label, context, page))
        page.goto(url)
        return page

    def screenshot_all(self, test_name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        for label, _, page in self.opened:
            try:
                page.screenshot(path=str(ARTIFACTS / f"{test_name}-{label}.png"), full_page=True, timeout=10_000)
                (ARTIFACTS / f"{test_name}-{label}.state.txt").write_text(
                    f"{page.evaluate('() => JSON.stringify(window.palaverState && window.palaverState())')}\n"
                    f"errors: {page.errors}\ndialogs: {page.dialogs}\n"
                )
            except Exception as err:  # noqa: BLE001 - best effort while reporting a failure
                print(f"screenshot of {label} failed: {err}", file=sys.__stderr__)

    def close(self) -> None:
        for _, context, _ in self.opened:
            try:
                context.close()
            except Exception:  # noqa: BLE001
                pass


@pytest.fixture
def pages(browser, request):
    opened = Pages(browser)
    yield opened
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        opened.screenshot_all(request.node.name)
        print(f"\nscreenshots and logs saved in {ARTIFACTS}", file=sys.__stderr__)
    opened.close()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
