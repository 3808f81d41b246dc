// The chat page in a real browser: Debian's Chromium driven by playwright-core, against the
// daemon ($SB_DAEMON, or target/debug/switchboard). Two people sign in, chat in a dm with
// delivered and read ticks and the typing indicator, one goes offline while the other
// writes (and writes too), and the server restarts under both; each time everything is
// there, in order, once. Screenshots of the main views go to target/browser-screenshots/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..', '..');
const shots = join(root, 'target', 'browser-screenshots');
const bin = process.env.SB_DAEMON ?? join(root, 'target', 'debug', 'switchboard');
const executablePath =
  process.env.SB_CHROMIUM ?? ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
/** How long any one thing the page should do may take before the test gives up on it. */
const PATIENCE_MS = 20_000;

let daemon;
let dataDir;
let listen = '127.0.0.1:0';
let quicListen = '127.0.0.1:0';
let base;
let browser;

/** Starts the daemon on `listen` and `quicListen` (the same ports again after a restart: the
 *  pages know them). */
async function startDaemon() {
  daemon = spawn(bin, ['--listen', listen, '--quic-listen', quicListen, '--data-dir', dataDir, '--shards', '1', '--set', 'heartbeat_ms=1000'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, RUST_LOG: 'warn' },
  });
  const [first, second] = await new Promise((resolve, reject) => {
    const lines = [];
    createInterface({ input: daemon.stdout }).on('line', (line) => {
      lines.push(line);
      if (lines.length === 2) resolve(lines);
    });
    daemon.once('exit', (code) => reject(new Error(`the daemon exited with ${code}`)));
  });
  listen = first.match(/ws:\/\/([^/\s]+)\//)[1];
  quicListen = second.match(/QUIC on udp:\/\/(\S+) /)[1];
  base = `http://${listen}`;
}

function stopDaemon() {
  return new Promise((resolve) => {
    daemon.once('exit', resolve);
    daemon.kill('SIGKILL');
  });
}

before(async () => {
  assert.ok(executablePath, 'Chromium is not installed (apt-get install chromium)');
  dataDir = mkdtempSync(join(tmpdir(), 'sb-browser-'));
  mkdirSync(shots, { recursive: true });
  await startDaemon();
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  await browser?.close();
  daemon?.kill('SIGKILL');
  rmSync(dataDir, { recursive: true, force: true });
});

/** Polls `probe` until `ok` holds of what it returns; fails with what it last saw. */
async function until(what, probe, ok) {
  const deadline = Date.now() + PATIENCE_MS;
  let seen;
  while (Date.now() < deadline) {
    seen = await probe();
    if (ok(seen)) return seen;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`${what}: still ${JSON.stringify(seen)} after ${PATIENCE_MS} ms`);
}

async function signIn(context, name, query = '') {
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(e.message));
  page.problems = problems;
  await page.goto(`${base}/${query}`);
  await page.fill('#name', name);
  await page.click('#signin-name button');
  await connected(page);
  await until(`${name}'s name shown`, () => page.textContent('#me'), (t) => t === name);
  return page;
}

const state = (page) => page.getAttribute('#status', 'data-state');
const connected = (page) => until('connected', () => state(page), (s) => s === 'connected');
/** The texts of the open conversation's messages, as shown. */
const texts = (page) => page.$$eval('#list .msg:not(.system) .text', (els) => els.map((e) => e.textContent));
const statusOf = (page, text) =>
  page.$$eval(
    '#list .msg.mine',
    (els, text) => els.filter((e) => e.querySelector('.text').textContent === text).map((e) => e.dataset.status),
    text,
  );

async function say(page, text) {
  await page.fill('#composer textarea', text);
  await page.press('#composer textarea', 'Enter');
}

