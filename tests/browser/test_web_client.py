"""The bundled web client in a real headless Chromium against the real node binary.

Scenario (test_chat_survives_node_kill): two users in two browser contexts (one desktop, one
phone-sized) register, one creates a room and the other joins it by id, they chat. Then bob's
browser goes offline and the node is killed with SIGKILL and started again on the same data
directory and port; alice's page reconnects by itself and she keeps writing; bob writes into his
outbox while offline. When bob's network comes back his page resumes from its stored cursor and
shows every missed message exactly once, in order, and his outbox is delivered once.

Also: HTML and script in messages are shown as text and never run; an oversize message is
refused in the page; the node's error frames are shown with their code; direct conversations
and live unread counts; history paging by scrolling up; the node list (a node the page's node
configured in client.web_nodes, chosen with `?nodes=`) skipping a dead node; a cut socket that lost a `send` and an `ack` (the outbox retries with the same id).
"""

from __future__ import annotations

import json
import re
import time

import pytest
from conftest import MAX_BODY_BYTES, WAIT_MS, frames_of, free_port, joined, started_node
from playwright.sync_api import expect

expect.set_options(timeout=WAIT_MS)

PASSWORD = "correct horse battery"
XSS_IMG = "<img src=x onerror=alert(1)>"
XSS_SCRIPT = "<script>alert(2)</script>"
XSS_FLAG = '<img src=x onerror="window.__pwned=1"><b>bold?</b>'


# ---- Page helpers -------------------------------------------------------------------------

def register(page, user: str) -> None:
    page.get_by_label("User name", exact=True).fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Register").click()
    expect(page.locator("#me-name")).to_have_text(user)
    expect_live(page)


def log_in(page, user: str) -> None:
    page.get_by_label("User name", exact=True).fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#me-name")).to_have_text(user)
    expect_live(page)


def expect_live(page) -> None:
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")


def create_room(page, name: str) -> str:
    page.get_by_label("Room name").fill(name)
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.locator("#room-title")).to_have_text(name)
    room_id = page.locator("#room-id").text_content()
    assert room_id and room_id.startswith("r_"), room_id
    return room_id


def join_room(page, room_id: str) -> None:
    page.get_by_label("Room id").fill(room_id)
    page.get_by_role("button", name="Join", exact=True).click()
    expect(page.locator("#room-id")).to_have_text(room_id)


