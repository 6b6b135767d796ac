// palaver.js: a client for palaver's WebSocket protocol (docs/PROTOCOL.md) that keeps the
// delivery contract for you. One ES module, no dependencies, no build step: it runs in browsers
// and in Node (20 with --experimental-websocket, or 22+), or with any WebSocket class you pass.
//
// What it does so an application does not have to:
// - connects, says `hello` (asking for batched frames), authenticates with the token, and
//   resumes: it keeps the highest `cursor` of the user's log and the highest `seq` of each large
//   room in `storage` and presents them, so a reconnect replays exactly what was missed;
// - drops what it already has (a `message` at or below its position), so the application sees
//   every entry once, in order;
// - keeps an outbox: `send` stores the message with a client id before sending, and sends it
//   again with the same id after every reconnect until it is acknowledged (the node answers a
//   repeat with the original ack), so a message is never lost and never doubled;
// - reconnects by itself with exponential backoff and jitter, at once after the node says
//   `reconnect` (draining), to the next URL of `urls` when there are several;
// - matches replies to requests by `req` (`request` returns a promise), and offers helpers for
//   typing, presence and read positions.
//
// Events (an EventTarget; each `event.detail`):
//   `message` (entry), `live` ({rooms}), `resync` (reload from history), `state`
//   ({state: "connecting" | "live" | "offline"}), `ack` ({id, room, seq, duplicate}),
//   `push` (any other frame without a `req`: presence, typing, receipt, read, reactions).

const VERSIONS = [1];

/** Storage in memory: what the client keeps between connections of one page or process. */
export function memoryStorage() {
  const map = new Map();
  return {
    get: (key) => (map.has(key) ? JSON.parse(map.get(key)) : null),
    set: (key, value) => map.set(key, JSON.stringify(value)),
  };
}

/** Storage in `localStorage` under `prefix` (a browser's: survives reloads). */
export function localStorageOf(prefix, store = globalThis.localStorage) {
  return {
    get: (key) => {
      const text = store.getItem(`${prefix}.${key}`);
      return text == null ? null : JSON.parse(text);
    },
    set: (key, value) => store.setItem(`${prefix}.${key}`, JSON.stringify(value)),
  };
}

