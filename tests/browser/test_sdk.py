"""sdk/js/palaver.js in Chromium against the real node: the module loaded into a page of the
node's origin, two clients (two users) talk, one drops its socket and resumes with exactly
what it missed, and a message written while offline leaves the outbox once connected."""

from __future__ import annotations

from pathlib import Path

SDK = Path(__file__).resolve().parents[2] / "sdk" / "js" / "palaver.js"

SCENARIO = """
async ({ url }) => {
  const { PalaverClient, login, memoryStorage } = window.PalaverSDK;
  const until = async (done, what) => {
    const deadline = Date.now() + 10000;
    while (!done()) {
      if (Date.now() > deadline) throw new Error('timed out waiting for ' + what);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  const ann = await login(url, 'ann', 'password-of-ann', { register: true });
  const bob = await login(url, 'bob', 'password-of-bob', { register: true });
  const annStore = memoryStorage();
  const a = new PalaverClient({ url, token: ann.token, storage: annStore, minBackoffMs: 20 });
  const b = new PalaverClient({ url, token: bob.token, minBackoffMs: 20 });
  const seen = [];
  a.addEventListener('message', (e) => { if (e.detail.kind === 'text') seen.push(e.detail.body); });
  await a.connect();
  await b.connect();
  const room = (await a.request({ type: 'create_room', name: 'browser' })).room.id;
  await b.request({ type: 'join', room });
  await b.send(room, 'one');
  await until(() => seen.length === 1, 'the first message');
  // The socket drops (not a close of the client): it reconnects and resumes by itself.
  a.ws.close(4000);
  await b.send(room, 'two');
  await b.send(room, 'three');
  await until(() => seen.length === 3 && a.state === 'live', 'the missed messages');
  // Written while offline: out of the outbox once live again.
  a.close();
  const pending = a.send(room, 'from the outbox');
  const queued = annStore.get('outbox').length;
  await a.connect();
  const ack = await pending;
  a.close();
  b.close();
  return { seen, queued, seq: ack.seq, duplicate: ack.duplicate };
}
"""


def test_the_sdk_works_in_chromium(node, browser):
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(node.base_url + "/")
        source = SDK.read_text()
        page.add_script_tag(content=source + "\nwindow.PalaverSDK = { PalaverClient, login, memoryStorage };", type="module")
        page.wait_for_function("() => !!window.PalaverSDK")
        url = node.base_url.replace("http://", "ws://") + "/ws"
        result = page.evaluate(SCENARIO, {"url": url})
        # b is still connected when a's outbox is flushed, so it may see that message too.
        assert result["seen"] in (["one", "two", "three"], ["one", "two", "three", "from the outbox"]), result
        assert result["queued"] == 1 and result["seq"] > 0 and result["duplicate"] is False, result
        assert errors == [], errors
    finally:
        context.close()
