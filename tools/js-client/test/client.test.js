// The client against the real daemon (target/debug/switchboard, or $SB_DAEMON), with Node's
// test runner and the `ws` package the interop tests install.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { Switchboard, SwitchboardError } from '../src/index.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..', '..');
const require = createRequire(join(root, 'edge', 'tests', 'interop', 'package.json'));
const WebSocket = require('ws');

let daemon;
let url;
let secret;
let dataDir;

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'sb-js-'));
  const bin = process.env.SB_DAEMON ?? join(root, 'target', 'debug', 'switchboard');
  daemon = spawn(bin, ['--listen', '127.0.0.1:0', '--quic-listen', '127.0.0.1:0', '--data-dir', dataDir, '--shards', '1'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, RUST_LOG: 'warn' },
  });
  const first = await new Promise((resolve, reject) => {
    const lines = createInterface({ input: daemon.stdout });
    lines.once('line', resolve);
    daemon.once('exit', (code) => reject(new Error(`the daemon exited with ${code}`)));
  });
  url = first.match(/ws:\/\/[^\s]+\/v1\/ws/)[0];
  secret = readFileSync(join(dataDir, 'jwt.secret'), 'utf8').trim();
});

after(() => {
  for (const c of made) c.close();
  daemon?.kill('SIGKILL');
  rmSync(dataDir, { recursive: true, force: true });
});