/** A client id for a message: unique per sender, reused on every retry of that message. */
export function newMessageId() {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export class PalaverClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string|string[]} options.url  the node's `ws://…/ws` (or several: tried in turn)
   * @param {string} options.token  a token from `login`, `register` or your identity provider
   * @param {object} [options.storage]  {get(key), set(key, value)}; memoryStorage() by default
   * @param {Function} [options.WebSocket]  the WebSocket class (globalThis.WebSocket by default)
   * @param {number} [options.minBackoffMs]  first reconnect delay (250)
   * @param {number} [options.maxBackoffMs]  longest reconnect delay (15000)
   * @param {number} [options.requestTimeoutMs]  a request without a reply by then fails (15000)
   */
  constructor(options) {
    super();
    this.urls = Array.isArray(options.url) ? options.url : [options.url];
    this.token = options.token;
    this.storage = options.storage || memoryStorage();
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.minBackoffMs = options.minBackoffMs ?? 250;
    this.maxBackoffMs = options.maxBackoffMs ?? 15000;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 15000;
    this.cursor = this.storage.get('cursor') || 0;
    this.positions = this.storage.get('positions') || {};
    this.outbox = this.storage.get('outbox') || [];
    this.state = 'offline';
    this.ws = null;
    this.nextReq = 1;
    this.pending = new Map(); // req → {resolve, reject, timer, frame}
    this.inflight = new Set(); // outbox ids sent on this connection
    this.attempt = 0;
    this.urlIndex = 0;
    this.closed = false;
    this.timer = null;
  }

  /** Connect (and keep reconnecting until `close`). Resolves when the client is live. */
  connect() {
    this.closed = false;
    const live = new Promise((resolve) => {
      const onState = (event) => {
        if (event.detail.state === 'live') {
          this.removeEventListener('state', onState);
          resolve();
        }
      };
      this.addEventListener('state', onState);
    });
    this.open();
    return live;
  }

  /** Stop for good: no reconnect; pending requests fail; the outbox is kept in storage. */
  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
    this.failPending(new Error('client closed'));
    this.setState('offline');
  }

  /**
   * Send a message to `room`: stored in the outbox first, then sent, and sent again with the
   * same id after any reconnect until acknowledged. Resolves with the ack once committed.
   */
  send(room, body, { replyTo, mentions, id } = {}) {
    const item = { id: id || newMessageId(), room, body };
    if (replyTo != null) item.reply_to = replyTo;
    if (mentions && mentions.length) item.mentions = mentions;
    this.outbox.push(item);
    this.saveOutbox();
    const acked = new Promise((resolve, reject) => {
      item.settle = { resolve, reject };
    });
    this.flushOutbox();
    return acked;
  }

  /** Any request frame (without `req`): resolves with its reply, rejects with an `error` frame. */
  request(frame) {
    if (this.state !== 'live' && frame.type !== 'authenticate') {
      return Promise.reject(new Error(`not connected (${this.state})`));
    }
    const req = this.nextReq++;
    const sent = Object.assign({}, frame, { req });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(req);
        reject(new Error(`no reply to ${frame.type} within ${this.requestTimeoutMs} ms`));
      }, this.requestTimeoutMs);
      this.pending.set(req, { resolve, reject, timer });
      this.ws.send(JSON.stringify(sent));
    });
  }

  /** Tell the room's members you are typing (or stopped). Best effort, never queued. */
  typing(room, active = true) {
    if (this.state === 'live') this.ws.send(JSON.stringify({ type: 'typing', room, active }));
  }

  /** Watch these users' presence; `push` events bring the changes. */
  watchPresence(users) {
    return this.request({ type: 'watch_presence', users });
  }

  setPresence(state, status) {
    return this.request(Object.assign({ type: 'set_presence', state }, status == null ? {} : { status }));
  }

  markRead(room, seq) {
    return this.request({ type: 'mark_read', room, seq });
  }

  history(room, { before, after, limit } = {}) {
    const frame = { type: 'history', room };
    if (before != null) frame.before = before;
    if (after != null) frame.after = after;
    if (limit != null) frame.limit = limit;
    return this.request(frame);
  }

  // ---- The connection ------------------------------------------------------------------------

  open() {
    clearTimeout(this.timer);
    this.setState('connecting');
    const url = this.urls[this.urlIndex % this.urls.length];
    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (err) {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: 'hello', versions: VERSIONS, client: 'palaver.js', batch: true }));
    ws.onmessage = (event) => {
      if (typeof event.data !== 'string') return; // JSON was asked for
      for (const line of event.data.split('\n')) {
        if (line) this.onFrame(JSON.parse(line));
      }
    };
    // Either event may come alone (a refused connection can end with `error` and no `close`),
    // or both, in either order: the first one to arrive ends this socket, once.
    const lost = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.inflight.clear();
      this.failPending(new Error('connection closed'));
      if (this.closed) return;
      this.setState('offline');
      this.scheduleReconnect();
    };
    ws.onclose = lost;
    ws.onerror = lost;
  }

  scheduleReconnect(now = false) {
    if (this.closed) return;
    clearTimeout(this.timer);
    const ceiling = Math.min(this.maxBackoffMs, this.minBackoffMs * 2 ** Math.min(this.attempt, 16));
    // Full jitter: clients cut off together do not come back together.
    const delay = now ? 0 : Math.random() * ceiling;
    this.attempt += 1;
    this.urlIndex += 1;
    this.timer = setTimeout(() => this.open(), delay);
  }

  onFrame(frame) {
    switch (frame.type) {
      case 'welcome':
        this.authenticate();
        return;
      case 'message':
        this.onMessage(frame);
        return;
      case 'live':
        this.attempt = 0;
        for (const [room, seq] of Object.entries(frame.rooms || {})) this.advancePosition(room, seq);
        this.setState('live');
        this.emit('live', { rooms: frame.rooms || {} });
        this.flushOutbox();
        return;
      case 'resync':
        this.cursor = frame.cursor || 0;
        this.storage.set('cursor', this.cursor);
        this.emit('resync', frame);
        return;
      case 'reconnect':
        // The node is draining: resume elsewhere at once, from what we have.
        for (const [room, seq] of Object.entries(frame.rooms || {})) this.advancePosition(room, seq);
        this.attempt = 0;
        if (this.ws) this.ws.close(1000);
        return;
      default:
        break;
    }
    if (frame.req != null && this.pending.has(frame.req)) {
      const { resolve, reject, timer } = this.pending.get(frame.req);
      clearTimeout(timer);
      this.pending.delete(frame.req);
      if (frame.type === 'error') reject(Object.assign(new Error(frame.message), { frame }));
      else resolve(frame);
      return;
    }
    this.emit('push', frame);
  }

  authenticate() {
    const frame = { type: 'authenticate', token: this.token, cursor: this.cursor };
    if (Object.keys(this.positions).length) frame.rooms = this.positions;
    this.request(frame).catch((err) => {
      // A token that no longer opens anything: stop, and say why.
      const code = err.frame && err.frame.code;
      if (code === 'token_invalid' || code === 'token_expired' || code === 'token_revoked') {
        this.closed = true;
        this.emit('state', { state: 'offline', reason: code });
      }
    });
  }

  onMessage(frame) {
    // A large room's entry has no cursor: its position is the room's seq.
    if (frame.cursor == null) {
      if (frame.seq <= (this.positions[frame.room] || 0)) return;
      this.advancePosition(frame.room, frame.seq);
    } else {
      if (frame.cursor <= this.cursor) return;
      this.cursor = frame.cursor;
      this.storage.set('cursor', this.cursor);
    }
    const entry = Object.assign({}, frame);
    delete entry.type;
    this.emit('message', entry);
  }

  advancePosition(room, seq) {
    if (seq > (this.positions[room] || 0)) {
      this.positions[room] = seq;
      this.storage.set('positions', this.positions);
    }
  }

  // ---- The outbox ----------------------------------------------------------------------------

  flushOutbox() {
    if (this.state !== 'live') return;
    for (const item of this.outbox) {
      if (this.inflight.has(item.id)) continue;
      this.inflight.add(item.id);
      const frame = { type: 'send', room: item.room, id: item.id, body: item.body };
      if (item.reply_to != null) frame.reply_to = item.reply_to;
      if (item.mentions) frame.mentions = item.mentions;
      this.request(frame).then(
        (ack) => this.settle(item, null, ack),
        (err) => {
          this.inflight.delete(item.id);
          const code = err.frame && err.frame.code;
          // Retryable (the store or the room's owner was away, a rate limit): kept with its id
          // and sent again on the next connection or in a moment.
          if (!code || RETRYABLE.has(code)) {
            if (code) setTimeout(() => this.flushOutbox(), (err.frame && err.frame.retry_after_ms) || 1000);
            return;
          }
          this.settle(item, err, null);
        },
      );
    }
  }

  settle(item, err, ack) {
    this.inflight.delete(item.id);
    this.outbox = this.outbox.filter((other) => other.id !== item.id);
    this.saveOutbox();
    if (ack) this.emit('ack', { id: item.id, room: ack.room, seq: ack.seq, duplicate: !!ack.duplicate });
    if (item.settle) {
      if (err) item.settle.reject(err);
      else item.settle.resolve(ack);
    }
  }

  saveOutbox() {
    this.storage.set(
      'outbox',
      this.outbox.map(({ settle, ...kept }) => kept),
    );
  }

  // ---- Small things --------------------------------------------------------------------------

  failPending(err) {
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(err);
    }
    this.pending.clear();
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', { state });
  }

  emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }
}

