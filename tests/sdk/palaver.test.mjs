// sdk/js/palaver.js under Node against the real `palaver` binary:
//   node --experimental-websocket --test tests/sdk/
// (Node 22+ needs no flag.) The binary is PALAVER_BIN, else the debug build in
// CARGO_TARGET_DIR (default ~/.cache/palaver/target), as the other black-box tests find it.
//
// What the SDK promises, checked from the outside: every message once and in order, across a
// reconnect (the resume replays exactly what was missed); a message sent while offline waits in
// the outbox and goes out once connected; one whose ack was lost is sent again with the same id
// and stays one message; a node that restarts is reconnected to by itself.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, existsSync } from 'node:fs';
import { tmpdir, homedir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { PalaverClient, login, memoryStorage } from '../../sdk/js/palaver.js';

const binary =
  process.env.PALAVER_BIN ||
  join(process.env.CARGO_TARGET_DIR || join(homedir(), '.cache/palaver/target'), 'debug/palaver');

let node;
let url;
const dataDir = mkdtempSync(join(tmpdir(), 'palaver-sdk-'));

/** Start the node on a free port (the data directory stays: restarts keep the store). */
async function startNode(port = 0) {
  assert.ok(existsSync(binary), `${binary} is missing: build it first (cargo build -p node)`);
  const child = spawn(binary, [], {
    cwd: dataDir,
    env: {
      PATH: process.env.PATH,
      PALAVER_NODE__DATA_DIR: dataDir,
      PALAVER_CLIENT__LISTEN: `127.0.0.1:${port}`,
      PALAVER_ADMIN__LISTEN: '127.0.0.1:0',
      PALAVER_AUTH__TOKEN_KEY: 'palaver-sdk-test-token-key-0123456789',
      PALAVER_AUTH__ARGON2_MEMORY_KIB: '1024',
      PALAVER_AUTH__ARGON2_ITERATIONS: '1',
      PALAVER_AUTH__REGISTER_MAX_PER_ADDRESS: '0',
    },
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const lines = createInterface({ input: child.stdout });
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the node did not start')), 30000);
    lines.on('line', (line) => {
      const at = line.split(' listening on ')[1];
      if (at) {
        clearTimeout(timer);
        resolve(at.trim());
      }
    });
    child.on('exit', () => reject(new Error('the node exited')));
  });
  return { child, addr };
}

async function stopNode() {
  const exited = new Promise((resolve) => node.child.on('exit', resolve));
  node.child.kill('SIGTERM');
  await exited;
}

/** Wait until `done()` holds, polling. */
async function until(done, what, ms = 10000) {
  const deadline = Date.now() + ms;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function collect(client) {
  const seen = [];
  client.addEventListener('message', (event) => seen.push(event.detail));
  return seen;
}

const texts = (entries, room) => entries.filter((e) => e.room === room && e.kind === 'text').map((e) => e.body);

before(async () => {
  node = await startNode();
  url = `ws://${node.addr}/ws`;
});

after(async () => {
  if (node) await stopNode();
});

test('messages arrive once and in order across a reconnect', async () => {
  const ann = await login(url, 'ann', 'password-of-ann', { register: true });
  const bob = await login(url, 'bob', 'password-of-bob', { register: true });
  const annStore = memoryStorage();
  const a = new PalaverClient({ url, token: ann.token, storage: annStore, minBackoffMs: 20 });
  const b = new PalaverClient({ url, token: bob.token, minBackoffMs: 20 });
  await a.connect();
  await b.connect();
  const room = (await a.request({ type: 'create_room', name: 'sdk' })).room.id;
  await b.request({ type: 'join', room });
  const got = collect(a);
  for (let i = 0; i < 5; i++) {
    const ack = await b.send(room, `live ${i}`);
    assert.equal(ack.type, 'ack');
  }
  await until(() => texts(got, room).length === 5, 'five live messages');

  // ann goes away; bob writes on; a new client with ann's storage resumes from her cursor.
  a.close();
  for (let i = 0; i < 3; i++) await b.send(room, `missed ${i}`);
  const a2 = new PalaverClient({ url, token: ann.token, storage: annStore, minBackoffMs: 20 });
  const resumed = collect(a2);
  await a2.connect();
  await until(() => texts(resumed, room).length === 3, 'the three missed messages');
  assert.deepEqual(texts(resumed, room), ['missed 0', 'missed 1', 'missed 2'], 'exactly what was missed');
  const cursors = resumed.map((e) => e.cursor);
  assert.deepEqual(cursors, [...cursors].sort((x, y) => x - y), 'in log order');
  a2.close();
  b.close();
});

test('the outbox sends what was written offline, and a lost ack does not double a message', async () => {
  const cat = await login(url, 'cat', 'password-of-cat', { register: true });
  const storage = memoryStorage();
  const c = new PalaverClient({ url, token: cat.token, storage, minBackoffMs: 20 });
  await c.connect();
  const room = (await c.request({ type: 'create_room', name: 'outbox' })).room.id;
  c.close();

  // Written while closed: kept in storage with its id, sent once connected.
  const pending = c.send(room, 'written offline', { id: 'offline-1' });
  assert.deepEqual(storage.get('outbox').map((m) => m.id), ['offline-1']);
  await c.connect();
  const ack = await pending;
  assert.equal(ack.duplicate, false);
  assert.deepEqual(storage.get('outbox'), [], 'acknowledged: out of the outbox');

  // The same id again (a retry after a lost ack): the node answers with the original.
  const again = await c.send(room, 'written offline', { id: 'offline-1' });
  assert.equal(again.duplicate, true);
  assert.equal(again.seq, ack.seq);
  const history = await c.history(room, { after: 0 });
  assert.equal(history.entries.filter((e) => e.kind === 'text').length, 1, 'one message, not two');
  c.close();
});

test('a node restart is ridden out: the client reconnects and resumes by itself', async () => {
  const dan = await login(url, 'dan', 'password-of-dan', { register: true });
  const eve = await login(url, 'eve', 'password-of-eve', { register: true });
  const d = new PalaverClient({ url, token: dan.token, minBackoffMs: 50, maxBackoffMs: 500 });
  await d.connect();
  const room = (await d.request({ type: 'create_room', name: 'restart' })).room.id;
  const got = collect(d);
  const states = [];
  d.addEventListener('state', (event) => states.push(event.detail.state));

  const port = Number(node.addr.split(':').pop());
  await stopNode();
  node = await startNode(port);
  await until(() => d.state === 'live', 'the client to be live again', 20000);
  assert.ok(states.includes('offline') && states.at(-1) === 'live', `states: ${states}`);

  const e = new PalaverClient({ url, token: eve.token });
  await e.connect();
  await e.request({ type: 'join', room });
  await e.send(room, 'after the restart');
  await until(() => texts(got, room).includes('after the restart'), 'the message after the restart');
  e.close();
  d.close();
});
