"""Push notifications in the web client: "Notifications on this browser" and its service worker.

Headless Chromium has no push service to subscribe with, so `PushManager.subscribe` (and
`getSubscription`) are replaced before the page runs by a stand-in that records the
`applicationServerKey` it is given and returns a PushSubscription-shaped object (an
`https://push.example.net/…` endpoint, a real P-256 `p256dh` and a 16-byte `auth`). Everything
else is real:

- the node serves its VAPID public key in the page and the app subscribes with exactly it (the
  key derived from the PEM by the `openssl` command);
- the browser's permission (granted through Playwright, i.e. CDP `Browser.grantPermissions`),
  the service worker registration of `/sw.js` (active, scope the whole app);
- `register_device` / `remove_device` on the real node, checked over a second WebSocket of the
  same user with `list_devices`;
- the service worker's push handler, driven by CDP `ServiceWorker.deliverPushMessage` (the
  DevTools "Push" button: a real `push` event with the payload as the node would send it after
  decryption): alerts become notifications tagged by room (a newer one replaces the older),
  a clear closes its room's notification only, as `registration.getNotifications()` shows;
- a click on a notification: the worker's `openRoom` (what its `notificationclick` handler
  calls) run inside the real worker tells the open page, which opens the room; a `#room=` link
  (what the worker opens when no page is) opens the room too.

Not covered: a real push service (encryption is the node's, tested in Rust against RFC 8291),
the `notificationclick` event itself (nothing in CDP clicks a notification), the app badge
(headless Chromium shows none), and a real subscription's renewal.
"""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import WAIT_MS, started_node
from playwright.sync_api import expect
from test_web_client import PASSWORD, create_room, eventually, expect_live, register
from websockets.sync.client import connect as ws_connect

expect.set_options(timeout=WAIT_MS)

ENDPOINT_PREFIX = "https://push.example.net/wpush/"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def p256_key(directory: Path, name: str) -> tuple[Path, str]:
    """A fresh P-256 key as PKCS#8 PEM (what `push.webpush.vapid_key_file` takes), and its
    public key as an uncompressed point in base64url, both made by the openssl command."""
    raw, pem = directory / f"{name}-ec.pem", directory / f"{name}.pem"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(raw)], check=True)
    subprocess.run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", str(raw), "-out", str(pem)], check=True)
    der = subprocess.run(
        ["openssl", "ec", "-in", str(pem), "-pubout", "-outform", "DER"], check=True, capture_output=True
    ).stdout
    point = der[-65:]
    assert point[0] == 4, "an uncompressed P-256 point"
    return pem, b64url(point)


@pytest.fixture
def keys():
    """The node's VAPID key (file, public key) and the stand-in subscription's `p256dh`."""
    with tempfile.TemporaryDirectory(prefix="palaver-vapid-") as tmp:
        vapid_file, vapid_public = p256_key(Path(tmp), "vapid")
        _, browser_public = p256_key(Path(tmp), "browser")
        yield {"vapid_file": vapid_file, "vapid_public": vapid_public, "p256dh": browser_public}


@pytest.fixture
def push_node(request, keys):
    yield from started_node(request, env={"PALAVER_PUSH__WEBPUSH__VAPID_KEY_FILE": str(keys["vapid_file"])})


# The stand-in for the push service, run in every page before the app. Its subscription is kept
# in localStorage like a real one outlives the page, so a reload finds it again.
STUB = """
(() => {
  const P256DH = %(p256dh)s, AUTH = %(auth)s, PREFIX = %(prefix)s, KEY = 'test.push.subscription';
  const toB64url = (bytes) => btoa(String.fromCharCode(...bytes)).replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '');
  const keyBytes = (key) =>
    typeof key === 'string' ? key : toB64url(new Uint8Array(ArrayBuffer.isView(key) ? key.buffer.slice(key.byteOffset, key.byteOffset + key.byteLength) : key));
  const fromB64url = (text) => Uint8Array.from(atob(text.replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0));
  const stub = (window.__pushStub = { subscribeCalls: [], unsubscribed: 0 });
  function subscription(saved) {
    const sub = {
      endpoint: saved.endpoint,
      expirationTime: null,
      options: { userVisibleOnly: true, applicationServerKey: fromB64url(saved.key).buffer },
      // Like Chromium's: `expirationTime` included.
      toJSON: () => ({ endpoint: saved.endpoint, expirationTime: null, keys: { p256dh: P256DH, auth: AUTH } }),
      unsubscribe: async () => {
        stub.unsubscribed++;
        localStorage.removeItem(KEY);
        return true;
      },
    };
    return sub;
  }
  PushManager.prototype.subscribe = async function (options) {
    const key = keyBytes(options.applicationServerKey);
    stub.subscribeCalls.push({ key, userVisibleOnly: options.userVisibleOnly });
    const id = Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, '0')).join('');
    const saved = { endpoint: PREFIX + id, key };
    localStorage.setItem(KEY, JSON.stringify(saved));
    return subscription(saved);
  };
  PushManager.prototype.getSubscription = async function () {
    const saved = localStorage.getItem(KEY);
    return saved ? subscription(JSON.parse(saved)) : null;
  };
})();
"""