/** Error codes a retry with the same id may cure. */
const RETRYABLE = new Set(['unavailable', 'rate_limited', 'slow_down', 'internal']);

/**
 * Get a token without a client: `register` (or `login`) over a short-lived connection.
 * Returns the `logged_in` frame ({user, token, expires_at}).
 */
export async function login(url, user, password, { register = false, WebSocket = globalThis.WebSocket } = {}) {
  const ws = new WebSocket(url);
  const frames = [];
  let wake = null;
  ws.onmessage = (event) => {
    for (const line of String(event.data).split('\n')) if (line) frames.push(JSON.parse(line));
    if (wake) wake();
  };
  const next = async () => {
    while (!frames.length) await new Promise((resolve) => (wake = resolve));
    return frames.shift();
  };
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error(`cannot connect to ${url}`));
  });
  try {
    ws.send(JSON.stringify({ type: 'hello', versions: VERSIONS, client: 'palaver.js' }));
    const welcome = await next();
    if (welcome.type !== 'welcome') throw new Error(`no welcome: ${JSON.stringify(welcome)}`);
    if (register) {
      ws.send(JSON.stringify({ type: 'register', req: 1, user, password }));
      const answer = await next();
      if (answer.type === 'error' && answer.code !== 'user_exists') throw new Error(answer.message);
    }
    ws.send(JSON.stringify({ type: 'login', req: 2, user, password }));
    const answer = await next();
    if (answer.type !== 'logged_in') throw new Error(answer.message || JSON.stringify(answer));
    return answer;
  } finally {
    ws.close(1000);
  }
}
