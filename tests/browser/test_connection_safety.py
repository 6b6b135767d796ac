"""Where the web client connects, and that it never reconnects in a loop.

- Credentials stay with the operator's nodes: a page opened with `?nodes=` (or localStorage
  `palaver.nodes`) naming another host never connects there, whether it holds a token or the
  user is signing in with a password; that host is a real WebSocket server here that records
  everything it gets. The node's Content-Security-Policy refuses a socket to it even from
  script that bypasses the client's own check.
- The nodes an operator configured (client.web_nodes) are honoured: a page may use them.
- A connection that dies while loading (a server that drops it right after `authenticated`: a
  real node behind a proxy that cuts the TCP connection) leads to a bounded number of attempts
  and a visible error with a button to try again, not a reconnect loop.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
import websockets
from conftest import WAIT_MS, free_port, started_node
from playwright.sync_api import expect
from test_web_client import PASSWORD, create_room, expect_live, register, state
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve as ws_serve

expect.set_options(timeout=WAIT_MS)

# The page's STUCK_AFTER: failures in a row at one point before it stops reconnecting.
STUCK_AFTER = 4


class WsServer:
    """A WebSocket server on 127.0.0.1 running `handle(self, connection)` on its own thread and
    event loop, so the page can reach it while Playwright's sync API holds the main thread."""

    def __init__(self):
        self.connections = 0
        self.received: list[str] = []
        self.port = 0
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def handle(self, connection) -> None:
        raise NotImplementedError

    async def _counted(self, connection) -> None:
        with self._lock:
            self.connections += 1
        try:
            await self.handle(connection)
        except websockets.ConnectionClosed:
            pass

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with ws_serve(self._counted, "127.0.0.1", 0, max_size=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def record(self, message) -> None:
        with self._lock:
            self.received.append(message if isinstance(message, str) else message.decode(errors="replace"))

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(10), "the test's WebSocket server did not start"
        return self

    def __exit__(self, *exc):
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class FakeNode(WsServer):
    """Answers like a palaver node (so an old client would go on to send its token or password)
    and records every message it gets."""

    async def handle(self, connection) -> None:
        async for message in connection:
            self.record(message)
            try:
                frame = json.loads(message)
            except ValueError:
                continue
            if frame.get("type") == "hello":
                await connection.send(json.dumps({"type": "welcome", "version": 1, "node": "evil", "max_frame_bytes": 65536, "max_body_bytes": 16384}))


class KillingProxy(WsServer):
    """Forwards to a real node's `/ws`. While `kill` is set it cuts the TCP connection (no close
    frame: the page sees 1006) shortly after the node's `authenticated`, as a reply the node
    cannot send would: the page is then signed in and loading."""

    KILL_AFTER_S = 0.3

    def __init__(self):
        super().__init__()
        self.upstream = ""
        self.kill = False
        self._open: set = set()

    def cut_all(self) -> None:
        """Cut every connection now (from the test's thread)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(lambda: [connection.transport.abort() for connection in list(self._open)])

    async def handle(self, connection) -> None:
        self._open.add(connection)
        try:
            async with ws_connect(self.upstream, max_size=None) as node:
                await self._pump(connection, node)
        finally:
            self._open.discard(connection)

    async def _pump(self, connection, node) -> None:
        async def page_to_node():
            async for message in connection:
                await node.send(message)

        async def cut_later():
            await asyncio.sleep(self.KILL_AFTER_S)
            connection.transport.abort()

        async def node_to_page():
            async for message in node:
                await connection.send(message)
                if self.kill and isinstance(message, str) and '"type":"authenticated"' in message:
                    asyncio.get_running_loop().create_task(cut_later())

        tasks = [asyncio.create_task(page_to_node()), asyncio.create_task(node_to_page())]
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()


def wait_ms(page, ms: int) -> None:
    """Let time pass inside Playwright (its event handling keeps running)."""
    page.wait_for_timeout(ms)


def assert_untouched(fake: FakeNode) -> None:
    assert fake.connections == 0, f"the page connected to a host nobody configured; it got {fake.received}"
    assert fake.received == []


@pytest.fixture
def fake_node():
    with FakeNode() as fake:
        yield fake


# ---- Credentials go nowhere else ------------------------------------------------------------

def test_a_link_cannot_send_the_token_elsewhere(node, pages, fake_node):
    fake = f"ws://127.0.0.1:{fake_node.port}"
    context, page = pages.open("alice", node.base_url + "/")
    register(page, "alice")
    own = f"ws://{node.addr}/ws"

    # Signed in (a token in storage), the page is opened from a link naming another host.
    linked = pages.reopen("alice-linked", context, f"{node.base_url}/?nodes={fake}")
    wait_ms(linked, 1500)
    assert_untouched(fake_node)
    expect_live(linked)
    assert state(linked)["url"] == own
    assert state(linked)["nodes"] == [own]
    expect(linked.locator('#alerts .alert[data-code="node_not_allowed"]')).to_contain_text(f"127.0.0.1:{fake_node.port}")

    # The same host put into localStorage (as a page once could) is ignored too.
    linked.evaluate(f"() => localStorage.setItem('palaver.nodes', {json.dumps(fake)})")
    stored = pages.reopen("alice-stored", context, node.base_url + "/")
    expect_live(stored)
    assert state(stored)["url"] == own

    # Script that went around the client's check: the node's policy refuses the socket.
    refused = stored.evaluate(
        """(url) => new Promise((done) => {
            try {
                const ws = new WebSocket(url);
                ws.onopen = () => done('opened');
                ws.onerror = () => done('refused');
            } catch (err) {
                done('refused: ' + err.name);
            }
        })""",
        fake,
    )
    assert refused.startswith("refused"), refused
    wait_ms(stored, 1000)
    assert_untouched(fake_node)


def test_a_link_cannot_send_the_password_elsewhere(node, pages, fake_node):
    fake = f"127.0.0.1:{fake_node.port}"
    _, page = pages.open("bob", f"{node.base_url}/?nodes={fake}")
    expect(page.get_by_role("button", name="Register")).to_be_enabled()
    # Register, then log in with the password (the page does both): at the page's own node only.
    page.get_by_label("User name", exact=True).fill("bob")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Register").click()
    wait_ms(page, 1500)
    assert not any(PASSWORD in message for message in fake_node.received), "the password went to another host"
    assert_untouched(fake_node)
    expect(page.locator("#me-name")).to_have_text("bob")
    expect_live(page)
    assert state(page)["url"] == f"ws://{node.addr}/ws"


# ---- Configured nodes are honoured -----------------------------------------------------------

@pytest.fixture
def first_port():
    return free_port()


@pytest.fixture
def second_node(request, first_port):
    # Pages served by the first node may open WebSockets here: their origin is allowed.
    origins = f'["http://127.0.0.1:{first_port}"]'
    yield from started_node(request, name="web-2", env={"PALAVER_CLIENT__ALLOWED_ORIGINS": origins})


@pytest.fixture
def node_naming_second(request, second_node, first_port):
    env = {"PALAVER_CLIENT__WEB_NODES": f'["{second_node.addr}"]'}
    yield from started_node(request, env=env, port=first_port)


def test_configured_nodes_may_be_used(pages, node_naming_second, second_node):
    first, other = node_naming_second, second_node.addr
    # By default: the page's own node first, then the configured ones.
    _, page = pages.open("carol", first.base_url + "/")
    register(page, "carol")
    assert state(page)["nodes"] == [f"ws://{first.addr}/ws", f"ws://{other}/ws"]
    assert state(page)["node"] == "web-1"

    # A link may choose a configured node: the page signs in there.
    _, chosen = pages.open("dave", f"{first.base_url}/?nodes={other}")
    register(chosen, "dave")
    assert state(chosen)["url"] == f"ws://{other}/ws"
    assert state(chosen)["node"] == "web-2"
    expect(chosen.locator("#conn-text")).to_contain_text("web-2")
    expect(chosen.locator('#alerts .alert[data-code="node_not_allowed"]')).to_have_count(0)
    create_room(chosen, "elsewhere")


# ---- No reconnect loop -----------------------------------------------------------------------

@pytest.fixture
def proxy():
    with KillingProxy() as started:
        yield started


@pytest.fixture
def node_behind_proxy(request, proxy):
    """A node whose web client may use the proxy in front of it."""
    for node in started_node(request, env={"PALAVER_CLIENT__WEB_NODES": f'["127.0.0.1:{proxy.port}"]'}):
        proxy.upstream = f"ws://{node.addr}/ws"
        yield node


def expect_stopped(page, proxy, connections: int) -> None:
    """The page stopped reconnecting after `connections` in all, says so, and shows nothing
    still loading."""
    error = page.locator("#conn-error")
    expect(error).to_be_visible(timeout=20_000)
    expect(page.locator("#conn")).to_have_attribute("data-state", "failed")
    expect(page.locator("#conn-error-text")).to_contain_text(f"lost {STUCK_AFTER} times in a row while catching up and loading")
    expect(page.get_by_role("button", name="Try again")).to_be_visible()
    expect(page.locator("#history-status")).to_have_text("")
    assert state(page)["stuck"] == "loading"
    # It has stopped: nothing more happens by itself.
    wait_ms(page, 3000)
    assert proxy.connections == connections, f"{proxy.connections} connections, expected {connections}"


def test_a_connection_killed_while_loading_stops_with_an_error(pages, proxy, node_behind_proxy):
    node = node_behind_proxy
    context, page = pages.open("erin", f"{node.base_url}/?nodes=127.0.0.1:{proxy.port}")
    register(page, "erin")
    create_room(page, "doomed")
    assert proxy.connections == 1
    # A connection that loaded and stayed up is a success: its loss is not counted.
    page.wait_for_function("() => window.palaverState().settled", timeout=10_000)

    # From now on every connection dies while loading (a reply the node cannot send).
    proxy.kill = True
    proxy.cut_all()
    expect_stopped(page, proxy, 1 + STUCK_AFTER)

    # A reload tries again, a bounded number of times: the open room's first page is asked for
    # and never comes, and the page does not stay on "Loading…".
    reloaded = pages.reopen("erin-reloaded", context, f"{node.base_url}/?nodes=127.0.0.1:{proxy.port}")
    expect_stopped(reloaded, proxy, 1 + 2 * STUCK_AFTER)

    # Trying again is one attempt; failing the same way stops again at once.
    reloaded.get_by_role("button", name="Try again").click()
    expect_stopped(reloaded, proxy, 2 + 2 * STUCK_AFTER)

    # Once the server is fixed, trying again works, and the connection then counts as a
    # success: the backoff starts over.
    proxy.kill = False
    reloaded.get_by_role("button", name="Try again").click()
    expect_live(reloaded)
    expect(reloaded.locator("#conn-error")).to_be_hidden()
    expect(reloaded.locator("#room-title")).to_have_text("doomed")
    expect(reloaded.locator("#messages li.msg.notice")).to_have_count(1)  # "erin joined"
    reloaded.wait_for_function("() => window.palaverState().settled", timeout=10_000)
    assert state(reloaded)["attempt"] == 0
    assert state(reloaded)["stuck"] is None
