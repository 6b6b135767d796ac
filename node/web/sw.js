// palaver's service worker: shows the push notifications the node sends through Web Push, and
// takes them away again.
//
// Why a worker: a push arrives when no page of the app is open, so only a service worker can
// receive it. The page registers this file (app.js, "Push notifications"), subscribes with the
// node's VAPID key and registers the subscription with the node (`register_device`). Served at
// the root (/sw.js) so that its scope is the whole app.
//
// What a push carries (docs/PUSH.md; encrypted by the node, decrypted by the browser): JSON
// {kind: "alert" | "clear", room, room_name, title, body, count, seq, badge, collapse_id?}.
// - alert: shown, tagged with the collapse id (the room when the node names none), so a newer
//   notification of a room replaces the older one instead of piling up.
// - clear: the user read the room elsewhere: its notification is closed. Either kind sets the
//   app badge to the user's unread count where the browser has one.
// A click on a notification opens its room: in an open page of the app (told by postMessage),
// else in a new one at /#room=<id>.
//
// No fetch handler: the app works online only, and this worker caches nothing.
'use strict';

self.addEventListener('install', () => self.skipWaiting());
// Take the open pages over at once, so that a page can be told about a click from the first
// notification on.
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('push', (event) => {
  let data = null;
  try {
    data = event.data ? event.data.json() : null;
  } catch (_) {
    // Not JSON: nothing this worker can show.
  }
  if (data && typeof data === 'object') event.waitUntil(handlePush(data));
});

/** The notification's tag: one notification per room on screen. */
function tagOf(data) {
  return String(data.collapse_id || data.room || 'palaver');
}

async function handlePush(data) {
  const tag = tagOf(data);
  if (data.kind === 'alert') {
    await self.registration.showNotification(String(data.title || 'palaver'), {
      body: String(data.body || ''),
      tag,
      // A replacing notification alerts again: it says there is more.
      renotify: true,
      data: { room: data.room, seq: data.seq },
    });
  } else if (data.kind === 'clear') {
    const shown = await self.registration.getNotifications({ tag });
    for (const notification of shown) notification.close();
  } else {
    return; // a newer node's kind: ignore
  }
  await setBadge(data.badge);
}

async function setBadge(badge) {
  if (!Number.isSafeInteger(badge) || badge < 0 || !('setAppBadge' in self.navigator)) return;
  try {
    if (badge === 0) await self.navigator.clearAppBadge();
    else await self.navigator.setAppBadge(badge);
  } catch (_) {
    // Badges are an extra: the browser may refuse them (not installed as an app, say).
  }
}

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const room = event.notification.data && event.notification.data.room;
  event.waitUntil(openRoom(typeof room === 'string' ? room : ''));
});

/** Show `room` in a page of the app: an open one (focused, and told by message) or a new one. */
async function openRoom(room) {
  const pages = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
  const page = pages.find((client) => client.focused) || pages[0];
  if (page) {
    page.postMessage({ type: 'open_room', room });
    try {
      await page.focus();
    } catch (_) {
      // Focusing needs the click's user activation, which a browser may not pass on.
    }
    return page;
  }
  return self.clients.openWindow(room ? '/#room=' + encodeURIComponent(room) : '/');
}
