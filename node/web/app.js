// palaver's bundled web client: plain JavaScript, no build step, served by every node.
//
// One WebSocket at a time, speaking the JSON form of the protocol (protocol/src/frames.rs). The
// parts that matter for correctness:
//
// - Cursor: the highest `message.cursor` processed is kept in memory and in localStorage per
//   user. Every (re)connect authenticates with it, so the node replays exactly what was missed;
//   a `message` at or below it is a duplicate and is ignored.
// - Outbox: a message is put in localStorage *before* it is sent, with a client-made id. It
//   leaves the outbox when its `ack` arrives or when it is seen committed in the user's log (the
//   replay after a reconnect included). Whatever is still there after a reconnect is sent again
//   with the SAME id, so the node's deduplication turns a retry into `duplicate: true`, never
//   into a second message.
// - Reconnect: exponential backoff with jitter over the list of nodes (the page's origin, or
//   `?nodes=host:port,...`, or localStorage `palaver.nodes`); each failure moves to the next
//   node. A `reconnect` frame (node shutting down) retries at once on the next node.
// - Text from the network only ever reaches the page through `textContent`.
'use strict';

(function () {
  // ---- Tunables (each a bound; see STYLE.md "a limit on everything") -------------------------
  const VERSIONS = [1];
  const CLIENT_NAME = 'palaver-web/1';
  /** Entries per history request; the node caps it at limits.history_page_max (default 200). */
  const HISTORY_PAGE_LEN = 50;
  /** Backoff: first retry after 250–500 ms, doubling up to 7.5–15 s. */
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 15000;
  /** After a `reconnect` frame the node is going away on purpose: retry quickly elsewhere. */
  const SHUTDOWN_RETRY_MS = 300;
  const WELCOME_TIMEOUT_MS = 10000;
  /** A connection that answers no ping within PONG_TIMEOUT_MS is dropped (half-open sockets). */
  const PING_EVERY_MS = 20000;
  const PONG_TIMEOUT_MS = 10000;
  /** Sends awaiting their ack at once; stays well under limits.max_inflight_per_connection. */
  const SENDS_IN_FLIGHT_MAX = 16;
  /** Until a node says otherwise in `welcome`: the node's defaults. */
  const DEFAULT_LIMITS = { max_body_bytes: 16384, max_frame_bytes: 65536 };
  /** Errors after which a send is retried (same id); any other error drops it from the outbox. */
  const RETRYABLE = new Set(['unavailable', 'internal', 'slow_down', 'rate_limited', 'not_authenticated']);
  /** Errors on `authenticate` that mean the token is no good: log in again. */
  const TOKEN_DEAD = new Set(['token_invalid', 'token_expired', 'token_revoked']);
  /** Older alerts are dropped beyond this many. */
  const ALERTS_MAX = 3;
  const NARROW = window.matchMedia('(max-width: 720px)');

  // ---- Storage ------------------------------------------------------------------------------
  const keys = {
    auth: 'palaver.auth', // { user, token, expires_at }
    nodes: 'palaver.nodes', // "host:port,host:port" or a JSON array of them (plain `nodes` works too)
    lastUser: 'palaver.last_user',
    limits: 'palaver.limits',
    cursor: (user) => `palaver.cursor.${user}`,
    outbox: (user) => `palaver.outbox.${user}`,
    room: (user) => `palaver.room.${user}`,
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
    const list = (raw || '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)
      .map(nodeUrl)
      .filter(Boolean);
    return list.length ? list : [nodeUrl(location.host)];
  }

  function hostOf(url) {
    try {
      return new URL(url).host;
    } catch (_) {
      return String(url);
    }
  }

  // ---- State --------------------------------------------------------------------------------
  const S = {
    nodes: configuredNodes(),
    nodeIndex: 0,
    url: null,
    ws: null,
    /** Bumped whenever a socket is disowned, so late events of old sockets are ignored. */
    gen: 0,
    /** idle | connecting | greeting | open | authenticating | replaying | live | waiting */
    phase: 'idle',
    welcome: null,
    limits: Object.assign({}, DEFAULT_LIMITS, storage.get(keys.limits, {})),
    attempt: 0,
    retryAt: 0,
    shutdownAdvised: false,
    timers: {},
    req: 0,
    /** req → what the request was for */
    pending: new Map(),
    auth: null,
    user: null,
    /** Highest cursor processed; null when this browser has none for the user yet. */
    cursor: null,
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
      S.phase = 'greeting';
      sendFrame({ type: 'hello', versions: VERSIONS, client: CLIENT_NAME });
      S.timers.welcome = setTimeout(() => {
        if (gen === S.gen) drop('no welcome within 10 s');
      }, WELCOME_TIMEOUT_MS);
    };
    ws.onmessage = (event) => {
      if (gen !== S.gen || typeof event.data !== 'string') return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (_) {
        showAlert('malformed_frame', 'the node sent something that is not JSON');
        return;
      }
      handleFrame(frame);
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

  /** Give up on the current connection and go through the reconnect path. */
  function drop(reason) {
    disown();
    afterDisconnect(reason);
  }

  /** What belonged to the connection that is gone: its requests, sends in flight and timers. */
  function forgetConnection() {
    stopPing();
    clearTimeout(S.timers.welcome);
    S.welcome = null;
    S.pending.clear();
    S.inflight.clear();
    S.roomsRequested = false;
    if (S.view) S.view.loading = false;
  }

  function afterDisconnect(reason) {
    const advised = S.shutdownAdvised;
    forgetConnection();
    // Any failure moves on to the next node; a one-node list retries the same one.
    S.nodeIndex = (S.nodeIndex + 1) % S.nodes.length;
    let delay;
    if (advised) {
      S.attempt = 0;
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

  function retryNow() {
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
    return req;
  }

  // ---- Frames from the node -----------------------------------------------------------------
  function handleFrame(frame) {
    const ctx = typeof frame.req === 'number' && S.pending.has(frame.req) ? S.pending.get(frame.req) : null;
    if (ctx) S.pending.delete(frame.req);
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
        return goLive(`Resumed on ${nodeName()}: ${S.replayed} ${S.replayed === 1 ? 'message' : 'messages'} replayed`);
      case 'resync':
        return onResync(frame);
      case 'rooms':
        return onRooms(frame);
      case 'room':
        return onRoom(frame, ctx);
      case 'history':
        return onHistory(frame, ctx);
      case 'ack':
        return onAck(frame);
      case 'read':
        return onRead(frame);
      case 'error':
        return onError(frame, ctx);
      case 'reconnect':
        S.shutdownAdvised = true;
        setConn('reconnecting', `${nodeName()} is going away: ${frame.reason}`);
        return undefined;
      case 'pong':
        clearTimeout(S.timers.pong);
        S.timers.pong = null;
        return undefined;
      case 'ok':
      case 'members':
        return undefined;
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
      S.attempt = 0;
      if (S.auth) signOut('your session expired; log in again');
      setConn('open', `Connected to ${frame.node}`);
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
    if (why) $('auth-error').textContent = why;
    showAuthView();
  }

  function authenticate() {
    if (S.user !== S.auth.user) loadUser(S.auth.user);
    const frame = { type: 'authenticate', token: S.auth.token };
    const resume = S.cursor !== null;
    if (resume) frame.cursor = S.cursor;
    S.phase = 'authenticating';
    S.replayed = 0;
    request(frame, { kind: 'authenticate', resume });
    setConn('connecting', `Signing in on ${nodeName()}…`);
  }

  /** Switch the page to `user`: their cursor, outbox and last room from storage. */
  function loadUser(user) {
    S.user = user;
    const cursor = storage.get(keys.cursor(user), null);
    S.cursor = Number.isSafeInteger(cursor) && cursor >= 0 ? cursor : null;
    const outbox = storage.get(keys.outbox(user), []);
    S.outbox = Array.isArray(outbox) ? outbox.filter((m) => m && typeof m.id === 'string' && typeof m.room === 'string') : [];
    S.failed = [];
    S.rooms = new Map();
    S.maxSeq = new Map();
    S.view = null;
    S.roomsRequested = false;
    $('me-name').textContent = user;
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
  }

  /** Replay is over (or there was none): show it, refresh what may be stale, send the outbox. */
  function goLive(text) {
    S.phase = 'live';
    S.attempt = 0;
    setConn('live', text);
    const view = S.view;
    if (view && !view.loaded && !view.loading) requestHistory(view, null);
    flushOutbox();
    markRead();
    renderPending();
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
        setCursor(S.head, true);
        reloadAll();
        showAlert(frame.code, frame.message);
        goLive(`Connected to ${nodeName()} (your saved position was ahead of the node; reloaded)`);
        return;
      }
      if (TOKEN_DEAD.has(frame.code)) {
        signOut(describeError(frame));
        S.phase = 'open';
        setConn('open', `Connected to ${nodeName()}`);
        return;
      }
      // The node could not check the token now (store trouble): try again later.
      showAlert(frame.code, frame.message);
      drop(`sign-in failed: ${frame.code}`);
      return;
    }
    if (kind === 'send') {
      onSendError(frame, ctx);
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
    request({ type: 'list_rooms' }, { kind: 'rooms' });
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

  function onRooms(frame) {
    S.roomsRequested = false;
    const fresh = new Map();
    for (const info of frame.rooms) fresh.set(info.id, merged(info));
    S.rooms = fresh;
    renderRooms();
    if (!S.view) {
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
      const button = el('button', 'room-button');
      button.type = 'button';
      if (S.view && S.view.room === room.id) button.setAttribute('aria-current', 'page');
      const icon = el('span', 'room-kind', room.kind === 'direct' ? '@' : '#');
      icon.setAttribute('aria-hidden', 'true');
      const name = el('span', 'room-name', roomLabel(room));
      button.append(icon, name);
      if (room.kind === 'direct') button.append(el('span', 'sr-only', ' (direct)'));
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
    S.view = { room: id, entries: new Map(), loaded: false, more: false, loading: false };
    storage.set(keys.room(S.user), id);
    $('messages').replaceChildren();
    $('jump').hidden = true;
    renderView();
    if (S.phase === 'live' || S.phase === 'replaying') requestHistory(S.view, null);
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
    $('room-title').textContent = view ? (room ? roomLabel(room) : view.room) : 'Pick a room';
    $('room-meta').hidden = !view;
    $('room-id').textContent = view ? view.room : '';
    $('load-older').hidden = !(view && view.loaded && view.more);
    if (!view) $('messages').replaceChildren();
    renderPending();
    renderComposerState();
    renderRooms();
  }

  function requestHistory(view, before) {
    if (view.loading) return;
    const frame = { type: 'history', room: view.room, limit: HISTORY_PAGE_LEN };
    if (before !== null) frame.before = before;
    if (request(frame, { kind: 'history', room: view.room, older: before !== null })) {
      view.loading = true;
      $('history-status').textContent = before !== null ? 'Loading older messages…' : 'Loading…';
    }
  }

  function loadOlder() {
    const view = S.view;
    if (!view || !view.loaded || !view.more || view.loading) return;
    const oldest = $('messages').firstElementChild;
    if (!oldest) return;
    requestHistory(view, Number(oldest.dataset.seq));
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
    for (const entry of frame.entries) insertEntry(view, entry);
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

  /** One log entry as a list item. Text goes in through textContent only. */
  function renderEntry(entry) {
    const li = el('li', 'msg');
    li.dataset.seq = String(entry.seq);
    li.dataset.id = entry.id;
    if (entry.kind !== 'text') {
      li.classList.add('notice');
      let text;
      if (entry.kind === 'join') {
        text = !entry.user || entry.user === entry.from ? `${entry.from} joined` : `${entry.from} added ${entry.user}`;
      } else {
        text = `${entry.user || entry.from} left`;
      }
      li.append(el('span', 'notice-text', text), timeElement(entry.ts));
      return li;
    }
    if (entry.from === S.user) li.classList.add('mine');
    const meta = el('div', 'meta');
    meta.append(el('span', 'from', entry.from), document.createTextNode(' '), timeElement(entry.ts));
    li.append(meta, el('p', 'body', entry.body));
    return li;
  }

  function timeElement(ts) {
    const time = el('time', 'ts', formatTime(ts));
    time.dateTime = new Date(ts).toISOString();
    return time;
  }

  /** Put an entry in the open room's list in seq order; false when it is already there. */
  function insertEntry(view, entry) {
    if (view.entries.has(entry.seq)) return false;
    const li = renderEntry(entry);
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
    // Our own message is committed: its pending copy goes.
    if (entry.kind === 'text' && entry.from === S.user) removePendingElement(entry.id);
    return true;
  }

  // ---- Messages from the user's log ---------------------------------------------------------
  function onMessage(frame) {
    if (S.cursor !== null && frame.cursor <= S.cursor) return; // already processed
    setCursor(frame.cursor, false);
    if (S.phase === 'replaying') {
      S.replayed++;
      $('conn').dataset.replayed = String(S.replayed);
    }
    if (frame.kind === 'text' && frame.from === S.user) outboxRemove(frame.id);
    noteSeq(frame.room, frame.seq);
    if (S.rooms.has(frame.room)) {
      if (frame.kind === 'leave' && frame.user === S.user) S.rooms.delete(frame.room);
    } else if (!(frame.kind === 'leave' && frame.user === S.user)) {
      refreshRoomsSoon();
    }
    const view = S.view;
    if (view && view.room === frame.room) {
      const atBottom = nearBottom();
      if (insertEntry(view, frame)) {
        if (atBottom || frame.from === S.user) scrollToBottom();
        else $('jump').hidden = false;
      }
      markRead();
    }
    renderRooms();
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

  function outboxAdd(item) {
    S.outbox.push(item);
    persistOutbox((stored) => (stored.some((m) => m.id === item.id) ? stored : stored.concat([item])));
  }

  function outboxRemove(id) {
    S.outbox = S.outbox.filter((m) => m.id !== id);
    S.inflight.delete(id);
    persistOutbox((stored) => stored.filter((m) => m.id !== id));
    removePendingElement(id);
  }

  /** Check a message against the node's limits before it goes anywhere. */
  function refusal(body) {
    if (!body.trim()) return 'The message is empty.';
    const bytes = byteLength(body);
    const max = S.limits.max_body_bytes;
    if (bytes > max) {
      return `Message too long: ${bytes} bytes, the node accepts at most ${max} bytes (max_body_bytes). Shorten it or split it.`;
    }
    const frame = JSON.stringify({ type: 'send', req: 4294967295, room: S.view.room, id: newMessageId(), body });
    if (byteLength(frame) > S.limits.max_frame_bytes) {
      return `Message too long once encoded: ${byteLength(frame)} bytes, the node accepts frames of at most ${S.limits.max_frame_bytes} bytes (max_frame_bytes).`;
    }
    return null;
  }

  function submitMessage() {
    const input = $('message-input');
    const body = input.value;
    if (!S.view) return;
    const refused = refusal(body);
    if (refused) {
      $('composer-error').textContent = refused;
      input.setAttribute('aria-invalid', 'true');
      return;
    }
    $('composer-error').textContent = '';
    input.removeAttribute('aria-invalid');
    const item = { id: newMessageId(), room: S.view.room, body, ts: Date.now() };
    // Stored first: a reload or a crash from here on still sends it, once.
    outboxAdd(item);
    input.value = '';
    updateByteCount();
    renderPending();
    scrollToBottom();
    flushOutbox();
  }

  function flushOutbox() {
    clearTimeout(S.timers.outbox);
    if (S.phase !== 'live') return;
    for (const item of S.outbox) {
      if (S.inflight.has(item.id)) continue;
      if (S.inflight.size >= SENDS_IN_FLIGHT_MAX) break;
      const req = request({ type: 'send', room: item.room, id: item.id, body: item.body }, { kind: 'send', id: item.id });
      if (!req) break;
      S.inflight.set(item.id, req);
    }
    renderPending();
  }

  function onAck(frame) {
    noteSeq(frame.room, frame.seq);
    outboxRemove(frame.id);
    flushOutbox();
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
    if (item) {
      S.failed.push(Object.assign({}, item, { error: describeError(frame) }));
      outboxRemove(ctx.id);
    }
    showAlert(frame.code, frame.message);
    renderPending();
  }

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
      if (item.room !== view.room) continue;
      const status = S.inflight.has(item.id) ? 'sending…' : S.phase === 'live' ? 'queued' : 'waiting for connection';
      items.push(pendingElement(item, status, false));
    }
    for (const item of S.failed) {
      if (item.room === view.room) items.push(pendingElement(item, `not sent: ${item.error}`, true));
    }
    list.replaceChildren(...items);
  }

  function pendingElement(item, status, failed) {
    const li = el('li', 'msg mine pending-item' + (failed ? ' failed' : ''));
    li.dataset.id = item.id;
    const meta = el('div', 'meta');
    meta.append(el('span', 'from', S.user || ''), document.createTextNode(' '), el('span', 'status', status));
    li.append(meta, el('p', 'body', item.body));
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
    // Writing works offline too: messages wait in the outbox.
    const enabled = !!S.view;
    $('message-input').disabled = !enabled;
    $('send-button').disabled = !enabled;
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
      }
    });
    $('message-input').addEventListener('input', updateByteCount);
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
    $('retry-now').addEventListener('click', retryNow);
    $('logout').addEventListener('click', () => {
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
      if (S.ws) drop('the network went away');
    });
    window.addEventListener('storage', (event) => {
      // Another tab of this user queued or confirmed messages. Its items are sent by it, or by
      // this tab on its next flush if that tab went away (same ids, so at most a duplicate ack).
      if (S.user && event.key === keys.outbox(S.user)) {
        const outbox = storage.get(event.key, []);
        if (Array.isArray(outbox)) {
          S.outbox = outbox.filter((m) => m && typeof m.id === 'string' && typeof m.room === 'string');
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
    replayed: S.replayed,
    attempt: S.attempt,
    outbox: S.outbox.map((m) => m.id),
    inflight: Array.from(S.inflight.keys()),
    limits: Object.assign({}, S.limits),
  });

  function start() {
    wire();
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
    connect();
  }

  start();
})();
