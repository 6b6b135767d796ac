"""Messages that change, in the bundled web client (real node, real Chromium): edits, deletes,
reactions, replies and mentions (docs/PROTOCOL.md, "Edits, deletes, reactions, replies,
mentions").

Scenario (test_changes_show_live_and_after_reload): alice creates a room, bob joins; each in a
browser page. Alice edits her message inline (Escape cancels, Enter saves) and bob sees the new
text marked "(edited)". Both react; counts follow on both pages and a reaction of one's own is
highlighted and taken back by clicking it again. Bob replies: both pages quote alice's message,
and clicking the quote brings it into view. Alice mentions bob while he is in another room: his
room list shows an unread-mention badge, the message is highlighted once he opens it. Alice
deletes her message and, as the room's creator, one of bob's: both pages show tombstones and
the quote of the deleted message follows. Then, while bob's page is closed, alice edits, reacts,
deletes and mentions him: a fresh login of bob's (history only) and his reloaded page (resume:
replay and history) both show the current state, with exact counts.

test_refused_changes_are_shown_and_kept: an edit past the node's edit window is refused
(`forbidden`), and changes queued while offline to a message deleted meanwhile are refused
(`message_deleted`); each refusal is shown, and the text of a refused edit stays on screen.

test_unknown_kinds_and_lost_changes: a change entry of a kind the page does not know is skipped
but its cursor is taken; a reaction lost on the way out is sent again with the same id after the
socket is cut, and counted once. Every change request carries a fresh id.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import frames_of, joined, started_node
from playwright.sync_api import expect
from test_web_client import create_room, eventually, expect_body, expect_live, join_room, log_in, register, send, state

MESSAGES = "#messages li.msg:not(.notice)"


# ---- Page helpers -------------------------------------------------------------------------

def message(page, text: str):
    """The committed message whose text is exactly `text`."""
    return page.locator(MESSAGES).filter(has=page.locator(".body", has_text=re.compile("^" + re.escape(text) + "$")))


def at_seq(page, seq: int):
    return page.locator(f'{MESSAGES}[data-seq="{seq}"]')


def seq_of(page, text: str) -> int:
    expect(message(page, text)).to_have_count(1)
    return int(message(page, text).get_attribute("data-seq"))


def action(item, name: str):
    return item.locator(".actions").get_by_role("button", name=name, exact=True)


def edit(page, text: str, new_text: str) -> None:
    item = at_seq(page, seq_of(page, text))  # while editing, the text is in the editor only
    action(item, "Edit").click()
    box = item.get_by_role("textbox", name="Edit message")
    box.fill(new_text)
    box.press("Enter")


def react(page, text: str, emoji: str) -> None:
    item = message(page, text)
    action(item, "React").click()
    item.get_by_role("button", name=f"React with {emoji}").click()


def delete(page, item) -> None:
    action(item, "Delete").click()
    action(item, "Yes, delete").click()


def chip(item, emoji: str):
    return item.locator(f'.reaction[data-reaction="{emoji}"]')


def expect_reaction(item, emoji: str, count: int, mine: bool) -> None:
    expect(chip(item, emoji).locator(".reaction-count")).to_have_text(str(count))
    expect(chip(item, emoji)).to_have_attribute("aria-pressed", "true" if mine else "false")


def expect_tombstone(page, seq: int) -> None:
    item = at_seq(page, seq)
    expect(item.locator(".tombstone")).to_have_text("message deleted")
    expect(item.locator(".body")).to_have_count(0)
    expect(item.locator(".reaction")).to_have_count(0)
    expect(item.locator(".actions button")).to_have_count(0)
    expect(item).to_have_class(re.compile(r"\bdeleted\b"))


def expect_edited(page, text: str) -> None:
    expect(message(page, text).locator(".edited")).to_be_visible()
    expect(message(page, text).locator(".edited")).to_have_text("(edited)")


def room_item(page, room_id: str):
    return page.locator(f'#room-list li[data-room="{room_id}"]')


def open_room(page, room_id: str) -> None:
    room_item(page, room_id).get_by_role("button").click()
    expect(page.locator("#room-id")).to_have_text(room_id)


# ---- Tests --------------------------------------------------------------------------------

def test_changes_show_live_and_after_reload(node, pages):
    _, alice = pages.open("alice", node.base_url + "/")
    ctx_b, bob = pages.open("bob", node.base_url + "/")
    register(alice, "alice")
    register(bob, "bob")
    room_id = create_room(alice, "changes")
    join_room(bob, room_id)

    # -- Edit: Escape cancels, Enter saves; the other page shows the new text, marked edited. --
    send(alice, "lunch at noon?")
    expect_body(bob, "lunch at noon?")
    question = seq_of(alice, "lunch at noon?")
    item = at_seq(alice, question)
    action(item, "Edit").click()
    box = item.get_by_role("textbox", name="Edit message")
    expect(box).to_be_focused()
    box.fill("never mind")
    box.press("Escape")
    expect_body(alice, "lunch at noon?")
    expect(at_seq(alice, question).locator(".edited")).to_be_hidden()
    assert action(message(bob, "lunch at noon?"), "Edit").count() == 0, "bob may not edit alice's message"

    edit(alice, "lunch at noon?", "lunch at one?")
    for page in (alice, bob):
        expect_body(page, "lunch at one?")
        expect_edited(page, "lunch at one?")
        expect(at_seq(page, question).locator(".body")).to_have_text("lunch at one?")
    expect(at_seq(alice, question).locator(".change-status")).to_be_hidden()

    # -- Reactions: counts on both pages, one's own highlighted, clicked again to take it back. --
    react(bob, "lunch at one?", "👍")
    expect_reaction(message(bob, "lunch at one?"), "👍", 1, mine=True)
    expect_reaction(message(alice, "lunch at one?"), "👍", 1, mine=False)
    chip(message(alice, "lunch at one?"), "👍").click()
    react(alice, "lunch at one?", "🎉")
    for page, mine in ((alice, True), (bob, False)):
        expect_reaction(message(page, "lunch at one?"), "👍", 2, mine=mine or page is bob)
        expect_reaction(message(page, "lunch at one?"), "🎉", 1, mine=mine)
    chip(message(bob, "lunch at one?"), "👍").click()  # bob takes his back
    for page in (alice, bob):
        expect_reaction(message(page, "lunch at one?"), "👍", 1, mine=page is alice)
    react(alice, "lunch at one?", "🎉")  # from the picker too, clicking one's own takes it back
    for page in (alice, bob):
        expect(chip(message(page, "lunch at one?"), "🎉")).to_have_count(0)

    # -- Replies: the quote shows the root's author and first words; clicking it shows the root. --
    action(message(bob, "lunch at one?"), "Reply").click()
    expect(bob.locator("#reply-bar")).to_be_visible()
    expect(bob.locator("#reply-bar")).to_contain_text("alice")
    expect(bob.locator("#reply-bar")).to_contain_text("lunch at one?")
    expect(bob.get_by_label("Message", exact=True)).to_be_focused()
    send(bob, "works for me")
    expect(bob.locator("#reply-bar")).to_be_hidden()
    for page in (alice, bob):
        quote = message(page, "works for me").locator(".reply-quote")
        expect(quote).to_be_visible()
        expect(quote.locator(".quote-from")).to_have_text("alice")
        expect(quote.locator(".quote-text")).to_have_text("lunch at one?")
    message(alice, "works for me").locator(".reply-quote").click()
    expect(at_seq(alice, question)).to_be_focused()
    # A reply can be called off.
    action(message(bob, "lunch at one?"), "Reply").click()
    bob.get_by_role("button", name="Cancel the reply").click()
    expect(bob.locator("#reply-bar")).to_be_hidden()
    send(bob, "no strings attached")
    expect_body(alice, "no strings attached")
    expect(message(alice, "no strings attached").locator(".reply-quote")).to_be_hidden()

    # -- Mentions: bob is elsewhere; the room's badge counts the unread mention. --
    create_room(bob, "elsewhere")
    expect(room_item(bob, room_id)).to_have_attribute("data-mentions", "0")
    send(alice, "@bob, bring the menu")
    expect(room_item(bob, room_id)).to_have_attribute("data-mentions", "1")
    expect(room_item(bob, room_id).locator(".mention-badge")).to_contain_text("@1")
    expect(message(alice, "@bob, bring the menu").locator(".mention")).to_have_text("@bob")
    assert room_item(alice, room_id).get_attribute("data-mentions") == "0", "a sender is not mentioned"
    open_room(bob, room_id)
    mention = message(bob, "@bob, bring the menu")
    expect(mention).to_have_class(re.compile(r"\bmentions-me\b"))
    expect(mention.locator(".mention.mention-me")).to_have_text("@bob")
    expect(room_item(bob, room_id)).to_have_attribute("data-mentions", "0")
    # A name that is not a member is sent as text only.
    send(alice, "@nobody here?")
    expect_body(bob, "@nobody here?")
    expect(message(bob, "@nobody here?").locator(".mention")).to_have_count(0)

    # -- Deletes: a tombstone on both pages; the reply's quote follows. Bob may delete his own
    #    messages only; alice, the room's creator, any. --
    assert action(message(bob, "lunch at one?"), "Delete").count() == 0
    assert action(message(bob, "works for me"), "Delete").count() == 1
    delete(alice, message(alice, "lunch at one?"))
    for page in (alice, bob):
        expect_tombstone(page, question)
        expect(message(page, "works for me").locator(".quote-text")).to_have_text("message deleted")
    strings = seq_of(alice, "no strings attached")
    delete(alice, message(alice, "no strings attached"))
    for page in (alice, bob):
        expect_tombstone(page, strings)

    # -- While bob's page is closed: an edit, reactions, a delete, a reply and a mention. --
    send_and_wait = ("keep me", "regret me")
    for text in send_and_wait:
        send(alice, text)
        expect_body(bob, text)
    react(bob, "keep me", "👍")
    expect_reaction(message(alice, "keep me"), "👍", 1, mine=False)
    keep = seq_of(bob, "keep me")
    regret = seq_of(bob, "regret me")
    cursor_before = state(bob)["cursor"]
    bob.close()

    edit(alice, "keep me", "keep me, v2")
    expect_body(alice, "keep me, v2")
    chip(message(alice, "keep me, v2"), "👍").click()
    react(alice, "keep me, v2", "🎉")
    expect_reaction(message(alice, "keep me, v2"), "👍", 2, mine=True)
    expect_reaction(message(alice, "keep me, v2"), "🎉", 1, mine=True)
    delete(alice, message(alice, "regret me"))
    expect_tombstone(alice, regret)
    action(message(alice, "keep me, v2"), "Reply").click()
    send(alice, "@bob are you back?")
    expect_body(alice, "@bob are you back?")
    eventually(alice, lambda: state(alice)["outbox"] == [], "alice's outbox to empty")

    def expect_current_state(page) -> None:
        expect_body(page, "keep me, v2")
        expect_edited(page, "keep me, v2")
        expect_reaction(at_seq(page, keep), "👍", 2, mine=True)
        expect_reaction(at_seq(page, keep), "🎉", 1, mine=False)
        expect(at_seq(page, keep).locator(".reaction")).to_have_count(2)
        expect_tombstone(page, regret)
        expect_tombstone(page, question)
        assert "regret me" not in page.locator("#messages").inner_text()
        expect(message(page, "@bob are you back?").locator(".quote-text")).to_have_text("keep me, v2")
        expect(message(page, "works for me").locator(".quote-text")).to_have_text("message deleted")
        expect(message(page, "@bob are you back?")).to_have_class(re.compile(r"\bmentions-me\b"))

    # A fresh browser of bob's: no stored cursor, so what it shows comes from history alone.
    _, fresh = pages.open("bob-fresh", node.base_url + "/")
    log_in(fresh, "bob")
    expect(room_item(fresh, room_id)).to_have_attribute("data-mentions", "1")
    open_room(fresh, room_id)
    expect_current_state(fresh)
    expect(room_item(fresh, room_id)).to_have_attribute("data-mentions", "0")

    # Bob's own browser again: it resumes from its cursor and opens the room, whose history
    # already shows every change. The replayed entries are held back until that history has
    # arrived (the node may interleave them either way): each change must count once.
    held: list[dict] = []
    holding = {"on": True}

    def replay_after_history(ws):
        server = ws.connect_to_server()
        ws.on_message(server.send)

        def from_server(message):
            out = []
            for frame in frames_of(message):
                if holding["on"] and frame.get("type") in ("message", "live"):
                    held.append(frame)
                    continue
                out.append(frame)
                if holding["on"] and frame.get("type") == "history" and frame.get("room") == room_id:
                    holding["on"] = False
                    out.extend(held)
            if out:
                ws.send(joined(out))

        server.on_message(from_server)

    ctx_b.route_web_socket(re.compile(r"/ws$"), replay_after_history)
    bob = pages.reopen("bob-again", ctx_b, node.base_url + "/")
    expect_live(bob)
    expect(bob.locator("#room-id")).to_have_text(room_id)
    assert state(bob)["cursor"] > cursor_before
    assert {"edit", "react", "delete"} <= {f.get("kind") for f in held}, f"the changes were replayed: {held}"
    expect_current_state(bob)
    # Live changes still apply after the reload.
    chip(at_seq(bob, keep), "🎉").click()
    for page in (alice, bob, fresh):
        expect_reaction(at_seq(page, keep), "🎉", 2, mine=True)  # alice's and bob's
    for page in (alice, bob, fresh):
        assert page.errors == [], f"page errors: {page.errors}"


@pytest.fixture
def strict_node(request):
    """A node whose edit window is one second: an edit after it is refused."""
    yield from started_node(request, env={"PALAVER_LIMITS__EDIT_WINDOW_S": "1"})


def test_refused_changes_are_shown_and_kept(strict_node, pages):
    node = strict_node
    _, alice = pages.open("alice", node.base_url + "/")
    ctx_b, bob = pages.open("bob", node.base_url + "/")
    register(alice, "alice")
    register(bob, "bob")
    room_id = create_room(alice, "strict")
    join_room(bob, room_id)

    send(bob, "first draft")
    expect_body(alice, "first draft")
    bob.wait_for_timeout(1500)
    edit(bob, "first draft", "second draft")
    expect(bob.locator("#alerts")).to_contain_text("forbidden")
    expect(bob.locator("#alerts")).to_contain_text("Edit not saved")
    # Nothing is lost: the refused text stays on screen with the reason.
    failed = bob.locator("#pending li.failed")
    expect(failed).to_have_count(1)
    expect(failed.locator(".body")).to_have_text("second draft")
    expect(failed.locator(".status")).to_contain_text("edit not saved: forbidden")
    expect_body(bob, "first draft")
    expect_body(alice, "first draft")
    failed.get_by_role("button", name="Dismiss").click()
    expect(failed).to_have_count(0)

    # Changes queued offline to a message that is deleted meanwhile.
    send(bob, "doomed")
    expect_body(alice, "doomed")
    doomed = seq_of(bob, "doomed")
    ctx_b.set_offline(True)
    expect(bob.locator("#conn")).to_have_attribute("data-state", re.compile("offline|reconnecting"))
    react(bob, "doomed", "🎉")
    expect(at_seq(bob, doomed).locator(".change-status")).to_contain_text("reaction waiting for connection")
    assert len(state(bob)["outbox"]) == 1
    delete(alice, message(alice, "doomed"))  # alice created the room
    expect_tombstone(alice, doomed)
    ctx_b.set_offline(False)
    expect_live(bob)
    expect_tombstone(bob, doomed)
    expect(bob.locator("#alerts")).to_contain_text("message_deleted")
    expect(bob.locator("#alerts")).to_contain_text("Reaction not saved")
    eventually(bob, lambda: state(bob)["outbox"] == [], "bob's outbox to empty")
    expect(at_seq(bob, doomed).locator(".change-status")).to_be_hidden()
    assert alice.errors == [] and bob.errors == [], (alice.errors, bob.errors)


def test_unknown_kinds_and_lost_changes(node, pages):
    _, alice = pages.open("alice", node.base_url + "/")
    register(alice, "alice")
    room_id = create_room(alice, "future")

    mode = {"lose_react": False, "rename": False}
    change_frames: list[dict] = []
    renamed: list[dict] = []
    routes = []

    def route(ws):
        server = ws.connect_to_server()
        routes.append((ws, server))

        def from_page(message):
            frame = json.loads(message) if isinstance(message, str) else {}
            if frame.get("type") in ("edit", "delete", "react"):
                change_frames.append(frame)
                if mode["lose_react"] and frame["type"] == "react":
                    mode["lose_react"] = False
                    return  # the node never sees it
            server.send(message)

        def from_server(message):
            frames = frames_of(message)
            changed = False
            for frame in frames:
                # A newer node's entry kind: the page must skip it, yet take its cursor.
                if mode["rename"] and frame.get("type") == "message" and frame.get("kind") == "react":
                    frame["kind"] = "vote"
                    renamed.append(frame)
                    changed = True
            ws.send(joined(frames) if changed else message)

        ws.on_message(from_page)
        server.on_message(from_server)

    _, bob = pages.open(
        "bob", node.base_url + "/", before_goto=lambda context, page: context.route_web_socket(re.compile(r"/ws$"), route)
    )
    register(bob, "bob")
    join_room(bob, room_id)
    send(alice, "what's next?")
    expect_body(bob, "what's next?")
    asked = seq_of(bob, "what's next?")
    shown_before = bob.locator("#messages li.msg").count()

    mode["rename"] = True
    react(alice, "what's next?", "🙏")
    eventually(bob, lambda: len(renamed) == 1, "the renamed entry to reach bob's page")
    eventually(bob, lambda: state(bob)["cursor"] == renamed[0]["cursor"], "bob's cursor to take the unknown entry")
    mode["rename"] = False
    send(alice, "still here")
    expect_body(bob, "still here")
    expect(chip(at_seq(bob, asked), "🙏")).to_have_count(0)
    # Nothing was shown for it (no notice, no message): only the new message was added.
    assert bob.locator("#messages li.msg").count() == shown_before + 1
    assert "left" not in bob.locator("#messages").inner_text()

    # A reaction lost on the way out: after the socket is cut it goes again, with the same id.
    mode["lose_react"] = True
    react(bob, "what's next?", "👍")
    eventually(bob, lambda: any(f["type"] == "react" for f in change_frames), "the reaction to leave the page")
    bob.wait_for_timeout(300)
    expect(chip(at_seq(bob, asked), "👍")).to_have_count(0)
    assert len(state(bob)["outbox"]) == 1
    ws, server = routes[-1]
    ws.close(code=4000, reason="test cut the socket")
    server.close()
    expect_live(bob)
    for page in (alice, bob):
        expect_reaction(at_seq(page, asked), "👍", 1, mine=page is bob)
    eventually(bob, lambda: state(bob)["outbox"] == [], "bob's outbox to empty")

    # An edit and a delete of bob's too: every change request had its own id, and the retried
    # one the same id as before.
    send(bob, "mine to change")
    expect_body(alice, "mine to change")
    edit(bob, "mine to change", "mine, changed")
    expect_body(alice, "mine, changed")
    delete(bob, message(bob, "mine, changed"))
    eventually(bob, lambda: state(bob)["outbox"] == [], "bob's outbox to empty")
    reacts = [f for f in change_frames if f["type"] == "react"]
    assert len(reacts) == 2 and reacts[0]["id"] == reacts[1]["id"], f"the lost reaction is retried with its id: {reacts}"
    ids = {f["id"] for f in change_frames}
    assert len(ids) == 3, f"a fresh id for each change: {change_frames}"
    assert {f["type"] for f in change_frames} == {"react", "edit", "delete"}
    assert all(f.get("room") == room_id and isinstance(f.get("seq"), int) for f in change_frames), change_frames
