"""Files in messages, in the bundled web client (real node, real Chromium): docs/PROTOCOL.md,
"Media", and docs/MEDIA.md.

Scenario (test_files_upload_send_and_show): alice creates a room, bob joins; each in a browser
page. Alice picks a PNG with the attach button's file input: while its upload is held back, the
composer shows the file with a progress bar and Send is disabled; once it is through, the chip
shows its name and size. She sends it with a text: on both pages the message shows the image's
thumbnail, laid out at the thumbnail's size, which loads, and which links to the full image in a
new tab (the link serves the PNG). Then a text file sent alone (no text): bob's page shows a
download link with its name and size, serving the file. Files dropped on the conversation
(a `drop` event with a DataTransfer) upload too; a chip can be taken off again. A file larger than
the node's `media.max_bytes` is refused with the node's message and its chip goes. Bob's page,
reloaded, shows the same from history. Alice deletes the text file's message: both pages show
the tombstone with no file, and its link no longer serves it.

test_deleted_account_files_show_as_deleted: bob posts a file, then deletes his account; his
message stays, and alice's page (reloaded) says the file is deleted instead of linking to it.
"""

from __future__ import annotations

import re
import struct
import zlib

import pytest
from conftest import WAIT_MS, started_node
from playwright.sync_api import expect
from test_message_changes import delete, message
from test_web_client import PASSWORD, create_room, eventually, expect_body, expect_live, join_room, register, send, state

expect.set_options(timeout=WAIT_MS)

# Small, so the oversize case is cheap; every other file of the test fits well under it.
MAX_MEDIA_BYTES = 20_000
MESSAGES = "#messages li.msg:not(.notice)"
UPLOADS = re.compile(r"/media\?name=")


def png(width: int = 64, height: int = 48) -> bytes:
    """A real RGB PNG (a gradient), made without any imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in ((x * 4) % 256, (y * 5) % 256, 160)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


@pytest.fixture
def media_node(request):
    yield from started_node(request, env={"PALAVER_MEDIA__MAX_BYTES": str(MAX_MEDIA_BYTES)})


# ---- Page helpers -------------------------------------------------------------------------

def chips(page):
    return page.locator("#upload-list .upload-chip")


def chip(page, name: str):
    return chips(page).filter(has=page.locator(".upload-name", has_text=re.compile("^" + re.escape(name) + "$")))


def attach(page, *files: tuple[str, str, bytes]) -> None:
    """Pick files with the attach button's file input: (name, type, bytes) each."""
    page.locator("#file-input").set_input_files([{"name": n, "mimeType": t, "buffer": b} for n, t, b in files])


def drop(page, name: str, text: str) -> None:
    """Drop a file on the conversation, as a drag from the desktop would."""
    page.evaluate(
        """([name, text]) => {
            const data = new DataTransfer();
            data.items.add(new File([text], name, { type: 'text/plain' }));
            const target = document.getElementById('scroller');
            for (const type of ['dragenter', 'dragover', 'drop']) {
                target.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: data }));
            }
        }""",
        [name, text],
    )


def expect_ready(page, name: str) -> None:
    expect(chip(page, name)).to_have_attribute("data-state", "ready")
    expect(chip(page, name).locator("progress")).to_have_count(0)
    expect(page.get_by_role("button", name=f"Remove {name}", exact=True)).to_be_visible()


def send_button(page):
    return page.get_by_role("button", name="Send", exact=True)


def with_file(page, name: str):
    """Committed messages carrying the (not image) file `name`."""
    named = page.locator(".attachment-name", has_text=re.compile("^" + re.escape(name) + "$"))
    return page.locator(MESSAGES).filter(has=named)


def thumbnail(page, name: str):
    return page.locator(f'{MESSAGES} .attachment-image img.attachment-thumb[alt="{name}"]')


def expect_thumbnail_loaded(page, name: str) -> str:
    """The thumbnail of image `name` is on screen, sized before loading, loaded; its link is
    returned (the full image)."""
    img = thumbnail(page, name)
    expect(img).to_have_count(1)
    expect(img).to_be_visible()
    # Laid out at the thumbnail's size from the attachment, so nothing jumps when it loads.
    assert int(img.get_attribute("width")) > 0 and int(img.get_attribute("height")) > 0
    eventually(page, lambda: img.evaluate("i => i.complete && i.naturalWidth > 0"), f"the thumbnail of {name} to load")
    link = img.locator("xpath=ancestor::a[1]")
    expect(link).to_have_attribute("href", re.compile(r"/media/"))
    expect(link).to_have_attribute("target", "_blank")
    return link.get_attribute("href")


