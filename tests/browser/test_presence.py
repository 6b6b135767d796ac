"""Presence, typing indicators and receipts in the bundled web client (real node, real Chromium).

Scenario (test_presence_typing_and_receipts): alice (phone-sized) opens a direct conversation
with bob (desktop). Bob sees her online; her message shows "Delivered" while bob has not opened
the conversation and "Read" once he has; her typing shows "alice is typing…" on bob's page until
she sends; she sets herself away with a status text and bob sees both; her page closes and bob
sees her offline with "last seen"; a fresh page of hers re-sends the chosen state and still
shows her message as read (read positions are stored).

test_typing_refused_in_large_rooms: with presence.room_max_members = 1 every room is "large":
the node refuses `typing` with `forbidden`, which the page swallows (no banner) and stops
sending for that room. The group room's member strip shows members with presence.

The node runs with a short presence grace period and flush interval so "offline" comes quickly.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import ARTIFACTS, WAIT_MS, Node, free_port, palaver_binary
from playwright.sync_api import expect
from test_web_client import create_room, expect_body, expect_live, join_room, register, send, state

T = 10_000  # ms, every expectation here


class PresenceNode(Node):
    """The conftest node with extra `PALAVER_*` settings."""

    def __init__(self, *args, extra_env: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_env = extra_env

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(self.extra_env)
        return env


@pytest.fixture
def make_node(request):
    started: list[PresenceNode] = []

    def make(**settings: str) -> PresenceNode:
        binary = palaver_binary()
        if not binary.exists():
            pytest.fail(f"no palaver binary at {binary}: build it with `cargo build -p node`", pytrace=False)
        data_dir = Path(tempfile.mkdtemp(prefix="palaver-web-presence-"))
        extra = {"PALAVER_PRESENCE__GRACE_MS": "300", "PALAVER_PRESENCE__FLUSH_MS": "50"}
        extra.update({f"PALAVER_PRESENCE__{key.upper()}": value for key, value in settings.items()})
        node = PresenceNode(binary, data_dir, free_port(), extra_env=extra)
        node.start()
        started.append(node)
        return node

    yield make
    report = getattr(request.node, "rep_call", None)
    for node in started:
        node.stop()
        if report is not None and report.failed:
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(node.log_path, ARTIFACTS / f"{request.node.name}-node.log")
        shutil.rmtree(node.data_dir, ignore_errors=True)


def open_direct(page, user: str) -> None:
    page.get_by_label("Their user name").fill(user)
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#room-title")).to_have_text(user, timeout=T)


def own_message(page, text: str):
    return page.locator("#messages li.msg.mine").filter(has=page.locator(".body", has_text=re.compile("^" + re.escape(text) + "$")))


def expect_no_alerts(page) -> None:
    expect(page.locator("#alerts .alert")).to_have_count(0, timeout=T)


def set_presence(page, state_value: str, status: str) -> None:
    page.locator("#presence-summary").click()
    page.get_by_label("Show me as").select_option(state_value)
    page.get_by_label("Status text (optional)").fill(status)
    page.get_by_role("button", name="Set status").click()
    expect(page.locator("#presence-form")).to_be_hidden(timeout=T)


def test_presence_typing_and_receipts(make_node, pages):
    node = make_node()
    ctx_a, alice = pages.open("alice-phone", node.base_url + "/", phone=True)
    _, bob = pages.open("bob", node.base_url + "/")
    register(alice, "alice")
    register(bob, "bob")

    open_direct(alice, "bob")
    dm = bob.locator('#room-list li[data-room="dm:alice:bob"]')
    expect(dm).to_have_count(1, timeout=T)
    badge = dm.locator('.pres[data-user="alice"]')

    # -- Presence: bob sees alice online (and alice sees bob online in the conversation). --
    expect(badge).to_have_attribute("data-state", "online", timeout=T)
    expect(badge).to_have_attribute("title", "alice: online", timeout=T)
    expect(alice.locator("#room-presence")).to_have_text("online", timeout=T)

    # -- Receipts: delivered to bob's connection while he has not opened the conversation. --
    send(alice, "are you there?")
    receipt = own_message(alice, "are you there?").locator(".receipt")
    expect(receipt).to_have_attribute("data-receipt", "delivered", timeout=T)
    expect(receipt).to_contain_text("Delivered", timeout=T)
    expect(dm).not_to_have_attribute("data-unread", "0", timeout=T)

    # ... and read once he opens it.
    dm.get_by_role("button").click()
    expect_body(bob, "are you there?")
    expect(receipt).to_have_attribute("data-receipt", "read", timeout=T)
    expect(receipt).to_contain_text("Read", timeout=T)
    expect(bob.locator("#room-presence")).to_have_text("online", timeout=T)
    # Bob's own view shows no receipts on alice's messages.
    assert bob.locator("#messages .receipt").count() == 0

    # -- Typing: shown on bob's page while alice types; gone when she sends. --
    box = alice.get_by_label("Message", exact=True)
    box.fill("let me th")
    typing = bob.locator("#typing")
    expect(typing).to_have_text("alice is typing…", timeout=T)
    expect(typing).to_have_attribute("aria-live", "polite")
    box.fill("let me think")
    box.press("Enter")
    expect(typing).to_have_text("", timeout=T)
    expect_body(bob, "let me think")
    # Cleared input: the indicator goes without a message.
    box.fill("hmm")
    expect(typing).to_have_text("alice is typing…", timeout=T)
    box.fill("")
    expect(typing).to_have_text("", timeout=T)
    receipt2 = own_message(alice, "let me think").locator(".receipt")
    expect(receipt2).to_have_attribute("data-receipt", "read", timeout=T)

    # -- Away with a status text. --
    set_presence(alice, "away", "at lunch")
    expect(alice.locator("#my-presence-text")).to_have_text("Away: at lunch", timeout=T)
    expect(badge).to_have_attribute("data-state", "away", timeout=T)
    expect(badge).to_have_attribute("title", "alice: away — at lunch", timeout=T)
    expect(bob.locator("#room-presence")).to_have_text("away — at lunch", timeout=T)

    # -- Her page closes: offline, with "last seen" in the tooltip. --
    alice.close()
    expect(badge).to_have_attribute("data-state", "offline", timeout=T)
    expect(badge).to_have_attribute("title", re.compile(r"^alice: offline, last seen just now"), timeout=T)
    expect(bob.locator("#room-presence")).to_contain_text("offline, last seen", timeout=T)

    # -- A fresh page of hers (same browser storage): a new connection starts "online" on the
    #    node, so seeing "away" again shows the page re-sent her choice; her message is still read.
    alice2 = pages.reopen("alice-again", ctx_a, node.base_url + "/")
    expect_live(alice2)
    expect(alice2.locator("#my-presence-text")).to_have_text("Away: at lunch", timeout=T)
    expect(badge).to_have_attribute("data-state", "away", timeout=T)
    expect(badge).to_have_attribute("title", "alice: away — at lunch", timeout=T)
    expect(alice2.locator("#room-title")).to_have_text("bob", timeout=T)
    again = own_message(alice2, "are you there?").locator(".receipt")
    expect(again).to_have_attribute("data-receipt", "read", timeout=T)

    # Back online, status cleared.
    set_presence(alice2, "online", "")
    expect(badge).to_have_attribute("title", "alice: online", timeout=T)

    for page in (alice2, bob):
        expect_no_alerts(page)
        assert page.errors == [], f"page errors: {page.errors}"


def test_typing_refused_in_large_rooms(make_node, pages):
    node = make_node(room_max_members="1")
    typing_frames: list[str] = []

    def watch_frames(context, page):
        def on_socket(ws):
            ws.on("framesent", lambda payload: typing_frames.append(payload) if '"type":"typing"' in str(payload) else None)

        page.on("websocket", on_socket)

    _, alice = pages.open("alice", node.base_url + "/", before_goto=watch_frames)
    _, bob = pages.open("bob", node.base_url + "/", phone=True)
    register(alice, "alice")
    register(bob, "bob")
    room_id = create_room(alice, "big")
    join_room(bob, room_id)

    # Members of the open group room, with presence.
    members = bob.locator("#member-list li.member")
    expect(members).to_have_count(2, timeout=T)
    expect(bob.locator('#member-list .pres[data-user="alice"]')).to_have_attribute("data-state", "online", timeout=T)
    expect(bob.locator("#room-presence")).to_have_text("2 members · 2 online", timeout=T)

    box = alice.get_by_label("Message", exact=True)
    box.fill("a")
    alice.wait_for_function(f"() => window.palaverState().typingForbidden.includes({room_id!r})", timeout=T)
    alice.wait_for_timeout(2800)  # past the client's repeat interval
    box.fill("ab")
    box.fill("abc")
    alice.wait_for_timeout(300)
    send(alice, "no typing here")
    expect_body(bob, "no typing here")
    expect(bob.locator("#typing")).to_have_text("")
    expect_no_alerts(alice)
    assert state(alice)["typingForbidden"] == [room_id]
    assert len(typing_frames) == 1, f"typing went on after `forbidden`: {typing_frames}"
    assert alice.errors == [], alice.errors
