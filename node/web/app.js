// palaver's bundled web client: plain JavaScript, no build step, served by every node.
//
// One WebSocket at a time, speaking the JSON form of the protocol (protocol/src/frames.rs). The
// parts that matter for correctness:
//
// - Cursor: the highest `message.cursor` processed is kept in memory and in localStorage per
//   user. Every (re)connect authenticates with it, so the node replays exactly what was missed;
//   a `message` at or below it is a duplicate and is ignored.
// - Per-room positions: entries of a large room (more members than the node's
//   limits.fanout_max_members) are in the room's log only, so their `message` has no `cursor`.
//   For those the highest `seq` processed per room is kept instead (memory and localStorage per
//   user, next to the cursor); a message at or below it is a duplicate and is ignored, and the
//   cursor does not move. A resume presents them in `authenticate.rooms`; the node's own
//   positions in `live` and `reconnect` are merged in (the higher wins). Stored positions never
//   move back, except when the node says they are no good (`cursor_ahead`, a refused `rooms`).
// - Outbox: a message is put in localStorage *before* it is sent, with a client-made id. It
//   leaves the outbox when its `ack` arrives or when it is seen committed in the user's log or a
//   large room's (the replay after a reconnect included). Whatever is still there after a
//   reconnect is sent again with the SAME id, so the node's deduplication turns a retry into
//   `duplicate: true`, never into a second message.
// - Nodes: the page connects only to its own node and to those its node names (the
//   `palaver-nodes` meta tag, from client.web_nodes): each one gets the user's token, and the
//   password when signing in. See "Node list".
// - Reconnect: exponential backoff with jitter over the list of nodes; each failure moves to the
//   next node. A connection counts as working, and resets the backoff, only once it has loaded
//   and stayed up for SETTLE_MS: one that dies while signing in, catching up or loading is a
//   failure, so a reply that kills the connection every time cannot make the page reconnect in
//   a loop. After STUCK_AFTER such failures in a row at the same point the page stops and says
//   so, with a button to try again. A `reconnect` frame (node shutting down) retries at once on
//   the next node.
// - Messages that change: edits, deletes and reactions are entries of their own (kinds `edit`,
//   `delete`, `react`, `unreact`) naming a message by `target` seq. They update that message on
//   screen and never show as entries; kinds this client does not know are skipped, after their
//   cursor or seq was taken like any entry's. History shows messages in their current state, so
//   each message on screen remembers the seq its state is known to include (`asOf`) and a change
//   at or below it is not applied twice. Edits, deletes and reactions go through the outbox like
//   messages: stored first, sent with a client id, retried with the same id. In a large room
//   reactions are counted, not entries: their ack has seq 0, and the counts arrive in
//   `reactions` frames (whether a reaction is the user's own, only its ack says).
// - Moderation and settings: a group room's owner and admins act on members ranked below them
//   (owner > admin > member) from the member list, and change the room's settings. Every action
//   is an entry of the room (kinds `role`, `kick`, `ban`, `unban`, `mute`, `settings`), shown as
//   a system line like a join. What an entry says about the user's own standing (their role, a
//   mute, the settings) is remembered with its seq and wins over a room list as of an earlier
//   seq; other members' roles come from `list_members` (as of the newest entry seen) and the
//   entries after it. Whatever the page offers, the node decides, and a refusal is shown.
// - Push notifications: "Notifications on this browser" registers the browser's Web Push
//   subscription with the node as a `webpush` device; the service worker (/sw.js) shows and
//   clears the notifications, and a click opens the room. See "Push notifications".
// - Media: files are uploaded over HTTP (`POST /media`, with the user's token) to the node the
//   socket is connected to, as soon as they are picked or dropped, and go out with the next
//   message as `send.attachments` (kept in the outbox item, so a retry carries them). Messages
//   show their attachments: images as thumbnails, other files as download links, through
//   short-lived signed links asked for (`media_url`) when they come into view and cached until
//   they expire. See "Media".
// - Text from the network only ever reaches the page through `textContent`.
'use strict';

