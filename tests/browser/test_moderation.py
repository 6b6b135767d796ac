"""Moderation, room settings and deleting an account in the bundled web client (real node, real
Chromium; docs/PROTOCOL.md, "Roles and moderation", "Room settings", "Deleting an account").

test_moderation_and_audit_trail: alice creates a room; bob, carol and mallory join, each in a
browser page. Only alice (the owner) is offered moderation. She makes bob an admin: he is then
offered it too, on members only (never on alice). She kicks mallory with a reason: mallory's page
drops the room and says who removed her and why, in an alert and in the composer's place; carol's
page shows the audit lines. Bob mutes carol (her composer is disabled with the reason) and lifts
the mute. Mallory joins again and alice bans her for a day: her page drops the room, a join is
refused with `banned`, and alice lifts the ban from the room's settings. An unban of someone not
banned is refused by the node and the refusal is shown in the form. A fresh page of carol's
(history only) shows the same audit lines.

test_room_settings_topic_and_announcements: alice sets a topic and "only the owner and admins
post": bob's page shows the topic under the title, his composer is disabled with an explanation,
he may still react (not reply), and he is offered no settings. The same after a fresh login
(room list and history only). A rename reaches his room list; posting for every member again
gives him his composer back.

test_delete_account: bob asks to delete his account; a wrong password is refused and he stays
signed in; the right one signs him out on every device and his browser forgets what it kept for him.
His name can no longer log in; alice sees him leave and his message stays.
"""

from __future__ import annotations

import re

from playwright.sync_api import expect
from test_web_client import (
    PASSWORD,
    create_room,
    eventually,
    expect_body,
    expect_live,
    join_room,
    log_in,
    register,
    send,
    state,
)

MESSAGES = "#messages li.msg:not(.notice)"


# ---- Page helpers -------------------------------------------------------------------------

def room_item(page, room_id: str):
    return page.locator(f'#room-list li[data-room="{room_id}"]')


def member(page, user: str):
    return page.locator(f'#member-list li.member[data-user="{user}"]')


def moderate_button(page, user: str):
    return page.get_by_role("button", name=f"Moderate {user}", exact=True)


def open_moderation(page, user: str):
    moderate_button(page, user).click()
    panel = page.locator("#mod-panel")
    expect(panel).to_be_visible()
    expect(panel.get_by_role("heading")).to_have_text(f"Moderate {user}")
    return panel


def audit_lines(page):
    return page.locator("#messages li.msg.notice.audit .notice-text")


def expect_audit(page, text: str) -> None:
    expect(audit_lines(page).filter(has_text=re.compile("^" + re.escape(text) + "$"))).to_have_count(1)


def message(page, text: str):
    return page.locator(MESSAGES).filter(has=page.locator(".body", has_text=re.compile("^" + re.escape(text) + "$")))


def composer(page):
    return page.get_by_label("Message", exact=True)


def expect_members(page, users) -> None:
    for user in users:
        expect(member(page, user)).to_have_count(1)


def open_settings(page):
    page.get_by_role("button", name="Room settings").click()
    panel = page.locator("#settings-panel")
    expect(panel).to_be_visible()
    return panel


# ---- Tests --------------------------------------------------------------------------------