def stub_script(keys) -> str:
    return STUB % {
        "p256dh": json.dumps(keys["p256dh"]),
        "auth": json.dumps(b64url(bytes(range(16)))),
        "prefix": json.dumps(ENDPOINT_PREFIX),
    }


def with_push(node, keys, *, grant=True, stub=True):
    """`before_goto` for a page: the notifications permission granted for the node's origin, and
    the push service stand-in."""

    def before(context, page):
        if grant:
            context.grant_permissions(["notifications"], origin=node.base_url)
        if stub:
            context.add_init_script(stub_script(keys))

    return before


def devices_of(node, user: str) -> list[dict]:
    """`list_devices` as `user`, over a WebSocket of its own (a second device of the user)."""
    with ws_connect(f"ws://{node.addr}/ws", open_timeout=10) as ws:

        def ask(frame: dict, reply: str) -> dict:
            ws.send(json.dumps(frame))
            while True:
                answer = json.loads(ws.recv(timeout=10))
                if answer.get("type") == "error" and answer.get("req") == frame.get("req"):
                    raise AssertionError(f"{frame['type']} failed: {answer}")
                if answer.get("type") == reply and answer.get("req", frame.get("req")) == frame.get("req"):
                    return answer

        ask({"type": "hello", "versions": [1], "client": "test-push"}, "welcome")
        token = ask({"type": "login", "req": 1, "user": user, "password": PASSWORD}, "logged_in")["token"]
        ask({"type": "authenticate", "req": 2, "token": token}, "authenticated")
        return ask({"type": "list_devices", "req": 3}, "devices")["devices"]


def stub_state(page) -> dict:
    return page.evaluate("() => window.__pushStub")


def worker_registration(page) -> dict | None:
    return page.evaluate(
        """async () => {
          const r = await navigator.serviceWorker.getRegistration('/');
          return r && { scope: r.scope, active: r.active && r.active.state, url: r.active && r.active.scriptURL };
        }"""
    )


def notifications(page) -> list[dict]:
    return page.evaluate(
        """async () => {
          const r = await navigator.serviceWorker.ready;
          return (await r.getNotifications()).map((n) => ({ title: n.title, body: n.body, tag: n.tag, data: n.data }));
        }"""
    )


def stored_device(page, user: str):
    return page.evaluate(f"() => JSON.parse(localStorage.getItem('palaver.push.{user}'))")


class PushDelivery:
    """Delivers push messages to the page's service worker through CDP, as DevTools' "Push"
    button does (`ServiceWorker.deliverPushMessage`)."""

    def __init__(self, context, page, origin: str):
        self.origin = origin
        self.registrations: dict[str, dict] = {}
        self.cdp = context.new_cdp_session(page)
        self.cdp.on("ServiceWorker.workerRegistrationUpdated", self._updated)
        self.cdp.send("ServiceWorker.enable")
        self.page = page

    def _updated(self, event) -> None:
        for registration in event["registrations"]:
            self.registrations[registration["registrationId"]] = registration

    def registration_id(self) -> str:
        scope = self.origin + "/"
        found: list[str] = []

        def check() -> bool:
            found[:] = [
                rid for rid, r in self.registrations.items() if r["scopeURL"] == scope and not r.get("isDeleted")
            ]
            return bool(found)

        eventually(self.page, check, f"CDP to report the service worker registration of {scope}")
        return found[0]

    def deliver(self, payload: dict, until, what: str) -> None:
        """Delivers `payload` until `until()` holds, for at most WAIT_MS.

        `deliverPushMessage` only queues the event: it answers before the worker has run it and
        says nothing if the dispatch is lost, as it was once in CI, where one push of a run never
        showed its notification while the page and the worker went on working. Every payload
        here gives the same screen when delivered twice (an alert replaces its tag's
        notification, a clear closes it), so a push that shows nothing in 5 s is delivered
        again, as a push service retries what a browser did not take. A push handler that
        never works still fails the test."""
        deadline = time.monotonic() + WAIT_MS / 1000
        while True:
            self.cdp.send(
                "ServiceWorker.deliverPushMessage",
                {"origin": self.origin, "registrationId": self.registration_id(), "data": json.dumps(payload)},
            )
            left = deadline - time.monotonic()
            try:
                eventually(self.page, until, what, timeout_s=max(0.1, min(5.0, left)))
                return
            except AssertionError:
                if left <= 5.0:
                    raise