(function () {
  // ---- Tunables (each a bound; docs/DESIGN.md §7, "a limit on everything") -------------------------
  const VERSIONS = [1];
  const CLIENT_NAME = 'palaver-web/1';
  /** Entries per history request; the node caps it at limits.history_page_max (default 200). */
  const HISTORY_PAGE_LEN = 50;
  /** Backoff: first retry after 250–500 ms, doubling up to 7.5–15 s. */
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 15000;
  /** After a `reconnect` frame the node is going away on purpose: retry quickly elsewhere. */
  const SHUTDOWN_RETRY_MS = 300;
  /** A connection is a success (the backoff starts over) once signed in and live, or showing the
   *  sign-in form, with its first requests answered, and up for at least this long. */
  const SETTLE_MS = 5000;
  /** Requests whose answer is part of loading a connection (see SETTLE_MS). */
  const LOADING_KINDS = new Set(['authenticate', 'rooms', 'history']);
  /** Failures in a row at the same point of a connection, after which reconnecting stops until
   *  the user asks (a node that answers, then drops the connection at that point every time). */
  const STUCK_AFTER = 4;
  /** Where a connection died (by phase), as said when reconnecting stops. Catching up and the
   *  first loads after it are one point: which of them a killing reply lands in is timing. */
  const FAILURE_POINTS = {
    greeting: ['greeting', 'before the node greeted it'],
    open: ['open', 'right after connecting'],
    authenticating: ['authenticating', 'while signing in'],
    replaying: ['loading', 'while catching up and loading your rooms and messages'],
    live: ['loading', 'while catching up and loading your rooms and messages'],
  };
  const WELCOME_TIMEOUT_MS = 10000;
  /** A connection that answers no ping within PONG_TIMEOUT_MS is dropped (half-open sockets). */
  const PING_EVERY_MS = 20000;
  const PONG_TIMEOUT_MS = 10000;
  /** Sends awaiting their ack at once; stays well under limits.max_inflight_per_connection. */
  const SENDS_IN_FLIGHT_MAX = 16;
  /** Until a node says otherwise in `welcome`: the node's defaults. */
  const DEFAULT_LIMITS = { max_body_bytes: 16384, max_frame_bytes: 65536 };
  /** Entry kinds that change the message named by their `target` (docs/PROTOCOL.md, "Edits,
   *  deletes, reactions, replies, mentions"): applied to that message, never shown as entries. */
  const CHANGE_KINDS = new Set(['edit', 'delete', 'react', 'unreact']);
  /** Entries of a room's audit trail (docs/PROTOCOL.md, "Roles and moderation", "Room
   *  settings"): shown as system lines, like joins and leaves. */
  const AUDIT_KINDS = new Set(['role', 'kick', 'ban', 'unban', 'mute', 'settings']);
  /** Entries that end their subject's (`user`'s) membership of the room. */
  const ENDS_MEMBERSHIP = new Set(['leave', 'kick', 'ban']);
  /** Standing in a group room: a moderation action needs a rank above its subject's. */
  const RANKS = { member: 1, admin: 2, owner: 3 };
  /** The node's bounds on what moderators write (a kick's or ban's reason, a topic). */
  const REASON_MAX_BYTES = 512;
  const TOPIC_MAX_BYTES = 1024;
  const HOUR_MS = 3600000;
  /** What the moderation panel offers: [label, ms from now]; a ban without one is for good. */
  const BAN_DURATIONS = [['good', null], ['1 hour', HOUR_MS], ['1 day', 24 * HOUR_MS], ['1 week', 7 * 24 * HOUR_MS]];
  const MUTE_DURATIONS = [['10 minutes', HOUR_MS / 6], ['1 hour', HOUR_MS], ['1 day', 24 * HOUR_MS], ['1 week', 7 * 24 * HOUR_MS]];
  /** setTimeout's longest delay: a mute that ends later is looked at again then. */
  const TIMER_MAX_MS = 2 ** 31 - 1;
  /** What the outbox holds besides messages (an item without `op` is a message). */
  const OUTBOX_OPS = new Set(['edit', 'delete', 'react']);
  /** The reaction picker: single code points (a variation selector would be refused as invisible). */
  const REACTIONS = ['👍', '🎉', '😂', '😮', '😢', '🙏'];
  /** Changes received for messages not on screen, kept until a history page may bring them. */
  const UNPLACED_CHANGES_MAX = 500;
  /** Mentions one message may carry: the node's limits.max_mentions default. */
  const MENTIONS_MAX = 50;
  /** `@name` in a text: not inside a word or an address (`a@b`). */
  const MENTION_TOKEN = /(?<![\w.-])@([a-z0-9][a-z0-9_.-]*)/gi;
  /** A reply's quote of the message it answers: its first words, up to this many characters. */
  const QUOTE_CHARS_MAX = 60;
  /** Older pages loaded at most to find the message a clicked quote names. */
  const SEEK_PAGES_MAX = 20;
  /** Errors after which a send is retried (same id); any other error drops it from the outbox. */
  const RETRYABLE = new Set(['unavailable', 'internal', 'slow_down', 'rate_limited', 'not_authenticated']);
  /** Errors on `authenticate` that mean the token is no good: log in again. */
  const TOKEN_DEAD = new Set(['token_invalid', 'token_expired', 'token_revoked']);
  /** Older alerts are dropped beyond this many. */
  const ALERTS_MAX = 3;
  /** Users one connection may watch: the node's presence.max_watched default. */
  const WATCH_MAX = 500;
  /** While the user types, `typing` goes out at most this often (the node forwards a repeat only
   *  every half of its TTL, 3 s by default). */
  const TYPING_EVERY_MS = 2500;
  /** An indicator's lifetime when a frame names none; a bound on any frame's value. */
  const TYPING_TTL_FALLBACK_MS = 6000;
  const TYPING_TTL_MAX_MS = 60000;
  /** `typing` requests that may still be answered by an error (success has no reply). */
  const TYPING_REQS_MAX = 64;
  /** The node's presence.status_max_bytes default; the node checks its own value too. */
  const STATUS_MAX_BYTES = 140;
  /** Names listed in a receipt's tooltip at most. */
  const RECEIPT_NAMES_MAX = 10;
  /** "last seen 5 min ago" is refreshed this often. */
  const PRESENCE_TICK_MS = 30000;
  /** Files one message may carry (docs/MEDIA.md). */
  const ATTACHMENTS_MAX = 10;
  /** `media_url` requests awaiting their answer at once; the rest wait their turn. */
  const MEDIA_URL_INFLIGHT_MAX = 8;
  /** A link is asked for again this long before it expires (a download may take a while). */
  const MEDIA_LINK_MARGIN_MS = 60000;
  /** However soon a link says it expires (a clock far off), it is used this long at least:
   *  otherwise every answer would look stale and be asked for again at once. */
  const MEDIA_LINK_MIN_MS = 60000;
  /** After a `media_url` that failed for a passing reason, ask again this much later. */
  const MEDIA_URL_RETRY_MS = 5000;
  const NARROW = window.matchMedia('(max-width: 720px)');

  // ---- Storage ------------------------------------------------------------------------------
  const keys = {
    auth: 'palaver.auth', // { user, token, expires_at }
    nodes: 'palaver.nodes', // "host:port,host:port" or a JSON array of them (plain `nodes` works too)
    lastUser: 'palaver.last_user',
    limits: 'palaver.limits',
    cursor: (user) => `palaver.cursor.${user}`,
    positions: (user) => `palaver.positions.${user}`, // { room id: highest seq processed } of large rooms
    outbox: (user) => `palaver.outbox.${user}`,
    room: (user) => `palaver.room.${user}`,
    presence: (user) => `palaver.presence.${user}`, // { state, status } the user chose
    push: (user) => `palaver.push.${user}`, // { id, endpoint, preview } of this browser's push device
  };
  const storage = {
    get(key, fallback) {
      try {
        const raw = localStorage.getItem(key);
        return raw === null ? fallback : JSON.parse(raw);
      } catch (_) {
        return fallback;
      }
    },
    set(key, value) {
      try {
        localStorage.setItem(key, JSON.stringify(value));
      } catch (_) {
        // Storage full or disabled: the client still works, it just forgets on reload.
      }
    },
    remove(key) {
      try {
        localStorage.removeItem(key);
      } catch (_) {
        /* as above */
      }
    },
  };

  // ---- Node list ----------------------------------------------------------------------------
  function nodeUrl(spec) {
    const secure = location.protocol === 'https:';
    try {
      let url;
      if (/^wss?:\/\//i.test(spec)) {
        url = new URL(spec);
      } else if (/^https?:\/\//i.test(spec)) {
        url = new URL(spec);
        url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
      } else {
        url = new URL((secure ? 'wss://' : 'ws://') + spec);
      }
      if (url.pathname === '/' || url.pathname === '') url.pathname = '/ws';
      return url.href;
    } catch (_) {
      return null;
    }
  }

  const nodeList = (raw) =>
    Array.from(
      new Set(
        (raw || '')
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean)
          .map(nodeUrl)
          .filter(Boolean),
      ),
    );

  /**
   * The nodes this page may connect to: its own, then those its node names in the page
   * (client.web_nodes). Every node connected to is sent the token, and the password on sign-in,
   * so no other host may be: the node's Content-Security-Policy allows no other either.
   */
  function allowedNodes() {
    const meta = document.querySelector('meta[name="palaver-nodes"]');
    return Array.from(new Set([nodeUrl(location.host), ...nodeList(meta ? meta.content : '')]));
  }

  /**
   * The nodes to try, in order: `?nodes=host:port,...` or localStorage `palaver.nodes` may pick
   * and order some of the allowed nodes (to try one first, or leave a dead one out), but an entry
   * that is not allowed is dropped and reported, never connected to: a link could otherwise send
   * the user's credentials to any host. With nothing usable asked for, all allowed nodes.
   */
  function configuredNodes() {
    let raw = new URLSearchParams(location.search).get('nodes');
    if (raw === null) {
      try {
        raw = localStorage.getItem(keys.nodes) ?? localStorage.getItem('nodes');
        const parsed = raw && raw.trim().startsWith('[') ? JSON.parse(raw) : null;
        if (Array.isArray(parsed)) raw = parsed.join(',');
      } catch (_) {
        raw = null;
      }
    }
    const allowed = allowedNodes();
    const asked = nodeList(raw);
    const kept = asked.filter((url) => allowed.includes(url));
    return { nodes: kept.length ? kept : allowed, refused: asked.filter((url) => !allowed.includes(url)) };
  }

  function hostOf(url) {
    try {
      return new URL(url).host;
    } catch (_) {
      return String(url);
    }
  }

  // ---- State --------------------------------------------------------------------------------
  const chosenNodes = configuredNodes();
  const S = {
    nodes: chosenNodes.nodes,
    nodeIndex: 0,
    url: null,
    ws: null,
    /** Bumped whenever a socket is disowned, so late events of old sockets are ignored. */
    gen: 0,
    /** idle | connecting | greeting | open | authenticating | replaying | live | waiting */
    phase: 'idle',
    welcome: null,
    limits: Object.assign({}, DEFAULT_LIMITS, storage.get(keys.limits, {})),
    /** Failed connections since the last one that settled: the backoff's exponent. */
    attempt: 0,
    retryAt: 0,
    shutdownAdvised: false,
    /** When the current socket opened (0: not yet); see SETTLE_MS. */
    openedAt: 0,
    /** The current connection has loaded and stayed up: its end is not a failure. */
    settled: false,
    /** Loading requests of the current connection still unanswered (see LOADING_KINDS). */
    loadingReqs: new Set(),
    /** The point where the last connections died, and how many times in a row: { point, count }. */
    failedAt: null,
    /** Set when reconnecting stopped: { point, count, reason }. */
    stuck: null,
    timers: {},
    req: 0,
    /** req → what the request was for */
    pending: new Map(),
    auth: null,
    user: null,
    /** Highest cursor processed; null when this browser has none for the user yet. */
    cursor: null,
    /** Large rooms: room → highest seq processed (their messages carry no cursor). */
    positions: new Map(),
    head: 0,
    replayed: 0,
    rooms: new Map(),
    /** Highest seq seen per room from messages and acks, so a stale room list cannot lower it. */
    maxSeq: new Map(),
    roomsRequested: false,
    /** The open room: { room, entries: Map seq → li, loaded, more, loading } */
    view: null,
    outbox: [],
    /** message id → req of the `send` awaiting its ack */
    inflight: new Map(),
    /** Messages the node refused for good: { id, room, body, error } */
    failed: [],
    pane: 'rooms',
    /** user → { user, state, status?, last_seen? } of watched users and the open room's members */
    presence: new Map(),
    /** The watch list sent on this connection (sorted, joined), null when none yet. */
    watchKey: null,
    /** The state the user chose ({ state, status }), re-sent after each reconnect; null: never set. */
    myPresence: null,
    /** req → room of `typing` requests that may still get an error. */
    typingReqs: new Map(),
    /** Rooms where the node refused `typing` (too large): nothing more is sent for them. */
    typingForbidden: new Set(),
    /** The last `typing active` sent: { room, at }; null when none is active. */
    typingSent: null,
    /** room → Map user → timer of their typing indicator */
    typers: new Map(),
    /** room → { read: Map user → seq, delivered: Map user → seq } of the other members */
    receipts: new Map(),
    /** What entries said about the user's standing, room → { role, settings, mutedUntil }, each
     *  { seq, value }: see learnFrom. */
    learned: new Map(),
  };

  // ---- DOM helpers --------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const encoder = new TextEncoder();
  const byteLength = (text) => encoder.encode(text).length;

  function newMessageId() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return 'w.' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // ---- Connection state display -------------------------------------------------------------
  function setConn(state, text) {
    const conn = $('conn');
    conn.dataset.state = state;
    conn.dataset.node = S.welcome ? S.welcome.node : '';
    conn.dataset.replayed = String(S.replayed);
    if ($('conn-text').textContent !== text) $('conn-text').textContent = text;
    $('retry-now').hidden = !(state === 'reconnecting' || state === 'offline');
    updateCountdown();
    renderComposerState();
  }

  function updateCountdown() {
    const detail = $('conn-detail');
    const state = $('conn').dataset.state;
    if (state === 'reconnecting' && S.retryAt) {
      const seconds = Math.max(0, Math.ceil((S.retryAt - Date.now()) / 1000));
      detail.textContent = `next try ${hostOf(S.nodes[S.nodeIndex])} in ${seconds} s (attempt ${S.attempt})`;
    } else if (state === 'live' || state === 'replaying' || state === 'open') {
      detail.textContent = hostOf(S.url);
    } else {
      detail.textContent = '';
    }
  }

  function showAlert(code, message) {
    const box = $('alerts');
    const item = el('div', 'alert');
    const text = el('p', 'alert-text');
    text.append(el('strong', 'alert-code', code), document.createTextNode(' ' + message));
    const close = el('button', 'link-button', 'Dismiss');
    close.type = 'button';
    close.addEventListener('click', () => item.remove());
    item.append(text, close);
    item.dataset.code = code;
    box.append(item);
    while (box.children.length > ALERTS_MAX) box.firstElementChild.remove();
  }

  const describeError = (frame) =>
    `${frame.code}: ${frame.message}` + (frame.retry_after_ms ? ` (retry in ${Math.ceil(frame.retry_after_ms / 1000)} s)` : '');

  // ---- Connection ---------------------------------------------------------------------------
  function connect() {
    clearTimeout(S.timers.retry);
    clearInterval(S.timers.tick);
    if (S.ws) {
      disown();
      forgetConnection();
    }
    S.url = S.nodes[S.nodeIndex % S.nodes.length];
    S.welcome = null;
    S.shutdownAdvised = false;
    S.openedAt = 0;
    S.settled = false;
    if (S.stuck) {
      S.stuck = null;
      $('conn-error').hidden = true;
    }
    S.phase = 'connecting';
    const gen = ++S.gen;
    setConn('connecting', `${S.attempt === 0 ? 'Connecting' : 'Reconnecting'} to ${hostOf(S.url)}…`);
    let ws;
    try {
      ws = new WebSocket(S.url);
    } catch (err) {
      afterDisconnect(`cannot open ${S.url}: ${err.message}`);
      return;
    }
    S.ws = ws;
    ws.onopen = () => {
      if (gen !== S.gen) return;
      S.openedAt = Date.now();
      S.phase = 'greeting';
      // batch: the node may pack several frames into one message, one JSON object per line
      // (docs/PROTOCOL.md, "Batched frames"); a burst of messages is then one event here.
      sendFrame({ type: 'hello', versions: VERSIONS, client: CLIENT_NAME, batch: true });
      S.timers.welcome = setTimeout(() => {
        if (gen === S.gen) drop('no welcome within 10 s');
      }, WELCOME_TIMEOUT_MS);
    };
    ws.onmessage = (event) => {
      if (gen !== S.gen || typeof event.data !== 'string') return;
      let frames;
      try {
        frames = event.data.split('\n').map((line) => JSON.parse(line));
      } catch (_) {
        showAlert('malformed_frame', 'the node sent something that is not JSON');
        return;
      }
      for (const frame of frames) {
        // A frame may end this connection (e.g. `reconnect`); the rest belong to it.
        if (gen !== S.gen) return;
        handleFrame(frame);
      }
    };
    ws.onclose = (event) => {
      if (gen !== S.gen) return;
      S.ws = null;
      const why = event.reason ? `${event.code} ${event.reason}` : event.code === 1006 ? 'connection failed' : `code ${event.code}`;
      afterDisconnect(why);
    };
  }

  /** Forget the current socket without waiting for its close handshake. */
  function disown() {
    const ws = S.ws;
    S.gen++;
    S.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        ws.close();
      } catch (_) {
        /* already closed */
      }
    }
  }

  /**
   * Give up on the current connection and go through the reconnect path. `died`: the connection
   * failed (no answer), rather than the page leaving it for a reason of its own (an error reply,
   * the network gone), which does not count towards stopping (STUCK_AFTER).
   */
  function drop(reason, died = true) {
    disown();
    afterDisconnect(reason, died);
  }

  /** What belonged to the connection that is gone: its requests, sends in flight and timers. */
  function forgetConnection() {
    stopPing();
    clearTimeout(S.timers.welcome);
    clearTimeout(S.timers.settle);
    S.welcome = null;
    S.pending.clear();
    S.loadingReqs.clear();
    S.inflight.clear();
    S.roomsRequested = false;
    // Watch lists and typing belong to the connection: the next one sends them again.
    S.watchKey = null;
    S.typingReqs.clear();
    S.typingSent = null;
    if (S.view && S.view.loading) {
      // Asked again on the next connection; until then nothing is loading.
      S.view.loading = false;
      $('history-status').textContent = '';
    }
    if (S.view) forgetQuoteRequests(S.view);
    forgetMediaRequests();
    // Requests whose answer will not come: their forms may be used again.
    formsLostConnection();
  }

  /**
   * A connection is a success once it is live (or showing the sign-in form), its loading requests
   * are answered and it has been up SETTLE_MS: only then does the backoff start over.
   */
  function maybeSettle() {
    if (S.settled || !S.ws || !(S.phase === 'live' || S.phase === 'open') || S.loadingReqs.size) return;
    clearTimeout(S.timers.settle);
    const wait = S.openedAt + SETTLE_MS - Date.now();
    if (wait > 0) {
      const gen = S.gen;
      S.timers.settle = setTimeout(() => {
        if (gen === S.gen) maybeSettle();
      }, wait);
      return;
    }
    S.settled = true;
    S.attempt = 0;
    S.failedAt = null;
  }

  function afterDisconnect(reason, died = true) {
    const advised = S.shutdownAdvised;
    const settled = S.settled;
    // Where it died: a node that answered and then dropped the connection at the same point
    // again and again (a reply it cannot send, say) will do so on every retry.
    const point = S.openedAt ? (FAILURE_POINTS[S.phase] || [S.phase])[0] : null;
    forgetConnection();
    if (!settled && !advised && died && point && navigator.onLine !== false) {
      const same = S.failedAt && S.failedAt.point === point;
      S.failedAt = { point, count: same ? S.failedAt.count + 1 : 1 };
      if (S.failedAt.count >= STUCK_AFTER) {
        giveUp(reason);
        return;
      }
    }
    // Any failure moves on to the next node; a one-node list retries the same one.
    S.nodeIndex = (S.nodeIndex + 1) % S.nodes.length;
    let delay;
    if (advised && settled) {
      delay = SHUTDOWN_RETRY_MS * (0.5 + Math.random());
    } else {
      const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(S.attempt, 20));
      delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    }
    S.attempt++;
    S.phase = 'waiting';
    renderPending();
    if (navigator.onLine === false) {
      // The 'online' event retries at once; the timer is only a fallback.
      delay = BACKOFF_CAP_MS;
      S.retryAt = Date.now() + delay;
      S.timers.retry = setTimeout(connect, delay);
      setConn('offline', 'Offline: waiting for the network');
      return;
    }
    S.retryAt = Date.now() + delay;
    S.timers.retry = setTimeout(connect, delay);
    clearInterval(S.timers.tick);
    S.timers.tick = setInterval(updateCountdown, 500);
    const lead = advised ? 'Node is going away' : 'Connection lost';
    setConn('reconnecting', `${lead} (${reason}); reconnecting`);
  }

  /** Stop reconnecting: the connection keeps dying at the same point. The user may try again. */
  function giveUp(reason) {
    const { point, count } = S.failedAt;
    clearTimeout(S.timers.retry);
    clearInterval(S.timers.tick);
    S.phase = 'failed';
    S.retryAt = 0;
    S.stuck = { point, count, reason };
    renderPending();
    const where = (Object.values(FAILURE_POINTS).find(([name]) => name === point) || [point, `(${point})`])[1];
    setConn('failed', `Connection keeps failing ${where}; stopped reconnecting`);
    $('conn-error-text').textContent =
      `The connection to ${hostOf(S.url)} was lost ${count} times in a row ${where} (last: ${reason}). ` +
      'This is most likely a problem on the server, so the page stopped reconnecting. ' +
      'Messages you write are kept and sent once a connection works.';
    $('conn-error').hidden = false;
  }

  function retryNow() {
    // One more try after a stop: failing at the same point again stops again at once.
    if (S.stuck && S.failedAt) S.failedAt.count = STUCK_AFTER - 1;
    S.attempt = Math.max(0, S.attempt - 1);
    connect();
  }

  function startPing() {
    stopPing();
    S.timers.ping = setInterval(() => {
      if (S.timers.pong) return;
      request({ type: 'ping' }, { kind: 'ping' });
      S.timers.pong = setTimeout(() => drop('no answer to ping'), PONG_TIMEOUT_MS);
    }, PING_EVERY_MS);
  }

  function stopPing() {
    clearInterval(S.timers.ping);
    clearTimeout(S.timers.pong);
    S.timers.pong = null;
  }

  function sendFrame(frame) {
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return false;
    S.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Send a request with a fresh `req`; `ctx` comes back with its reply. 0 when not sent. */
  function request(frame, ctx) {
    const req = ++S.req;
    frame.req = req;
    if (!sendFrame(frame)) return 0;
    S.pending.set(req, Object.assign({ type: frame.type }, ctx));
    if (!S.settled && LOADING_KINDS.has(ctx.kind)) S.loadingReqs.add(req);
    return req;
  }

  // ---- Frames from the node -----------------------------------------------------------------
  function handleFrame(frame) {
    if (typeof frame.req === 'number' && S.typingReqs.size && settleTyping(frame)) return;
    const ctx = typeof frame.req === 'number' && S.pending.has(frame.req) ? S.pending.get(frame.req) : null;
    if (ctx) S.pending.delete(frame.req);
    dispatchFrame(frame, ctx);
    if (ctx && S.loadingReqs.delete(frame.req)) maybeSettle();
  }

  function dispatchFrame(frame, ctx) {
    switch (frame.type) {
      case 'welcome':
        return onWelcome(frame);
      case 'registered':
        return onRegistered(frame, ctx);
      case 'logged_in':
        return onLoggedIn(frame);
      case 'authenticated':
        return onAuthenticated(frame, ctx);
      case 'message':
        return onMessage(frame);
      case 'live':
        mergePositions(frame.rooms);
        return goLive(`Resumed on ${nodeName()}: ${S.replayed} ${S.replayed === 1 ? 'message' : 'messages'} replayed`);
      case 'resync':
        return onResync(frame);
      case 'rooms':
        return onRooms(frame, ctx);
      case 'room':
        return onRoom(frame, ctx);
      case 'history':
        return onHistory(frame, ctx);
      case 'thread':
        return onThread(frame, ctx);
      case 'ack':
        return onAck(frame);
      case 'read':
        return onRead(frame);
      case 'error':
        return onError(frame, ctx);
      case 'reconnect':
        // Where the going node got to in large rooms (its `cursor` is ours already).
        mergePositions(frame.rooms);
        S.shutdownAdvised = true;
        setConn('reconnecting', `${nodeName()} is going away: ${frame.reason}`);
        return undefined;
      case 'pong':
        clearTimeout(S.timers.pong);
        S.timers.pong = null;
        return undefined;
      case 'members':
        return onMembers(frame);
      case 'presence_list':
        return onPresenceList(frame);
      case 'presence':
        return onPresence(frame);
      case 'typing':
        return onTyping(frame);
      case 'receipt':
        return onReceipt(frame);
      case 'receipts':
        return onReceipts(frame);
      case 'reactions':
        return onReactions(frame);
      case 'ok':
        return onOk(ctx);
      case 'device':
        return onDevice(frame, ctx);
      case 'media_url':
        return onMediaUrl(frame, ctx);
      default:
        return undefined; // a newer node's frame: ignore
    }
  }

  const nodeName = () => (S.welcome ? S.welcome.node : hostOf(S.url));

  function onWelcome(frame) {
    clearTimeout(S.timers.welcome);
    S.welcome = frame;
    S.limits = { max_body_bytes: frame.max_body_bytes, max_frame_bytes: frame.max_frame_bytes };
    storage.set(keys.limits, S.limits);
    startPing();
    updateByteCount();
    if (S.auth && S.auth.expires_at > Date.now()) {
      authenticate();
    } else {
      S.phase = 'open';
      if (S.auth) signOut('your session expired; log in again');
      setConn('open', `Connected to ${frame.node}`);
      maybeSettle();
      showAuthView();
      if (queuedAuth) {
        const { action, user, password } = queuedAuth;
        $('auth-user').value = user;
        $('auth-password').value = password;
        submitAuth(action);
      }
    }
  }

  // ---- Accounts -----------------------------------------------------------------------------
  /** The password lives here only between `register` and the `login` that follows it. */
  let pendingLogin = null;
  /** A sign-in the user asked for before any node answered (held in memory only). */
  let queuedAuth = null;

  function submitAuth(action) {
    const user = $('auth-user').value.trim();
    const password = $('auth-password').value;
    $('auth-error').textContent = '';
    if (!user || !password) {
      $('auth-error').textContent = 'Enter a user name and a password.';
      return;
    }
    if (S.phase !== 'open') {
      // Not greeted yet: go as soon as a node answers.
      queuedAuth = { action, user, password };
      $('auth-error').textContent = 'Waiting for a node; you will be signed in as soon as one answers.';
      return;
    }
    queuedAuth = null;
    storage.set(keys.lastUser, user);
    if (action === 'register') {
      pendingLogin = { user, password };
      request({ type: 'register', user, password }, { kind: 'register' });
    } else {
      request({ type: 'login', user, password }, { kind: 'login' });
    }
    setAuthBusy(true);
  }

  function setAuthBusy(busy) {
    $('login-button').disabled = busy;
    $('register-button').disabled = busy;
  }

  function onRegistered(frame) {
    const creds = pendingLogin;
    pendingLogin = null;
    if (creds && creds.user === frame.user) {
      request({ type: 'login', user: creds.user, password: creds.password }, { kind: 'login' });
    } else {
      setAuthBusy(false);
    }
  }

  function onLoggedIn(frame) {
    S.auth = { user: frame.user, token: frame.token, expires_at: frame.expires_at };
    storage.set(keys.auth, S.auth);
    $('auth-password').value = '';
    setAuthBusy(false);
    authenticate();
  }

  function signOut(why) {
    S.auth = null;
    storage.remove(keys.auth);
    S.user = null;
    S.rooms = new Map();
    S.view = null;
    S.outbox = [];
    S.failed = [];
    S.learned = new Map();
    resetMedia();
    resetPresence();
    closeRoomPanels();
    closeDeleteAccount();
    $('presence-menu').open = false;
    if (why) $('auth-error').textContent = why;
    showAuthView();
  }

  /**
   * The account is gone (`delete_account` answered `ok`): sign out and forget everything this
   * browser kept for it, as nothing of it can be used again (the name stays taken, no token
   * authenticates, the log and its cursor are erased).
   */
  function accountDeleted() {
    const user = S.user;
    if (user) {
      forgetPush(user, false);
      for (const key of [keys.cursor, keys.positions, keys.outbox, keys.room, keys.presence]) storage.remove(key(user));
      if (storage.get(keys.lastUser, null) === user) storage.remove(keys.lastUser);
    }
    S.cursor = null;
    S.positions = new Map();
    $('auth-user').value = '';
    signOut('Your account was deleted.');
    // The node closes every connection of the account: start a fresh one, as after logging out.
    S.attempt = 0;
    connect();
  }

  function authenticate() {
    if (S.user !== S.auth.user) loadUser(S.auth.user);
    const frame = { type: 'authenticate', token: S.auth.token };
    const resume = S.cursor !== null;
    if (resume) frame.cursor = S.cursor;
    // Positions in large rooms go with the cursor only: without one the node starts live.
    const rooms = resume && S.positions.size > 0;
    if (rooms) frame.rooms = Object.fromEntries(S.positions);
    S.phase = 'authenticating';
    // Signing in loads the user's state: until that has worked, the connection is not a success.
    S.settled = false;
    S.replayed = 0;
    request(frame, { kind: 'authenticate', resume, rooms });
    setConn('connecting', `Signing in on ${nodeName()}…`);
  }

  /** Switch the page to `user`: their cursor, positions, outbox and last room from storage. */
  function loadUser(user) {
    S.user = user;
    const cursor = storage.get(keys.cursor(user), null);
    S.cursor = Number.isSafeInteger(cursor) && cursor >= 0 ? cursor : null;
    S.positions = storedPositions(user);
    const outbox = storage.get(keys.outbox(user), []);
    S.outbox = Array.isArray(outbox) ? outbox.filter(validOutboxItem) : [];
    S.failed = [];
    S.rooms = new Map();
    S.maxSeq = new Map();
    S.view = null;
    S.roomsRequested = false;
    S.learned = new Map();
    resetMedia();
    resetPresence();
    S.myPresence = validPresenceChoice(storage.get(keys.presence(user), null));
    renderMyPresence();
    $('me-name').textContent = user;
    renderPush('');
    renderRooms();
    renderView();
  }

  function onAuthenticated(frame, ctx) {
    S.head = frame.cursor;
    showChatView();
    // Asked now, answered during the replay; `maxSeq` keeps later messages from being undercounted.
    requestRooms();
    if (ctx && ctx.resume) {
      S.phase = 'replaying';
      setConn('replaying', `Catching up on ${nodeName()}…`);
    } else {
      setCursor(frame.cursor, false);
      goLive(`Connected to ${nodeName()}`);
    }
    // What the node keeps per connection: the chosen presence and the watch list; and what may
    // have changed while we were away: the open room's members and read positions.
    sendMyPresence();
    S.watchKey = null;
    scheduleWatch();
    if (S.view) requestRoomExtras(S.view);
  }

  /** Replay is over (or there was none): show it, refresh what may be stale, send the outbox. */
  function goLive(text) {
    S.phase = 'live';
    setConn('live', text);
    const view = S.view;
    if (view && !view.loaded && !view.loading) requestHistory(view, null);
    flushOutbox();
    markRead();
    renderPending();
    askShownMedia();
    maybeSettle();
    checkPush();
  }

  function onResync(frame) {
    // The node no longer has the log from our cursor: reload rooms and the open room.
    setCursor(frame.cursor, true);
    reloadAll();
    goLive(`Resynced on ${nodeName()}: your place was older than the node keeps; reloaded`);
  }

  /** Forget what may be stale (after `resync` or `cursor_ahead`) and ask again. */
  function reloadAll() {
    S.rooms = new Map();
    S.maxSeq = new Map();
    if (!S.roomsRequested) requestRooms();
    if (S.view) openRoom(S.view.room, { focus: false, keepPane: true });
  }

  function setCursor(cursor, force) {
    S.cursor = cursor;
    const key = keys.cursor(S.user);
    const stored = storage.get(key, null);
    // Another tab of the same user may be further along; never move the stored cursor back
    // unless the node said ours is invalid.
    if (force || !(Number.isSafeInteger(stored) && stored > cursor)) storage.set(key, cursor);
  }

  // ---- Positions in large rooms -------------------------------------------------------------
  function storedPositions(user) {
    const raw = storage.get(keys.positions(user), null);
    const positions = new Map();
    if (raw && typeof raw === 'object' && !Array.isArray(raw)) {
      for (const [room, seq] of Object.entries(raw)) if (Number.isSafeInteger(seq) && seq > 0) positions.set(room, seq);
    }
    return positions;
  }

  /** Apply one change to the stored positions by read-modify-write, as for the outbox. */
  function persistPositions(change) {
    if (!S.user) return;
    const stored = storedPositions(S.user);
    change(stored);
    if (stored.size) storage.set(keys.positions(S.user), Object.fromEntries(stored));
    else storage.remove(keys.positions(S.user));
  }

  /**
   * Raise the positions in `rooms` (room → seq) where they are higher than ours. Another tab of
   * the same user may be further along: the stored positions never move back.
   */
  function raisePositions(rooms) {
    if (!rooms.length) return;
    for (const [room, seq] of rooms) S.positions.set(room, seq);
    persistPositions((stored) => {
      for (const [room, seq] of rooms) if (!(stored.get(room) >= seq)) stored.set(room, seq);
    });
  }

  /** The node's positions (`live`, `reconnect`): the higher of its and ours. */
  function mergePositions(rooms) {
    if (!rooms || typeof rooms !== 'object' || Array.isArray(rooms)) return;
    raisePositions(
      Object.entries(rooms).filter(([room, seq]) => Number.isSafeInteger(seq) && seq > 0 && !(S.positions.get(room) >= seq)),
    );
  }

  /**
   * Forget positions: `rooms` (the user left them, or they are no longer large), or all of them
   * (`null`: the node said they are no good). The only way a stored position goes back.
   */
  function forgetPositions(rooms) {
    const gone = rooms === null ? Array.from(S.positions.keys()) : rooms;
    if (!gone.length && rooms !== null) return;
    for (const room of gone) S.positions.delete(room);
    persistPositions((stored) => {
      if (rooms === null) stored.clear();
      else for (const room of gone) stored.delete(room);
    });
  }

  function onError(frame, ctx) {
    const kind = ctx ? ctx.kind : null;
    if (kind === 'register' || kind === 'login') {
      pendingLogin = null;
      setAuthBusy(false);
      $('auth-error').textContent = describeError(frame);
      return;
    }
    if (kind === 'authenticate' || (frame.code === 'cursor_ahead' && S.phase === 'replaying')) {
      if (frame.code === 'cursor_ahead') {
        // The node's log ends before our cursor (a store was reset): start over from its end.
        // Our positions in large rooms may be past their ends too; the node follows them live.
        setCursor(S.head, true);
        forgetPositions(null);
        reloadAll();
        showAlert(frame.code, frame.message);
        goLive(`Connected to ${nodeName()} (your saved position was ahead of the node; reloaded)`);
        return;
      }
      if (TOKEN_DEAD.has(frame.code)) {
        signOut(describeError(frame));
        S.phase = 'open';
        setConn('open', `Connected to ${nodeName()}`);
        maybeSettle();
        return;
      }
      if (frame.code === 'invalid_field' && ctx && ctx.rooms) {
        // The node refused our large-room positions (more rooms than a user may be in): resume
        // without them; it replays those rooms from the read positions it keeps.
        forgetPositions(null);
        showAlert(frame.code, frame.message);
        drop(`sign-in failed: ${frame.code}`, false);
        return;
      }
      // The node could not check the token now (store trouble): try again later.
      showAlert(frame.code, frame.message);
      drop(`sign-in failed: ${frame.code}`, false);
      return;
    }
    if (kind === 'send') {
      onSendError(frame, ctx);
      return;
    }
    if (kind === 'media_url') {
      onMediaUrlError(frame, ctx);
      return;
    }
    if (kind === 'quote') {
      // A quote is an extra: the reply shows without it.
      onQuoteError(ctx);
      return;
    }
    if (kind === 'set_presence') {
      $('presence-error').textContent = describeError(frame);
      return;
    }
    if (kind === 'push_register' || kind === 'push_remove') {
      onPushError(frame, ctx);
      return;
    }
    if (kind === 'push_forget') {
      // Forgetting a device the node no longer has (or cannot reach now): nothing to show.
      if (frame.code !== 'no_such_device') showAlert(frame.code, `A notification device was not removed: ${frame.message}`);
      return;
    }
    if (kind === 'notify') {
      // Back to what the node keeps, and say why.
      $('notify-level').disabled = false;
      const room = S.rooms.get(ctx.room);
      $('notify-level').value = room && typeof room.notify === 'string' ? room.notify : 'all';
      showAlert(frame.code, `Notifications not changed: ${frame.message}`);
      return;
    }
    if (kind === 'moderate' || kind === 'set_room') {
      // Shown where the user acted; with that form closed meanwhile, as an alert.
      if (!showFormError(ctx, describeError(frame))) showAlert(frame.code, frame.message);
      return;
    }
    if (kind === 'delete_account') {
      onDeleteAccountError(frame);
      return;
    }
    if (kind === 'watch' || kind === 'members' || kind === 'receipts') {
      // Presence and receipts are extras: without them the chat still works. A watch the node
      // could not answer is asked again with the next change or connection.
      if (kind === 'watch') S.watchKey = null;
      return;
    }
    if (kind === 'history' && S.view && S.view.room === ctx.room) {
      S.view.loading = false;
      $('history-status').textContent = '';
    }
    if (kind === 'create' || kind === 'join' || kind === 'direct') {
      $('side-error').textContent = describeError(frame);
    }
    if (frame.code === 'token_revoked' && !ctx) {
      signOut(describeError(frame));
      return;
    }
    if (kind === 'ping') return;
    showAlert(frame.code, frame.message + (frame.retry_after_ms ? ` (retry in ${Math.ceil(frame.retry_after_ms / 1000)} s)` : ''));
  }

  // ---- Rooms --------------------------------------------------------------------------------
  function requestRooms() {
    S.roomsRequested = true;
    // The positions as asked: only those unchanged when the answer comes may be pruned by it.
    request({ type: 'list_rooms' }, { kind: 'rooms', positions: new Map(S.positions) });
  }

  let roomsRefreshTimer = null;
  /** A message for a room we do not know (someone opened a conversation with us): refresh. */
  function refreshRoomsSoon() {
    if (roomsRefreshTimer) return;
    roomsRefreshTimer = setTimeout(() => {
      roomsRefreshTimer = null;
      if (S.phase === 'live') requestRooms();
    }, 200);
  }

  /** A room as the node describes it, never moving our known positions backwards. */
  function merged(info) {
    const known = S.rooms.get(info.id);
    const room = Object.assign({}, info);
    room.last_seq = Math.max(info.last_seq, S.maxSeq.get(info.id) || 0, known ? known.last_seq : 0);
    room.read_seq = Math.max(info.read_seq, known ? known.read_seq : 0);
    // The node counted the unread mentions up to its `last_seq`; those seen live after it are
    // counted here (see mentionsOf).
    room.mentionBase = Number.isSafeInteger(info.mentions) ? info.mentions : 0;
    room.listedSeq = info.last_seq;
    room.mentionSeqs = new Set(known && known.mentionSeqs ? Array.from(known.mentionSeqs).filter((seq) => seq > info.last_seq) : []);
    // The settings as listed, as of `listedSeq`: what a settings entry after it changed (see
    // previousSettings). Then what entries after the list said.
    room.listedSettings = normalSettings(info);
    applyLearned(room);
    return room;
  }

  function mergeRoom(info) {
    const room = merged(info);
    S.rooms.set(info.id, room);
    return room;
  }

  function noteSeq(roomId, seq) {
    S.maxSeq.set(roomId, Math.max(S.maxSeq.get(roomId) || 0, seq));
    const room = S.rooms.get(roomId);
    if (room) room.last_seq = Math.max(room.last_seq, seq);
  }

  function onRooms(frame, ctx) {
    S.roomsRequested = false;
    const fresh = new Map();
    for (const info of frame.rooms) fresh.set(info.id, merged(info));
    S.rooms = fresh;
    // Positions of rooms we are no longer in, or that are no longer large, only take up room
    // (and `authenticate.rooms` may list no more rooms than a user can be in). A position that
    // moved since the list was asked for belongs to a room that changed since: it stays.
    if (ctx && ctx.positions) {
      const stale = [];
      for (const [room, seq] of S.positions) {
        const info = fresh.get(room);
        if ((!info || !info.large) && ctx.positions.get(room) === seq) stale.push(room);
      }
      forgetPositions(stale);
    }
    renderRooms();
    scheduleWatch();
    // A notification's room (or a `#room=` link) wins over the last one open; one that is not
    // the user's is dropped.
    const asked = openAskedRoom();
    push.askedRoom = null;
    if (!asked && !S.view) {
      const last = storage.get(keys.room(S.user), null);
      if (last && S.rooms.has(last)) openRoom(last, { focus: false, keepPane: true });
    } else {
      renderView();
    }
    markRead();
  }

  function onRoom(frame, ctx) {
    const room = mergeRoom(frame.room);
    renderRooms();
    scheduleWatch();
    if (ctx && (ctx.kind === 'create' || ctx.kind === 'join' || ctx.kind === 'direct')) {
      $('side-error').textContent = '';
      const form = { create: 'create-name', join: 'join-id', direct: 'direct-user' }[ctx.kind];
      $(form).value = '';
      openRoom(room.id, { focus: true });
    }
  }

  function onRead(frame) {
    const room = S.rooms.get(frame.room);
    if (!room) return;
    room.read_seq = Math.max(room.read_seq, frame.seq);
    renderRooms();
  }

  function roomLabel(room) {
    if (room.kind === 'direct') {
      const others = room.id.replace(/^dm:/, '').split(':').filter((name) => name !== S.user);
      if (others.length) return others.join(', ');
    }
    return room.name;
  }

  const unreadOf = (room) => Math.max(0, room.last_seq - room.read_seq);

  /**
   * Unread messages that mention the user: the node's count as of its room list, unless we have
   * read past that list since, plus those that arrived after it and are still unread.
   */
  function mentionsOf(room) {
    let count = room.read_seq >= room.listedSeq ? 0 : room.mentionBase || 0;
    for (const seq of room.mentionSeqs || []) if (seq > room.listedSeq && seq > room.read_seq) count++;
    return count;
  }

  /** A message mentioning the user arrived (live or replayed). */
  function noteMention(entry) {
    const room = S.rooms.get(entry.room);
    if (!room || entry.from === S.user || !Array.isArray(entry.mentions) || !entry.mentions.includes(S.user)) return;
    if (entry.deleted) return;
    for (const seq of room.mentionSeqs) if (seq <= room.read_seq) room.mentionSeqs.delete(seq);
    room.mentionSeqs.add(entry.seq);
  }

  /** A message was deleted: if it was an unread mention, it no longer counts. */
  function forgetMention(entry) {
    const room = S.rooms.get(entry.room);
    if (!room || !Number.isSafeInteger(entry.target)) return;
    room.mentionSeqs.delete(entry.target);
    // The node's count may include it; only the node knows, so ask again.
    if (entry.target > room.read_seq && entry.target <= room.listedSeq && room.mentionBase > 0) refreshRoomsSoon();
  }

  let roomsFrame = 0;
  function renderRooms() {
    if (roomsFrame) return;
    roomsFrame = requestAnimationFrame(() => {
      roomsFrame = 0;
      renderRoomsNow();
    });
  }

  function renderRoomsNow() {
    const list = $('room-list');
    const rooms = Array.from(S.rooms.values()).sort(
      (a, b) => roomLabel(a).localeCompare(roomLabel(b)) || a.id.localeCompare(b.id),
    );
    const items = rooms.map((room) => {
      const unread = unreadOf(room);
      const li = el('li', 'room-item');
      li.dataset.room = room.id;
      li.dataset.unread = String(unread);
      if (room.large) li.dataset.large = 'true';
      const button = el('button', 'room-button');
      button.type = 'button';
      if (S.view && S.view.room === room.id) button.setAttribute('aria-current', 'page');
      const icon = el('span', 'room-kind', room.kind === 'direct' ? '@' : '#');
      icon.setAttribute('aria-hidden', 'true');
      const name = el('span', 'room-name', roomLabel(room));
      button.append(icon);
      const peers = room.kind === 'direct' ? directPeers(room.id) : [];
      if (peers.length === 1) button.append(presenceBadge(peers[0]));
      button.append(name);
      if (room.kind === 'direct') button.append(el('span', 'sr-only', ' (direct)'));
      const mentions = mentionsOf(room);
      li.dataset.mentions = String(mentions);
      if (mentions > 0) {
        const badge = el('span', 'badge mention-badge');
        badge.title = `${mentions} unread ${mentions === 1 ? 'message mentions' : 'messages mention'} you`;
        badge.append(el('span', '', '@' + (mentions > 999 ? '999+' : mentions)), el('span', 'sr-only', ' mentions'));
        button.append(badge);
      }
      if (unread > 0) {
        const badge = el('span', 'badge');
        badge.append(el('span', '', String(unread > 999 ? '999+' : unread)), el('span', 'sr-only', ' unread'));
        button.append(badge);
      }
      button.addEventListener('click', () => openRoom(room.id, { focus: true }));
      li.append(button);
      return li;
    });
    list.replaceChildren(...items);
    $('rooms-empty').hidden = rooms.length > 0;
    const total = rooms.reduce((sum, room) => sum + unreadOf(room), 0);
    document.title = total > 0 ? `(${total}) palaver` : 'palaver';
  }

  // ---- The open room ------------------------------------------------------------------------
  function isChatVisible() {
    return !NARROW.matches || S.pane === 'chat';
  }

  function setPane(pane) {
    S.pane = pane;
    document.body.dataset.pane = pane;
    renderRooms();
  }

  function openRoom(id, options) {
    const opts = options || {};
    if (S.typingSent && S.typingSent.room !== id) stopTyping();
    closeRoomPanels();
    S.view = {
      room: id,
      entries: new Map(),
      loaded: false,
      more: false,
      loading: false,
      /** The first page of members (group rooms), with `total`, `online` and `more`. */
      members: null,
      membersTotal: 0,
      membersOnline: 0,
      membersMore: false,
      /** Receipt standings of the other members, sorted; null when stale. */
      ranks: null,
      /** Text messages on screen: seq → model (see messageModel). */
      messages: new Map(),
      /** Changes that arrived for messages not on screen yet (a history page may bring them). */
      unplaced: [],
      /** The lowest seq received for this room, change entries included: the next older page
       *  starts below it (a page may hold nothing to show). */
      oldest: null,
      /** The room's creator (who may delete any message), once its first entry is on screen. */
      creator: null,
      /** Messages replied to that are not on screen: seq → { from, body, deleted } | 'loading' | 'missing'. */
      quotes: new Map(),
      /** The message being edited inline: { seq } */
      editing: null,
      /** The message whose delete is being confirmed. */
      confirmingDelete: null,
      /** The message whose reaction picker is open. */
      pickerSeq: null,
      /** The message the next message answers. */
      replyTo: null,
      /** Older pages are being loaded to show this message: { seq, pages } */
      seek: null,
      /** Members' roles as the entries on screen tell: user → { role, seq } (see noteRole). */
      roles: new Map(),
      /** Bans and unbans on screen: user → { seq, banned, until } (for unbanning). */
      bans: new Map(),
      /** Settings entries on screen: seq → { settings, from, li, diff } (see repaintSettingsLines). */
      settingsAt: new Map(),
      /** Why the user is no longer a member (kicked, banned, left), shown instead of the composer. */
      removed: null,
      /** The room's name when it left the room list. */
      label: null,
      /** The member whose moderation panel is open. */
      moderating: null,
    };
    storage.set(keys.room(S.user), id);
    $('messages').replaceChildren();
    stopWatchingAttachments();
    $('jump').hidden = true;
    renderView();
    renderTyping();
    scheduleWatch();
    if (isAuthed()) {
      requestHistory(S.view, null);
      requestRoomExtras(S.view);
    }
    if (!opts.keepPane || !NARROW.matches) setPane('chat');
    if (opts.focus) {
      if (NARROW.matches) $('room-title').focus();
      else $('message-input').focus();
    }
    markRead();
  }

  function renderView() {
    const view = S.view;
    const room = view && S.rooms.get(view.room);
    $('room-title').textContent = view ? (room ? roomLabel(room) : view.label || view.room) : 'Pick a room';
    $('room-meta').hidden = !view;
    $('room-id').textContent = view ? view.room : '';
    $('load-older').hidden = !(view && view.loaded && view.more);
    if (!view) $('messages').replaceChildren();
    renderRoomHead();
    renderReplyBar();
    renderMembers();
    renderPending();
    renderComposerState();
    renderRooms();
  }

  function requestHistory(view, before) {
    if (view.loading) return;
    const frame = { type: 'history', room: view.room, limit: HISTORY_PAGE_LEN };
    if (before !== null) frame.before = before;
    // Every entry up to knownSeq was committed before this request: the page's state includes it.
    const knownSeq = Math.max(S.maxSeq.get(view.room) || 0, S.rooms.has(view.room) ? S.rooms.get(view.room).last_seq : 0);
    if (request(frame, { kind: 'history', room: view.room, older: before !== null, knownSeq })) {
      view.loading = true;
      $('history-status').textContent = before !== null ? 'Loading older messages…' : 'Loading…';
    }
  }

  function loadOlder() {
    const view = S.view;
    if (!view || !view.loaded || !view.more || view.loading || view.oldest === null) return;
    if (view.removed) return; // no longer a member: the node would refuse
    requestHistory(view, view.oldest);
  }

  function onHistory(frame, ctx) {
    const view = S.view;
    if (!view || view.room !== frame.room) return;
    view.loading = false;
    $('history-status').textContent = '';
    const scroller = $('scroller');
    const older = !!(ctx && ctx.older);
    const wasAtBottom = nearBottom();
    const heightBefore = scroller.scrollHeight;
    const topBefore = scroller.scrollTop;
    const list = $('messages');
    list.setAttribute('aria-busy', 'true');
    // The page shows its messages as they are now, so its state includes every change up to its
    // newest entry and up to what we had seen when asking (`asOf`): such a change, replayed or
    // live, is not applied again. What a page cannot tell is whether a change committed while it
    // was being read is in it (the node reads reactions apart from the entries): a reaction given
    // in that instant may count twice until the room is loaded again.
    const entries = Array.isArray(frame.entries) ? frame.entries : [];
    const pageMax = entries.reduce((max, entry) => Math.max(max, entry.seq), 0);
    const asOf = Math.max(pageMax, ctx && ctx.knownSeq ? ctx.knownSeq : 0);
    let standing = false;
    for (const entry of entries) {
      noteOldest(view, entry.seq);
      learnFrom(entry);
      if (entry.kind === 'text' && view.messages.has(entry.seq)) refreshMessage(view, entry, asOf);
      else insertEntry(view, entry, asOf);
      if (entry.kind !== 'text' && !CHANGE_KINDS.has(entry.kind)) standing = true;
    }
    // Older entries may tell members' roles, bans, and what a settings line changed.
    if (standing) renderStanding(view);
    repaintSettingsLines(view);
    list.removeAttribute('aria-busy');
    if (older || !view.loaded) view.more = frame.more;
    const first = !view.loaded;
    view.loaded = true;
    if (older) {
      // Keep what the reader was looking at in place while older entries appear above it.
      scroller.scrollTop = topBefore + (scroller.scrollHeight - heightBefore);
      if (!view.more) $('history-status').textContent = 'Start of the conversation';
    } else if (first || wasAtBottom) {
      scrollToBottom();
    }
    $('load-older').hidden = !view.more;
    // A short first page does not fill the pane, so no scroll event would ever ask for more.
    if (view.more && scroller.scrollHeight <= scroller.clientHeight + 8) loadOlder();
    if (view.seek) continueSeek(view);
    markRead();
  }

  function nearBottom() {
    const s = $('scroller');
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  function scrollToBottom() {
    const s = $('scroller');
    s.scrollTop = s.scrollHeight;
    $('jump').hidden = true;
  }

  function formatTime(ts) {
    const date = new Date(ts);
    const now = new Date();
    const sameDay = date.toDateString() === now.toDateString();
    const time = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    return sameDay ? time : `${date.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}`;
  }

  /** A join, a leave or an audit entry as a system line. Text goes in through textContent only. */
  function noticeElement(entry, text) {
    const li = el('li', 'msg notice');
    li.dataset.seq = String(entry.seq);
    li.dataset.id = entry.id;
    li.dataset.kind = entry.kind;
    li.append(el('span', 'notice-text', text), timeElement(entry.ts));
    return li;
  }

  function membershipText(entry) {
    if (entry.kind === 'join') {
      return !entry.user || entry.user === entry.from ? `${entry.from} joined` : `${entry.from} added ${entry.user}`;
    }
    return `${entry.user || entry.from} left`;
  }

  function timeElement(ts) {
    const time = el('time', 'ts', formatTime(ts));
    time.dateTime = new Date(ts).toISOString();
    return time;
  }

  /**
   * Put an entry in the open room's list in seq order; false when it is already there or is not
   * shown (changes to messages, kinds this client does not know). `asOf`: the seq up to which a
   * text entry's state is known to include changes (its own seq when it arrived as an entry).
   */
  function insertEntry(view, entry, asOf) {
    if (view.entries.has(entry.seq)) return false;
    let li;
    let model = null;
    if (entry.kind === 'text') {
      model = messageModel(entry, asOf === undefined ? entry.seq : asOf);
      li = messageElement(view, model);
      view.messages.set(entry.seq, model);
    } else if (entry.kind === 'join' || entry.kind === 'leave') {
      li = noticeElement(entry, membershipText(entry));
      // A room's first entry is its creator joining it.
      if (entry.kind === 'join' && entry.seq === 1 && !isDirect(view.room)) view.creator = entry.from;
      noteStanding(view, entry);
    } else if (AUDIT_KINDS.has(entry.kind)) {
      noteStanding(view, entry);
      li = noticeElement(entry, entry.kind === 'settings' ? '' : auditText(entry));
      li.classList.add('audit');
      if (entry.kind === 'settings') {
        // What a settings line says depends on the settings before it: see repaintSettingsLines.
        view.settingsAt.set(entry.seq, { settings: normalSettings(entry.settings || {}), from: entry.from, li, diff: false });
        repaintSettingsLines(view);
      }
    } else {
      return false;
    }
    view.entries.set(entry.seq, li);
    const list = $('messages');
    const last = list.lastElementChild;
    const first = list.firstElementChild;
    if (!last || Number(last.dataset.seq) < entry.seq) {
      list.append(li);
    } else if (Number(first.dataset.seq) > entry.seq) {
      list.prepend(li);
    } else {
      let next = last;
      while (next.previousElementSibling && Number(next.previousElementSibling.dataset.seq) > entry.seq) {
        next = next.previousElementSibling;
      }
      list.insertBefore(li, next);
    }
    if (model) {
      // Our own message is committed: its pending copy goes.
      if (entry.from === S.user) {
        removePendingElement(entry.id);
        paintReceipt(li, receiptRanks(view), isDirect(view.room));
      }
      applyUnplaced(view, model);
      paintMessage(view, model);
      repaintQuotesOf(view, model.seq);
    } else if (view.creator === S.user && entry.seq === 1) {
      // Now known to be the creator: delete is offered on every message.
      for (const m of view.messages.values()) paintActions(view, m);
    }
    return true;
  }

  // ---- Messages from the user's log (and from large rooms' logs) ----------------------------
  function onMessage(frame) {
    if (typeof frame.room !== 'string' || !Number.isSafeInteger(frame.seq)) return;
    const own = frame.user === S.user;
    // The user is no longer a member: they left (on another device), were kicked or banned.
    const gone = own && ENDS_MEMBERSHIP.has(frame.kind);
    if (Number.isSafeInteger(frame.cursor)) {
      if (S.cursor !== null && frame.cursor <= S.cursor) return; // already processed
      setCursor(frame.cursor, false);
    } else {
      // An entry of a large room: no cursor, our place in that room is its seq.
      if (S.positions.get(frame.room) >= frame.seq) return; // already processed
      // Once we are out of the room the node stops following it; so do we.
      if (gone) forgetPositions([frame.room]);
      else raisePositions([[frame.room, frame.seq]]);
    }
    if (S.phase === 'replaying') {
      S.replayed++;
      $('conn').dataset.replayed = String(S.replayed);
    }
    if ((frame.kind === 'text' || CHANGE_KINDS.has(frame.kind)) && frame.from === S.user) outboxRemove(frame.id);
    noteSeq(frame.room, frame.seq);
    if (frame.kind === 'text') {
      dropTyper(frame.room, frame.from);
      noteMention(frame);
    }
    if (frame.kind === 'delete') forgetMention(frame);
    learnFrom(frame);
    if (gone) {
      S.receipts.delete(frame.room);
      S.typingForbidden.delete(frame.room);
      leftRoom(frame);
      scheduleWatch();
    } else if (!S.rooms.has(frame.room)) {
      refreshRoomsSoon();
    }
    const view = S.view;
    if (view && view.room === frame.room) {
      const atBottom = nearBottom();
      noteOldest(view, frame.seq);
      if (CHANGE_KINDS.has(frame.kind)) {
        applyChange(view, frame);
        if (atBottom) scrollToBottom();
      } else if (insertEntry(view, frame)) {
        if (atBottom || frame.from === S.user) scrollToBottom();
        else $('jump').hidden = false;
      }
      // Invited back after being removed: the room is the user's again.
      if (own && frame.kind === 'join') view.removed = null;
      if (frame.kind === 'join' || ENDS_MEMBERSHIP.has(frame.kind)) refreshMembersSoon(view);
      if (frame.kind === 'join' || frame.kind === 'leave' || AUDIT_KINDS.has(frame.kind)) renderStanding(view);
      if (frame.kind === 'settings') renderView(); // the title may have changed too
      markRead();
    }
    renderRooms();
  }

  /**
   * The user is out of a room (`entry` is their leave, kick or ban): it leaves the room list. A
   * kick or a ban says who did it and why, as the user did not choose it; an open conversation
   * stays on screen with the reason in place of the composer.
   */
  function leftRoom(entry) {
    const room = S.rooms.get(entry.room);
    const label = room ? roomLabel(room) : entry.room;
    S.rooms.delete(entry.room);
    S.learned.delete(entry.room);
    const reason = entry.kind !== 'leave' && entry.body ? `: ${entry.body}` : '';
    if (entry.kind === 'kick') showAlert('kicked', `from “${label}” by ${entry.from}${reason}`);
    if (entry.kind === 'ban') showAlert('banned', `from “${label}” by ${entry.from} ${untilText(entry.until)}${reason}`);
    const view = S.view;
    if (!view || view.room !== entry.room) return;
    closeRoomPanels();
    view.label = label;
    if (entry.kind === 'kick') view.removed = sentence(`${entry.from} removed you from this room${reason}`);
    else if (entry.kind === 'ban') view.removed = sentence(`${entry.from} banned you from this room ${untilText(entry.until)}${reason}`);
    else view.removed = 'You left this room.';
  }

  function markRead() {
    const view = S.view;
    if (!view || S.phase !== 'live' || document.visibilityState !== 'visible' || !isChatVisible()) return;
    const room = S.rooms.get(view.room);
    if (!room || room.last_seq <= room.read_seq) return;
    const seq = room.last_seq;
    if (request({ type: 'mark_read', room: room.id, seq }, { kind: 'mark_read' })) {
      room.read_seq = seq;
      renderRooms();
    }
  }

  // ---- Messages that change: edits, deletes, reactions, replies, mentions ---------------------
  // A text message on screen is a model (its current state) and a list item painted from it.
  // Changes arrive as entries naming the message by `target`; `asOf` is the highest seq whose
  // change the model's state is known to include, so no change is applied twice (a history page
  // already shows the state after the changes it was read after, and a replay may repeat them).

  function messageModel(entry, asOf) {
    const reactions = new Map();
    for (const r of Array.isArray(entry.reactions) ? entry.reactions : []) {
      if (r && typeof r.reaction === 'string' && Number.isSafeInteger(r.count) && r.count > 0) {
        reactions.set(r.reaction, { count: r.count, me: !!r.me });
      }
    }
    return {
      seq: entry.seq,
      id: entry.id,
      from: entry.from,
      ts: entry.ts,
      body: entry.deleted ? '' : String(entry.body ?? ''),
      edited_at: Number.isSafeInteger(entry.edited_at) ? entry.edited_at : null,
      deleted: !!entry.deleted,
      reply_to: Number.isSafeInteger(entry.reply_to) ? entry.reply_to : null,
      mentions: Array.isArray(entry.mentions) ? entry.mentions.filter((name) => typeof name === 'string') : [],
      /** Files it carries (none once deleted): see validAttachment. */
      attachments: entry.deleted ? [] : attachmentsOf(entry),
      /** reaction → { count, me } */
      reactions,
      asOf,
      li: null,
      /** The parts of `li` that change: see messageElement. */
      parts: null,
      /** A queued edit, delete or reaction is shown on it (see paintChangeStatus). */
      pendingShown: false,
    };
  }

  /** The list item of a text message: fixed parts, filled by paintMessage. */
  function messageElement(view, model) {
    const li = el('li', 'msg');
    li.dataset.seq = String(model.seq);
    li.dataset.id = model.id;
    li.dataset.from = model.from;
    const edited = el('span', 'edited', '(edited)');
    const status = el('span', 'change-status');
    const meta = el('div', 'meta');
    meta.append(el('span', 'from', model.from), document.createTextNode(' '), timeElement(model.ts), edited, status);
    if (model.from === S.user) {
      li.classList.add('mine');
      const receipt = el('span', 'receipt');
      receipt.append(el('span', 'receipt-mark'), el('span', 'receipt-text'));
      receipt.firstChild.setAttribute('aria-hidden', 'true');
      meta.append(receipt);
    }
    const quote = el('button', 'reply-quote');
    quote.type = 'button';
    quote.title = 'Show the message this answers';
    quote.addEventListener('click', () => showMessage(view, model.reply_to));
    const content = el('div', 'content');
    const files = el('div', 'attachments');
    files.hidden = true;
    const reactions = el('ul', 'reactions');
    reactions.setAttribute('aria-label', 'Reactions');
    const actions = el('div', 'actions');
    actions.setAttribute('role', 'group');
    actions.setAttribute('aria-label', 'Message actions');
    const picker = el('div', 'reaction-picker');
    picker.setAttribute('role', 'group');
    picker.setAttribute('aria-label', 'Pick a reaction');
    picker.hidden = true;
    picker.addEventListener('keydown', (event) => {
      if (event.key === 'Escape') closeReactionPicker(view, true);
    });
    li.append(meta, quote, content, files, reactions, actions, picker);
    model.li = li;
    model.parts = { edited, status, quote, content, files, reactions, actions, picker };
    return li;
  }

  function paintMessage(view, model) {
    const li = model.li;
    li.classList.toggle('deleted', model.deleted);
    li.classList.toggle('mentions-me', !model.deleted && model.from !== S.user && model.mentions.includes(S.user));
    if (model.deleted) {
      // Nothing more can be done to a deleted message.
      if (view.editing && view.editing.seq === model.seq) view.editing = null;
      if (view.confirmingDelete === model.seq) view.confirmingDelete = null;
      if (view.pickerSeq === model.seq) closeReactionPicker(view, false);
      if (view.replyTo === model.seq) renderReplyBar();
    }
    const edited = model.parts.edited;
    edited.hidden = !(model.edited_at && !model.deleted);
    edited.title = model.edited_at ? `edited ${formatTime(model.edited_at)}` : '';
    paintQuote(view, model);
    paintContent(view, model);
    paintAttachments(model);
    paintReactions(view, model);
    paintActions(view, model);
    paintChangeStatus(view, model);
  }

  /** The text (an edit not yet saved shows already), the tombstone, or the inline editor. */
  function paintContent(view, model) {
    if (view.editing && view.editing.seq === model.seq) return; // the editor stays as the user left it
    const content = model.parts.content;
    if (model.deleted) {
      content.replaceChildren(el('p', 'tombstone', 'message deleted'));
      return;
    }
    const unsaved = lastPendingEdit(view.room, model.seq);
    const text = unsaved ? unsaved.body : model.body;
    if (text === '' && model.attachments.length) {
      // Files alone: no empty text line above them.
      content.replaceChildren();
      return;
    }
    const body = bodyElement(text, model.mentions);
    if (unsaved) body.classList.add('unsaved');
    content.replaceChildren(body);
  }

  /** A message's text with the members it mentions highlighted (text nodes only). */
  function bodyElement(text, mentions) {
    const p = el('p', 'body');
    let last = 0;
    for (const found of findMentions(text, new Set(mentions))) {
      if (found.index > last) p.append(document.createTextNode(text.slice(last, found.index)));
      const mention = el('span', found.name === S.user ? 'mention mention-me' : 'mention', text.substr(found.index, found.length));
      p.append(mention);
      last = found.index + found.length;
    }
    if (last < text.length) p.append(document.createTextNode(text.slice(last)));
    return p;
  }

  /** `@name` tokens in `text` that name one of `names`: [{ index, length, name }] in order. */
  function findMentions(text, names) {
    const found = [];
    if (!names.size) return found;
    for (const match of text.matchAll(MENTION_TOKEN)) {
      let name = match[1].toLowerCase();
      // A sentence may go on right after a name: "thanks @bob." names bob (names may hold dots).
      while (name && !names.has(name) && /[.-]$/.test(name)) name = name.slice(0, -1);
      if (names.has(name)) found.push({ index: match.index, length: name.length + 1, name });
    }
    return found;
  }

  /** The members a message being written names with `@name` (the node refuses non-members). */
  function mentionsIn(view, body) {
    const members = isDirect(view.room) ? directPeers(view.room) : view.members || [];
    // Mentioning oneself counts for nothing.
    const names = new Set(members.filter((name) => name !== S.user));
    const unique = Array.from(new Set(findMentions(body, names).map((found) => found.name)));
    return unique.slice(0, MENTIONS_MAX);
  }

  function paintReactions(view, model) {
    const list = model.parts.reactions;
    const shown = model.deleted ? [] : Array.from(model.reactions).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    list.replaceChildren(
      ...shown.map(([reaction, { count, me }]) => {
        const item = el('li');
        const button = el('button', 'reaction');
        button.type = 'button';
        button.dataset.reaction = reaction;
        button.setAttribute('aria-pressed', me ? 'true' : 'false');
        button.title = me ? `You reacted ${reaction}; click to take it back` : `React ${reaction}`;
        button.append(el('span', 'reaction-emoji', reaction), el('span', 'reaction-count', String(count)));
        button.addEventListener('click', () => toggleReaction(view, model.seq, reaction));
        item.append(button);
        return item;
      }),
    );
    list.hidden = shown.length === 0;
  }

  function actionButton(label, onClick, className) {
    const button = el('button', 'action' + (className ? ' ' + className : ''), label);
    button.type = 'button';
    button.addEventListener('click', onClick);
    return button;
  }

  /** Reply and React on any message; Edit on one's own; Delete where the node would allow it. */
  function paintActions(view, model) {
    const bar = model.parts.actions;
    bar.hidden = model.deleted;
    if (model.deleted) {
      bar.replaceChildren();
      return;
    }
    if (view.confirmingDelete === model.seq) {
      bar.replaceChildren(
        el('span', 'confirm-text', 'Delete this message for everyone?'),
        actionButton('Yes, delete', () => deleteMessage(view, model.seq), 'danger'),
        actionButton('Keep it', () => {
          view.confirmingDelete = null;
          paintActions(view, model);
        }),
      );
      return;
    }
    // What the node would refuse is not offered: a muted member (or one no longer in the room)
    // neither reacts nor edits, and a reply is a message like any other (see postingBlocked).
    const muted = !!view.removed || mutedUntil(view.room) > Date.now();
    const buttons = [];
    if (!postingBlocked(view)) buttons.push(actionButton('Reply', () => startReply(view, model.seq)));
    if (!muted) {
      const react = actionButton('React', () => toggleReactionPicker(view, model.seq));
      react.setAttribute('aria-expanded', view.pickerSeq === model.seq ? 'true' : 'false');
      buttons.push(react);
    }
    if (model.from === S.user && !muted) buttons.push(actionButton('Edit', () => startEdit(view, model.seq)));
    if (mayDelete(view, model)) {
      buttons.push(
        actionButton('Delete', () => {
          view.confirmingDelete = model.seq;
          paintActions(view, model);
          model.parts.actions.querySelector('.danger').focus();
        }),
      );
    }
    bar.replaceChildren(...buttons);
  }

  /**
   * The author may delete, and in a group room its owner and admins: the room list says the
   * user's `role`; before it arrives, the creator is known once the room's first entry (the
   * creator's join) is on screen. The node decides in any case and its refusal is shown.
   */
  function mayDelete(view, model) {
    if (view.removed) return false;
    if (model.from === S.user) return true;
    if (isDirect(view.room)) return false;
    return rankOf(myRole(view)) >= RANKS.admin;
  }

  /** Edits, deletes and reactions of the user still in the outbox, shown on their message. */
  function paintChangeStatus(view, model) {
    const queued = S.outbox.filter((item) => item.op && item.room === view.room && item.seq === model.seq);
    const status = model.parts.status;
    const text = queued.map((item) => `${OP_PENDING[item.op]} ${outboxStatus(item)}`).join(', ');
    if (status.textContent !== text) status.textContent = text;
    status.hidden = !text;
    model.pendingShown = queued.length > 0;
  }

  const OP_PENDING = { edit: 'edit', delete: 'delete', react: 'reaction' };

  /** An edit, delete or reaction entered or left the outbox: repaint its message. */
  function repaintChangeTarget(item) {
    const view = S.view;
    const model = view && view.room === item.room ? view.messages.get(item.seq) : null;
    if (model) paintMessage(view, model);
  }

  function lastPendingEdit(room, seq) {
    let last = null;
    for (const item of S.outbox) if (item.op === 'edit' && item.room === room && item.seq === seq) last = item;
    return last;
  }

  // -- Reactions --
  function toggleReactionPicker(view, seq) {
    if (view.pickerSeq === seq) {
      closeReactionPicker(view, true);
      return;
    }
    closeReactionPicker(view, false);
    const model = view.messages.get(seq);
    if (!model || model.deleted) return;
    const picker = model.parts.picker;
    picker.replaceChildren(
      ...REACTIONS.map((reaction) => {
        const button = el('button', 'pick', reaction);
        button.type = 'button';
        button.setAttribute('aria-label', `React with ${reaction}`);
        const given = model.reactions.get(reaction);
        button.setAttribute('aria-pressed', given && given.me ? 'true' : 'false');
        button.addEventListener('click', () => {
          closeReactionPicker(view, false);
          toggleReaction(view, seq, reaction);
        });
        return button;
      }),
    );
    picker.hidden = false;
    view.pickerSeq = seq;
    paintActions(view, model);
    picker.firstElementChild.focus();
  }

  function closeReactionPicker(view, refocus) {
    const seq = view.pickerSeq;
    view.pickerSeq = null;
    const model = seq === null || seq === undefined ? null : view.messages.get(seq);
    if (!model) return;
    model.parts.picker.hidden = true;
    paintActions(view, model);
    if (refocus) {
      const react = Array.from(model.parts.actions.querySelectorAll('button')).find((b) => b.textContent === 'React');
      if (react) react.focus();
    }
  }

  /** Give `reaction`, or take it back when the user has given it (as far as the page knows). */
  function toggleReaction(view, seq, reaction) {
    const model = view.messages.get(seq);
    if (S.view !== view || !model || model.deleted) return;
    // A click not yet sent counts: clicking twice quickly gives and takes back.
    let given = !!(model.reactions.get(reaction) && model.reactions.get(reaction).me);
    for (const item of S.outbox) {
      if (item.op === 'react' && item.room === view.room && item.seq === seq && item.reaction === reaction) given = !item.remove;
    }
    outboxAdd({ op: 'react', id: newMessageId(), room: view.room, seq, reaction, remove: given, ts: Date.now() });
    flushOutbox();
  }

  // -- Editing --
  function startEdit(view, seq) {
    const model = view.messages.get(seq);
    if (S.view !== view || !model || model.deleted || model.from !== S.user) return;
    if (view.editing) cancelEdit(view, false);
    view.editing = { seq };
    const input = el('textarea', 'edit-input');
    input.value = (lastPendingEdit(view.room, seq) || model).body;
    input.rows = Math.min(8, Math.max(2, input.value.split('\n').length));
    input.setAttribute('aria-label', 'Edit message');
    const hint = el('p', 'hint edit-hint', 'Enter saves · Shift+Enter new line · Escape cancels');
    const error = el('p', 'form-error edit-error');
    error.setAttribute('role', 'alert');
    input.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        saveEdit(view, seq, input, error);
      } else if (event.key === 'Escape') {
        event.preventDefault();
        cancelEdit(view);
      }
    });
    model.parts.content.replaceChildren(input, hint, error);
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  function saveEdit(view, seq, input, error) {
    const model = view.messages.get(seq);
    if (!model || model.deleted) {
      cancelEdit(view);
      return;
    }
    const body = input.value;
    if (body === (lastPendingEdit(view.room, seq) || model).body) {
      cancelEdit(view);
      return;
    }
    const refused = refusal(body);
    if (refused) {
      error.textContent = refused;
      input.setAttribute('aria-invalid', 'true');
      return;
    }
    view.editing = null;
    // Stored first, like a message: the new text survives a reload and is sent once.
    outboxAdd({ op: 'edit', id: newMessageId(), room: view.room, seq, body, ts: Date.now() });
    flushOutbox();
  }

  function cancelEdit(view, refocus = true) {
    const editing = view.editing;
    view.editing = null;
    const model = editing && view.messages.get(editing.seq);
    if (!model) return;
    paintMessage(view, model);
    const edit = Array.from(model.parts.actions.querySelectorAll('button')).find((b) => b.textContent === 'Edit');
    if (refocus && edit) edit.focus();
  }

  // -- Deleting --
  function deleteMessage(view, seq) {
    view.confirmingDelete = null;
    const model = view.messages.get(seq);
    if (S.view !== view || !model || model.deleted) return;
    outboxAdd({ op: 'delete', id: newMessageId(), room: view.room, seq, ts: Date.now() });
    flushOutbox();
  }

  // -- Replies --
  function startReply(view, seq) {
    if (S.view !== view) return;
    view.replyTo = seq;
    renderReplyBar();
    $('message-input').focus();
  }

  function cancelReply() {
    if (S.view) S.view.replyTo = null;
    renderReplyBar();
  }

  /** Above the composer: the message the next one answers. */
  function renderReplyBar() {
    const view = S.view;
    const bar = $('reply-bar');
    if (!view || view.replyTo === null) {
      bar.hidden = true;
      $('reply-bar-quote').replaceChildren();
      return;
    }
    $('reply-bar-quote').replaceChildren(...quoteParts(quoteOf(view, view.replyTo)));
    bar.hidden = false;
  }

  /** What a reply quotes: the message on screen, or fetched with `thread` (null while loading). */
  function quoteOf(view, seq) {
    const model = view.messages.get(seq);
    if (model) return { from: model.from, body: model.body, deleted: model.deleted, files: model.attachments };
    const cached = view.quotes.get(seq);
    if (cached === undefined) requestQuote(view, seq);
    return cached === 'loading' || cached === undefined ? null : cached;
  }

  function quoteParts(quote) {
    let text;
    if (quote === null) text = '…';
    else if (quote === 'missing') text = 'a message that is not there';
    else if (quote.deleted) text = 'message deleted';
    else text = excerpt(quote.body) || filesText(quote.files);
    return [el('span', 'quote-from', quote && quote.from ? quote.from : ''), el('span', 'quote-text', text)];
  }

  /** The first words of a text, cut at a word boundary. */
  function excerpt(text) {
    const flat = text.replace(/\s+/g, ' ').trim();
    if (flat.length <= QUOTE_CHARS_MAX) return flat;
    const cut = flat.slice(0, QUOTE_CHARS_MAX);
    const space = cut.lastIndexOf(' ');
    return (space > QUOTE_CHARS_MAX / 2 ? cut.slice(0, space) : cut) + '…';
  }

  function paintQuote(view, model) {
    const button = model.parts.quote;
    if (model.reply_to === null || model.deleted) {
      button.hidden = true;
      return;
    }
    button.dataset.replyTo = String(model.reply_to);
    button.replaceChildren(el('span', 'quote-mark', '↩ '), ...quoteParts(quoteOf(view, model.reply_to)));
    button.hidden = false;
  }

  /** The message `seq` changed or came on screen: repaint the replies that quote it. */
  function repaintQuotesOf(view, seq) {
    for (const model of view.messages.values()) if (model.reply_to === seq) paintQuote(view, model);
    if (view.replyTo === seq) renderReplyBar();
  }

  function requestQuote(view, seq) {
    if (!isAuthed()) return;
    if (request({ type: 'thread', room: view.room, root: seq, limit: 1 }, { kind: 'quote', room: view.room, seq })) {
      view.quotes.set(seq, 'loading');
    }
  }

  function onThread(frame, ctx) {
    const view = S.view;
    if (!ctx || ctx.kind !== 'quote' || !view || view.room !== ctx.room) return;
    const root = frame.root;
    const quote =
      root && root.seq === ctx.seq
        ? { from: root.from, body: root.deleted ? '' : String(root.body ?? ''), deleted: !!root.deleted, files: root.deleted ? [] : attachmentsOf(root) }
        : 'missing';
    view.quotes.set(ctx.seq, quote);
    repaintQuotesOf(view, ctx.seq);
  }

  function onQuoteError(ctx) {
    const view = S.view;
    if (!view || view.room !== ctx.room) return;
    view.quotes.set(ctx.seq, 'missing');
    repaintQuotesOf(view, ctx.seq);
  }

  /** The connection is gone: quotes it was fetching are asked again on the next one. */
  function forgetQuoteRequests(view) {
    for (const [seq, quote] of Array.from(view.quotes)) if (quote === 'loading') view.quotes.delete(seq);
  }

  function requestMissingQuotes(view) {
    for (const model of view.messages.values()) if (model.reply_to !== null && !model.deleted) paintQuote(view, model);
    renderReplyBar();
  }

  /** Scroll to a message and flash it; a message above the loaded pages is looked for in them. */
  function showMessage(view, seq) {
    if (S.view !== view || seq === null) return;
    const li = view.entries.get(seq);
    if (li) {
      view.seek = null;
      li.scrollIntoView({ block: 'center' });
      li.classList.remove('flash');
      void li.offsetWidth; // restart the animation
      li.classList.add('flash');
      li.tabIndex = -1;
      li.focus({ preventScroll: true });
      return;
    }
    if (view.oldest !== null && seq < view.oldest && view.more) {
      view.seek = { seq, pages: 0 };
      loadOlder();
    }
  }

  /** A page arrived while looking for a message (showMessage). */
  function continueSeek(view) {
    const seek = view.seek;
    if (view.entries.has(seek.seq)) {
      showMessage(view, seek.seq);
    } else if (!view.more || seek.pages >= SEEK_PAGES_MAX) {
      view.seek = null;
    } else {
      seek.pages++;
      loadOlder();
    }
  }

  // -- Applying changes --
  function noteOldest(view, seq) {
    if (Number.isSafeInteger(seq) && (view.oldest === null || seq < view.oldest)) view.oldest = seq;
  }

  /** An edit, delete or reaction entry of the open room, live or replayed. */
  function applyChange(view, entry) {
    if (!Number.isSafeInteger(entry.target)) return;
    const model = view.messages.get(entry.target);
    if (!model) {
      updateCachedQuote(view, entry);
      // A history page on its way may bring the message without this change.
      view.unplaced.push(entry);
      if (view.unplaced.length > UNPLACED_CHANGES_MAX) view.unplaced.shift();
      return;
    }
    if (!changeState(model, entry)) return;
    paintMessage(view, model);
    if (entry.kind === 'edit' || entry.kind === 'delete') repaintQuotesOf(view, model.seq);
  }

  /** Apply a change to a model; false when its state already includes it. */
  function changeState(model, entry) {
    if (entry.seq <= model.asOf) return false;
    model.asOf = entry.seq;
    switch (entry.kind) {
      case 'edit':
        // An edit of a message deleted since is read back without its text.
        if (entry.deleted) markDeleted(model);
        else if (!model.deleted) {
          model.body = String(entry.body ?? '');
          model.edited_at = entry.ts;
        }
        break;
      case 'delete':
        markDeleted(model);
        break;
      case 'react':
      case 'unreact': {
        if (model.deleted || typeof entry.body !== 'string') break;
        const given = model.reactions.get(entry.body) || { count: 0, me: false };
        const count = given.count + (entry.kind === 'react' ? 1 : -1);
        const me = entry.from === S.user ? entry.kind === 'react' : given.me;
        if (count > 0) model.reactions.set(entry.body, { count, me });
        else model.reactions.delete(entry.body);
        break;
      }
      default:
        break;
    }
    return true;
  }

  function markDeleted(model) {
    model.deleted = true;
    model.body = '';
    model.edited_at = null;
    model.mentions = [];
    model.reactions = new Map();
    model.attachments = [];
  }

  /** Changes that arrived before their message came on screen, and are newer than its state. */
  function applyUnplaced(view, model) {
    if (!view.unplaced.length) return;
    const rest = [];
    for (const entry of view.unplaced) {
      if (entry.target === model.seq) changeState(model, entry);
      else rest.push(entry);
    }
    view.unplaced = rest;
  }

  /** A history page holds a message already on screen: its state replaces ours if newer. */
  function refreshMessage(view, entry, asOf) {
    const model = view.messages.get(entry.seq);
    if (asOf <= model.asOf) return;
    const fresh = messageModel(entry, asOf);
    for (const key of ['body', 'edited_at', 'deleted', 'reply_to', 'mentions', 'attachments', 'reactions', 'asOf']) model[key] = fresh[key];
    applyUnplaced(view, model);
    paintMessage(view, model);
    repaintQuotesOf(view, model.seq);
  }

  /** A replied-to message that is not on screen changed: its quote follows. */
  function updateCachedQuote(view, entry) {
    const quote = view.quotes.get(entry.target);
    if (!quote || typeof quote !== 'object') return;
    if (entry.kind === 'delete' || (entry.kind === 'edit' && entry.deleted)) {
      view.quotes.set(entry.target, { from: quote.from, body: '', deleted: true });
    } else if (entry.kind === 'edit') {
      view.quotes.set(entry.target, { from: quote.from, body: String(entry.body ?? ''), deleted: false, files: quote.files });
    } else {
      return;
    }
    repaintQuotesOf(view, entry.target);
  }

  // ---- Roles, moderation and room settings --------------------------------------------------
  // A group room's owner makes members admins and back; the owner and admins kick, ban, unban
  // and mute members ranked below them, and change the room's settings (docs/PROTOCOL.md,
  // "Roles and moderation", "Room settings"). Each action is an entry of the room, shown as a
  // system line: an audit trail. The node decides; the page offers what it expects allowed.

  /** Settings as a room list, a `room` reply or a settings entry gives them (absent: defaults). */
  function normalSettings(source) {
    return {
      name: typeof source.name === 'string' ? source.name : '',
      topic: typeof source.topic === 'string' ? source.topic : '',
      private: !!source.private,
      who_may_post: source.who_may_post === 'moderators' ? 'moderators' : 'members',
      who_may_invite: source.who_may_invite === 'moderators' ? 'moderators' : 'members',
    };
  }

  /**
   * Remember what an entry (live, replayed or from history) says about the user's standing in
   * its room: the settings, their role, their mute. No room list tells a mute; it ends with the
   * membership (the node keeps it there), as a role does.
   */
  function learnFrom(entry) {
    const mine = entry.user === S.user;
    if (entry.kind === 'settings' && entry.settings && typeof entry.settings === 'object') {
      learn(entry.room, 'settings', entry.seq, normalSettings(entry.settings));
    } else if (mine && entry.kind === 'role' && RANKS[entry.body]) {
      learn(entry.room, 'role', entry.seq, entry.body);
    } else if (mine && entry.kind === 'mute') {
      learn(entry.room, 'mutedUntil', entry.seq, Number.isSafeInteger(entry.until) ? entry.until : 0);
    } else if (mine && (entry.kind === 'join' || ENDS_MEMBERSHIP.has(entry.kind))) {
      learn(entry.room, 'mutedUntil', entry.seq, 0);
    }
  }

  /** Keep what entry `seq` said about `what` in a room, unless a later entry said otherwise. */
  function learn(roomId, what, seq, value) {
    let known = S.learned.get(roomId);
    if (!known) {
      known = {};
      S.learned.set(roomId, known);
    }
    if (known[what] && known[what].seq >= seq) return;
    known[what] = { seq, value };
    const room = S.rooms.get(roomId);
    if (room) applyLearned(room);
  }

  /**
   * A room list is as of its `last_seq` (the room's `listedSeq`): a role or settings entry after
   * it is newer and wins, also over a list asked for again that is not as new as the entry.
   */
  function applyLearned(room) {
    const known = S.learned.get(room.id);
    if (!known) return;
    if (known.role && known.role.seq > room.listedSeq) room.role = known.role.value;
    if (known.settings && known.settings.seq > room.listedSeq) Object.assign(room, known.settings.value);
  }

  function mutedUntil(roomId) {
    const known = S.learned.get(roomId);
    return known && known.mutedUntil ? known.mutedUntil.value : 0;
  }

  const rankOf = (role) => RANKS[role] || 0;

  /**
   * The user's role in the open room: the room list's (or a later entry's); before the list
   * came, owner when the room's first entry on screen is the user creating it.
   */
  function myRole(view) {
    const room = S.rooms.get(view.room);
    if (room && RANKS[room.role]) return room.role;
    return view.creator === S.user ? 'owner' : null;
  }

  function isModerator(view) {
    return !isDirect(view.room) && !view.removed && rankOf(myRole(view)) >= RANKS.admin;
  }

  /** A member's role as far as the entries on screen tell: a member unless one says otherwise. */
  function memberRole(view, user) {
    if (user === S.user) return myRole(view) || 'member';
    const known = view.roles.get(user);
    return known ? known.role : 'member';
  }

  /** The node's rule: moderators act only on members ranked below them. */
  function mayModerate(view, user) {
    return user !== S.user && isModerator(view) && rankOf(memberRole(view, user)) < rankOf(myRole(view));
  }

  /** An entry on screen says `user` has `role` from `seq` on; a later one may say otherwise. */
  function noteRole(view, user, role, seq) {
    const known = view.roles.get(user);
    if (typeof user !== 'string' || (known && known.seq >= seq)) return;
    view.roles.set(user, { role, seq });
  }

  /** What a join, leave or audit entry on screen says about members' roles and bans. */
  function noteStanding(view, entry) {
    const subject = entry.user || entry.from;
    switch (entry.kind) {
      case 'join':
        // The creator's join is a group room's first entry; anyone joining later is a member.
        noteRole(view, subject, entry.seq === 1 && !isDirect(view.room) ? 'owner' : 'member', entry.seq);
        break;
      case 'leave':
      case 'kick':
        // Back in the room they are a plain member (an owner who left gave the room up).
        noteRole(view, subject, 'member', entry.seq);
        break;
      case 'ban':
        noteRole(view, subject, 'member', entry.seq);
        noteBan(view, subject, entry.seq, true, Number.isSafeInteger(entry.until) ? entry.until : null);
        break;
      case 'unban':
        noteBan(view, subject, entry.seq, false, null);
        break;
      case 'role':
        if (RANKS[entry.body]) noteRole(view, subject, entry.body, entry.seq);
        break;
      default:
        break;
    }
  }

  function noteBan(view, user, seq, banned, until) {
    const known = view.bans.get(user);
    if (typeof user !== 'string' || (known && known.seq >= seq)) return;
    view.bans.set(user, { seq, banned, until });
  }

  /** Users banned as far as the entries on screen tell, whose ban has not run out. */
  function knownBans(view) {
    const now = Date.now();
    return Array.from(view.bans)
      .filter(([, ban]) => ban.banned && (ban.until === null || ban.until > now))
      .sort(([a], [b]) => a.localeCompare(b));
  }

  /** Why the user cannot post in the open room now (said in the composer's place), or null. */
  function postingBlocked(view) {
    if (view.removed) return view.removed;
    const until = mutedUntil(view.room);
    if (until > Date.now()) return `You are muted in this room until ${formatTime(until)}. You can still delete your own messages.`;
    const room = S.rooms.get(view.room);
    if (room && room.kind !== 'direct' && room.who_may_post === 'moderators' && rankOf(room.role) < RANKS.admin) {
      return 'Only the owner and admins post in this room. You can still react to messages.';
    }
    return null;
  }

  /** The user's standing, or a member's, changed: repaint what depends on it. */
  function renderStanding(view) {
    if (S.view !== view) return;
    if (view.moderating && !mayModerate(view, view.moderating)) closeModPanel(false);
    renderRoomHead();
    renderMembers();
    renderComposerState();
    for (const model of view.messages.values()) paintActions(view, model);
    if (view.moderating && $('mod-panel').dataset.role !== memberRole(view, view.moderating)) buildModPanel(view);
    if (!$('settings-panel').hidden) renderBans(view);
  }

  // -- Audit lines --
  /** "until 14:05" (a date too when not today), or "for good" for a ban without an end. */
  const untilText = (until) => (Number.isSafeInteger(until) ? `until ${formatTime(until)}` : 'for good');

  const sentence = (text) => (/[.!?…]$/.test(text) ? text : text + '.');

  /** The system line of a moderation entry: who did what to whom, and why when they said. */
  function auditText(entry) {
    const by = entry.from;
    const whom = entry.user || 'someone';
    const reason = entry.body ? `: ${entry.body}` : '';
    switch (entry.kind) {
      case 'role':
        return entry.body === 'admin' ? `${by} made ${whom} an admin` : `${by} made ${whom} a member again`;
      case 'kick':
        return `${by} removed ${whom} from the room${reason}`;
      case 'ban':
        return `${by} banned ${whom} ${untilText(entry.until)}${reason}`;
      case 'unban':
        return `${by} lifted the ban on ${whom}`;
      case 'mute':
        // A mute without an end lifts it.
        if (!Number.isSafeInteger(entry.until)) return `${by} lifted the mute on ${whom}`;
        return `${by} muted ${whom} until ${formatTime(entry.until)}`;
      default:
        return `${by} changed the room`;
    }
  }

  /**
   * The settings just before the settings entry `seq`, when the page can tell: those of the
   * previous settings line on screen, or the room list's when every entry after the list up to
   * `seq` is on screen (the entries on screen run without a gap from the oldest one loaded).
   * A settings entry holds all the settings after it, not what changed.
   */
  function previousSettings(view, seq) {
    let best = null;
    for (const [at, line] of view.settingsAt) if (at < seq && (!best || at > best.at)) best = { at, settings: line.settings };
    if (best) return best.settings;
    const room = S.rooms.get(view.room);
    if (room && room.listedSettings && room.listedSeq < seq && view.oldest !== null && view.oldest <= room.listedSeq + 1) {
      return room.listedSettings;
    }
    return null;
  }

  function settingsChanges(before, after) {
    const changes = [];
    if (after.name !== before.name) changes.push(`renamed the room to “${after.name}”`);
    if (after.topic !== before.topic) {
      changes.push(after.topic ? `changed the topic to “${excerpt(after.topic)}”` : 'cleared the topic');
    }
    if (after.private !== before.private) changes.push(after.private ? 'made the room private' : 'made the room public');
    if (after.who_may_post !== before.who_may_post) {
      changes.push(after.who_may_post === 'moderators' ? 'let only the owner and admins post' : 'let every member post');
    }
    if (after.who_may_invite !== before.who_may_invite) {
      changes.push(after.who_may_invite === 'moderators' ? 'let only the owner and admins invite' : 'let every member invite');
    }
    return changes;
  }

  function describeSettings(settings) {
    return [
      `name “${settings.name}”`,
      settings.topic ? `topic “${excerpt(settings.topic)}”` : 'no topic',
      settings.private ? 'private' : 'public',
      settings.who_may_post === 'moderators' ? 'only the owner and admins post' : 'every member posts',
      settings.who_may_invite === 'moderators' ? 'only the owner and admins invite' : 'every member invites',
    ].join(', ');
  }

  /** "a", "a and b", "a, b and c". */
  const listText = (items) => (items.length < 2 ? items.join('') : `${items.slice(0, -1).join(', ')} and ${items[items.length - 1]}`);

  /**
   * Word the settings lines: what changed when the settings before are known, else all of them.
   * Older pages or lines may make them known later; a line that says what changed stays.
   */
  function repaintSettingsLines(view) {
    for (const [seq, line] of view.settingsAt) {
      if (line.diff) continue;
      const before = previousSettings(view, seq);
      const changes = before ? settingsChanges(before, line.settings) : [];
      line.diff = changes.length > 0;
      const text = line.diff
        ? `${line.from} ${listText(changes)}`
        : `${line.from} changed the room's settings: ${describeSettings(line.settings)}`;
      const span = line.li.querySelector('.notice-text');
      if (span.textContent !== text) span.textContent = text;
      if (line.settings.topic) line.li.title = `Topic: ${line.settings.topic}`;
    }
  }

  // -- The room's head: topic and settings --
  /** Under the room's title its topic; beside it the settings button, for the owner and admins. */
  function renderRoomHead() {
    const view = S.view;
    const room = view ? S.rooms.get(view.room) : null;
    const topic = room && room.kind !== 'direct' && typeof room.topic === 'string' ? room.topic : '';
    const line = $('room-topic');
    if (line.textContent !== topic) line.textContent = topic;
    line.title = topic;
    line.hidden = !topic;
    // The member's own notification level here (push notifications follow it).
    $('notify-label').hidden = !room;
    const level = room && typeof room.notify === 'string' ? room.notify : 'all';
    if (room && $('notify-level').value !== level && document.activeElement !== $('notify-level')) $('notify-level').value = level;
    const may = !!view && isModerator(view);
    $('settings-toggle').hidden = !may;
    if (!may) closeSettings(false);
  }

  function toggleSettings() {
    if ($('settings-panel').hidden) openSettings();
    else closeSettings(true);
  }

  function openSettings() {
    const view = S.view;
    const room = view && S.rooms.get(view.room);
    if (!room || !isModerator(view)) return;
    closeModPanel(false);
    const settings = normalSettings(room);
    $('settings-name').value = settings.name;
    $('settings-topic').value = settings.topic;
    $('settings-private').checked = settings.private;
    $('settings-post').value = settings.who_may_post;
    $('settings-invite').value = settings.who_may_invite;
    for (const where of ['settings', 'unban']) clearForm(where);
    $('unban-user').value = '';
    updateTopicCount();
    renderBans(view);
    $('settings-panel').hidden = false;
    $('settings-toggle').setAttribute('aria-expanded', 'true');
    $('settings-name').focus();
  }

  /** Close the settings; `refocus`: back to the button that opened them. */
  function closeSettings(refocus) {
    const panel = $('settings-panel');
    if (panel.hidden) return;
    panel.hidden = true;
    $('settings-toggle').setAttribute('aria-expanded', 'false');
    if (refocus && !$('settings-toggle').hidden) $('settings-toggle').focus();
  }

  function updateTopicCount() {
    const bytes = byteLength($('settings-topic').value.trim());
    const counter = $('settings-topic-count');
    counter.textContent = `${bytes} / ${TOPIC_MAX_BYTES} bytes`;
    counter.classList.toggle('over', bytes > TOPIC_MAX_BYTES);
  }

  /** Send only what differs from the room's settings as the page knows them. */
  function submitSettings() {
    const view = S.view;
    const room = view && S.rooms.get(view.room);
    if (!room || $('settings-form').dataset.busy) return;
    const wanted = {
      name: $('settings-name').value.trim(),
      topic: $('settings-topic').value.trim(),
      private: $('settings-private').checked,
      who_may_post: $('settings-post').value === 'moderators' ? 'moderators' : 'members',
      who_may_invite: $('settings-invite').value === 'moderators' ? 'moderators' : 'members',
    };
    if (!wanted.name) {
      showFormError({ form: 'settings' }, 'The room needs a name.');
      return;
    }
    const topicBytes = byteLength(wanted.topic);
    if (topicBytes > TOPIC_MAX_BYTES) {
      showFormError({ form: 'settings' }, `Topic too long: ${topicBytes} bytes, at most ${TOPIC_MAX_BYTES}.`);
      return;
    }
    const current = normalSettings(room);
    const frame = { type: 'set_room', room: view.room };
    for (const [key, value] of Object.entries(wanted)) if (value !== current[key]) frame[key] = value;
    if (Object.keys(frame).length === 2) {
      showFormError({ form: 'settings' }, 'Nothing to save: the settings are already so.');
      return;
    }
    sendFormRequest(frame, { kind: 'set_room', room: view.room, form: 'settings' });
  }

  /** Bans seen in the conversation on screen, each with a button to lift it. */
  function renderBans(view) {
    const bans = knownBans(view);
    $('ban-list').replaceChildren(
      ...bans.map(([user, ban]) => {
        const li = el('li', 'ban');
        li.dataset.user = user;
        li.append(el('span', 'ban-name', user), el('span', 'ban-until', untilText(ban.until)));
        const button = el('button', 'link-button', `Unban ${user}`);
        button.type = 'button';
        button.addEventListener('click', () => unban(view, user));
        li.append(button);
        return li;
      }),
    );
    $('ban-list').hidden = bans.length === 0;
  }

  function unban(view, user) {
    if (S.view !== view || !user) return;
    sendFormRequest({ type: 'unban', room: view.room, user }, { kind: 'moderate', room: view.room, user, form: 'unban' });
  }

  // -- The moderation panel: actions on one member, opened from the member list --
  function toggleModPanel(view, user) {
    if (view.moderating === user) closeModPanel(true);
    else openModPanel(view, user);
  }

  function openModPanel(view, user) {
    if (S.view !== view || !mayModerate(view, user)) return;
    closeSettings(false);
    if (view.moderating !== user) $('mod-panel').replaceChildren(); // a new member: a fresh form
    view.moderating = user;
    buildModPanel(view);
    renderMembers();
    const first = $('mod-panel').querySelector('button, input, select');
    if (first) first.focus();
  }

  /** Close the panel; `refocus`: back to the button that opened it. */
  function closeModPanel(refocus) {
    const panel = $('mod-panel');
    panel.hidden = true;
    panel.replaceChildren();
    clearForm('mod');
    delete panel.dataset.role;
    delete panel.dataset.user;
    const view = S.view;
    const user = view ? view.moderating : null;
    if (!view || user === null) return;
    view.moderating = null;
    renderMembers();
    if (refocus) (moderateButton(user) || $('scroller')).focus();
  }

  const moderateButton = (user) => $('member-list').querySelector(`[data-moderate="${CSS.escape(user)}"]`);

  /**
   * The panel's controls for `view.moderating`. Built again when that member's role changes; what
   * the user typed and chose stays.
   */
  function buildModPanel(view) {
    const user = view.moderating;
    const panel = $('mod-panel');
    const kept = {};
    for (const id of ['mod-reason', 'mod-ban-for', 'mod-mute-for']) if ($(id)) kept[id] = $(id).value;
    const error = $('mod-error') ? $('mod-error').textContent : '';
    panel.dataset.user = user;
    const title = el('h3', 'mod-title', `Moderate ${user}`);
    title.id = 'mod-title';
    const parts = [title];
    if (myRole(view) === 'owner') {
      // The owner makes members admins and back (the page knows roles from the entries on screen).
      const admin = memberRole(view, user) === 'admin';
      parts.push(
        modRow(
          el('span', 'mod-label', admin ? `${user} is an admin.` : `${user} is a member.`),
          panelButton('role', admin ? `Make ${user} a member again` : `Make ${user} an admin`, () =>
            moderate(view, user, 'set_role', { role: admin ? 'member' : 'admin' }),
          ),
        ),
      );
    }
    const reasonLabel = el('label', '', 'Reason for a kick or ban (optional, everyone sees it)');
    reasonLabel.htmlFor = 'mod-reason';
    const reason = el('input', 'mod-reason');
    reason.id = 'mod-reason';
    reason.dataset.key = 'reason';
    reason.autocomplete = 'off';
    reason.maxLength = REASON_MAX_BYTES;
    parts.push(reasonLabel, reason);
    parts.push(modRow(panelButton('kick', `Kick ${user}`, () => moderate(view, user, 'kick', {}), 'danger')));
    const ban = durationSelect('mod-ban-for', 'Ban for', BAN_DURATIONS);
    parts.push(
      modRow(...ban, panelButton('ban', `Ban ${user}`, () => moderate(view, user, 'ban', { until: untilFrom('mod-ban-for') }), 'danger')),
    );
    const mute = durationSelect('mod-mute-for', 'Mute for', MUTE_DURATIONS);
    parts.push(
      modRow(
        ...mute,
        panelButton('mute', `Mute ${user}`, () => moderate(view, user, 'mute', { until: untilFrom('mod-mute-for') })),
        // A mute without an end lifts it (docs/PROTOCOL.md): there is no separate unmute.
        panelButton('unmute', 'Lift the mute', () => moderate(view, user, 'mute', {}), 'secondary'),
      ),
    );
    const errorLine = el('p', 'form-error', error);
    errorLine.id = 'mod-error';
    errorLine.setAttribute('role', 'alert');
    const close = panelButton('close', 'Close', () => closeModPanel(true), 'link-button');
    close.setAttribute('aria-label', 'Close the moderation panel');
    parts.push(errorLine, modRow(close));
    // Rebuilt while the user is in it (a role changed): the focus stays on the same control.
    const focused = panel.contains(document.activeElement) ? document.activeElement.dataset.key : null;
    panel.replaceChildren(...parts);
    panel.dataset.role = memberRole(view, user);
    for (const [id, value] of Object.entries(kept)) $(id).value = value;
    panel.hidden = false;
    const refocus = focused && panel.querySelector(`[data-key="${focused}"]`);
    if (refocus) refocus.focus();
  }

  function panelButton(key, label, onClick, className) {
    const button = el('button', className || '', label);
    button.type = 'button';
    button.dataset.key = key;
    button.addEventListener('click', onClick);
    return button;
  }

  function modRow(...children) {
    const row = el('div', 'mod-row');
    row.append(...children);
    return row;
  }

  function durationSelect(id, label, durations) {
    const labelEl = el('label', 'mod-label', label);
    labelEl.htmlFor = id;
    const select = el('select', 'mod-duration');
    select.id = id;
    select.dataset.key = id;
    for (const [text, ms] of durations) {
      const option = el('option', '', text);
      option.value = ms === null ? '' : String(ms);
      select.append(option);
    }
    return [labelEl, select];
  }

  /** The end a duration picked in `selectId` gives, from now; undefined for good. */
  function untilFrom(selectId) {
    const ms = Number($(selectId).value);
    return ms > 0 ? Date.now() + ms : undefined;
  }

  /** A moderation request from the panel; a kick's or ban's reason is the panel's. */
  function moderate(view, user, type, fields) {
    if (S.view !== view || view.moderating !== user) return;
    const frame = Object.assign({ type, room: view.room, user }, fields);
    if (frame.until === undefined) delete frame.until;
    if (type === 'kick' || type === 'ban') {
      const reason = $('mod-reason').value.trim();
      const bytes = byteLength(reason);
      if (bytes > REASON_MAX_BYTES) {
        showFormError({ form: 'mod', room: view.room, user }, `Reason too long: ${bytes} bytes, at most ${REASON_MAX_BYTES}.`);
        return;
      }
      if (reason) frame.reason = reason;
    }
    sendFormRequest(frame, { kind: 'moderate', room: view.room, user, form: 'mod' });
  }

  // -- Forms whose answer comes from the node: busy until it does, its refusal shown in them --
  const FORMS = { mod: ['mod-panel', 'mod-error'], settings: ['settings-form', 'settings-error'], unban: ['unban-form', 'unban-error'] };

  /** Send a form's request; one at a time per form (a second click waits for the answer). */
  function sendFormRequest(frame, ctx) {
    const box = $(FORMS[ctx.form][0]);
    if (box.dataset.busy) return;
    clearForm(ctx.form);
    if (!request(frame, ctx)) {
      showFormError(ctx, 'Not connected; try again when the connection is back.');
      return;
    }
    box.dataset.busy = 'true';
    box.setAttribute('aria-busy', 'true');
  }

  function clearForm(where) {
    const [boxId, errorId] = FORMS[where];
    const box = $(boxId);
    delete box.dataset.busy;
    box.removeAttribute('aria-busy');
    if ($(errorId)) $(errorId).textContent = '';
  }

  /** Is the form a request was sent from still open, for the same room (and member)? */
  function formOpen(ctx) {
    const view = S.view;
    if (!view || (ctx.room && ctx.room !== view.room)) return false;
    if (ctx.form === 'mod') return !$('mod-panel').hidden && (!ctx.user || view.moderating === ctx.user);
    return !$('settings-panel').hidden;
  }

  /** Say `text` in the form `ctx` came from; false when that form is closed. */
  function showFormError(ctx, text) {
    if (!formOpen(ctx)) return false;
    clearForm(ctx.form);
    $(FORMS[ctx.form][1]).textContent = text;
    return true;
  }

  /** The notification level picked for the open room: kept by the node with the membership. */
  function setNotifyLevel() {
    const view = S.view;
    const room = view && S.rooms.get(view.room);
    const level = $('notify-level').value;
    if (!room || !['all', 'mentions', 'none'].includes(level)) return;
    if (request({ type: 'set_notifications', room: view.room, level }, { kind: 'notify', room: view.room, level })) {
      $('notify-level').disabled = true;
    }
  }

  function onOk(ctx) {
    if (!ctx) return;
    if (ctx.kind === 'notify') {
      $('notify-level').disabled = false;
      const room = S.rooms.get(ctx.room);
      if (room) room.notify = ctx.level;
      return;
    }
    if (ctx.kind === 'delete_account') {
      accountDeleted();
      return;
    }
    if (ctx.kind === 'push_remove') {
      onPushRemoved(ctx);
      return;
    }
    if ((ctx.kind !== 'moderate' && ctx.kind !== 'set_room') || !formOpen(ctx)) return;
    // Done: the entry that says so arrives in the conversation.
    clearForm(ctx.form);
    if (ctx.form === 'mod') closeModPanel(true);
    else if (ctx.form === 'settings') closeSettings(true);
    else $('unban-user').value = '';
  }

  /** The connection went before the node answered: the forms may be used again. */
  function formsLostConnection() {
    // A notification change without an answer: the list after reconnecting shows what holds.
    $('notify-level').disabled = false;
    pushLostConnection();
    for (const [where, [boxId, errorId]] of Object.entries(FORMS)) {
      if (!$(boxId).dataset.busy) continue;
      clearForm(where);
      // The node may have done it: its entry shows in the conversation if so.
      if ($(errorId)) $(errorId).textContent = 'The connection was lost before an answer came: see the conversation, and try again if nothing happened.';
    }
    const form = $('delete-form');
    if (form && form.dataset.busy) {
      delete form.dataset.busy;
      $('delete-confirm').disabled = false;
      $('delete-error').textContent = 'The connection was lost before an answer came; try again once connected.';
    }
  }

  function closeRoomPanels() {
    closeModPanel(false);
    closeSettings(false);
  }

  // -- Deleting the account --
  function openDeleteAccount() {
    const dialog = $('delete-dialog');
    if (dialog.open || !S.user) return;
    // Built when opened, so the page holds no second password field while signing in.
    dialog.replaceChildren($('delete-template').content.cloneNode(true));
    $('delete-form').addEventListener('submit', (event) => {
      event.preventDefault();
      submitDeleteAccount();
    });
    $('delete-cancel').addEventListener('click', () => dialog.close());
    dialog.showModal();
    $('delete-password').focus();
  }

  function closeDeleteAccount() {
    const dialog = $('delete-dialog');
    if (dialog.open) dialog.close();
    dialog.replaceChildren();
  }

  function submitDeleteAccount() {
    const form = $('delete-form');
    if (form.dataset.busy) return;
    const password = $('delete-password').value;
    $('delete-error').textContent = '';
    if (!password) {
      $('delete-error').textContent = 'Enter your password to confirm.';
      return;
    }
    if (!isAuthed() || !request({ type: 'delete_account', password }, { kind: 'delete_account' })) {
      $('delete-error').textContent = 'Not connected; try again when the connection is back.';
      return;
    }
    form.dataset.busy = 'true';
    $('delete-confirm').disabled = true;
  }

  function onDeleteAccountError(frame) {
    const form = $('delete-form');
    if (!form) {
      showAlert(frame.code, frame.message);
      return;
    }
    delete form.dataset.busy;
    $('delete-confirm').disabled = false;
    // A wrong password changes nothing: the user stays signed in and may try again.
    $('delete-error').textContent =
      frame.code === 'invalid_credentials' ? 'Wrong password: your account was not deleted.' : describeError(frame);
    $('delete-password').select();
    $('delete-password').focus();
  }

  // ---- Outbox -------------------------------------------------------------------------------
  /**
   * Apply one change to the stored outbox by read-modify-write, so two tabs of the same user
   * add and remove their own items without overwriting each other's.
   */
  function persistOutbox(change) {
    if (!S.user) return;
    const key = keys.outbox(S.user);
    const stored = storage.get(key, []);
    storage.set(key, change(Array.isArray(stored) ? stored : []));
  }

  /** A message, or an edit, delete or reaction (`op`), as stored; anything else is dropped. */
  function validOutboxItem(item) {
    if (!item || typeof item.id !== 'string' || typeof item.room !== 'string') return false;
    return item.op === undefined || (OUTBOX_OPS.has(item.op) && Number.isSafeInteger(item.seq));
  }

  function outboxAdd(item) {
    S.outbox.push(item);
    persistOutbox((stored) => (stored.some((m) => m.id === item.id) ? stored : stored.concat([item])));
    if (item.op) repaintChangeTarget(item);
  }

  function outboxRemove(id) {
    const item = S.outbox.find((m) => m.id === id);
    S.outbox = S.outbox.filter((m) => m.id !== id);
    S.inflight.delete(id);
    persistOutbox((stored) => stored.filter((m) => m.id !== id));
    removePendingElement(id);
    if (item && item.op) repaintChangeTarget(item);
  }

  /** Check a message (with the media ids it attaches) against the node's limits before it goes
   *  anywhere. */
  function refusal(body, attachments = []) {
    if (!body.trim() && !attachments.length) return 'The message is empty.';
    const bytes = byteLength(body);
    const max = S.limits.max_body_bytes;
    if (bytes > max) {
      return `Message too long: ${bytes} bytes, the node accepts at most ${max} bytes (max_body_bytes). Shorten it or split it.`;
    }
    const frame = JSON.stringify(
      Object.assign({ type: 'send', req: 4294967295, room: S.view.room, id: newMessageId(), body }, attachments.length ? { attachments } : {}),
    );
    if (byteLength(frame) > S.limits.max_frame_bytes) {
      return `Message too long once encoded: ${byteLength(frame)} bytes, the node accepts frames of at most ${S.limits.max_frame_bytes} bytes (max_frame_bytes).`;
    }
    return null;
  }

  function submitMessage() {
    const input = $('message-input');
    if (!S.view) return;
    if (uploadsBusy()) {
      // The send button is disabled meanwhile; Enter says why.
      $('composer-error').textContent = 'Wait until the files are uploaded, then send.';
      return;
    }
    const files = readyAttachments();
    const ids = files.map((file) => file.media);
    // With files, a text of blanks only is no text.
    const body = files.length && !input.value.trim() ? '' : input.value;
    const refused = refusal(body, ids);
    if (refused) {
      $('composer-error').textContent = refused;
      input.setAttribute('aria-invalid', 'true');
      return;
    }
    $('composer-error').textContent = '';
    media.errors = [];
    input.removeAttribute('aria-invalid');
    const item = { id: newMessageId(), room: S.view.room, body, ts: Date.now() };
    if (S.view.replyTo !== null) item.reply_to = S.view.replyTo;
    const mentions = mentionsIn(S.view, body);
    if (mentions.length) item.mentions = mentions;
    if (ids.length) {
      item.attachments = ids;
      // What the pending copy shows until the message is committed.
      item.files = files.map((file) => ({ media: file.media, name: file.name, size: file.size }));
    }
    // Stored first: a reload or a crash from here on still sends it, once, with its files.
    outboxAdd(item);
    if (ids.length) clearUploads();
    S.view.replyTo = null;
    renderReplyBar();
    input.value = '';
    updateByteCount();
    renderPending();
    scrollToBottom();
    flushOutbox();
    stopTyping();
  }

  function flushOutbox() {
    clearTimeout(S.timers.outbox);
    if (S.phase !== 'live') return;
    for (const item of S.outbox) {
      if (S.inflight.has(item.id)) continue;
      if (S.inflight.size >= SENDS_IN_FLIGHT_MAX) break;
      const req = request(outboxFrame(item), { kind: 'send', id: item.id });
      if (!req) break;
      S.inflight.set(item.id, req);
    }
    renderPending();
  }

  /** The request an outbox item is sent as; a retry sends the same one (the same id). */
  function outboxFrame(item) {
    const frame = { room: item.room, id: item.id };
    switch (item.op) {
      case 'edit':
        return Object.assign(frame, { type: 'edit', seq: item.seq, body: item.body });
      case 'delete':
        return Object.assign(frame, { type: 'delete', seq: item.seq });
      case 'react':
        return Object.assign(frame, { type: 'react', seq: item.seq, reaction: item.reaction }, item.remove ? { remove: true } : {});
      default:
        Object.assign(frame, { type: 'send', body: item.body });
        if (Number.isSafeInteger(item.reply_to)) frame.reply_to = item.reply_to;
        if (Array.isArray(item.mentions) && item.mentions.length) frame.mentions = item.mentions;
        if (Array.isArray(item.attachments)) {
          const ids = item.attachments.filter((id) => typeof id === 'string');
          if (ids.length) frame.attachments = ids;
        }
        return frame;
    }
  }

  function onAck(frame) {
    const item = S.outbox.find((m) => m.id === frame.id);
    // Seq 0: a reaction of a large room, counted without an entry. Its count arrives in a
    // `reactions` frame; that it is ours only the ack says.
    if (frame.seq === 0 && item && item.op === 'react') markOwnReaction(item);
    else noteSeq(frame.room, frame.seq);
    outboxRemove(frame.id);
    flushOutbox();
  }

  function markOwnReaction(item) {
    const view = S.view;
    const model = view && view.room === item.room ? view.messages.get(item.seq) : null;
    if (!model || model.deleted) return;
    const given = model.reactions.get(item.reaction);
    if (item.remove) {
      if (given) given.me = false;
    } else {
      model.reactions.set(item.reaction, { count: Math.max(given ? given.count : 0, 1), me: true });
    }
    paintMessage(view, model);
  }

  /** A large room's reaction counts that changed: each listed message's reactions in full. */
  function onReactions(frame) {
    const view = S.view;
    if (!view || view.room !== frame.room || !Array.isArray(frame.messages)) return;
    for (const changed of frame.messages) {
      const model = changed && view.messages.get(changed.seq);
      if (!model || model.deleted || !Array.isArray(changed.reactions)) continue;
      const fresh = new Map();
      for (const r of changed.reactions) {
        if (!r || typeof r.reaction !== 'string' || !Number.isSafeInteger(r.count) || r.count <= 0) continue;
        const before = model.reactions.get(r.reaction);
        fresh.set(r.reaction, { count: r.count, me: !!(before && before.me) });
      }
      model.reactions = fresh;
      paintMessage(view, model);
    }
  }

  function onSendError(frame, ctx) {
    S.inflight.delete(ctx.id);
    if (RETRYABLE.has(frame.code)) {
      // Kept with its id; tried again shortly (or after the next reconnect).
      const wait = frame.retry_after_ms || 1000;
      clearTimeout(S.timers.outbox);
      S.timers.outbox = setTimeout(flushOutbox, wait);
      renderPending();
      return;
    }
    const item = S.outbox.find((m) => m.id === ctx.id);
    if (item && item.op === 'react' && frame.code === 'unchanged') {
      // The reaction already is as asked (another tab of ours, or a click on a state not yet
      // shown): nothing was lost, and the entries that arrive show the truth.
      outboxRemove(ctx.id);
      renderPending();
      return;
    }
    if (item) {
      // What the user wrote is kept in view, with the reason: a message or an edit's new text.
      if (!item.op || item.op === 'edit') S.failed.push(Object.assign({}, item, { error: describeError(frame) }));
      outboxRemove(ctx.id);
    }
    showAlert(frame.code, item && item.op ? `${OP_FAILED[item.op]}: ${frame.message}` : frame.message);
    renderPending();
  }

  const OP_FAILED = { edit: 'Edit not saved', delete: 'Message not deleted', react: 'Reaction not saved' };

  function removePendingElement(id) {
    for (const li of $('pending').querySelectorAll('li')) {
      if (li.dataset.id === id) li.remove();
    }
  }

  function renderPending() {
    const view = S.view;
    const list = $('pending');
    if (!view) {
      list.replaceChildren();
      return;
    }
    const items = [];
    for (const item of S.outbox) {
      // Edits, deletes and reactions show on the message they change (paintChangeStatus).
      if (item.room !== view.room || item.op) continue;
      items.push(pendingElement(item, outboxStatus(item), false));
    }
    for (const item of S.failed) {
      if (item.room !== view.room) continue;
      const what = item.op === 'edit' ? 'edit not saved' : 'not sent';
      items.push(pendingElement(item, `${what}: ${item.error}`, true));
    }
    list.replaceChildren(...items);
    for (const model of view.messages.values()) if (model.pendingShown) paintChangeStatus(view, model);
  }

  const outboxStatus = (item) => (S.inflight.has(item.id) ? 'sending…' : S.phase === 'live' ? 'queued' : 'waiting for connection');

  function pendingElement(item, status, failed) {
    const li = el('li', 'msg mine pending-item' + (failed ? ' failed' : ''));
    li.dataset.id = item.id;
    const meta = el('div', 'meta');
    meta.append(el('span', 'from', S.user || ''), document.createTextNode(' '), el('span', 'status', status));
    const files = Array.isArray(item.files) ? item.files.filter((file) => file && typeof file.name === 'string') : [];
    if (item.body || !files.length) li.append(meta, el('p', 'body', item.body));
    else li.append(meta);
    if (files.length) {
      const list = el('ul', 'pending-files');
      list.setAttribute('aria-label', 'Attached files');
      for (const file of files) {
        const size = Number.isSafeInteger(file.size) ? ` (${humanSize(file.size)})` : '';
        list.append(el('li', 'pending-file', `📎 ${file.name}${size}`));
      }
      li.append(list);
    }
    if (failed) {
      const dismiss = el('button', 'link-button', 'Dismiss');
      dismiss.type = 'button';
      dismiss.addEventListener('click', () => {
        S.failed = S.failed.filter((f) => f.id !== item.id);
        renderPending();
      });
      li.append(dismiss);
    }
    return li;
  }


  // ---- Media --------------------------------------------------------------------------------
  // Files travel beside the WebSocket (docs/PROTOCOL.md, "Media"; docs/MEDIA.md). Each file the
  // user picks (the attach button), drops on the conversation or pastes is uploaded at once,
  // `POST /media?name=…` with the user's token, to the node the socket is connected to (the
  // page's own while there is none); a chip in the composer shows its progress, then its name
  // and size. The next message carries the uploaded ones (`send.attachments`: the outbox item
  // keeps the ids, so a retry sends them again with the same message id) and the chips go.
  // Sending waits while a file is on its way. A refused upload says why and its chip goes.
  //
  // Messages show what they carry: an image as its thumbnail (sized from the attachment before it
  // loads; a click opens the image in a new tab), any other file as a download link. Links are
  // signed and short-lived: `media_url` asks for one when an attachment comes into view, and it
  // is cached per media id until shortly before it expires (asked for again then if the file is
  // still on screen). A file the node no longer has (`no_such_media`) shows as deleted. Names are
  // the uploader's words: they reach the page through textContent and attributes only.
  const media = {
    /** The composer's files, in order: { key, name, size, loaded, xhr, attachment, li, parts } */
    uploads: [],
    nextKey: 0,
    /** Why uploads were refused since the user last acted (shown in the composer). */
    errors: [],
    /** The error line as renderUploadErrors last wrote it. */
    shownError: '',
    /** media id → { url, thumb, until } | { pending: true } | { gone: true } */
    links: new Map(),
    /** media id → timer renewing its link before it expires */
    renewals: new Map(),
    /** Ids waiting for a `media_url` slot (MEDIA_URL_INFLIGHT_MAX), in order. */
    queue: new Set(),
    inflight: 0,
    /** Asks for links as attachments come into view (null until the first one). */
    observer: null,
  };
  /** The attachment each element on screen shows. */
  const shownAttachment = new WeakMap();

  function humanSize(bytes) {
    if (!Number.isSafeInteger(bytes) || bytes < 0) return '';
    if (bytes < 1024) return `${bytes} B`;
    const units = ['KB', 'MB', 'GB', 'TB'];
    let value = bytes / 1024;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit++;
    }
    return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
  }

  /** An attachment as the node describes it (an upload's answer, a message's), or null. */
  function validAttachment(a) {
    if (!a || typeof a !== 'object' || typeof a.media !== 'string' || !a.media) return null;
    const size = (w, h) => Number.isSafeInteger(w) && Number.isSafeInteger(h) && w > 0 && h > 0;
    const out = {
      media: a.media,
      name: typeof a.name === 'string' && a.name ? a.name : 'file',
      type: typeof a.type === 'string' ? a.type : 'application/octet-stream',
      size: Number.isSafeInteger(a.size) && a.size >= 0 ? a.size : null,
    };
    if (size(a.width, a.height)) {
      out.width = a.width;
      out.height = a.height;
    }
    if (a.thumbnail && size(a.thumbnail.width, a.thumbnail.height)) out.thumbnail = { width: a.thumbnail.width, height: a.thumbnail.height };
    return out;
  }

  const attachmentsOf = (entry) => (Array.isArray(entry.attachments) ? entry.attachments.map(validAttachment).filter(Boolean) : []);

  /** What a quote of a message of files alone says. */
  function filesText(files) {
    if (!Array.isArray(files) || !files.length) return '';
    return files.length === 1 ? `📎 ${files[0].name}` : `📎 ${files.length} files`;
  }

  /**
   * Where files go and come from: the page's own node, whichever node the socket uses. Every node
   * serves every upload and link (records in the shared store, bytes in shared storage), and the
   * page's own origin needs no CORS and nothing more in the page's Content-Security-Policy.
   */
  function nodeOrigin() {
    return location.origin;
  }

  /** A link the node gave (a path on its client port), as an absolute http(s) URL, or null. */
  function mediaHref(path, origin) {
    if (typeof path !== 'string' || !path) return null;
    try {
      const url = new URL(path, origin);
      return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
    } catch (_) {
      return null;
    }
  }

  // -- The composer's files --
  const uploadsBusy = () => media.uploads.some((upload) => !upload.attachment);
  const readyAttachments = () => media.uploads.filter((upload) => upload.attachment).map((upload) => upload.attachment);
  const mayAttach = () => !!(S.auth && S.view && !postingBlocked(S.view));

  /** Files picked, dropped or pasted: each is uploaded at once, up to a message's worth. */
  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    media.errors = [];
    if (!mayAttach()) {
      media.errors.push(S.view ? 'Files cannot be sent here now.' : 'Open a room to send files.');
      renderUploadErrors();
      return;
    }
    const room = Math.max(0, ATTACHMENTS_MAX - media.uploads.length);
    if (files.length > room) {
      media.errors.push(`A message carries at most ${ATTACHMENTS_MAX} files: ${files.length - room} not added.`);
    }
    renderUploadErrors();
    for (const file of files.slice(0, room)) startUpload(file);
  }

  function startUpload(file) {
    const upload = { key: ++media.nextKey, name: file.name || 'file', size: file.size, loaded: 0, xhr: null, attachment: null, li: null, parts: null };
    const xhr = new XMLHttpRequest();
    upload.xhr = xhr;
    xhr.open('POST', `${nodeOrigin()}/media?name=${encodeURIComponent(upload.name)}`);
    xhr.setRequestHeader('Authorization', `Bearer ${S.auth.token}`);
    // The node sniffs the type from the bytes; the browser's guess only has to agree with them.
    if (file.type) xhr.setRequestHeader('Content-Type', file.type);
    xhr.upload.onprogress = (event) => {
      upload.loaded = event.loaded;
      if (event.lengthComputable && event.total) upload.size = event.total;
      paintUpload(upload);
    };
    xhr.onload = () => uploadAnswered(upload, xhr);
    xhr.onerror = () => uploadFailed(upload, 'the upload failed (the connection to the node broke)');
    xhr.ontimeout = () => uploadFailed(upload, 'the upload timed out');
    media.uploads.push(upload);
    renderUploads();
    try {
      xhr.send(file);
    } catch (err) {
      uploadFailed(upload, `the upload could not start (${err.message})`);
    }
  }

  function uploadAnswered(upload, xhr) {
    if (!media.uploads.includes(upload)) return; // removed meanwhile
    let answer = null;
    try {
      answer = JSON.parse(xhr.responseText);
    } catch (_) {
      /* said below */
    }
    if (xhr.status === 201 || xhr.status === 200) {
      const attachment = validAttachment(answer);
      if (!attachment) {
        uploadFailed(upload, 'the node answered something this page does not understand');
        return;
      }
      upload.attachment = attachment;
      upload.xhr = null;
      paintUpload(upload);
      renderComposerState();
      return;
    }
    const message = answer && typeof answer.message === 'string' && answer.message ? answer.message : `the node answered ${xhr.status}`;
    uploadFailed(upload, message);
  }

  function uploadFailed(upload, message) {
    if (!media.uploads.includes(upload)) return;
    media.errors.push(`${upload.name}: ${message}`);
    dropUpload(upload);
    renderUploadErrors();
  }

  /** Take a file off the composer; one still uploading is stopped (the node forgets it). */
  function dropUpload(upload) {
    media.uploads = media.uploads.filter((u) => u !== upload);
    if (upload.xhr) {
      const xhr = upload.xhr;
      upload.xhr = null;
      xhr.onload = xhr.onerror = xhr.ontimeout = xhr.upload.onprogress = null;
      if (xhr.readyState !== XMLHttpRequest.DONE) xhr.abort();
    }
    renderUploads();
  }

  /** The user took a file off: the focus goes to the next file, else to the message box. */
  function removeUpload(upload) {
    const index = media.uploads.indexOf(upload);
    dropUpload(upload);
    const next = media.uploads[Math.min(index, media.uploads.length - 1)];
    if (next && next.parts) next.parts.remove.focus();
    else $('message-input').focus();
  }

  /** The message that carries them is in the outbox: the chips go. */
  function clearUploads() {
    media.uploads = [];
    renderUploads();
  }

  /** Sign-out or another user: uploads stop, links and errors are forgotten. */
  function resetMedia() {
    for (const upload of media.uploads.slice()) dropUpload(upload);
    media.errors = [];
    renderUploadErrors();
    for (const timer of media.renewals.values()) clearTimeout(timer);
    media.renewals.clear();
    media.links.clear();
    media.queue.clear();
    media.inflight = 0;
    clearTimeout(S.timers.mediaRetry);
  }

  function renderUploads() {
    const list = $('upload-list');
    list.replaceChildren(...media.uploads.map((upload) => paintUpload(upload)));
    list.hidden = media.uploads.length === 0;
    renderComposerState();
  }

  /** Why uploads failed, in the composer's error line (without wiping another error there). */
  function renderUploadErrors() {
    const text = media.errors.join(' ');
    const box = $('composer-error');
    if (text) box.textContent = text;
    else if (box.textContent === media.shownError) box.textContent = '';
    media.shownError = text;
  }

  /** A file's chip: its name and size, a progress bar while it uploads, a remove button. */
  function paintUpload(upload) {
    if (!upload.li) {
      const li = el('li', 'upload-chip');
      li.dataset.key = String(upload.key);
      li.dataset.testid = 'upload-chip';
      const name = el('span', 'upload-name', upload.name);
      name.title = upload.name;
      const size = el('span', 'upload-size');
      const progress = el('progress', 'upload-progress');
      progress.dataset.testid = 'upload-progress';
      progress.setAttribute('aria-label', `Uploading ${upload.name}`);
      const remove = el('button', 'upload-remove', '×');
      remove.type = 'button';
      remove.addEventListener('click', () => removeUpload(upload));
      li.append(name, size, progress, remove);
      upload.li = li;
      upload.parts = { size, progress, remove };
    }
    const { size, progress, remove } = upload.parts;
    const ready = !!upload.attachment;
    upload.li.dataset.state = ready ? 'ready' : 'uploading';
    const bytes = ready && upload.attachment.size !== null ? upload.attachment.size : upload.size;
    size.textContent = humanSize(bytes);
    if (ready) {
      progress.remove();
      if (upload.attachment.media) upload.li.dataset.media = upload.attachment.media;
    } else {
      progress.max = Math.max(1, upload.size);
      progress.value = Math.min(upload.loaded, progress.max);
      progress.title = `${humanSize(upload.loaded)} of ${humanSize(upload.size)}`;
    }
    const label = ready ? `Remove ${upload.name}` : `Cancel the upload of ${upload.name}`;
    remove.setAttribute('aria-label', label);
    remove.title = label;
    return upload.li;
  }

  function wireMedia() {
    const input = $('file-input');
    $('attach-button').addEventListener('click', () => input.click());
    input.addEventListener('change', () => {
      addFiles(input.files);
      input.value = ''; // the same file may be picked again
    });
    $('message-input').addEventListener('paste', (event) => {
      const files = event.clipboardData ? event.clipboardData.files : null;
      if (!files || !files.length) return;
      event.preventDefault();
      addFiles(files);
    });
    // Files dragged over the conversation (the messages and the composer) are attached when
    // dropped there; anywhere else, dropping them does nothing (rather than leave the page for
    // the file).
    const chat = $('chat');
    const carriesFiles = (event) => !!event.dataTransfer && Array.from(event.dataTransfer.types || []).includes('Files');
    let depth = 0;
    const leave = () => {
      depth = 0;
      chat.classList.remove('drop-target');
    };
    chat.addEventListener('dragenter', (event) => {
      if (!carriesFiles(event)) return;
      event.preventDefault();
      depth++;
      chat.classList.toggle('drop-target', mayAttach());
    });
    chat.addEventListener('dragover', (event) => {
      if (!carriesFiles(event)) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = mayAttach() ? 'copy' : 'none';
    });
    chat.addEventListener('dragleave', (event) => {
      if (!carriesFiles(event)) return;
      depth = Math.max(0, depth - 1);
      if (!depth) leave();
    });
    chat.addEventListener('drop', (event) => {
      if (!carriesFiles(event)) return;
      event.preventDefault();
      leave();
      addFiles(event.dataTransfer.files);
    });
    for (const type of ['dragover', 'drop']) {
      window.addEventListener(type, (event) => {
        if (event.defaultPrevented || !carriesFiles(event)) return;
        event.preventDefault();
        if (type === 'dragover') event.dataTransfer.dropEffect = 'none';
      });
    }
    window.addEventListener('dragend', leave);
  }

  // -- Attachments of messages --
  /** Paint what a message carries; built once per set of files, links filled in as they come. */
  function paintAttachments(model) {
    const box = model.parts.files;
    const files = model.deleted ? [] : model.attachments;
    const key = files.map((file) => file.media).join(' ');
    if (box.dataset.key === key) return;
    box.dataset.key = key;
    if (media.observer) for (const item of box.children) media.observer.unobserve(item);
    box.replaceChildren(...files.map(attachmentElement));
    box.hidden = files.length === 0;
  }

  function attachmentElement(file) {
    const image = file.type.startsWith('image/') && !!file.thumbnail;
    const item = el('div', 'attachment ' + (image ? 'attachment-image' : 'attachment-file'));
    item.dataset.media = file.media;
    item.dataset.state = 'loading';
    const link = el('a', 'attachment-link');
    link.target = '_blank';
    link.rel = 'noopener noreferrer';
    const size = humanSize(file.size);
    if (image) {
      const img = el('img', 'attachment-thumb');
      img.alt = file.name;
      // The thumbnail's size: its place is kept while it loads, so nothing jumps.
      img.width = file.thumbnail.width;
      img.height = file.thumbnail.height;
      img.decoding = 'async';
      img.addEventListener('error', () => thumbnailFailed(item));
      const dims = file.width ? `, ${file.width}×${file.height}` : '';
      link.title = `${file.name} (${size}${dims}): open the full image`;
      link.append(img);
    } else {
      link.download = file.name;
      link.title = `Download ${file.name}${size ? ` (${size})` : ''}`;
      link.append(fileIcon(), el('span', 'attachment-name', file.name), el('span', 'attachment-size', size));
    }
    item.append(link);
    shownAttachment.set(item, file);
    applyLink(item);
    if (item.dataset.state === 'loading') watchAttachment(item);
    return item;
  }

  /** A document outline, drawn (no icon font or emoji needed). */
  function fileIcon() {
    const ns = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('class', 'icon attachment-icon');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    for (const d of ['M13 2H6a2 2 0 0 0-2 2v16a2 2 0 0 0 2 2h12a2 2 0 0 0 2-2V9z', 'M13 2v7h7']) {
      const path = document.createElementNS(ns, 'path');
      path.setAttribute('d', d);
      svg.append(path);
    }
    return svg;
  }

  /** The link of an attachment's file, if one is cached and good for a while yet. */
  function cachedLink(id) {
    const link = media.links.get(id);
    if (!link || link.pending) return null;
    if (link.gone) return link;
    if (link.until > Date.now()) return link;
    media.links.delete(id);
    return null;
  }

  /** Show what is known of an attachment's link: the file, or that it is gone. */
  function applyLink(item) {
    const file = shownAttachment.get(item);
    const link = file && cachedLink(file.media);
    if (!file || !link) return;
    if (link.gone) {
      item.classList.add('unavailable');
      item.dataset.state = 'gone';
      item.replaceChildren(el('span', 'attachment-name', file.name), el('span', 'attachment-gone', 'file deleted'));
      return;
    }
    const anchor = item.querySelector('.attachment-link');
    if (anchor) anchor.href = link.url;
    const img = item.querySelector('img.attachment-thumb');
    // A thumbnail already shown stays: a renewed link names the same bytes.
    if (img && !(img.complete && img.naturalWidth > 0 && img.getAttribute('src'))) img.src = link.thumb || link.url;
    item.dataset.state = 'ready';
  }

  /** A thumbnail did not load: its link may have expired on the way; ask once for a new one. */
  function thumbnailFailed(item) {
    const file = shownAttachment.get(item);
    if (!file || item.dataset.retried) return;
    item.dataset.retried = '1';
    const link = media.links.get(file.media);
    if (link && link.url) media.links.delete(file.media);
    item.dataset.state = 'loading';
    askMediaUrl(file.media);
  }

  /** Links are asked for as attachments come into view (or at once without an observer). */
  function watchAttachment(item) {
    if (typeof IntersectionObserver !== 'function') {
      item.dataset.seen = '1';
      askMediaUrl(item.dataset.media);
      return;
    }
    if (!media.observer) {
      media.observer = new IntersectionObserver(
        (changes) => {
          for (const change of changes) {
            if (!change.isIntersecting) continue;
            media.observer.unobserve(change.target);
            change.target.dataset.seen = '1';
            askMediaUrl(change.target.dataset.media);
          }
        },
        { root: $('scroller'), rootMargin: '400px 0px' },
      );
    }
    media.observer.observe(item);
  }

  /** Another room opens: what was watched is gone from the page. */
  function stopWatchingAttachments() {
    if (media.observer) media.observer.disconnect();
  }

  /** Attachments on screen now showing file `id`. */
  function shownItems(id) {
    return Array.from($('messages').querySelectorAll('.attachment')).filter((item) => item.dataset.media === id);
  }

  function askMediaUrl(id) {
    if (!id || cachedLink(id)) {
      for (const item of shownItems(id)) applyLink(item);
      return;
    }
    if (media.links.has(id)) return; // asked already
    media.queue.add(id);
    pumpMediaUrls();
  }

  /** Send the waiting `media_url` requests, a few at a time (when signed in). */
  function pumpMediaUrls() {
    if (!isAuthed()) return;
    for (const id of Array.from(media.queue)) {
      if (media.inflight >= MEDIA_URL_INFLIGHT_MAX) break;
      media.queue.delete(id);
      const items = shownItems(id);
      if (cachedLink(id)) {
        for (const item of items) applyLink(item);
        continue;
      }
      // Asked already, or no longer on screen (another room opened meanwhile).
      if (media.links.has(id) || !items.length) continue;
      if (!request({ type: 'media_url', media: id }, { kind: 'media_url', media: id })) {
        media.queue.add(id);
        break;
      }
      media.links.set(id, { pending: true });
      media.inflight++;
    }
  }

  function onMediaUrl(frame, ctx) {
    if (!ctx || ctx.kind !== 'media_url') return;
    media.inflight = Math.max(0, media.inflight - 1);
    const id = ctx.media;
    const origin = nodeOrigin();
    const url = mediaHref(frame.url, origin);
    if (!url) {
      media.links.delete(id);
    } else {
      // Kept until shortly before the node says it expires, by our clock however far off it is.
      const left = Number.isSafeInteger(frame.expires_at) ? frame.expires_at - Date.now() : 0;
      const until = Date.now() + Math.max(MEDIA_LINK_MIN_MS, left - MEDIA_LINK_MARGIN_MS);
      media.links.set(id, { url, thumb: mediaHref(frame.thumbnail_url, origin), until });
      scheduleRenewal(id, until);
      for (const item of shownItems(id)) applyLink(item);
    }
    pumpMediaUrls();
  }

  function onMediaUrlError(frame, ctx) {
    media.inflight = Math.max(0, media.inflight - 1);
    if (frame.code === 'no_such_media') {
      // Deleted (its message, or its uploader's account), or not ours to see: nothing to show.
      media.links.set(ctx.media, { gone: true });
      for (const item of shownItems(ctx.media)) applyLink(item);
    } else {
      // A passing refusal (rate limits, the store unavailable): ask again a little later.
      media.links.delete(ctx.media);
      media.queue.add(ctx.media);
      clearTimeout(S.timers.mediaRetry);
      S.timers.mediaRetry = setTimeout(pumpMediaUrls, frame.retry_after_ms || MEDIA_URL_RETRY_MS);
      return;
    }
    pumpMediaUrls();
  }

  /** Before a link expires: a new one if its file is still on screen, else it is forgotten. */
  function scheduleRenewal(id, until) {
    clearTimeout(media.renewals.get(id));
    const wait = Math.min(TIMER_MAX_MS, Math.max(0, until - Date.now()));
    media.renewals.set(
      id,
      setTimeout(() => {
        media.renewals.delete(id);
        const link = media.links.get(id);
        if (link && link.url) media.links.delete(id);
        if (shownItems(id).length) askMediaUrl(id);
      }, wait),
    );
  }

  /** The connection is gone: requests it carried are asked again on the next one. */
  function forgetMediaRequests() {
    for (const [id, link] of Array.from(media.links)) {
      if (link.pending) {
        media.links.delete(id);
        media.queue.add(id);
      }
    }
    media.inflight = 0;
  }

  /** Live (again): links for attachments in view that have none yet. */
  function askShownMedia() {
    for (const item of $('messages').querySelectorAll('.attachment[data-seen]')) {
      if (item.dataset.state === 'loading') media.queue.add(item.dataset.media);
    }
    pumpMediaUrls();
  }

  // ---- Presence -----------------------------------------------------------------------------
  const isAuthed = () => S.phase === 'live' || S.phase === 'replaying';

  function isDirect(roomId) {
    const room = S.rooms.get(roomId);
    return room ? room.kind === 'direct' : roomId.startsWith('dm:');
  }

  /** The other user(s) of a direct conversation, from its id (`dm:<a>:<b>`). */
  function directPeers(roomId) {
    return roomId.replace(/^dm:/, '').split(':').filter((name) => name && name !== S.user);
  }

  function resetPresence() {
    S.presence = new Map();
    S.watchKey = null;
    S.typingReqs.clear();
    S.typingForbidden = new Set();
    S.typingSent = null;
    for (const typers of S.typers.values()) for (const timer of typers.values()) clearTimeout(timer);
    S.typers = new Map();
    S.receipts = new Map();
    S.myPresence = null;
    renderTyping();
    renderMyPresence();
  }

  function validPresenceChoice(value) {
    if (!value || (value.state !== 'online' && value.state !== 'away')) return null;
    return { state: value.state, status: typeof value.status === 'string' ? value.status : '' };
  }

  /** The user picked a state in the presence menu. */
  function choosePresence(state, status) {
    const bytes = byteLength(status);
    if (bytes > STATUS_MAX_BYTES) {
      $('presence-error').textContent = `Status too long: ${bytes} bytes, at most ${STATUS_MAX_BYTES}.`;
      $('presence-status').setAttribute('aria-invalid', 'true');
      return;
    }
    $('presence-status').removeAttribute('aria-invalid');
    $('presence-error').textContent = '';
    S.myPresence = { state, status };
    if (S.user) storage.set(keys.presence(S.user), S.myPresence);
    renderMyPresence();
    sendMyPresence();
    $('presence-menu').open = false;
    $('presence-summary').focus();
  }

  /** Tell the node the chosen state; again after every (re)connect, as the node forgets it. */
  function sendMyPresence() {
    const mine = S.myPresence;
    if (!mine || !isAuthed()) return;
    request({ type: 'set_presence', state: mine.state, status: mine.status }, { kind: 'set_presence' });
  }

  function renderMyPresence() {
    const mine = S.myPresence || { state: 'online', status: '' };
    const badge = $('my-presence');
    badge.dataset.state = mine.state;
    const label = mine.state === 'away' ? 'Away' : 'Online';
    $('my-presence-text').textContent = mine.status ? `${label}: ${mine.status}` : label;
    $('presence-summary').title = 'Set your presence';
    if (S.user) paintPresence(S.user);
  }

  /** Who to watch: the open room's members first (they are on screen), then direct peers. */
  function watchTargets() {
    const users = [];
    const seen = new Set([S.user]);
    const add = (user) => {
      if (typeof user === 'string' && user && !seen.has(user) && users.length < WATCH_MAX) {
        seen.add(user);
        users.push(user);
      }
    };
    const view = S.view;
    if (view && isDirect(view.room)) directPeers(view.room).forEach(add);
    if (view && view.members) view.members.forEach(add);
    for (const room of S.rooms.values()) {
      if (room.kind === 'direct') directPeers(room.id).forEach(add);
    }
    return users;
  }

  let watchTimer = null;
  /** Changes come in bursts (a room list, a member page): send the watch list once after them. */
  function scheduleWatch() {
    if (watchTimer) return;
    watchTimer = setTimeout(() => {
      watchTimer = null;
      syncWatch();
    }, 50);
  }

  function syncWatch() {
    if (!isAuthed() || !S.user) return;
    const users = watchTargets();
    const key = users.slice().sort().join(',');
    if (key === S.watchKey || (key === '' && S.watchKey === null)) return;
    if (!request({ type: 'watch_presence', users }, { kind: 'watch' })) return;
    S.watchKey = key;
    // Presence of users nobody shows any more would only go stale.
    const wanted = new Set(users);
    for (const user of Array.from(S.presence.keys())) if (!wanted.has(user)) S.presence.delete(user);
  }

  function validPresence(p) {
    return p && typeof p.user === 'string' && (p.state === 'online' || p.state === 'away' || p.state === 'offline');
  }

  function onPresenceList(frame) {
    for (const p of Array.isArray(frame.users) ? frame.users : []) if (validPresence(p)) S.presence.set(p.user, p);
    for (const user of Array.isArray(frame.hidden) ? frame.hidden : []) S.presence.delete(user);
    repaintPresence();
  }

  function onPresence(frame) {
    if (!validPresence(frame)) return;
    const p = { user: frame.user, state: frame.state };
    if (frame.status) p.status = frame.status;
    if (frame.last_seen) p.last_seen = frame.last_seen;
    S.presence.set(frame.user, p);
    paintPresence(frame.user);
  }

  function lastSeenText(ms) {
    if (!ms) return '';
    const ago = Date.now() - ms;
    if (ago < 60000) return 'last seen just now';
    if (ago < 3600000) return `last seen ${Math.floor(ago / 60000)} min ago`;
    const sameDay = new Date(ms).toDateString() === new Date().toDateString();
    return `last seen ${sameDay ? 'at ' : ''}${formatTime(ms)}`;
  }

  /** `short` for screen readers next to a name, `long` for the room header and tooltips. */
  function describePresence(p) {
    if (!p) return { state: 'unknown', short: '', long: '' };
    const status = p.status ? ` — ${p.status}` : '';
    if (p.state === 'online' || p.state === 'away') return { state: p.state, short: p.state, long: p.state + status };
    const seen = lastSeenText(p.last_seen);
    return { state: 'offline', short: 'offline', long: (seen ? `offline, ${seen}` : 'offline') + status };
  }

  /** A dot for `user`'s presence; kept current by paintPresence. */
  function presenceBadge(user) {
    const badge = el('span', 'pres');
    badge.dataset.user = user;
    const dot = el('span', 'pres-dot');
    dot.setAttribute('aria-hidden', 'true');
    badge.append(dot, el('span', 'sr-only'));
    paintBadge(badge);
    return badge;
  }

  /** What the page knows of `user`'s presence; for the user themself, what they chose. */
  function presenceFor(user) {
    if (user && user === S.user) {
      const mine = S.myPresence || { state: 'online', status: '' };
      return mine.status ? { user, state: mine.state, status: mine.status } : { user, state: mine.state };
    }
    return S.presence.get(user);
  }

  function paintBadge(badge) {
    const d = describePresence(presenceFor(badge.dataset.user));
    if (badge.dataset.state !== d.state) badge.dataset.state = d.state;
    const title = d.long ? `${badge.dataset.user}: ${d.long}` : '';
    if (badge.title !== title) badge.title = title;
    const spoken = badge.querySelector('.sr-only');
    const text = d.short ? ` (${d.short})` : '';
    if (spoken && spoken.textContent !== text) spoken.textContent = text;
  }

  function paintPresence(user) {
    for (const badge of document.querySelectorAll(`.pres[data-user="${CSS.escape(user)}"]`)) paintBadge(badge);
    const view = S.view;
    if (view && ((view.members && view.members.includes(user)) || (isDirect(view.room) && directPeers(view.room).includes(user)))) {
      renderRoomPresence();
    }
  }

  function repaintPresence() {
    for (const badge of document.querySelectorAll('.pres[data-user]')) paintBadge(badge);
    renderRoomPresence();
  }

  // ---- Members of the open room -------------------------------------------------------------
  /** A group room's first page of members, with their presence. Direct peers come from the id. */
  function requestRoomExtras(view) {
    if (!isAuthed()) return;
    if (!isDirect(view.room)) request({ type: 'list_members', room: view.room }, { kind: 'members', room: view.room });
    request({ type: 'receipts', room: view.room }, { kind: 'receipts', room: view.room });
    requestMissingQuotes(view);
  }

  let membersTimer = null;
  /** Someone joined or left the open room: its member page is stale. */
  function refreshMembersSoon(view) {
    if (membersTimer || isDirect(view.room) || view.removed) return;
    membersTimer = setTimeout(() => {
      membersTimer = null;
      if (S.view === view && isAuthed()) request({ type: 'list_members', room: view.room }, { kind: 'members', room: view.room });
    }, 300);
  }

  function onMembers(frame) {
    const view = S.view;
    if (!view || view.room !== frame.room || !Array.isArray(frame.members)) return;
    view.members = frame.members.filter((user) => typeof user === 'string');
    view.membersTotal = Number(frame.total) || view.members.length;
    view.membersOnline = Number(frame.online) || 0;
    view.membersMore = !!frame.more;
    const presence = Array.isArray(frame.presence) ? frame.presence : [];
    for (const p of presence) if (validPresence(p)) S.presence.set(p.user, p);
    // The node's roles as of the newest entry the page has seen; an entry after it says more.
    const roles = Array.isArray(frame.roles) ? frame.roles : [];
    const asOf = S.maxSeq.get(view.room) || 0;
    frame.members.forEach((user, i) => {
      if (typeof user === 'string' && RANKS[roles[i]] && user !== S.user) noteRole(view, user, roles[i], asOf);
    });
    // The member being moderated left (or was removed by someone else).
    if (view.moderating && !view.members.includes(view.moderating)) closeModPanel(false);
    renderMembers();
    scheduleWatch();
  }

  function renderMembers() {
    const view = S.view;
    const list = $('member-list');
    // No longer a member: the list the page has is stale and the node shows no newer one.
    if (!view || isDirect(view.room) || !view.members || view.removed) {
      list.hidden = true;
      list.replaceChildren();
    } else {
      // Redrawn while the user is on a Moderate button: the focus stays on it.
      const focused = list.contains(document.activeElement) ? document.activeElement.dataset.moderate : undefined;
      list.replaceChildren(...view.members.map((user) => memberElement(view, user)));
      list.hidden = view.members.length === 0;
      const refocus = focused === undefined ? null : moderateButton(focused);
      if (refocus) refocus.focus();
    }
    renderRoomPresence();
  }

  /** A member: presence, name, role when above member, and the moderation button when allowed. */
  function memberElement(view, user) {
    const li = el('li', 'member');
    li.dataset.user = user;
    const role = memberRole(view, user);
    li.dataset.role = role;
    li.append(presenceBadge(user), el('span', 'member-name', user));
    if (role !== 'member') li.append(el('span', 'member-role', role));
    if (user === S.user) li.append(el('span', 'member-you', '(you)'));
    if (mayModerate(view, user)) {
      const button = el('button', 'link-button member-moderate', 'Moderate');
      button.type = 'button';
      button.dataset.moderate = user;
      button.setAttribute('aria-label', `Moderate ${user}`);
      button.setAttribute('aria-expanded', view.moderating === user ? 'true' : 'false');
      button.setAttribute('aria-controls', 'mod-panel');
      button.addEventListener('click', () => toggleModPanel(view, user));
      li.append(button);
    }
    return li;
  }

  /** Under the room's title: the peer's presence, or the group's member counts. */
  function renderRoomPresence() {
    const view = S.view;
    const line = $('room-presence');
    if (!view) {
      line.hidden = true;
      line.replaceChildren();
      return;
    }
    if (isDirect(view.room)) {
      const peers = directPeers(view.room);
      if (peers.length !== 1) {
        line.hidden = true;
        return;
      }
      const d = describePresence(S.presence.get(peers[0]));
      const text = el('span', 'room-presence-text', d.long || 'presence unknown');
      const badge = presenceBadge(peers[0]);
      badge.lastChild.remove(); // the text next to it says the same
      line.replaceChildren(badge, text);
      line.dataset.state = d.state;
      line.hidden = false;
      return;
    }
    if (!view.members || view.removed) {
      line.hidden = true;
      return;
    }
    // With the whole list at hand the count follows live presence; otherwise the node's count.
    const online = view.membersMore
      ? view.membersOnline
      : view.members.filter((user) => {
          const p = presenceFor(user);
          return p && p.state !== 'offline';
        }).length;
    const total = view.membersTotal;
    line.replaceChildren(el('span', 'room-presence-text', `${total} ${total === 1 ? 'member' : 'members'} · ${online} online`));
    delete line.dataset.state;
    line.hidden = false;
  }

  // ---- Typing -------------------------------------------------------------------------------
  /** The composer changed: say we are typing (at most every TYPING_EVERY_MS), or that we stopped. */
  function noteTyping() {
    const view = S.view;
    if (!view) return;
    if (!$('message-input').value.trim()) {
      stopTyping();
      return;
    }
    const sent = S.typingSent;
    const now = Date.now();
    if (sent && sent.room === view.room && now - sent.at < TYPING_EVERY_MS) return;
    if (sent && sent.room !== view.room) stopTyping();
    if (sendTyping(view.room, true)) S.typingSent = { room: view.room, at: now };
  }

  function stopTyping() {
    const sent = S.typingSent;
    if (!sent) return;
    S.typingSent = null;
    sendTyping(sent.room, false);
  }

  /** `typing` has no reply on success, so its req is kept apart from `pending`. */
  function sendTyping(room, active) {
    if (S.phase !== 'live' || S.typingForbidden.has(room)) return false;
    const req = ++S.req;
    if (!sendFrame({ type: 'typing', req, room, active })) return false;
    S.typingReqs.set(req, room);
    while (S.typingReqs.size > TYPING_REQS_MAX) S.typingReqs.delete(S.typingReqs.keys().next().value);
    return true;
  }

  /**
   * Replies come in request order: any frame answering a later request means earlier `typing`
   * requests succeeded. An error for a `typing` is never shown: in a room too large for typing
   * pushes (`forbidden`) the client just stops sending them. True when the frame was consumed.
   */
  function settleTyping(frame) {
    const room = S.typingReqs.get(frame.req);
    for (const req of Array.from(S.typingReqs.keys())) if (req < frame.req) S.typingReqs.delete(req);
    if (room === undefined) return false;
    S.typingReqs.delete(frame.req);
    if (frame.type !== 'error') return false;
    if (frame.code === 'forbidden') {
      S.typingForbidden.add(room);
      if (S.typingSent && S.typingSent.room === room) S.typingSent = null;
    }
    return true;
  }

  function onTyping(frame) {
    if (typeof frame.room !== 'string' || typeof frame.user !== 'string' || frame.user === S.user) return;
    if (!frame.active) {
      dropTyper(frame.room, frame.user);
      return;
    }
    let typers = S.typers.get(frame.room);
    if (!typers) {
      typers = new Map();
      S.typers.set(frame.room, typers);
    }
    clearTimeout(typers.get(frame.user));
    const ttl = frame.expires_in_ms > 0 ? Math.min(frame.expires_in_ms, TYPING_TTL_MAX_MS) : TYPING_TTL_FALLBACK_MS;
    typers.set(
      frame.user,
      setTimeout(() => dropTyper(frame.room, frame.user), ttl),
    );
    if (S.view && S.view.room === frame.room) renderTyping();
  }

  function dropTyper(room, user) {
    const typers = S.typers.get(room);
    if (!typers || !typers.has(user)) return;
    clearTimeout(typers.get(user));
    typers.delete(user);
    if (!typers.size) S.typers.delete(room);
    if (S.view && S.view.room === room) renderTyping();
  }

  function renderTyping() {
    const view = S.view;
    const typers = view ? S.typers.get(view.room) : null;
    const names = typers ? Array.from(typers.keys()).sort() : [];
    let text = '';
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = `${names[0]}, ${names[1]} and ${names.length - 2} more are typing…`;
    const line = $('typing');
    if (line.textContent !== text) line.textContent = text;
  }

  // ---- Receipts -----------------------------------------------------------------------------
  function receiptsOf(room) {
    let receipts = S.receipts.get(room);
    if (!receipts) {
      receipts = { read: new Map(), delivered: new Map() };
      S.receipts.set(room, receipts);
    }
    return receipts;
  }

  function onReceipt(frame) {
    if (typeof frame.room !== 'string' || typeof frame.user !== 'string' || frame.user === S.user) return;
    if (!Number.isSafeInteger(frame.seq)) return;
    if (!S.rooms.has(frame.room) && !(S.view && S.view.room === frame.room)) return;
    const receipts = receiptsOf(frame.room);
    const map = frame.kind === 'read' ? receipts.read : frame.kind === 'delivered' ? receipts.delivered : null;
    if (!map || (map.get(frame.user) || 0) >= frame.seq) return;
    map.set(frame.user, frame.seq);
    if (S.view && S.view.room === frame.room) paintReceipts();
  }

  function onReceipts(frame) {
    if (typeof frame.room !== 'string' || !Array.isArray(frame.reads)) return;
    const receipts = receiptsOf(frame.room);
    for (const read of frame.reads) {
      if (!read || typeof read.user !== 'string' || read.user === S.user || !Number.isSafeInteger(read.seq)) continue;
      if ((receipts.read.get(read.user) || 0) < read.seq) receipts.read.set(read.user, read.seq);
    }
    if (S.view && S.view.room === frame.room) paintReceipts();
  }

  /** The other members' positions, highest first: `read`, and `got` (delivered or read). */
  function receiptRanks(view) {
    if (view.ranks) return view.ranks;
    const receipts = S.receipts.get(view.room);
    const read = [];
    const got = new Map();
    if (receipts) {
      for (const [user, seq] of receipts.read) {
        if (seq > 0) read.push([seq, user]);
        got.set(user, seq);
      }
      for (const [user, seq] of receipts.delivered) got.set(user, Math.max(seq, got.get(user) || 0));
    }
    const desc = (a, b) => b[0] - a[0] || a[1].localeCompare(b[1]);
    view.ranks = {
      read: read.sort(desc),
      got: Array.from(got, ([user, seq]) => [seq, user]).filter(([seq]) => seq > 0).sort(desc),
    };
    return view.ranks;
  }

  /** How many of `ranked` (highest first) are at or past `seq`. */
  function countAtLeast(ranked, seq) {
    let lo = 0;
    let hi = ranked.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (ranked[mid][0] >= seq) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  function namesOf(ranked, count) {
    const names = ranked.slice(0, Math.min(count, RECEIPT_NAMES_MAX)).map(([, user]) => user);
    return count > names.length ? `${names.join(', ')} and ${count - names.length} more` : names.join(', ');
  }

  function paintReceipts() {
    const view = S.view;
    if (!view) return;
    view.ranks = null;
    const ranks = receiptRanks(view);
    const direct = isDirect(view.room);
    for (const li of view.entries.values()) paintReceipt(li, ranks, direct);
  }

  /** ✓ sent (committed), ✓✓ delivered to a member's connection, ✓✓ read. */
  function paintReceipt(li, ranks, direct) {
    const receipt = li.querySelector('.receipt');
    if (!receipt) return;
    const seq = Number(li.dataset.seq);
    const readers = countAtLeast(ranks.read, seq);
    const got = countAtLeast(ranks.got, seq);
    let state;
    let text;
    let title;
    if (readers > 0) {
      state = 'read';
      text = direct ? 'Read' : `Read by ${readers}`;
      title = `Read by ${namesOf(ranks.read, readers)}`;
    } else if (got > 0) {
      state = 'delivered';
      text = 'Delivered';
      title = `Delivered to ${namesOf(ranks.got, got)}`;
    } else {
      state = 'sent';
      text = 'Sent';
      title = 'Sent: stored by the server';
    }
    if (receipt.dataset.receipt === state && receipt.title === title) return;
    receipt.dataset.receipt = state;
    receipt.title = title;
    receipt.firstChild.textContent = state === 'sent' ? '✓' : '✓✓';
    receipt.lastChild.textContent = ' ' + text;
  }

  // ---- Composer -----------------------------------------------------------------------------
  function updateByteCount() {
    const input = $('message-input');
    const bytes = byteLength(input.value);
    const max = S.limits.max_body_bytes;
    const counter = $('byte-count');
    counter.textContent = `${bytes} / ${max} bytes`;
    counter.classList.toggle('over', bytes > max);
    if (bytes <= max && input.getAttribute('aria-invalid') === 'true') {
      input.removeAttribute('aria-invalid');
      $('composer-error').textContent = '';
    }
  }

  function renderComposerState() {
    // Writing works offline too: messages wait in the outbox. Not where the node would refuse
    // any message (posting for moderators only, a mute, no longer a member): the reason shows.
    const view = S.view;
    const blocked = view ? postingBlocked(view) : null;
    const enabled = !!view && !blocked;
    $('message-input').disabled = !enabled;
    // Not while a file is on its way: the message would go without it.
    $('send-button').disabled = !enabled || uploadsBusy();
    $('attach-button').disabled = !enabled;
    $('file-input').disabled = !enabled;
    const note = $('composer-note');
    if (note.textContent !== (blocked || '')) note.textContent = blocked || '';
    note.hidden = !blocked;
    scheduleMuteEnd(view);
  }

  /** A mute ends by itself: the composer and the message actions come back then. */
  function scheduleMuteEnd(view) {
    clearTimeout(S.timers.mute);
    const wait = view ? mutedUntil(view.room) - Date.now() : 0;
    if (wait > 0) {
      S.timers.mute = setTimeout(() => renderStanding(view), Math.min(wait + 50, TIMER_MAX_MS));
    }
  }

  // ---- Push notifications -------------------------------------------------------------------
  // "Notifications on this browser" (the sidebar). Turning it on asks the browser's permission,
  // registers the service worker (/sw.js, which shows and clears the notifications), subscribes
  // with the node's VAPID public key (the `palaver-vapid-key` meta tag) and registers the
  // subscription with the node as a `webpush` device, with the "show message text" choice as its
  // `preview`. The device's id is kept per user (localStorage) so turning it off can remove it
  // (`remove_device`) and end the subscription. Whatever cannot be done (no key configured, a
  // browser without push, permission refused, a failed subscription) is said under the control,
  // which stays off. A click on a notification opens its room (see openAskedRoom).
  const PUSH_WORKER = '/sw.js';
  /** What `app` a device of this client names (free-form for `webpush`). */
  const PUSH_APP = 'palaver-web';
  const push = {
    /** Turning on or off is under way: the control waits for it, showing what was asked. */
    busy: false,
    wanted: false,
    /** The request to the node under way: 'register' | 'remove' | null. */
    inflight: null,
    /** The user whose stored device was compared with the browser's subscription this page. */
    checkedFor: null,
    /** A room to open once it is known: from a notification click, or `#room=` in the URL. */
    askedRoom: null,
  };

  function vapidKey() {
    const meta = document.querySelector('meta[name="palaver-vapid-key"]');
    const key = meta ? meta.content.trim() : '';
    return /^[A-Za-z0-9_-]+$/.test(key) ? key : '';
  }

  function base64urlBytes(text) {
    const base64 = text.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((text.length + 3) % 4);
    return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  }

  /** Whether a subscription was made with `key` (bytes): a node with a new key needs a new one. */
  function sameKey(subscription, key) {
    const theirs = subscription.options && subscription.options.applicationServerKey;
    if (!theirs) return true; // the browser does not say: assume so
    const bytes = new Uint8Array(theirs);
    return bytes.length === key.length && bytes.every((b, i) => b === key[i]);
  }

  /** Why this page cannot offer push notifications, or null when it can. */
  function pushUnavailable() {
    if (!vapidKey()) return 'This server does not send push notifications (it has no Web Push key configured).';
    if (!window.isSecureContext) return 'Notifications need the page to be opened over HTTPS.';
    if (!('serviceWorker' in navigator) || !('PushManager' in window) || !('Notification' in window)) {
      return 'This browser cannot receive push notifications.';
    }
    return null;
  }

  /** The device registered for the signed-in user on this browser: { id, endpoint, preview } or null. */
  function storedDevice() {
    const stored = S.user ? storage.get(keys.push(S.user), null) : null;
    return stored && typeof stored.id === 'string' && typeof stored.endpoint === 'string' ? stored : null;
  }

  /** Show the control as it stands; `status` (when given) replaces the line under it. */
  function renderPush(status) {
    const why = pushUnavailable();
    const device = storedDevice();
    $('push-enabled').checked = push.busy ? push.wanted : !!device;
    $('push-enabled').disabled = !!why || push.busy;
    $('push-preview').disabled = !!why || push.busy;
    if (device && !push.busy) $('push-preview').checked = !!device.preview;
    $('push-box').dataset.state = why ? 'unavailable' : push.busy ? 'busy' : device ? 'on' : 'off';
    $('push-box').setAttribute('aria-busy', String(push.busy));
    // Why it cannot be had stays said; otherwise the latest outcome.
    if (why) $('push-status').textContent = why;
    else if (status !== undefined) $('push-status').textContent = status;
  }

  /** Turning on failed: say why and leave the control off. */
  function pushFailed(text) {
    push.busy = false;
    renderPush(text);
  }

  async function pushRegistration() {
    await navigator.serviceWorker.register(PUSH_WORKER);
    // Subscribing needs an active worker: `ready` waits for it.
    return navigator.serviceWorker.ready;
  }

  async function enablePush() {
    const why = pushUnavailable();
    if (why) return pushFailed(why);
    if (!isAuthed()) return pushFailed('Not connected; try again when the connection is back.');
    const user = S.user;
    push.busy = true;
    push.wanted = true;
    renderPush('Turning notifications on…');
    try {
      const permission = await Notification.requestPermission();
      if (permission !== 'granted') {
        return pushFailed(
          permission === 'denied'
            ? "Notifications are blocked for this site: allow them in the browser's site settings, then try again."
            : 'Notifications were not allowed.',
        );
      }
      const registration = await pushRegistration();
      const key = base64urlBytes(vapidKey());
      let subscription = await registration.pushManager.getSubscription();
      if (subscription && !sameKey(subscription, key)) {
        await subscription.unsubscribe();
        subscription = null;
      }
      if (!subscription) subscription = await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
      if (S.user !== user) return pushFailed('');
      if (!registerDevice(subscription, $('push-preview').checked)) {
        pushFailed('Not connected; try again when the connection is back.');
      }
    } catch (err) {
      pushFailed(`This browser could not be subscribed to notifications (${(err && err.message) || err}).`);
    }
    return undefined;
  }

  /** Register (or update) this browser's subscription with the node; false when not sent. */
  function registerDevice(subscription, preview) {
    const json = subscription.toJSON();
    if (!json || !json.keys) return false;
    // As the browser gives it (the node ignores `expirationTime` and anything else it adds).
    const device = {
      platform: 'webpush',
      subscription: json,
      app: PUSH_APP,
      preview: !!preview,
    };
    const locale = navigator.language || '';
    if (/^[A-Za-z0-9_-]{1,35}$/.test(locale)) device.locale = locale;
    if (!request({ type: 'register_device', device }, { kind: 'push_register', user: S.user, subscription, preview: !!preview })) {
      return false;
    }
    push.busy = true;
    push.wanted = true;
    push.inflight = 'register';
    renderPush();
    return true;
  }

  function onDevice(frame, ctx) {
    if (!ctx || ctx.kind !== 'push_register' || ctx.user !== S.user || !frame.device) return;
    const before = storedDevice();
    storage.set(keys.push(S.user), { id: frame.device.id, endpoint: ctx.subscription.endpoint, preview: !!frame.device.preview });
    // A subscription the browser renewed is a new device: the old one would only fail.
    if (before && before.id !== frame.device.id) request({ type: 'remove_device', id: before.id }, { kind: 'push_forget' });
    push.busy = false;
    push.inflight = null;
    renderPush(
      frame.device.preview
        ? 'On: messages you miss while away show here, with their text.'
        : 'On: messages you miss while away show here (who wrote where, not the text).',
    );
  }

  /** The node refused to register or remove the device. */
  function onPushError(frame, ctx) {
    if (ctx.user !== S.user) return;
    if (ctx.kind === 'push_remove' && frame.code === 'no_such_device') {
      onPushRemoved(ctx);
      return;
    }
    push.busy = false;
    push.inflight = null;
    if (ctx.kind === 'push_register') {
      // Not registered: nothing may arrive for a subscription nobody knows about.
      if (!storedDevice()) ctx.subscription.unsubscribe().catch(() => {});
      renderPush(`Notifications not turned on: ${describeError(frame)}`);
    } else {
      renderPush(`Notifications not turned off: ${describeError(frame)}`);
    }
  }

  async function browserSubscription() {
    const registration = await navigator.serviceWorker.getRegistration('/');
    return registration ? registration.pushManager.getSubscription() : null;
  }

  async function disablePush() {
    const device = storedDevice();
    if (!device) return renderPush('');
    if (!request({ type: 'remove_device', id: device.id }, { kind: 'push_remove', user: S.user })) {
      return renderPush('Not connected; try again when the connection is back.');
    }
    push.busy = true;
    push.wanted = false;
    push.inflight = 'remove';
    renderPush('Turning notifications off…');
    return undefined;
  }

  /** The connection went before the node answered. */
  function pushLostConnection() {
    const what = push.inflight;
    if (!what) return;
    push.inflight = null;
    push.busy = false;
    // The node may have registered it: a subscription the page does not count as on must not
    // stay, or notifications would come with the control off.
    if (what === 'register' && !storedDevice()) {
      browserSubscription()
        .then((subscription) => subscription && subscription.unsubscribe())
        .catch(() => {});
    }
    renderPush('The connection was lost before the node answered; try again.');
  }

  /** The node forgot the device (or had already): end the subscription too. */
  async function onPushRemoved(ctx) {
    if (ctx.user !== S.user) return;
    storage.remove(keys.push(S.user));
    push.inflight = null;
    try {
      const subscription = await browserSubscription();
      if (subscription) await subscription.unsubscribe();
    } catch (_) {
      // The node no longer pushes to it either way.
    }
    push.busy = false;
    renderPush('Off.');
  }

  function changePushPreview() {
    const device = storedDevice();
    if (!device || push.busy) return;
    browserSubscription()
      .then((subscription) => {
        if (!subscription || !registerDevice(subscription, $('push-preview').checked)) {
          $('push-preview').checked = device.preview;
          renderPush('Not changed: not connected, or this browser lost its subscription.');
        }
      })
      .catch(() => renderPush());
  }

  /**
   * Once per page and user, when signed in: does the browser still have the subscription the
   * node knows? The user may have revoked the permission, or the browser renewed the subscription
   * (a new endpoint) or the node got a new key.
   */
  async function checkPush() {
    const device = storedDevice();
    if (!device || push.checkedFor === S.user || push.busy) return;
    const user = S.user;
    push.checkedFor = user;
    let subscription = null;
    try {
      if (!pushUnavailable() && Notification.permission === 'granted') subscription = await browserSubscription();
      if (subscription && !sameKey(subscription, base64urlBytes(vapidKey()))) {
        await subscription.unsubscribe();
        const registration = await pushRegistration();
        subscription = await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: base64urlBytes(vapidKey()) });
      }
    } catch (_) {
      subscription = null;
    }
    if (S.user !== user) return;
    if (!subscription) {
      request({ type: 'remove_device', id: device.id }, { kind: 'push_forget' });
      storage.remove(keys.push(user));
      renderPush('Notifications were turned off in the browser; turn them on here again to get them.');
    } else if (subscription.endpoint !== device.endpoint) {
      registerDevice(subscription, device.preview);
    }
  }

  /** Logging out or a deleted account: this browser gets nothing more for the user. */
  function forgetPush(user, tellNode) {
    const device = user ? storage.get(keys.push(user), null) : null;
    if (!device) return;
    storage.remove(keys.push(user));
    if (tellNode && device.id) request({ type: 'remove_device', id: device.id }, { kind: 'push_forget' });
    if ('serviceWorker' in navigator) {
      browserSubscription()
        .then((subscription) => subscription && subscription.unsubscribe())
        .catch(() => {});
    }
  }

  /** The room a notification (or a `#room=` link) asked for, once it is in the room list. */
  function openAskedRoom() {
    const room = push.askedRoom;
    if (!room || !S.rooms.has(room)) return false;
    push.askedRoom = null;
    openRoom(room, { focus: true });
    return true;
  }

  function askForRoom(room) {
    if (typeof room !== 'string' || !room) return;
    push.askedRoom = room;
    openAskedRoom();
  }

  function wirePush() {
    const match = /^#room=([^&]+)$/.exec(location.hash);
    if (match) {
      try {
        push.askedRoom = decodeURIComponent(match[1]);
      } catch (_) {
        /* not a room */
      }
      history.replaceState(null, '', location.pathname + location.search);
    }
    $('push-enabled').addEventListener('change', () => {
      if ($('push-enabled').checked) enablePush();
      else disablePush();
    });
    $('push-preview').addEventListener('change', changePushPreview);
    if ('serviceWorker' in navigator) {
      // The service worker says which notification was clicked (sw.js, openRoom).
      navigator.serviceWorker.addEventListener('message', (event) => {
        if (event.data && event.data.type === 'open_room') askForRoom(event.data.room);
      });
      navigator.serviceWorker.startMessages();
    }
    renderPush();
  }

  // ---- Views --------------------------------------------------------------------------------
  function showAuthView() {
    document.body.dataset.view = 'auth';
    $('auth-view').hidden = false;
    $('chat-view').hidden = true;
    $('me').hidden = true;
    if (!$('auth-user').value) $('auth-user').value = storage.get(keys.lastUser, '') || '';
  }

  function showChatView() {
    document.body.dataset.view = 'chat';
    $('auth-view').hidden = true;
    $('chat-view').hidden = false;
    $('me').hidden = false;
    document.body.dataset.pane = S.pane;
  }

  // ---- Wiring -------------------------------------------------------------------------------
  function wire() {
    $('auth-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const action = event.submitter && event.submitter.value === 'register' ? 'register' : 'login';
      submitAuth(action);
    });
    $('create-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const name = $('create-name').value.trim();
      if (!name) return;
      $('side-error').textContent = '';
      if (!request({ type: 'create_room', name, private: $('create-private').checked }, { kind: 'create' })) {
        $('side-error').textContent = 'Not connected; try again when the connection is back.';
      }
    });
    $('join-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const room = $('join-id').value.trim();
      if (!room) return;
      $('side-error').textContent = '';
      if (!request({ type: 'join', room }, { kind: 'join' })) {
        $('side-error').textContent = 'Not connected; try again when the connection is back.';
      }
    });
    $('direct-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const user = $('direct-user').value.trim().toLowerCase();
      if (!user) return;
      $('side-error').textContent = '';
      if (!request({ type: 'open_direct', user }, { kind: 'direct' })) {
        $('side-error').textContent = 'Not connected; try again when the connection is back.';
      }
    });
    $('composer').addEventListener('submit', (event) => {
      event.preventDefault();
      submitMessage();
    });
    $('message-input').addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        submitMessage();
      } else if (event.key === 'Escape' && S.view && S.view.replyTo !== null) {
        event.preventDefault();
        cancelReply();
      }
    });
    $('reply-cancel').addEventListener('click', () => {
      cancelReply();
      $('message-input').focus();
    });
    $('message-input').addEventListener('input', () => {
      updateByteCount();
      noteTyping();
    });
    wireMedia();
    $('presence-form').addEventListener('submit', (event) => {
      event.preventDefault();
      choosePresence($('presence-state').value === 'away' ? 'away' : 'online', $('presence-status').value.trim());
    });
    $('presence-clear').addEventListener('click', () => choosePresence('online', ''));
    // Filled in synchronously as the menu opens (`toggle` fires later, after the user may
    // already have picked something).
    $('presence-summary').addEventListener('click', () => {
      if ($('presence-menu').open) return;
      const mine = S.myPresence || { state: 'online', status: '' };
      $('presence-state').value = mine.state;
      $('presence-status').value = mine.status;
      $('presence-status').removeAttribute('aria-invalid');
      $('presence-error').textContent = '';
    });
    $('presence-menu').addEventListener('toggle', () => {
      if ($('presence-menu').open && document.activeElement === $('presence-summary')) $('presence-state').focus();
    });
    document.addEventListener('click', (event) => {
      if ($('presence-menu').open && !$('presence-menu').contains(event.target)) $('presence-menu').open = false;
    });
    $('presence-menu').addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && $('presence-menu').open) {
        $('presence-menu').open = false;
        $('presence-summary').focus();
      }
    });
    setInterval(repaintPresence, PRESENCE_TICK_MS);
    $('scroller').addEventListener('scroll', () => {
      if ($('scroller').scrollTop < 60) loadOlder();
      if (nearBottom()) $('jump').hidden = true;
    });
    $('load-older').addEventListener('click', loadOlder);
    $('jump').addEventListener('click', scrollToBottom);
    $('back').addEventListener('click', () => {
      setPane('rooms');
      const current = document.querySelector('.room-button[aria-current]');
      (current || $('create-name')).focus();
    });
    $('copy-id').addEventListener('click', copyRoomId);
    $('settings-toggle').addEventListener('click', toggleSettings);
    $('notify-level').addEventListener('change', setNotifyLevel);
    $('settings-form').addEventListener('submit', (event) => {
      event.preventDefault();
      submitSettings();
    });
    $('settings-cancel').addEventListener('click', () => closeSettings(true));
    $('settings-topic').addEventListener('input', updateTopicCount);
    $('unban-form').addEventListener('submit', (event) => {
      event.preventDefault();
      if (S.view) unban(S.view, $('unban-user').value.trim().toLowerCase());
    });
    for (const [panel, close] of [['settings-panel', closeSettings], ['mod-panel', closeModPanel]]) {
      $(panel).addEventListener('keydown', (event) => {
        if (event.key !== 'Escape') return;
        event.preventDefault();
        close(true);
      });
    }
    $('delete-account').addEventListener('click', openDeleteAccount);
    $('delete-dialog').addEventListener('close', () => {
      $('delete-dialog').replaceChildren();
      if (!$('me').hidden) $('delete-account').focus();
    });
    $('retry-now').addEventListener('click', retryNow);
    $('conn-error-retry').addEventListener('click', retryNow);
    $('logout').addEventListener('click', () => {
      // Nothing of this user's should show on this browser any more.
      forgetPush(S.user, true);
      signOut('');
      // A connection cannot be un-authenticated: start a fresh one.
      S.attempt = 0;
      connect();
    });
    document.addEventListener('visibilitychange', markRead);
    window.addEventListener('focus', markRead);
    window.addEventListener('online', () => {
      if (S.phase === 'waiting') retryNow();
    });
    window.addEventListener('offline', () => {
      // A socket over a dead network may take long to notice; the ping catches it, but the
      // browser telling us is quicker.
      if (S.ws) drop('the network went away', false);
    });
    window.addEventListener('storage', (event) => {
      // Another tab of this user chose a presence (and sent it): show it, re-send it on reconnect.
      if (S.user && event.key === keys.presence(S.user)) {
        S.myPresence = validPresenceChoice(storage.get(event.key, null));
        renderMyPresence();
        return;
      }
      // Another tab of this user queued or confirmed messages. Its items are sent by it, or by
      // this tab on its next flush if that tab went away (same ids, so at most a duplicate ack).
      if (S.user && event.key === keys.outbox(S.user)) {
        const outbox = storage.get(event.key, []);
        if (Array.isArray(outbox)) {
          S.outbox = outbox.filter(validOutboxItem);
          for (const id of Array.from(S.inflight.keys())) {
            if (!S.outbox.some((m) => m.id === id)) S.inflight.delete(id);
          }
          renderPending();
        }
      }
    });
    NARROW.addEventListener('change', () => {
      renderRooms();
      markRead();
    });
  }

  function copyRoomId() {
    const id = $('room-id').textContent;
    const done = () => {
      $('copy-id').textContent = 'Copied';
      setTimeout(() => ($('copy-id').textContent = 'Copy id'), 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(id).then(done, selectRoomId);
    } else {
      selectRoomId();
    }
  }

  function selectRoomId() {
    const range = document.createRange();
    range.selectNodeContents($('room-id'));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  /** A read-only snapshot for operators poking in the console (and for tests). */
  window.palaverState = () => ({
    phase: S.phase,
    node: S.welcome ? S.welcome.node : null,
    url: S.url,
    nodes: S.nodes.slice(),
    user: S.user,
    cursor: S.cursor,
    positions: Object.fromEntries(S.positions),
    replayed: S.replayed,
    attempt: S.attempt,
    settled: S.settled,
    stuck: S.stuck ? S.stuck.point : null,
    outbox: S.outbox.map((m) => m.id),
    inflight: Array.from(S.inflight.keys()),
    limits: Object.assign({}, S.limits),
    watching: S.watchKey === null ? null : S.watchKey.split(',').filter(Boolean),
    myPresence: S.myPresence,
    typingForbidden: Array.from(S.typingForbidden),
    uploads: media.uploads.map((upload) => ({ name: upload.name, state: upload.attachment ? 'ready' : 'uploading', media: upload.attachment ? upload.attachment.media : null })),
  });

  function start() {
    wire();
    wirePush();
    const auth = storage.get(keys.auth, null);
    if (auth && typeof auth.token === 'string' && typeof auth.user === 'string' && auth.expires_at > Date.now()) {
      S.auth = auth;
      loadUser(auth.user);
      showChatView();
    } else {
      storage.remove(keys.auth);
      showAuthView();
    }
    updateByteCount();
    if (chosenNodes.refused.length) {
      showAlert(
        'node_not_allowed',
        `not connecting to ${chosenNodes.refused.map(hostOf).join(', ')}: this node does not list ` +
          'it among the nodes its web client may use (client.web_nodes)',
      );
    }
    connect();
  }

  start();
})();