/** An HS256 JWT for `user`, signed with the node's development secret. */
function token(user, { key = secret, ttl = 3600 } = {}) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: user, exp: now + ttl })}`;
  return `${head}.${createHmac('sha256', key).update(head).digest('base64url')}`;
}

/** Every client a test made: closed at the end even when the test failed half-way, or
 *  they would go on reconnecting to the stopped daemon and the run would never end. */
const made = [];

function tracked(options) {
  const c = new Switchboard(options);
  made.push(c);
  return c;
}

function client(user, options = {}) {
  return tracked({ url, token: token(user), WebSocket, ...options });
}

/** Collects a client's `message` events. */
function messages(c) {
  const got = [];
  c.on('message', (m) => got.push(m));
  return got;
}

async function until(what, check, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('send is acknowledged once durable, delivered to the recipient, and a retry is a dup', async () => {
  const alice = client('alice1');
  const bob = client('bob1');
  const got = messages(bob);
  const welcome = await alice.connect();
  assert.equal(welcome.user, 'alice1');
  await bob.connect();
  const ack = await alice.send({ to: 'bob1', body: { text: 'hi' }, id: 'm1' });
  assert.deepEqual([ack.conv, ack.seq, ack.dup], ['dm:alice1:bob1', 1, false]);
  await until('the message', () => got.length === 1);
  assert.deepEqual([got[0].seq, got[0].from, got[0].body], [1, 'alice1', { text: 'hi' }]);
  const again = await alice.send({ conv: 'dm:alice1:bob1', body: { text: 'hi' }, id: 'm1' });
  assert.deepEqual([again.seq, again.dup], [1, true]);
  // Without an id the client makes one, a UUID.
  const fresh = await alice.send({ to: 'bob1', body: 'two' });
  assert.match(fresh.id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  await until('the second message', () => got.length === 2);
  assert.deepEqual(
    got.map((m) => m.seq),
    [1, 2],
    'the retried send was not delivered again',
  );
  alice.close();
  bob.close();
});

test('a message composed offline is sent once the connection is up', async () => {
  const carol = client('carol2');
  const dave = client('dave2');
  const got = messages(dave);
  await dave.connect();
  const acked = carol.send({ to: 'dave2', body: 'written offline' });
  assert.equal(carol.pending().length, 1);
  await carol.connect();
  const ack = await acked;
  assert.equal(ack.seq, 1);
  assert.deepEqual(carol.pending(), []);
  await until('the message', () => got.length === 1);
  carol.close();
  dave.close();
});

test('after a reconnect, what was missed arrives through message events, in order, once each', async () => {
  const erin = client('erin3');
  let release;
  let gate = Promise.resolve();
  // Frank's reconnects wait on the gate, so that messages are sent while he is away.
  const frank = tracked({
    url,
    WebSocket,
    token: async () => {
      await gate;
      return token('frank3');
    },
  });
  const got = messages(frank);
  const states = [];
  frank.on('state', (s) => states.push(s));
  await erin.connect();
  await frank.connect();
  await erin.send({ to: 'frank3', body: 0 });
  await until('the first message', () => got.length === 1);
  gate = new Promise((r) => (release = r));
  frank._ws.close(); // the connection drops (the client did not ask to leave)
  await until('frank disconnected', () => frank.state !== 'connected');
  for (let i = 1; i <= 5; i++) await erin.send({ to: 'frank3', body: i });
  release();
  await until('frank back and resynced', () => got.length === 6);
  assert.deepEqual(
    got.map((m) => m.body),
    [0, 1, 2, 3, 4, 5],
  );
  assert.deepEqual(
    got.map((m) => m.seq),
    [1, 2, 3, 4, 5, 6],
  );
  assert.ok(states.includes('connecting') && states.at(-1) === 'connected', states.join(','));
  // Nothing more comes: each message once.
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(got.length, 6);
  erin.close();
  frank.close();
});

test('sync returns every message after a seq over all pages, and history pages over REST', async () => {
  const gina = client('gina4');
  await gina.connect();
  for (let i = 1; i <= 30; i++) await gina.send({ to: 'hank4', body: i });
  const all = await gina.sync('dm:gina4:hank4', 10);
  assert.deepEqual(
    all.map((m) => m.seq),
    Array.from({ length: 20 }, (_, i) => i + 11),
  );
  const seen = [];
  let cursor;
  do {
    const page = await gina.history('dm:gina4:hank4', { limit: 7, cursor });
    seen.push(...page.messages.map((m) => m.seq));
    cursor = page.next_cursor;
  } while (cursor);
  assert.deepEqual(
    seen,
    Array.from({ length: 30 }, (_, i) => 30 - i),
    'newest first, every one once',
  );
  await assert.rejects(gina.history('dm:x4:y4'), (e) => e instanceof SwitchboardError && e.code === 'not_found');
  gina.close();
});

test('presence, inbox, receipts and typing', async () => {
  const ivy = client('ivy5');
  const jon = client('jon5');
  const receipts = [];
  const typing = [];
  ivy.on('receipt', (r) => receipts.push(r));
  ivy.on('typing', (t) => typing.push(t));
  await ivy.connect();
  await jon.connect();
  const ack = await ivy.send({ to: 'jon5', body: 'hello' });
  const users = await ivy.presence(['jon5', 'nobody5']);
  assert.deepEqual(
    users.map((u) => [u.user, u.online]),
    [
      ['jon5', true],
      ['nobody5', false],
    ],
  );
  const inbox = await jon.inbox();
  assert.deepEqual(
    inbox.map((c) => [c.conv, c.head]),
    [['dm:ivy5:jon5', 1]],
  );
  jon.receipt(ack.conv, ack.seq, 'read');
  jon.typing(ack.conv);
  await until('the receipt and typing', () => receipts.length === 1 && typing.length === 1);
  assert.deepEqual([receipts[0].user, receipts[0].seq, receipts[0].kind], ['jon5', 1, 'read']);
  assert.equal(typing[0].user, 'jon5');
  ivy.close();
  jon.close();
});

test('a refused token ends the client: 4001, no retry, everything waiting rejected', async () => {
  const mallory = tracked({ url, WebSocket, token: token('mallory6', { key: 'not the secret' }) });
  const errors = [];
  mallory.on('error', (e) => errors.push(e));
  await assert.rejects(mallory.connect(), (e) => e instanceof SwitchboardError && e.code === 'unauthorized');
  assert.equal(mallory.state, 'disconnected');
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(mallory.state, 'disconnected', 'it did not reconnect');
  assert.equal(errors.length, 1);
});

test('a followed conversation is delivered from where the application had it; an own ack moves the place', async () => {
  const ivy = client('ivy7');
  const jon = client('jon7');
  const got = messages(jon);
  await ivy.connect();
  for (let i = 1; i <= 3; i++) await ivy.send({ to: 'jon7', body: i });
  await jon.connect();
  // As the chat page does with `inbox`: jon's application holds the conversation up to 1.
  const [entry] = await jon.inbox();
  assert.equal(entry.head, 3);
  jon.follow(entry.conv, 1);
  jon.follow(entry.conv, 3); // already followed: the place stays at 1
  await ivy.send({ to: 'jon7', body: 4 });
  await until('2 to 4, the hole filled first', () => got.length === 3);
  assert.deepEqual(got.map((m) => m.seq), [2, 3, 4]);
  // Jon's own send (5) gets no msg back: its ack moves his place, so ivy's answer (6) is
  // delivered as it comes, not taken for a hole that a sync would fill (with 5 in it).
  await jon.send({ to: 'ivy7', body: 'mine' });
  await ivy.send({ to: 'jon7', body: 6 });
  await until('the answer', () => got.length >= 4);
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(got.map((m) => m.seq), [2, 3, 4, 6]);
  ivy.close();
  jon.close();
});