def payload(kind: str, room: str, **more) -> dict:
    """A notification as the node's Web Push provider puts it in a push (actors/src/push/
    providers/webpush.rs, `payload`)."""
    base = {"kind": kind, "room": room, "room_name": "", "title": "", "body": "", "count": 0, "seq": 1, "badge": 0}
    base.update(more)
    return base


def turn_on(page, *, preview: bool) -> None:
    box = page.locator("#push-box")
    expect(page.get_by_label("Notify me here of messages I miss")).to_be_enabled()
    if preview:
        page.get_by_label("Show message text").check()
    page.get_by_label("Notify me here of messages I miss").check()
    expect(box).to_have_attribute("data-state", "on")
    expect(page.locator("#push-status")).to_contain_text("On:")


def test_push_notifications_on_this_browser(push_node, keys, pages):
    ctx, alice = pages.open("alice", push_node.base_url + "/", before_goto=with_push(push_node, keys))
    register(alice, "alice")
    general = create_room(alice, "general")
    random = create_room(alice, "random")

    # Turning it on: the node's key in the page, the app subscribes with it, the worker is
    # registered and active for the whole app, and the node has the device.
    assert alice.locator('meta[name="palaver-vapid-key"]').get_attribute("content") == keys["vapid_public"]
    turn_on(alice, preview=True)
    calls = stub_state(alice)["subscribeCalls"]
    assert calls == [{"key": keys["vapid_public"], "userVisibleOnly": True}], calls
    registration = worker_registration(alice)
    assert registration == {
        "scope": push_node.base_url + "/",
        "active": "activated",
        "url": push_node.base_url + "/sw.js",
    }, registration
    devices = devices_of(push_node, "alice")
    assert len(devices) == 1, devices
    device = devices[0]
    assert device["platform"] == "webpush" and device["preview"] is True, device
    stored = stored_device(alice, "alice")
    assert stored["id"] == device["id"] and stored["endpoint"].startswith(ENDPOINT_PREFIX), stored
    assert stored["endpoint"].endswith(device["hint"]), (stored, device)

    # A reload keeps it on without asking again: the browser still has the subscription.
    alice = pages.reopen("alice-reloaded", ctx, push_node.base_url + "/")
    expect_live(alice)
    expect(alice.locator("#push-box")).to_have_attribute("data-state", "on")
    expect(alice.get_by_label("Show message text")).to_be_checked()
    alice.wait_for_timeout(500)
    assert stub_state(alice)["subscribeCalls"] == [] and len(devices_of(push_node, "alice")) == 1

    # The service worker, for real: alerts are shown one per room (a newer replaces the older),
    # a clear closes its room's notification and no other.
    push = PushDelivery(ctx, alice, push_node.base_url)
    push.deliver(
        payload("alert", general, room_name="general", title="general", body="New message from bob", count=1, seq=3, badge=1),
        until=lambda: len(notifications(alice)) == 1,
        what="the first notification",
    )
    assert notifications(alice) == [
        {"title": "general", "body": "New message from bob", "tag": general, "data": {"room": general, "seq": 3}}
    ], notifications(alice)
    push.deliver(
        payload("alert", general, room_name="general", title="general", body="bob: see you", count=2, seq=4, badge=2),
        until=lambda: [n["body"] for n in notifications(alice)] == ["bob: see you"],
        what="the newer notification to replace the older",
    )
    push.deliver(
        payload("alert", random, room_name="random", title="random", body="New message from carol", count=1, seq=2, badge=3),
        until=lambda: len(notifications(alice)) == 2,
        what="a second room's notification beside the first",
    )
    push.deliver(
        payload("clear", general, seq=4, badge=1),
        until=lambda: [n["tag"] for n in notifications(alice)] == [random],
        what="the clear to close general's notification only",
    )
    # A collapse id, where a push names one, is the tag.
    push.deliver(
        payload("alert", "r_long", title="long", body="x", collapse_id="c0ffee", seq=1, badge=1),
        until=lambda: sorted(n["tag"] for n in notifications(alice)) == sorted([random, "c0ffee"]),
        what="the collapse id as tag",
    )
    push.deliver(
        payload("clear", "r_long", collapse_id="c0ffee", seq=1, badge=0),
        until=lambda: [n["tag"] for n in notifications(alice)] == [random],
        what="the clear by collapse id",
    )

    # A click: what the worker's notificationclick handler does, run in the real worker, makes
    # the open page show the room.
    expect(alice.locator("#room-id")).to_have_text(random)
    workers = [w for w in ctx.service_workers if w.url == push_node.base_url + "/sw.js"]
    assert workers, [w.url for w in ctx.service_workers]
    assert workers[0].evaluate(f"() => openRoom({json.dumps(general)}).then((client) => !!client)") is True
    expect(alice.locator("#room-id")).to_have_text(general)
    # What it opens when no page is: /#room=<id>.
    linked = pages.reopen("alice-linked", ctx, push_node.base_url + "/#room=" + random)
    expect(linked.locator("#room-id")).to_have_text(random)
    assert linked.evaluate("() => location.hash") == ""
    linked.close()

    # Turning it off: the node forgets the device and the subscription ends.
    alice.get_by_label("Notify me here of messages I miss").uncheck()
    expect(alice.locator("#push-box")).to_have_attribute("data-state", "off")
    expect(alice.locator("#push-status")).to_have_text("Off.")
    eventually(alice, lambda: devices_of(push_node, "alice") == [], "the node to forget the device")
    assert stub_state(alice)["unsubscribed"] == 1
    assert stored_device(alice, "alice") is None
    for page in (alice,):
        expect(page.locator("#alerts .alert")).to_have_count(0)
        assert page.errors == [], f"page errors: {page.errors}"