test('two people chat in the browser through offline spells and a server restart', async () => {
  const [ca, cb] = [await browser.newContext(), await browser.newContext()];
  // On WebSocket: Chromium's offline emulation does not reliably cut a WebTransport session
  // (bob stayed connected through it in 1 of 2 runs), and this test is about being offline.
  // WebTransport has its own test below.
  const alice = await signIn(ca, 'alice', '?transport=websocket');
  const bob = await signIn(cb, 'bob', '?transport=websocket');
  const dm = 'dm:alice:bob';

  // Alice starts a dm with bob and writes; bob's inbox shows it unread.
  await alice.fill('#new-dm input', 'bob');
  await alice.press('#new-dm input', 'Enter');
  await say(alice, 'hello bob');
  await until('bob sees the dm, unread', () => bob.textContent(`#convs li[data-conv="${dm}"] .unread`).catch(() => null), (t) => t === '1');
  // Bob's page received it (not opened yet): alice sees it delivered.
  await until('delivered tick', () => statusOf(alice, 'hello bob'), (s) => s[0] === 'delivered');
  await bob.screenshot({ path: join(shots, 'inbox-unread.png') });

  await bob.click(`#convs li[data-conv="${dm}"]`);
  await until('bob reads it', () => texts(bob), (t) => t.join('|') === 'hello bob');
  await until('read tick', () => statusOf(alice, 'hello bob'), (s) => s[0] === 'read');

  // Typing shows on the other side.
  await bob.type('#composer textarea', 'hi al');
  await until('typing indicator', () => alice.textContent('#typing'), (t) => t.includes('bob is typing'));
  await alice.screenshot({ path: join(shots, 'conversation-typing.png') });
  await bob.fill('#composer textarea', '');
  await say(bob, 'hi alice');
  await until('alice gets the answer', () => texts(alice), (t) => t.join('|') === 'hello bob|hi alice');

  // Bob goes offline; alice writes three; bob composes one while offline.
  await cb.setOffline(true);
  await until('bob sees he is offline', () => state(bob), (s) => s !== 'connected');
  for (const n of [1, 2, 3]) await say(alice, `while you were away ${n}`);
  await say(bob, 'written offline');
  await until('shown at once, waiting', () => statusOf(bob, 'written offline'), (s) => s[0] === 'pending');
  await bob.screenshot({ path: join(shots, 'offline-composing.png') });
  await cb.setOffline(false);
  await connected(bob);
  const afterOffline = ['hello bob', 'hi alice', 'while you were away 1', 'while you were away 2', 'while you were away 3'];
  await until('bob gets what he missed, in order, once', () => texts(bob), (t) => t.length >= 6 && t.includes('written offline'));
  const bobSees = await texts(bob);
  assert.deepEqual(bobSees.filter((t) => t !== 'written offline'), afterOffline, 'in order, once each');
  assert.equal(bobSees.filter((t) => t === 'written offline').length, 1);
  await until('bob\'s offline message went once', () => texts(alice), (t) => t.includes('written offline'));
  assert.equal((await texts(alice)).filter((t) => t === 'written offline').length, 1);

  // The server restarts under both; both pages reconnect by themselves.
  await stopDaemon();
  await until('alice sees the server gone', () => state(alice), (s) => s !== 'connected');
  await startDaemon();
  await connected(alice);
  await connected(bob);
  await say(alice, 'after the restart');
  await until('bob gets it after the restart', () => texts(bob), (t) => t.at(-1) === 'after the restart');
  const final = await texts(bob);
  assert.equal(new Set(final).size, final.length, `no message twice: ${final}`);
  assert.equal(final.length, 7, final.join('|'));
  await bob.screenshot({ path: join(shots, 'after-restart.png') });
  await alice.screenshot({ path: join(shots, 'alice-after-restart.png') });
  assert.deepEqual([...alice.problems, ...bob.problems], [], 'no script errors on the page');
});

test('a group and a channel made in the page reach their members, the channel by notify until opened', async () => {
  const [ca, cc] = [await browser.newContext(), await browser.newContext()];
  const alice = await signIn(ca, 'alice');
  const carol = await signIn(cc, 'carol');

  const create = async (kind, title, members) => {
    await alice.click('#new-conv summary');
    await alice.fill('#new-conv [name=title]', title);
    await alice.fill('#new-conv [name=members]', members);
    await alice.selectOption('#new-conv [name=kind]', kind);
    await alice.click('#new-conv button');
    await until(`${title} is open`, () => alice.textContent('#conv-title'), (t) => t === title);
  };
  await create('group', 'Lunch', 'carol, dave');
  await say(alice, 'noon?');
  const group = await until('carol has the group, titled', () =>
    carol.$$eval('#convs li', (els) => els.map((e) => [e.dataset.conv, e.querySelector('.name').textContent])),
    (l) => l.some(([, name]) => name === 'Lunch'),
  );
  const groupId = group.find(([, name]) => name === 'Lunch')[0];
  await carol.click(`#convs li[data-conv="${groupId}"]`);
  await until('carol sees the group message', () => texts(carol), (t) => t.join('|') === 'noon?');

  await create('channel', 'News', 'carol');
  await say(alice, 'first news');
  await say(alice, 'second news');
  // Carol has the group open, not the channel: it moves by notify, with its unread count.
  const channel = await until('carol has the channel', () =>
    carol.$$eval('#convs li', (els) => els.map((e) => [e.dataset.conv, e.querySelector('.name').textContent, e.querySelector('.unread')?.textContent])),
    (l) => l.some(([, name, unread]) => name === 'News' && Number(unread) >= 2),
  );
  await carol.screenshot({ path: join(shots, 'group-and-channel.png') });
  await carol.click(`#convs li[data-conv="${channel.find(([, name]) => name === 'News')[0]}"]`);
  await until('carol sees the channel', () => texts(carol), (t) => t.join('|') === 'first news|second news');
  await say(alice, 'live news');
  await until('an open channel pushes in full', () => texts(carol), (t) => t.join('|') === 'first news|second news|live news');
  assert.deepEqual([...alice.problems, ...carol.problems], [], 'no script errors on the page');
});