def download_link(page, name: str):
    return page.locator(f"{MESSAGES} .attachment-file a.attachment-link").filter(
        has=page.locator(".attachment-name", has_text=re.compile("^" + re.escape(name) + "$"))
    )


def fetch(page, url: str):
    """GET a link the way the browser would (no token: a link is signed)."""
    return page.context.request.get(url, fail_on_status_code=False)


# ---- Tests --------------------------------------------------------------------------------

def test_files_upload_send_and_show(media_node, pages):
    node = media_node
    _, alice = pages.open("alice", node.base_url + "/")
    ctx_b, bob = pages.open("bob", node.base_url + "/")
    register(alice, "alice")
    register(bob, "bob")
    room_id = create_room(alice, "pictures")
    join_room(bob, room_id)
    send(alice, "files coming")
    expect_body(bob, "files coming")

    # -- An image, picked with the attach button's input: progress while it uploads. --
    attach_button = alice.get_by_role("button", name="Attach files", exact=True)
    expect(attach_button).to_be_enabled()
    held = []
    alice.route(UPLOADS, lambda route: held.append(route))
    image = png()
    attach(alice, ("chart.png", "image/png", image))
    eventually(alice, lambda: len(held) == 1, "the upload to start")
    upload = held[0].request
    assert upload.method == "POST"
    assert upload.url.endswith("/media?name=chart.png"), upload.url
    assert upload.headers.get("authorization", "").startswith("Bearer "), upload.headers
    assert upload.headers.get("content-type") == "image/png", upload.headers
    expect(chip(alice, "chart.png")).to_have_attribute("data-state", "uploading")
    expect(chip(alice, "chart.png").locator("progress.upload-progress")).to_be_visible()
    expect(alice.get_by_role("progressbar", name="Uploading chart.png")).to_be_visible()
    expect(send_button(alice)).to_be_disabled()  # the message would go without the file
    assert state(alice)["uploads"] == [{"name": "chart.png", "state": "uploading", "media": None}]
    held[0].continue_()
    expect_ready(alice, "chart.png")
    alice.unroute(UPLOADS)
    expect(chip(alice, "chart.png").locator(".upload-size")).to_have_text(re.compile(r"^\d+(\.\d)? (B|KB)$"))
    expect(send_button(alice)).to_be_enabled()
    [ready] = state(alice)["uploads"]
    assert ready["state"] == "ready" and ready["media"].startswith("md_"), ready

    # -- Sent with a text: the thumbnail shows on both pages, and links to the full image. --
    send(alice, "here is the chart")
    expect(chips(alice)).to_have_count(0)
    expect(alice.locator("#upload-list")).to_be_hidden()
    for page in (bob, alice):
        expect_body(page, "here is the chart")
        posted = message(page, "here is the chart")
        expect(posted.locator(".attachment")).to_have_count(1)
        full = expect_thumbnail_loaded(page, "chart.png")
        assert posted.locator(".attachment-image").count() == 1
    answer = fetch(bob, full)
    assert answer.status == 200, (answer.status, full)
    assert answer.body() == image, "the link serves the uploaded image"
    assert answer.headers["content-type"].startswith("image/png"), answer.headers

    # -- A text file alone, with no text: a download link with its name and size. --
    notes = b"shopping list\n- milk\n- bread\n"
    attach(alice, ("notes.txt", "text/plain", notes))
    expect_ready(alice, "notes.txt")
    send_button(alice).click()
    expect(chips(alice)).to_have_count(0)
    link = download_link(bob, "notes.txt")
    expect(link).to_have_count(1)
    expect(link).to_have_attribute("download", "notes.txt")
    expect(link).to_have_attribute("href", re.compile(r"/media/"))
    expect(link.locator(".attachment-size")).to_have_text(f"{len(notes)} B")
    expect(with_file(bob, "notes.txt").locator(".body")).to_have_count(0)  # no empty text line
    expect(download_link(alice, "notes.txt")).to_have_attribute("href", re.compile(r"/media/"))
    notes_link = link.get_attribute("href")
    answer = fetch(bob, notes_link)
    assert answer.status == 200 and answer.body() == notes, (answer.status, answer.body()[:100])
    notes_seq = int(with_file(alice, "notes.txt").get_attribute("data-seq"))

    # -- Dropped on the conversation; a chip taken off again does not go. --
    drop(alice, "dropped.txt", "from the desktop")
    drop(alice, "unwanted.txt", "not this one")
    expect_ready(alice, "dropped.txt")
    expect_ready(alice, "unwanted.txt")
    alice.get_by_role("button", name="Remove unwanted.txt", exact=True).click()
    expect(chips(alice)).to_have_count(1)
    send(alice, "dropped in")
    expect_body(bob, "dropped in")
    expect(message(bob, "dropped in").locator(".attachment-name")).to_have_text(["dropped.txt"])
    expect(download_link(bob, "dropped.txt")).to_have_attribute("href", re.compile(r"/media/"))
    assert download_link(bob, "unwanted.txt").count() == 0

    # -- Too large: the node's refusal is shown, and the chip goes. --
    attach(alice, ("huge.bin", "application/octet-stream", b"\x00" * (MAX_MEDIA_BYTES + 5_000)))
    expect(alice.locator("#composer-error")).to_contain_text("huge.bin")
    expect(alice.locator("#composer-error")).not_to_have_text(re.compile(r"^huge\.bin: the (upload|node answered)"))
    expect(chips(alice)).to_have_count(0)
    expect(send_button(alice)).to_be_enabled()
    error = alice.locator("#composer-error").text_content()
    # A new file clears the old refusal.
    attach(alice, ("small.txt", "text/plain", b"fits"))
    expect_ready(alice, "small.txt")
    expect(alice.locator("#composer-error")).to_have_text("")
    alice.get_by_role("button", name="Remove small.txt", exact=True).click()
    expect(chips(alice)).to_have_count(0)

    # -- Bob's page reloaded: the same from history. --
    bob.reload()
    expect_live(bob)
    expect(bob.locator("#room-id")).to_have_text(room_id)
    expect_body(bob, "here is the chart")
    expect_thumbnail_loaded(bob, "chart.png")
    expect(download_link(bob, "notes.txt")).to_have_attribute("href", re.compile(r"/media/"))
    expect(download_link(bob, "dropped.txt")).to_have_attribute("href", re.compile(r"/media/"))

    # -- Deleted: the message keeps no file, and its link no longer serves it. --
    delete(alice, with_file(alice, "notes.txt"))
    for page in (alice, bob):
        item = page.locator(f'{MESSAGES}[data-seq="{notes_seq}"]')
        expect(item.locator(".tombstone")).to_have_text("message deleted")
        expect(item.locator(".attachment")).to_have_count(0)
    eventually(bob, lambda: fetch(bob, notes_link).status == 404, "the deleted file's link to stop serving it")
    expect_thumbnail_loaded(bob, "chart.png")  # the others stay

    for page in (alice, bob):
        assert page.errors == [], f"page errors: {page.errors}"
    print(f"oversize refusal shown: {error!r}")