def test_preview_choice_and_logging_out(push_node, keys, pages):
    """Without "show message text" the device has no preview; changing it updates the device;
    logging out removes it (this browser shows nothing more of the user's)."""
    _, bob = pages.open("bob", push_node.base_url + "/", before_goto=with_push(push_node, keys))
    register(bob, "bob")
    turn_on(bob, preview=False)
    expect(bob.locator("#push-status")).to_contain_text("not the text")
    [device] = devices_of(push_node, "bob")
    assert device["preview"] is False, device
    bob.get_by_label("Show message text").check()
    expect(bob.locator("#push-status")).to_contain_text("with their text")
    [updated] = devices_of(push_node, "bob")
    assert updated["preview"] is True and updated["id"] == device["id"], updated
    bob.get_by_role("button", name="Log out").click()
    eventually(bob, lambda: devices_of(push_node, "bob") == [], "logging out to remove the device")
    assert stub_state(bob)["unsubscribed"] == 1
    assert bob.errors == [], bob.errors


def test_a_refused_permission_leaves_it_off(push_node, keys, pages):
    _, carol = pages.open("carol", push_node.base_url + "/", before_goto=with_push(push_node, keys, grant=False))
    register(carol, "carol")
    carol.get_by_label("Notify me here of messages I miss").check()
    expect(carol.locator("#push-status")).to_contain_text("allow")
    expect(carol.locator("#push-box")).to_have_attribute("data-state", "off")
    expect(carol.get_by_label("Notify me here of messages I miss")).not_to_be_checked()
    assert stub_state(carol)["subscribeCalls"] == []
    assert devices_of(push_node, "carol") == []
    assert carol.errors == [], carol.errors


def test_a_failed_subscription_leaves_it_off(push_node, keys, pages):
    """Chromium's own `subscribe`, which cannot reach a push service here, fails: said, left off."""
    _, dave = pages.open("dave", push_node.base_url + "/", before_goto=with_push(push_node, keys, stub=False))
    register(dave, "dave")
    dave.get_by_label("Notify me here of messages I miss").check()
    expect(dave.locator("#push-status")).to_contain_text("could not be subscribed", timeout=60_000)
    expect(dave.locator("#push-box")).to_have_attribute("data-state", "off")
    expect(dave.get_by_label("Notify me here of messages I miss")).not_to_be_checked()
    assert devices_of(push_node, "dave") == []
    assert dave.errors == [], dave.errors


def test_without_a_vapid_key_the_page_says_so(node, pages):
    _, erin = pages.open("erin", node.base_url + "/")
    register(erin, "erin")
    assert erin.locator('meta[name="palaver-vapid-key"]').get_attribute("content") == ""
    expect(erin.locator("#push-box")).to_have_attribute("data-state", "unavailable")
    expect(erin.get_by_label("Notify me here of messages I miss")).to_be_disabled()
    expect(erin.locator("#push-status")).to_contain_text("does not send push notifications")
    assert erin.errors == [], erin.errors
