"""Large rooms in the bundled web client (real node, real Chromium).

The node runs with limits.fanout_max_members = 2, so a group room of three members is a large
room: its entries are kept in the room log only, and their `message` frames carry no `cursor`.
The page keeps its place in such a room by `seq` instead (`palaverState().positions`, stored in
localStorage next to the cursor) and presents it in `authenticate.rooms` when it resumes.

Scenario (test_large_room_live_and_resume): alice (desktop) creates a room, bob (phone-sized)
and carol join, which makes it large. Bob's messages reach alice's page without a cursor, are
shown once, move her position in the room and leave her cursor where it was. Her page closes;
bob writes three more; a fresh page of hers (same browser storage) resumes with the stored
cursor and position, and shows each missed message exactly once, even though the socket hands
it every replayed large-room message twice. The room list marks the room large; typing still
works in it. Last the node shuts down: its `reconnect` frame carries the positions, and after
the restart the page resumes with nothing replayed and goes on receiving.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import Node, frames_of, joined, started_node
from playwright.sync_api import expect
from test_web_client import (
    bodies,
    create_room,
    eventually,
    expect_body,
    expect_live,
    join_room,
    register,
    send,
    send_confirmed,
    state,
)

T = 10_000  # ms, every expectation here


class LargeRoomsNode(Node):
    """The conftest node with large rooms from three members on."""

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PALAVER_LIMITS__FANOUT_MAX_MEMBERS"] = "2"
        return env


@pytest.fixture
def large_node(request):
    yield from started_node(request, LargeRoomsNode)


def parsed(payload) -> dict:
    try:
        frame = json.loads(payload) if isinstance(payload, str) else {}
    except ValueError:
        return {}
    return frame if isinstance(frame, dict) else {}


def record_frames(received: list[dict], sent: list[dict]):
    """A `before_goto` that keeps every frame of the page's sockets."""

    def before_goto(context, page):
        def on_socket(ws):
            ws.on("framereceived", lambda payload: received.extend(frames_of(payload)))
            ws.on("framesent", lambda payload: sent.append(parsed(payload)))

        page.on("websocket", on_socket)

    return before_goto


def messages_of(frames: list[dict], room: str) -> list[dict]:
    return [f for f in frames if f.get("type") == "message" and f.get("room") == room]


def seq_of(page, text: str) -> int:
    item = page.locator("#messages li.msg:not(.notice)").filter(has=page.locator(".body", has_text=re.compile("^" + re.escape(text) + "$")))
    return int(item.get_attribute("data-seq"))


def stored_positions(page, user: str) -> dict:
    return json.loads(page.evaluate(f"() => localStorage.getItem('palaver.positions.{user}')") or "{}")