def send(page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")


def bodies(page) -> list[str]:
    """Committed text messages of the open room, in page order."""
    return page.locator("#messages li.msg:not(.notice) .body").all_text_contents()


def expect_body(page, text: str) -> None:
    expect(page.locator("#messages li.msg:not(.notice) .body").filter(has_text=re.compile("^" + re.escape(text) + "$"))).to_have_count(1)


def expect_outbox_empty(page) -> None:
    expect(page.locator("#pending li")).to_have_count(0)
    eventually(page, lambda: state(page)["outbox"] == [], "the outbox to empty")


def send_confirmed(page, texts) -> None:
    """Send each text, then wait until the page shows every one and its outbox is empty."""
    for text in texts:
        send(page, text)
    for text in texts:
        expect_body(page, text)
    expect_outbox_empty(page)


def state(page) -> dict:
    return page.evaluate("() => window.palaverState()")


def seqs(page) -> list[int]:
    return [int(s) for s in page.locator("#messages li.msg").evaluate_all("els => els.map(e => e.dataset.seq)")]


def eventually(page, check, what: str, timeout_s: float = WAIT_MS / 1000) -> None:
    """Poll `check` until it holds. Waits through the page, not time.sleep: Playwright's sync API
    runs event handlers (the WebSocket route below) only while inside one of its calls."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def assert_exactly_once_in_order(seen: list[str], expected: list[str]) -> None:
    for text in expected:
        assert seen.count(text) == 1, f"{text!r} shown {seen.count(text)} times; page shows {seen}"
    positions = [seen.index(text) for text in expected]
    assert positions == sorted(positions), f"out of order: expected {expected}, page shows {seen}"


# ---- Tests --------------------------------------------------------------------------------

@pytest.fixture
def node_with_dead_peer(request):
    """A node whose web client may also use a node that is not running (`dead_peer`)."""
    dead = f"127.0.0.1:{free_port()}"
    for started in started_node(request, env={"PALAVER_CLIENT__WEB_NODES": f'["{dead}"]'}):
        started.dead_peer = dead
        yield started


def test_chat_survives_node_kill(node, pages):
    ctx_a, alice = pages.open("alice-desktop", node.base_url + "/")
    ctx_b, bob = pages.open("bob-phone", node.base_url + "/", phone=True)

    register(alice, "alice")
    register(bob, "bob")
    expect(alice.locator("#conn-text")).to_contain_text("web-1")

    room_id = create_room(alice, "general")
    join_room(bob, room_id)

    send(alice, "hello bob")
    expect_body(bob, "hello bob")
    send(bob, "hi alice")
    expect_body(alice, "hi alice")

    # -- Markup and script in messages are text. --
    for text in (XSS_IMG, XSS_SCRIPT, XSS_FLAG):
        send(alice, text)
    for page in (alice, bob):
        for text in (XSS_IMG, XSS_SCRIPT, XSS_FLAG):
            expect_body(page, text)
        assert page.locator("#messages img, #messages script, #messages b").count() == 0
    bob.wait_for_timeout(300)  # give a broken image's onerror the chance to fire, were there one
    for page in (alice, bob):
        assert page.evaluate("() => window.__pwned") is None, "a message's markup ran"
        assert page.dialogs == [], f"a message opened a dialog: {page.dialogs}"

    # -- Oversize input is refused in the page, counted in bytes, with the limit from `welcome`. --
    assert state(alice)["limits"]["max_body_bytes"] == MAX_BODY_BYTES
    oversize = "é" * (MAX_BODY_BYTES // 2 + 1)  # fewer characters than the limit, more bytes
    send(alice, oversize)
    expect(alice.locator("#composer-error")).to_contain_text(f"{len(oversize.encode())} bytes")
    expect(alice.locator("#composer-error")).to_contain_text(f"at most {MAX_BODY_BYTES} bytes")
    expect(alice.locator("#byte-count")).to_have_class(re.compile(r"\bover\b"))
    expect(alice.get_by_label("Message", exact=True)).to_have_attribute("aria-invalid", "true")
    assert state(alice)["outbox"] == [], "the refused message must not be queued"
    alice.get_by_label("Message", exact=True).fill("")

    # -- The node's error frames are shown with their code. --
    alice.get_by_label("Room id").fill("r_nosuchroom22")
    alice.get_by_role("button", name="Join", exact=True).click()
    expect(alice.locator("#alerts")).to_contain_text("no_such_room")
    expect(alice.locator("#side-error")).to_contain_text("no_such_room")

    # -- Bob's network goes away; the node is killed and comes back at the same address. --
    ctx_b.set_offline(True)
    expect(bob.locator("#conn")).to_have_attribute("data-state", re.compile("offline|reconnecting"))
    node.kill9()
    expect(alice.locator("#conn")).to_have_attribute("data-state", re.compile("reconnecting|connecting"))
    send(bob, "written offline by bob")  # into bob's outbox
    expect(bob.locator("#pending li")).to_have_count(1)
    expect(bob.locator("#pending li .status")).to_have_text("waiting for connection")
    node.start()

    expect_live(alice)
    expect(alice.locator("#conn-text")).to_contain_text("Resumed on web-1")
    missed = [f"missed {i} of 5" for i in range(1, 6)]
    send_confirmed(alice, missed)
    assert bob.locator("#conn").get_attribute("data-state") != "live"
    assert "missed 1 of 5" not in bodies(bob)

    # -- Bob comes back: every missed message once, in order; his outbox goes out once. --
    ctx_b.set_offline(False)
    expect_live(bob)
    expect(bob.locator("#conn-text")).to_have_text("Resumed on web-1: 5 messages replayed")
    for text in missed:
        expect_body(bob, text)
    expect_outbox_empty(bob)
    expect_body(alice, "written offline by bob")

    everything = ["hello bob", "hi alice", XSS_IMG, XSS_SCRIPT, XSS_FLAG, *missed, "written offline by bob"]
    # Settle: nothing more may arrive (no late duplicates).
    alice.wait_for_timeout(500)
    for page in (alice, bob):
        assert bodies(page) == everything, f"page shows {bodies(page)}"
        shown = seqs(page)
        assert shown == list(range(shown[0], shown[0] + len(shown))), f"room sequence numbers not dense: {shown}"
        assert page.errors == [], f"page errors: {page.errors}"


def test_direct_conversation_and_live_unread_counts(node, pages):
    _, alice = pages.open("alice", node.base_url + "/")
    _, bob = pages.open("bob", node.base_url + "/")
    register(alice, "alice")
    register(bob, "bob")
    create_room(alice, "lobby")

    bob.get_by_label("Their user name").fill("alice")
    bob.get_by_role("button", name="Start").click()
    expect(bob.locator("#room-title")).to_have_text("alice")
    send(bob, "psst, alice")
    expect_body(bob, "psst, alice")
    psst_seq = int(bob.locator("#messages li.msg:not(.notice)").last.get_attribute("data-seq"))

    # Alice never read the conversation: unread = room.last_seq - read_seq = last_seq.
    dm = alice.locator('#room-list li[data-room="dm:alice:bob"]')
    expect(dm).to_have_count(1)
    expect(dm).to_contain_text("bob")
    expect(dm).to_have_attribute("data-unread", str(psst_seq))
    send(bob, "are you there?")
    expect(dm).to_have_attribute("data-unread", str(psst_seq + 1))
    expect(dm.get_by_role("button")).to_contain_text(f"{psst_seq + 1} unread")

    dm.get_by_role("button").click()
    expect_body(alice, "are you there?")
    expect(dm).to_have_attribute("data-unread", "0")
    # The read position is stored by the node: a fresh page of alice's sees it.
    _, alice2 = pages.open("alice-second-tab", node.base_url + "/")
    log_in(alice2, "alice")
    dm2 = alice2.locator('#room-list li[data-room="dm:alice:bob"]')
    expect(dm2).to_have_attribute("data-unread", "0")

    # Read positions sync between a user's connections: the second page has no room open, so
    # only the first page's `mark_read` (relayed as a `read` frame) can clear its count.
    cursor_before = state(alice2)["cursor"]
    send(bob, "third")
    expect_body(alice, "third")
    eventually(alice2, lambda: state(alice2)["cursor"] > cursor_before, "the second page to receive the message")
    expect(dm2).to_have_attribute("data-unread", "0")
    expect(dm).to_have_attribute("data-unread", "0")


def test_history_paging_and_node_list(node_with_dead_peer, pages):
    node = node_with_dead_peer
    _, alice = pages.open("alice", node.base_url + "/")
    register(alice, "alice")
    room_id = create_room(alice, "archive")
    texts = [f"line {i:03d}" for i in range(1, 71)]
    for text in texts:
        send(alice, text)
    expect_body(alice, texts[-1])
    expect_outbox_empty(alice)

    # A second browser with a node list whose first node is dead: it moves on to the live one.
    dead = node.dead_peer
    _, fresh = pages.open("alice-fresh", f"{node.base_url}/?nodes={dead},{node.addr}")
    log_in(fresh, "alice")
    assert state(fresh)["url"] == f"ws://{node.addr}/ws"
    assert len(state(fresh)["nodes"]) == 2
    fresh.locator(f'#room-list li[data-room="{room_id}"] button').click()
    expect_body(fresh, texts[-1])
    shown = bodies(fresh)
    assert texts[0] not in shown and len(shown) < len(texts), "the first page should not hold everything"

    # Scrolling to the top loads older pages until the start.
    for _ in range(5):
        if texts[0] in bodies(fresh):
            break
        fresh.locator("#scroller").evaluate("el => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); }")
        fresh.wait_for_timeout(300)
    expect_body(fresh, texts[0])
    expect(fresh.locator("#history-status")).to_have_text("Start of the conversation")
    assert bodies(fresh) == texts
    shown_seqs = seqs(fresh)
    assert shown_seqs == list(range(1, len(texts) + 2)), shown_seqs  # the join notice is seq 1


def test_cut_socket_outbox_retries_with_the_same_id(node, pages):
    """Bob's socket loses one `send` on the way out and another message's `ack` and `message`
    on the way back, then is cut. After the reconnect both arrive exactly once."""
    _, alice = pages.open("alice", node.base_url + "/")
    register(alice, "alice")
    room_id = create_room(alice, "lossy")

    sent_frames: list[dict] = []
    acks: list[dict] = []
    mode = {"lose": False}
    routes = []

    def route(ws):
        server = ws.connect_to_server()
        routes.append((ws, server))

        def from_page(message):
            frame = json.loads(message) if isinstance(message, str) else {}
            if frame.get("type") == "send":
                sent_frames.append(frame)
                if mode["lose"] and frame["body"] == "lost on the way out":
                    return  # the node never sees it
                if mode["lose"] and frame["body"] == "lost on the way back":
                    ids_lost_back.add(frame["id"])  # before the node can answer
            server.send(message)

        def from_server(message):
            frames = frames_of(message)
            kept = []
            for frame in frames:
                if frame.get("type") == "ack":
                    acks.append(frame)
                if mode["lose"] and frame.get("body") == "lost on the way back":
                    continue
                if mode["lose"] and frame.get("type") == "ack" and frame.get("id") in ids_lost_back:
                    continue
                kept.append(frame)
            if len(kept) == len(frames):
                ws.send(message)
            elif kept:
                ws.send(joined(kept))

        ws.on_message(from_page)
        server.on_message(from_server)

    ids_lost_back: set[str] = set()
    _, bob = pages.open(
        "bob", node.base_url + "/", before_goto=lambda context, page: context.route_web_socket(re.compile(r"/ws$"), route)
    )
    register(bob, "bob")
    join_room(bob, room_id)

    mode["lose"] = True
    send(bob, "lost on the way out")
    eventually(bob, lambda: any(f["body"] == "lost on the way out" for f in sent_frames), "the first send to leave the page")
    send(bob, "lost on the way back")
    eventually(bob, lambda: any(f["body"] == "lost on the way back" for f in sent_frames), "the second send to leave the page")
    expect_body(alice, "lost on the way back")  # committed, though bob never heard
    bob.wait_for_timeout(300)
    assert len(state(bob)["outbox"]) == 2, state(bob)

    # Cut the socket; the page reconnects through the route, which now passes everything.
    mode["lose"] = False
    ws, server = routes[-1]
    ws.close(code=4000, reason="test cut the socket")
    server.close()
    expect_live(bob)
    expect_outbox_empty(bob)
    for page in (alice, bob):
        expect_body(page, "lost on the way out")
        expect_body(page, "lost on the way back")
    alice.wait_for_timeout(500)
    # The one that reached the node first is first; the lost one was committed on its retry.
    for page in (alice, bob):
        assert bodies(page) == ["lost on the way back", "lost on the way out"], bodies(page)

    # Every send of a message used the same id; none was stored twice.
    by_body: dict[str, set[str]] = {}
    for frame in sent_frames:
        by_body.setdefault(frame["body"], set()).add(frame["id"])
    assert all(len(ids) == 1 for ids in by_body.values()), by_body
    retried = [f for f in sent_frames if f["body"] == "lost on the way out"]
    assert len(retried) == 2, f"the lost send goes out again after the reconnect: {sent_frames}"
    acked: dict[str, set[int]] = {}
    for ack in acks:
        acked.setdefault(ack["id"], set()).add(ack["seq"])
    assert all(len(seq) == 1 for seq in acked.values()), f"an id was stored at two places: {acks}"