def test_deleted_account_files_show_as_deleted(node, pages):
    _, alice = pages.open("alice", node.base_url + "/")
    _, bob = pages.open("bob", node.base_url + "/")
    register(alice, "alice")
    register(bob, "bob")
    room_id = create_room(alice, "farewell")
    join_room(bob, room_id)
    attach(bob, ("photo.png", "image/png", png(32, 32)))
    expect_ready(bob, "photo.png")
    send(bob, "a last picture")
    expect_body(alice, "a last picture")
    expect_thumbnail_loaded(alice, "photo.png")

    bob.get_by_role("button", name="Delete account…").click()
    dialog = bob.get_by_role("dialog", name="Delete your account?")
    dialog.get_by_label("Your password, to confirm").fill(PASSWORD)
    dialog.get_by_role("button", name="Delete my account").click()
    expect(bob.locator("#auth-form")).to_be_visible()

    # His message stays, with the file's description; the file itself is gone.
    alice.reload()
    expect_live(alice)
    expect(alice.locator("#room-id")).to_have_text(room_id)
    expect_body(alice, "a last picture")
    gone = message(alice, "a last picture").locator(".attachment")
    expect(gone).to_have_attribute("data-state", "gone")
    expect(gone).to_contain_text("photo.png")
    expect(gone.locator(".attachment-gone")).to_have_text("file deleted")
    expect(gone.locator("img, a")).to_have_count(0)
    assert alice.errors == [], alice.errors