def test_large_room_live_and_resume(large_node, pages):
    node = large_node
    received: list[dict] = []
    sent: list[dict] = []
    ctx_a, alice = pages.open("alice", node.base_url + "/", before_goto=record_frames(received, sent))
    _, bob = pages.open("bob-phone", node.base_url + "/", phone=True)
    _, carol = pages.open("carol", node.base_url + "/")
    for page, user in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        register(page, user)

    room_id = create_room(alice, "crowd")
    join_room(bob, room_id)
    join_room(carol, room_id)  # the third member: from this join on the room is large
    expect(alice.locator("#messages li.notice").filter(has_text="carol joined")).to_have_count(1, timeout=T)
    cursor = state(alice)["cursor"]
    assert isinstance(cursor, int) and cursor > 0, state(alice)

    # -- Live: bob's messages reach alice without a cursor; shown once, her position moves. --
    for text in ("big 1", "big 2"):
        send(bob, text)
    for text in ("big 1", "big 2"):
        expect_body(alice, text)
    by_body = {f.get("body"): f for f in messages_of(received, room_id)}
    for text in ("big 1", "big 2"):
        assert text in by_body and "cursor" not in by_body[text], f"expected a message without cursor: {by_body.get(text)}"
    last = seq_of(alice, "big 2")
    alice.wait_for_function(f"() => window.palaverState().positions[{room_id!r}] === {last}", timeout=T)
    assert state(alice)["cursor"] == cursor, "a large room's message must not move the cursor"
    assert stored_positions(alice, "alice") == {room_id: last}
    assert int(alice.evaluate("() => localStorage.getItem('palaver.cursor.alice')")) == cursor

    # -- Alice's page closes; bob writes on. --
    alice.close()
    missed = [f"while away {i} of 3" for i in range(1, 4)]
    send_confirmed(bob, missed)

    # -- A fresh page of hers resumes. Its socket delivers every replayed large-room message
    #    twice: the second copy is at or below her position and must be ignored. --
    resent: list[dict] = []
    replay_frames: list[dict] = []

    def route(ws):
        server = ws.connect_to_server()

        def from_page(message):
            resent.append(parsed(message))
            server.send(message)

        def from_server(message):
            frames = frames_of(message)
            replay_frames.extend(frames)
            ws.send(message)
            again = [f for f in frames if f.get("type") == "message" and "cursor" not in f]
            if again:
                ws.send(joined(again))

        ws.on_message(from_page)
        server.on_message(from_server)

    ctx_a.route_web_socket(re.compile(r"/ws$"), route)
    alice2 = pages.reopen("alice-again", ctx_a, node.base_url + "/")
    expect_live(alice2)
    expect(alice2.locator("#conn-text")).to_have_text("Resumed on web-1: 3 messages replayed", timeout=T)

    auth = [f for f in resent if f.get("type") == "authenticate"]
    assert len(auth) == 1, auth
    assert auth[0]["cursor"] == cursor and auth[0]["rooms"] == {room_id: last}, auth[0]
    live = [f for f in replay_frames if f.get("type") == "live"]
    assert len(live) == 1 and live[0].get("rooms", {}).get(room_id) == last + 3, live

    expect(alice2.locator("#room-title")).to_have_text("crowd", timeout=T)
    expect(alice2.locator(f'#room-list li[data-room="{room_id}"]')).to_have_attribute("data-large", "true", timeout=T)
    for text in missed:
        expect_body(alice2, text)
    alice2.wait_for_timeout(500)  # settle: no late copies
    assert bodies(alice2) == ["big 1", "big 2", *missed], bodies(alice2)
    shown = [int(s) for s in alice2.locator("#messages li.msg").evaluate_all("els => els.map(e => e.dataset.seq)")]
    assert shown == sorted(set(shown)), f"an entry shown twice or out of order: {shown}"
    end = seq_of(alice2, missed[-1])
    assert state(alice2)["positions"] == {room_id: end}
    assert state(alice2)["cursor"] == cursor
    assert stored_positions(alice2, "alice") == {room_id: end}

    # -- Live again after the resume, and typing still works in the large room. --
    box = bob.get_by_label("Message", exact=True)
    box.fill("typing in a crowd")
    expect(alice2.locator("#typing")).to_have_text("bob is typing…", timeout=T)
    box.press("Enter")
    expect_body(alice2, "typing in a crowd")
    expect(alice2.locator("#typing")).to_have_text("", timeout=T)
    alice2.wait_for_function(f"() => window.palaverState().positions[{room_id!r}] === {end + 1}", timeout=T)
    assert bodies(alice2).count("typing in a crowd") == 1
    assert state(alice2)["cursor"] == cursor

    # -- The node shuts down (SIGTERM): its `reconnect` frame carries the positions; after the
    #    restart the page resumes with nothing missed and nothing replayed twice. --
    node.stop()
    eventually(alice2, lambda: any(f.get("type") == "reconnect" for f in replay_frames), "the `reconnect` frame")
    reconnect = [f for f in replay_frames if f.get("type") == "reconnect"]
    assert len(reconnect) == 1 and reconnect[0].get("rooms") == {room_id: end + 1}, reconnect
    node.start()
    expect(alice2.locator("#conn-text")).to_have_text("Resumed on web-1: 0 messages replayed", timeout=T)
    expect_live(bob)
    send(bob, "after the restart")
    expect_body(alice2, "after the restart")
    alice2.wait_for_timeout(300)
    assert bodies(alice2) == ["big 1", "big 2", *missed, "typing in a crowd", "after the restart"], bodies(alice2)
    assert state(alice2)["positions"] == {room_id: end + 2}
    assert stored_positions(alice2, "alice") == {room_id: end + 2}

    for page in (alice2, bob, carol):
        expect(page.locator("#alerts .alert")).to_have_count(0, timeout=T)
        assert page.errors == [], f"page errors: {page.errors}"


def test_reactions_in_a_large_room_follow_the_counts(large_node, pages):
    """In a large room reactions are counted, not entries: the page gets `reactions` frames with
    the counts (no `react` entries) and learns which reactions are its own from the acks (seq 0)."""
    from test_message_changes import expect_reaction, message, react

    node = large_node
    received: list[dict] = []
    sent: list[dict] = []
    _, alice = pages.open("alice", node.base_url + "/", before_goto=record_frames(received, sent))
    _, bob = pages.open("bob", node.base_url + "/")
    _, carol = pages.open("carol", node.base_url + "/")
    for page, user in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        register(page, user)
    room_id = create_room(alice, "crowd")
    join_room(bob, room_id)
    join_room(carol, room_id)  # large from here on
    send(bob, "react to this")
    for page in (alice, bob, carol):
        expect_body(page, "react to this")

    react(alice, "react to this", "👍")
    react(bob, "react to this", "👍")
    react(alice, "react to this", "🎉")
    for page, user in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        item = message(page, "react to this")
        expect_reaction(item, "👍", 2, mine=user in ("alice", "bob"))
        expect_reaction(item, "🎉", 1, mine=user == "alice")

    react(alice, "react to this", "🎉")  # clicking one's own takes it back
    for page in (bob, carol):
        expect(message(page, "react to this").locator('.reaction[data-reaction="🎉"]')).to_have_count(0, timeout=T)
    expect(message(alice, "react to this").locator('.reaction[data-reaction="🎉"]')).to_have_count(0, timeout=T)

    kinds = {f.get("kind") for f in messages_of(received, room_id)}
    assert not kinds & {"react", "unreact"}, f"a reaction reached the page as an entry: {kinds}"
    counts = [f for f in received if f.get("type") == "reactions" and f.get("room") == room_id]
    assert counts, "no reactions frame reached alice"
    acks = [f for f in received if f.get("type") == "ack" and f.get("seq") == 0]
    assert len(acks) == 3, f"alice's three reactions are acked with seq 0: {acks}"
    for page in (alice, bob, carol):
        expect(page.locator("#alerts .alert")).to_have_count(0, timeout=T)
        assert page.errors == [], f"page errors: {page.errors}"
