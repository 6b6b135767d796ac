"""A member's notification level in the web client: picked per room in the room's header, kept
by the node (the select shows it again after a reload, on a fresh page), and another room and
another member keep theirs."""

from __future__ import annotations

from playwright.sync_api import expect
from test_web_client import create_room, expect_live, join_room, register

T = 10_000


def test_the_notification_level_is_kept_per_room(node, pages):
    ctx, alice = pages.open("alice", node.base_url + "/")
    _, bob = pages.open("bob", node.base_url + "/")
    register(alice, "alice")
    register(bob, "bob")
    quiet = create_room(alice, "quiet")
    join_room(bob, quiet)
    create_room(alice, "busy")  # now the open room

    alice.locator(f'#room-list li[data-room="{quiet}"]').click()
    select = alice.locator("#notify-level")
    expect(select).to_have_value("all", timeout=T)
    select.select_option("mentions")
    expect(select).to_be_enabled(timeout=T)

    # A fresh page of alice's: the node kept it, for that room only.
    alice2 = pages.reopen("alice-again", ctx, node.base_url + "/")
    expect_live(alice2)
    alice2.locator(f'#room-list li[data-room="{quiet}"]').click()
    expect(alice2.locator("#notify-level")).to_have_value("mentions", timeout=T)
    alice2.locator("#room-list li", has_text="busy").click()
    expect(alice2.locator("#notify-level")).to_have_value("all", timeout=T)
    # bob's level in the same room is his own.
    bob.locator(f'#room-list li[data-room="{quiet}"]').click()
    expect(bob.locator("#notify-level")).to_have_value("all", timeout=T)
    for page in (alice2, bob):
        expect(page.locator("#alerts .alert")).to_have_count(0, timeout=T)
        assert page.errors == [], f"page errors: {page.errors}"