def test_moderation_and_audit_trail(node, pages):
    _, alice = pages.open("alice", node.base_url + "/")
    _, bob = pages.open("bob", node.base_url + "/")
    _, carol = pages.open("carol", node.base_url + "/")
    _, mallory = pages.open("mallory", node.base_url + "/")
    for page, name in ((alice, "alice"), (bob, "bob"), (carol, "carol"), (mallory, "mallory")):
        register(page, name)
    room_id = create_room(alice, "mods")
    for page in (bob, carol, mallory):
        join_room(page, room_id)
    everyone = ("alice", "bob", "carol", "mallory")
    for page in (alice, bob):
        expect_members(page, everyone)

    # -- Only the owner is offered moderation, on everyone but herself. --
    for user in ("bob", "carol", "mallory"):
        expect(moderate_button(alice, user)).to_have_count(1)
    expect(moderate_button(alice, "alice")).to_have_count(0)
    expect(alice.get_by_role("button", name="Room settings")).to_be_visible()
    expect(bob.locator("#member-list .member-moderate")).to_have_count(0)
    expect(bob.get_by_role("button", name="Room settings")).to_be_hidden()
    expect(member(alice, "alice")).to_have_attribute("data-role", "owner")

    # -- The owner makes bob an admin. --
    panel = open_moderation(alice, "bob")
    expect(panel.get_by_role("button", name="Make bob an admin")).to_be_focused()
    panel.get_by_role("button", name="Make bob an admin").click()
    expect(alice.locator("#mod-panel")).to_be_hidden()
    for page in (alice, bob, carol):
        expect_audit(page, "alice made bob an admin")
    expect(member(alice, "bob")).to_have_attribute("data-role", "admin")
    expect(member(alice, "bob").locator(".member-role")).to_have_text("admin")
    # Bob is an admin now: he moderates members ranked below him, never the owner, and may
    # change the settings; making admins stays the owner's.
    expect(moderate_button(bob, "carol")).to_have_count(1)
    expect(moderate_button(bob, "mallory")).to_have_count(1)
    expect(moderate_button(bob, "alice")).to_have_count(0)
    expect(bob.get_by_role("button", name="Room settings")).to_be_visible()
    panel = open_moderation(bob, "carol")
    expect(panel.get_by_role("button", name=re.compile("admin"))).to_have_count(0)
    bob.keyboard.press("Escape")
    expect(bob.locator("#mod-panel")).to_be_hidden()
    expect(moderate_button(bob, "carol")).to_be_focused()

    # -- The owner kicks mallory, with a reason. --
    send(mallory, "buy cheap watches")
    expect_body(carol, "buy cheap watches")
    panel = open_moderation(alice, "mallory")
    panel.get_by_label("Reason", exact=False).fill("spam")
    panel.get_by_role("button", name="Kick mallory").click()
    expect(alice.locator("#mod-panel")).to_be_hidden()
    # Mallory's page: the room leaves her list, and she is told who removed her and why.
    expect(room_item(mallory, room_id)).to_have_count(0)
    expect(mallory.locator("#alerts")).to_contain_text("kicked")
    expect(mallory.locator("#alerts")).to_contain_text("by alice: spam")
    expect(mallory.locator("#composer-note")).to_have_text("alice removed you from this room: spam.")
    expect(composer(mallory)).to_be_disabled()
    expect(mallory.locator("#member-list .member-moderate")).to_have_count(0)
    for page in (alice, bob, carol, mallory):
        expect_audit(page, "alice removed mallory from the room: spam")
    expect(member(alice, "mallory")).to_have_count(0)
    expect(member(carol, "mallory")).to_have_count(0)
    # Her message stays, and carol (a member) is offered nothing.
    expect_body(carol, "buy cheap watches")
    expect(carol.locator("#member-list .member-moderate")).to_have_count(0)

    # -- The admin mutes carol for ten minutes, then lifts the mute. --
    panel = open_moderation(bob, "carol")
    panel.get_by_label("Mute for").select_option(label="10 minutes")
    panel.get_by_role("button", name="Mute carol").click()
    expect(bob.locator("#mod-panel")).to_be_hidden()
    expect(audit_lines(carol).filter(has_text=re.compile(r"^bob muted carol until \S+"))).to_have_count(1)
    expect(composer(carol)).to_be_disabled()
    expect(carol.locator("#composer-note")).to_contain_text("You are muted in this room until")
    open_moderation(bob, "carol").get_by_role("button", name="Lift the mute").click()
    for page in (alice, carol):
        expect_audit(page, "bob lifted the mute on carol")
    expect(composer(carol)).to_be_enabled()
    expect(carol.locator("#composer-note")).to_be_hidden()
    send(carol, "thanks")
    expect_body(alice, "thanks")

    # -- Mallory comes back; alice bans her for a day. --
    join_room(mallory, room_id)
    expect(composer(mallory)).to_be_enabled()
    expect(moderate_button(alice, "mallory")).to_have_count(1)
    panel = open_moderation(alice, "mallory")
    panel.get_by_label("Reason", exact=False).fill("spam again")
    panel.get_by_label("Ban for").select_option(label="1 day")
    panel.get_by_role("button", name="Ban mallory").click()
    ban_line = re.compile(r"^alice banned mallory until .+: spam again$")
    for page in (alice, carol):
        expect(audit_lines(page).filter(has_text=ban_line)).to_have_count(1)
    expect(room_item(mallory, room_id)).to_have_count(0)
    expect(mallory.locator("#alerts")).to_contain_text("banned")
    expect(mallory.locator("#alerts")).to_contain_text("spam again")
    expect(mallory.locator("#composer-note")).to_contain_text("alice banned you from this room until")
    expect(composer(mallory)).to_be_disabled()
    # The node keeps her out, and the page says why.
    mallory.get_by_label("Room id").fill(room_id)
    mallory.get_by_role("button", name="Join", exact=True).click()
    expect(mallory.locator("#side-error")).to_contain_text("banned")
    expect(room_item(mallory, room_id)).to_have_count(0)

    # -- A refusal by the node is shown where the user asked: unbanning someone not banned. --
    panel = open_settings(bob)
    panel.get_by_label("Name to unban").fill("carol")
    panel.get_by_role("button", name="Unban", exact=True).click()
    expect(bob.locator("#unban-error")).to_contain_text("unchanged")
    expect(bob.locator("#unban-error")).to_have_attribute("role", "alert")
    # The ban seen in the conversation is listed, and lifted from there.
    expect(panel.locator("#ban-list li")).to_have_count(1)
    panel.get_by_role("button", name="Unban mallory").click()
    for page in (alice, bob, carol):
        expect_audit(page, "bob lifted the ban on mallory")
    expect(panel.locator("#ban-list li")).to_have_count(0)
    join_room(mallory, room_id)
    expect(room_item(mallory, room_id)).to_have_count(1)

    # -- The audit trail from history: a fresh browser of carol's, without a stored cursor. --
    _, fresh = pages.open("carol-fresh", node.base_url + "/")
    log_in(fresh, "carol")
    room_item(fresh, room_id).get_by_role("button").click()
    for text in (
        "alice made bob an admin",
        "alice removed mallory from the room: spam",
        "bob lifted the mute on carol",
        "bob lifted the ban on mallory",
    ):
        expect_audit(fresh, text)
    expect(audit_lines(fresh).filter(has_text=ban_line)).to_have_count(1)
    # System lines, not chat messages: no author, no actions.
    expect(fresh.locator("#messages li.msg.notice.audit .actions")).to_have_count(0)
    expect(member(fresh, "bob")).to_have_attribute("data-role", "admin")
    for page in (alice, bob, carol, mallory, fresh):
        assert page.errors == [], f"page errors: {page.errors}"