test('history scrolls back through the REST cursor, in order', async () => {
  const token = async (user) =>
    (await (await fetch(`${base}/dev/token`, { method: 'POST', body: JSON.stringify({ user }) })).json()).token;
  const erin = await token('erin');
  for (let i = 1; i <= 45; i++) {
    const response = await fetch(`${base}/v1/conversations/dm:erin:fay/messages`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${erin}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ id: `h${i}`, body: { text: `old ${i}` } }),
    });
    assert.equal(response.status, 200);
  }
  const fay = await signIn(await browser.newContext(), 'fay');
  await until('fay has the dm, 45 unread', () => fay.textContent('#convs li[data-conv="dm:erin:fay"] .unread').catch(() => null), (t) => t === '45');
  await fay.click('#convs li[data-conv="dm:erin:fay"]');
  const newest = await until('the newest page', () => texts(fay), (t) => t.length === 30);
  assert.deepEqual(newest, Array.from({ length: 30 }, (_, i) => `old ${i + 16}`));
  assert.equal(await fay.isVisible('#older'), true, 'there is more');
  // Scrolling to the top loads the next page.
  await fay.$eval('#messages', (m) => (m.scrollTop = 0));
  const all = await until('the older page too', () => texts(fay), (t) => t.length === 45);
  assert.deepEqual(all, Array.from({ length: 45 }, (_, i) => `old ${i + 1}`));
  assert.equal(await fay.isHidden('#older'), true, 'nothing older');
  await fay.screenshot({ path: join(shots, 'history-scrollback.png') });
  assert.deepEqual(fay.problems, [], 'no script errors on the page');
});

test('a page on WebTransport chats with a page on WebSocket', async () => {
  const [cw, cs] = [await browser.newContext(), await browser.newContext()];
  // The first page races WebTransport against WebSocket; WebTransport starts first and wins.
  const wendy = await signIn(cw, 'wendy');
  const walt = await signIn(cs, 'walt', '?transport=websocket');
  assert.equal(await wendy.getAttribute('#status', 'data-transport'), 'webtransport');
  assert.match(await wendy.textContent('#status'), /WebTransport/);
  assert.equal(await walt.getAttribute('#status', 'data-transport'), 'websocket');
  const dm = 'dm:walt:wendy';
  await wendy.fill('#new-dm input', 'walt');
  await wendy.press('#new-dm input', 'Enter');
  for (const n of [1, 2, 3]) await say(wendy, `over webtransport ${n}`);
  await until('walt sees the dm', () => walt.textContent(`#convs li[data-conv="${dm}"] .unread`).catch(() => null), (t) => t === '3');
  await walt.click(`#convs li[data-conv="${dm}"]`);
  await until('walt reads them', () => texts(walt), (t) => t.length === 3);
  assert.deepEqual(await texts(walt), ['over webtransport 1', 'over webtransport 2', 'over webtransport 3']);
  await until('read ticks over WebTransport', () => statusOf(wendy, 'over webtransport 3'), (s) => s[0] === 'read');
  await say(walt, 'over websocket');
  await until('wendy gets the answer', () => texts(wendy), (t) => t.at(-1) === 'over websocket');
  assert.equal((await texts(wendy)).length, 4);
  assert.equal(await wendy.getAttribute('#status', 'data-transport'), 'webtransport', 'still on WebTransport');
  await wendy.screenshot({ path: join(shots, 'webtransport.png') });
  assert.deepEqual([...wendy.problems, ...walt.problems], [], 'no script errors on the page');
  await cw.close();
  await cs.close();
});