def test_room_settings_topic_and_announcements(node, pages):
    _, alice = pages.open("alice", node.base_url + "/")
    _, bob = pages.open("bob", node.base_url + "/")
    register(alice, "alice")
    register(bob, "bob")
    room_id = create_room(alice, "news")
    join_room(bob, room_id)
    send(bob, "hello")
    expect_body(alice, "hello")
    expect(bob.get_by_role("button", name="Room settings")).to_be_hidden()
    expect(bob.locator("#room-topic")).to_be_hidden()

    # -- The owner sets a topic and lets only the owner and admins post. --
    panel = open_settings(alice)
    expect(panel.get_by_label("Name", exact=True)).to_have_value("news")
    expect(panel.get_by_label("Name", exact=True)).to_be_focused()
    # Nothing changed: nothing is sent.
    panel.get_by_role("button", name="Save settings").click()
    expect(alice.locator("#settings-error")).to_contain_text("Nothing to save")
    panel.get_by_label("Topic").fill("Release notes, one a week")
    panel.get_by_label("Who may post").select_option("moderators")
    panel.get_by_role("button", name="Save settings").click()
    expect(panel).to_be_hidden()
    line = "alice changed the topic to “Release notes, one a week” and let only the owner and admins post"
    for page in (alice, bob):
        expect_audit(page, line)
        expect(page.locator("#room-topic")).to_have_text("Release notes, one a week")

    # Bob is a plain member: no composer, told why; he may still react, not reply.
    expect(composer(bob)).to_be_disabled()
    expect(bob.get_by_role("button", name="Send")).to_be_disabled()
    expect(bob.locator("#composer-note")).to_have_text(
        "Only the owner and admins post in this room. You can still react to messages."
    )
    expect(composer(alice)).to_be_enabled()
    send(alice, "v1.0 is out")
    expect_body(bob, "v1.0 is out")
    item = message(bob, "v1.0 is out")
    expect(item.locator(".actions").get_by_role("button", name="Reply", exact=True)).to_have_count(0)
    item.locator(".actions").get_by_role("button", name="React", exact=True).click()
    item.get_by_role("button", name="React with 🎉").click()
    expect(message(alice, "v1.0 is out").locator('.reaction[data-reaction="🎉"] .reaction-count')).to_have_text("1")

    # -- A fresh browser of bob's: the room list and history alone say the same. --
    _, fresh = pages.open("bob-fresh", node.base_url + "/")
    log_in(fresh, "bob")
    room_item(fresh, room_id).get_by_role("button").click()
    expect(fresh.locator("#room-topic")).to_have_text("Release notes, one a week")
    expect(composer(fresh)).to_be_disabled()
    expect(fresh.locator("#composer-note")).to_contain_text("Only the owner and admins post")
    expect(audit_lines(fresh).filter(has_text=re.compile("^alice (changed|let)"))).to_have_count(1)
    expect(fresh.get_by_role("button", name="Room settings")).to_be_hidden()

    # -- A rename reaches the room lists; every member may post again. --
    panel = open_settings(alice)
    expect(panel.get_by_label("Topic")).to_have_value("Release notes, one a week")
    expect(panel.get_by_label("Who may post")).to_have_value("moderators")
    panel.get_by_label("Name", exact=True).fill("announcements")
    panel.get_by_label("Who may post").select_option("members")
    panel.get_by_role("button", name="Save settings").click()
    for page in (alice, bob, fresh):
        expect_audit(page, "alice renamed the room to “announcements” and let every member post")
        expect(room_item(page, room_id).locator(".room-name")).to_have_text("announcements")
        expect(page.locator("#room-title")).to_have_text("announcements")
        expect(composer(page)).to_be_enabled()
    expect(bob.locator("#composer-note")).to_be_hidden()
    send(bob, "thanks!")
    expect_body(alice, "thanks!")

    # -- The node's refusal is shown in the form: a topic with a control character. --
    panel = open_settings(alice)
    panel.get_by_label("Topic").fill("bad\u0007topic")
    panel.get_by_role("button", name="Save settings").click()
    expect(alice.locator("#settings-error")).to_contain_text("invalid_field")
    expect(panel).to_be_visible()
    panel.get_by_role("button", name="Cancel").click()
    expect(panel).to_be_hidden()
    expect(alice.get_by_role("button", name="Room settings")).to_be_focused()
    for page in (alice, bob, fresh):
        assert page.errors == [], f"page errors: {page.errors}"


def test_delete_account(node, pages):
    _, alice = pages.open("alice", node.base_url + "/")
    _, bob = pages.open("bob", node.base_url + "/")
    _, phone = pages.open("bob-phone", node.base_url + "/", phone=True)
    register(alice, "alice")
    register(bob, "bob")
    log_in(phone, "bob")  # another device of bob's
    room_id = create_room(alice, "farewell")
    join_room(bob, room_id)
    send(bob, "so long")
    expect_body(alice, "so long")
    eventually(bob, lambda: state(bob)["cursor"] is not None, "bob's cursor to be stored")
    stored = bob.evaluate("() => Object.keys(localStorage)")
    assert {"palaver.auth", "palaver.cursor.bob", "palaver.room.bob"} <= set(stored), stored

    # -- A wrong password is refused; bob stays signed in. --
    bob.get_by_role("button", name="Delete account…").click()
    dialog = bob.get_by_role("dialog", name="Delete your account?")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("Your password, to confirm")).to_be_focused()
    dialog.get_by_label("Your password, to confirm").fill("not my password")
    dialog.get_by_role("button", name="Delete my account").click()
    expect(dialog.locator("#delete-error")).to_have_text("Wrong password: your account was not deleted.")
    expect(dialog.locator("#delete-error")).to_have_attribute("role", "alert")
    expect(dialog).to_be_visible()
    expect(bob.locator("#me-name")).to_have_text("bob")
    expect_live(bob)
    # Called off: nothing happens, and bob goes on as before.
    dialog.get_by_role("button", name="Keep my account").click()
    expect(dialog).to_be_hidden()
    expect(bob.get_by_role("button", name="Delete account…")).to_be_focused()
    send(bob, "still here")
    expect_body(alice, "still here")

    # -- The right password: signed out everywhere, and the browser forgets him. --
    bob.get_by_role("button", name="Delete account…").click()
    dialog = bob.get_by_role("dialog", name="Delete your account?")
    dialog.get_by_label("Your password, to confirm").fill(PASSWORD)
    dialog.get_by_role("button", name="Delete my account").click()
    for page in (bob, phone):
        expect(page.locator("#auth-form")).to_be_visible()
        expect(page.locator("#chat-view")).to_be_hidden()
    expect(bob.locator("#auth-error")).to_have_text("Your account was deleted.")
    expect(bob.get_by_role("dialog")).to_have_count(0)
    kept = bob.evaluate("() => Object.keys(localStorage).filter((key) => key.startsWith('palaver.') && key !== 'palaver.limits')")
    assert kept == [], f"the browser still keeps {kept}"
    assert state(bob)["user"] is None
    # The others see him leave; what he wrote stays.
    expect(alice.locator("#messages li.msg.notice").filter(has_text=re.compile("^bob left"))).to_have_count(1)
    expect_body(alice, "so long")
    expect(member(alice, "bob")).to_have_count(0)
    # The name cannot sign in again.
    bob.get_by_label("User name", exact=True).fill("bob")
    bob.get_by_label("Password").fill(PASSWORD)
    bob.get_by_role("button", name="Log in").click()
    expect(bob.locator("#auth-error")).to_contain_text("invalid_credentials")
    for page in (alice, bob, phone):
        assert page.errors == [], f"page errors: {page.errors}"
