// The chat page: everything it does goes through the client library applications import
// (switchboard-client, served beside it), and the REST calls of PROTOCOL.md section 6.
import { Switchboard } from '/switchboard-client.js';

const $ = (selector) => document.querySelector(selector);
const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/ws`;
/** How long a typing indicator shows, and how often this page says it is typing. */
const TYPING_SHOWN_MS = 5_000;
const TYPING_EVERY_MS = 3_000;
const PRESENCE_EVERY_MS = 20_000;
const HISTORY_PAGE = 30;

/** @type {Switchboard | null} */
let client = null;
let me = null;
/** conv → what the page knows of it */
const convs = new Map();
/** user → {online, last_seen} */
const presence = new Map();
let openConv = null;
let lastTypingSent = 0;

function newId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(16)}-${Math.random().toString(16).slice(2)}`;
}

let errorTimer = null;

/** A line under the conversation list, for a while. */
function showError(message) {
  $('#side-error').textContent = message;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => ($('#side-error').textContent = ''), 8_000);
}

/** Someone who just wrote or typed is online, whatever the last presence answer said. */
function heardFrom(user) {
  const p = presence.get(user);
  if (p && !p.online) presence.set(user, { user, online: true });
}

/** A conversation's entry, made on first sight. */
function conv(id, kind) {
  let c = convs.get(id);
  if (!c) {
    kind = kind ?? (id.startsWith('dm:') ? 'dm' : id.startsWith('c_') ? 'channel' : 'group');
    c = {
      id,
      kind,
      title: null,
      head: 0,
      read: 0,
      unread: 0,
      lastTs: 0,
      /** seq → msg */
      messages: new Map(),
      /** id → {id, body, status, error} of this page's sends not yet acknowledged */
      pending: new Map(),
      /** the REST cursor of older messages; undefined until the first page */
      cursor: undefined,
      /** user → {delivered, read}: the other members' cursors, as receipts came */
      others: new Map(),
      /** user → when their typing indicator goes */
      typing: new Map(),
    };
    convs.set(id, c);
    if (kind !== 'dm') {
      client
        ?.info(id)
        .then((info) => {
          c.title = info.title || id;
          c.head = Math.max(c.head, info.head);
          render();
        })
        .catch(() => {});
    }
  }
  return c;
}

/** A message of `c` (live, from history, or an own one acknowledged), once by its seq. */
function remember(c, m) {
  c.messages.set(m.seq, m);
  c.head = Math.max(c.head, m.seq);
  c.lastTs = Math.max(c.lastTs, m.ts);
}

/** The other user of a dm. */
function peer(c) {
  if (c.kind !== 'dm') return null;
  const [, a, b] = c.id.split(':');
  return a === me ? b : a;
}

function title(c) {
  return c.kind === 'dm' ? peer(c) : c.title ?? c.id;
}

function text(body) {
  if (typeof body === 'string') return body;
  if (body && typeof body.text === 'string') return body.text;
  return JSON.stringify(body);
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return 'just now';
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(ms).toLocaleDateString();
}

// ---- Sign-in ------------------------------------------------------------------------------

async function devToken(name) {
  const response = await fetch('/dev/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user: name }),
  });
  const answer = await response.json();
  if (!response.ok) {
    const error = new Error(answer.message ?? response.statusText);
    error.code = answer.code;
    throw error;
  }
  return answer.token;
}

function showSignIn(message) {
  $('#app').hidden = true;
  $('#signin').hidden = false;
  $('#signin-error').textContent = message ?? '';
}

$('#signin-name').addEventListener('submit', async (e) => {
  e.preventDefault();
  const name = $('#name').value.trim();
  try {
    await devToken(name);
    sessionStorage.setItem('sb.user', name);
    start({ user: name });
  } catch (error) {
    if (error.code === 'forbidden') {
      // This node has its own secret or key: a token from whoever issues them.
      $('#signin-name').hidden = true;
      $('#signin-token').hidden = false;
    }
    showSignIn(error.message);
  }
});

$('#signin-token').addEventListener('submit', (e) => {
  e.preventDefault();
  const token = $('#token').value.trim();
  sessionStorage.setItem('sb.token', token);
  start({ token });
});

$('#signout').addEventListener('click', () => {
  sessionStorage.clear();
  location.reload();
});

// ---- The connection -----------------------------------------------------------------------

/** WebTransport, raced against WebSocket, where the browser has it and the node serves it
 *  (`GET /dev/quic`: the port and, for a development certificate, its hash, by which the
 *  browser trusts it). `?transport=websocket` on the page's URL keeps to WebSocket. */
async function transportOptions() {
  if (!globalThis.WebTransport || new URLSearchParams(location.search).get('transport') === 'websocket') return {};
  try {
    const response = await fetch('/dev/quic');
    if (!response.ok) return {};
    const quic = await response.json();
    const webtransport = { url: `https://${location.hostname}:${quic.port}${quic.path}` };
    if (quic.cert_sha256) {
      const value = new Uint8Array(quic.cert_sha256.match(/../g).map((h) => parseInt(h, 16)));
      webtransport.serverCertificateHashes = [{ algorithm: 'sha-256', value }];
    }
    return { transport: 'webtransport', webtransport };
  } catch {
    return {};
  }
}

async function start({ user, token }) {
  // A development name gets a fresh token for every connection; a pasted token is used as is.
  const tokenFor = user ? () => devToken(user) : token;
  client = new Switchboard({ url: wsUrl, token: tokenFor, ...(await transportOptions()) });
  // For the browser console: the page's client.
  globalThis.switchboard = client;
  client.on('state', (state) => {
    const status = $('#status');
    status.dataset.state = state;
    status.textContent = { connected: 'online', connecting: 'connecting…', disconnected: 'offline' }[state];
    if (state === 'connected') {
      // Which transport won the race.
      status.dataset.transport = client.transport;
      status.textContent += client.transport === 'webtransport' ? ' · WebTransport' : ' · WebSocket';
    }
    if (state === 'connected') onConnected();
  });
  client.on('message', onMessage);
  client.on('receipt', onReceipt);
  client.on('typing', onTyping);
  client.on('notify', (n) => {
    const c = conv(n.conv, 'channel');
    c.head = Math.max(c.head, n.head);
    if (openConv !== c.id) c.unread = Math.max(0, c.head - c.read);
    render();
  });
  client.on('joined', (j) => {
    conv(j.conv, j.kind);
    render();
  });
  client.on('left', (l) => {
    convs.delete(l.conv);
    if (openConv === l.conv) openConv = null;
    render();
  });
  client.on('error', (error) => {
    if (error.code === 'unauthorized' || error.code === 'forbidden') {
      sessionStorage.clear();
      showSignIn(`Signed out: ${error.message}`);
    } else if (client.state === 'connected') {
      // Offline, the status says it all (a failed token fetch, a refused socket).
      showError(error.message);
    }
  });
  $('#signin').hidden = true;
  $('#app').hidden = false;
  client
    .connect()
    .then((welcome) => {
      me = welcome.user;
      $('#me').textContent = me;
      render();
    })
    .catch((error) => showSignIn(error.message));
  setInterval(refreshPresence, PRESENCE_EVERY_MS);
}

/** After every (re)connect: the inbox, as the server has it, and presence. */
async function onConnected() {
  me = client.welcome.user;
  $('#me').textContent = me;
  $('#side-error').textContent = '';
  try {
    const entries = await client.inbox();
    for (const e of entries) {
      const c = conv(e.conv, e.kind);
      c.read = Math.max(c.read, e.read);
      c.head = Math.max(c.head, e.head);
      // Live messages continue from here; a reconnect resyncs from here.
      client.follow(c.id, c.head);
      if (openConv !== c.id) c.unread = Math.max(0, c.head - c.read);
    }
  } catch (error) {
    showError(`inbox: ${error.message}`);
  }
  if (openConv) markRead(convs.get(openConv));
  render();
  refreshPresence();
}

async function refreshPresence() {
  if (client?.state !== 'connected') return;
  const peers = [...new Set([...convs.values()].map(peer).filter(Boolean))].slice(0, 256);
  if (peers.length === 0) return;
  try {
    for (const p of await client.presence(peers)) presence.set(p.user, p);
    render();
  } catch {}
}

function onMessage(m) {
  const c = conv(m.conv);
  remember(c, m);
  if (m.from === me) {
    // Sent from another device, or this page's own send coming back through a sync.
    c.pending.delete(m.id);
  } else {
    client.receipt(c.id, m.seq, 'delivered');
    c.typing.delete(m.from);
    heardFrom(m.from);
    if (openConv === c.id && document.visibilityState === 'visible') markRead(c);
    else if (m.kind !== 'system') c.unread += 1;
  }
  const list = $('#messages');
  const atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  render();
  if (openConv === c.id && atEnd) scrollToEnd();
}

function onReceipt(r) {
  const c = conv(r.conv);
  if (r.user === me) {
    // Read on another device.
    if (r.kind === 'read') {
      c.read = Math.max(c.read, r.seq);
      c.unread = Math.max(0, c.head - c.read);
    }
  } else {
    const o = c.others.get(r.user) ?? { delivered: 0, read: 0 };
    o[r.kind] = Math.max(o[r.kind], r.seq);
    c.others.set(r.user, o);
  }
  render();
}

function onTyping(t) {
  if (t.user === me) return;
  const c = conv(t.conv);
  heardFrom(t.user);
  c.typing.set(t.user, Date.now() + TYPING_SHOWN_MS);
  setTimeout(render, TYPING_SHOWN_MS + 50);
  render();
}

function markRead(c) {
  if (!c || c.head === 0) return;
  if (c.head > c.read) client.receipt(c.id, c.head, 'read');
  c.read = Math.max(c.read, c.head);
  c.unread = 0;
}

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible' && openConv) {
    markRead(convs.get(openConv));
    render();
  }
});

// ---- Conversations ------------------------------------------------------------------------

async function openConversation(id) {
  const previous = openConv ? convs.get(openConv) : null;
  if (previous?.kind === 'channel' && previous.id !== id) client.close(previous.id);
  openConv = id;
  const c = convs.get(id);
  if (c.kind === 'channel') client.open(id);
  $('#composer').hidden = false;
  render();
  if (c.cursor === undefined) await loadOlder(c);
  markRead(c);
  render();
  scrollToEnd();
  $('#composer textarea').focus();
}

/** A page of history through the REST cursor, newest first. */
async function loadOlder(c) {
  if (c.cursor === null || c.loading) return;
  c.loading = true;
  try {
    const page = await client.history(c.id, { limit: HISTORY_PAGE, cursor: c.cursor });
    for (const m of page.messages) remember(c, m);
    c.cursor = page.next_cursor ?? null;
  } catch (error) {
    // A dm nobody has written in yet has no history.
    if (error.code === 'not_found' || error.code === 'forbidden') c.cursor = null;
    else showError(`history: ${error.message}`);
  } finally {
    c.loading = false;
  }
}

$('#older').addEventListener('click', async () => {
  const c = convs.get(openConv);
  const list = $('#messages');
  const before = list.scrollHeight;
  await loadOlder(c);
  render();
  list.scrollTop += list.scrollHeight - before;
});

$('#messages').addEventListener('scroll', () => {
  const c = convs.get(openConv);
  if ($('#messages').scrollTop === 0 && c?.cursor) $('#older').click();
});

$('#new-dm').addEventListener('submit', (e) => {
  e.preventDefault();
  const input = $('#new-dm input');
  const other = input.value.trim();
  if (!/^[A-Za-z0-9._@-]{1,64}$/.test(other)) {
    showError('a name is letters, digits and . _ @ -, at most 64');
    return;
  }
  input.value = '';
  const id = `dm:${[me, other].sort().join(':')}`;
  conv(id, 'dm');
  refreshPresence();
  openConversation(id);
});

$('#new-conv form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const form = e.target;
  const members = form.members.value
    .split(',')
    .map((m) => m.trim())
    .filter(Boolean);
  try {
    const id = await client.create({ kind: form.kind.value, members, title: form.title.value.trim() });
    const c = conv(id, form.kind.value);
    c.title = form.title.value.trim();
    form.reset();
    $('#new-conv').open = false;
    openConversation(id);
  } catch (error) {
    showError(error.message);
  }
});

// ---- Sending ------------------------------------------------------------------------------

/** Shown at once, sent under one id until acknowledged (offline too: it goes when the
 *  connection is back), retried by hand under the same id if it was refused. */
function send(c, body, id = newId()) {
  c.pending.set(id, { id, body, status: 'pending', error: null, ts: Date.now() });
  render();
  scrollToEnd();
  const target = c.kind === 'dm' ? { to: peer(c) } : { conv: c.id };
  client
    .send({ ...target, body, id })
    .then((ack) => {
      c.pending.delete(id);
      remember(c, { conv: c.id, seq: ack.seq, id, from: me, ts: ack.ts, kind: 'text', body });
      if (openConv === c.id) markRead(c);
      render();
    })
    .catch((error) => {
      const p = c.pending.get(id);
      if (p) Object.assign(p, { status: 'failed', error: error.message });
      render();
    });
}

$('#composer').addEventListener('submit', (e) => {
  e.preventDefault();
  const box = $('#composer textarea');
  const value = box.value.trim();
  if (!value || !openConv) return;
  box.value = '';
  send(convs.get(openConv), { text: value });
});

$('#composer textarea').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) {
    e.preventDefault();
    $('#composer').requestSubmit();
  }
});

$('#composer textarea').addEventListener('input', () => {
  // A dm nobody has written in yet does not exist for the server: nothing to type in.
  if (!openConv || convs.get(openConv).head === 0 || Date.now() - lastTypingSent < TYPING_EVERY_MS) return;
  lastTypingSent = Date.now();
  client.typing(openConv);
});

$('#list').addEventListener('click', (e) => {
  const retry = e.target.closest('button.retry');
  if (!retry) return;
  const c = convs.get(openConv);
  const p = c.pending.get(retry.dataset.id);
  if (p) send(c, p.body, p.id);
});

// ---- Rendering ----------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k === 'class') node.className = v;
    else node[k] = v;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function dotFor(c) {
  const p = peer(c);
  if (!p) return el('span', { class: 'dot none' });
  return el('span', { class: presence.get(p)?.online ? 'dot online' : 'dot' });
}

function renderConvs() {
  const list = [...convs.values()].sort((a, b) => b.lastTs - a.lastTs || b.head - a.head);
  $('#convs').replaceChildren(
    ...list.map((c) =>
      el(
        'li',
        { class: c.id === openConv ? 'active' : '', dataset: { conv: c.id }, onclick: () => openConversation(c.id) },
        dotFor(c),
        el('span', { class: 'name', textContent: title(c) }),
        c.kind === 'dm' ? null : el('span', { class: 'kind', textContent: c.kind }),
        c.unread > 0 && c.id !== openConv ? el('span', { class: 'unread', textContent: String(c.unread) }) : null,
      ),
    ),
  );
}

/** A sent message's state: read or delivered once another member's cursor passed it. */
function status(c, m) {
  let delivered = false;
  for (const o of c.others.values()) {
    if (o.read >= m.seq) return 'read';
    if (o.delivered >= m.seq) delivered = true;
  }
  return delivered ? 'delivered' : 'sent';
}

const TICKS = { pending: '○', sent: '✓', delivered: '✓✓', read: '✓✓', failed: '!' };

function renderMessage(c, m, state) {
  if (m.kind === 'system') {
    const b = m.body ?? {};
    const what = b.event === 'member_added' ? 'joined' : b.event === 'member_removed' ? 'left' : text(b);
    return el('li', { class: 'msg system', dataset: { seq: String(m.seq) }, textContent: `${b.user ?? ''} ${what}` });
  }
  const mine = m.from === me;
  const time = new Date(m.ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return el(
    'li',
    { class: mine ? 'msg mine' : 'msg', dataset: { seq: String(m.seq ?? ''), id: m.id, status: state ?? '' } },
    !mine && c.kind !== 'dm' ? el('div', { class: 'from', textContent: m.from }) : null,
    el('div', { class: 'text', textContent: text(m.body) }),
    el(
      'div',
      { class: 'meta' },
      time,
      mine ? el('span', { class: 'ticks', title: state, textContent: TICKS[state] }) : null,
      state === 'failed' ? el('span', { textContent: ` ${m.error} ` }) : null,
      state === 'failed' ? el('button', { class: 'retry', dataset: { id: m.id }, textContent: 'retry' }) : null,
    ),
  );
}

function renderConv() {
  const c = openConv ? convs.get(openConv) : null;
  $('#empty').hidden = !!c;
  $('#conv-head').hidden = !c;
  $('#composer').hidden = !c;
  if (!c) {
    $('#list').replaceChildren();
    $('#older').hidden = true;
    $('#typing').textContent = '';
    return;
  }
  $('#conv-title').textContent = title(c);
  $('#conv-dot').replaceWith(Object.assign(dotFor(c), { id: 'conv-dot' }));
  const p = presence.get(peer(c));
  $('#conv-presence').textContent = !p ? '' : p.online ? 'online' : p.last_seen ? `last seen ${ago(p.last_seen)}` : 'offline';
  $('#older').hidden = !c.cursor;
  const acked = [...c.messages.values()].sort((a, b) => a.seq - b.seq);
  const waiting = [...c.pending.values()].map((p) => ({ ...p, from: me, kind: 'text' }));
  $('#list').replaceChildren(
    ...acked.map((m) => renderMessage(c, m, m.from === me ? status(c, m) : null)),
    ...waiting.map((m) => renderMessage(c, m, m.status)),
  );
  const now = Date.now();
  const typing = [...c.typing].filter(([, until]) => until > now).map(([u]) => u);
  $('#typing').textContent = typing.length ? `${typing.join(', ')} ${typing.length > 1 ? 'are' : 'is'} typing…` : '';
}

function render() {
  renderConvs();
  renderConv();
}

function scrollToEnd() {
  const list = $('#messages');
  list.scrollTop = list.scrollHeight;
}

// ---- Start --------------------------------------------------------------------------------

const remembered = { user: sessionStorage.getItem('sb.user'), token: sessionStorage.getItem('sb.token') };
if (remembered.user || remembered.token) start(remembered.user ? { user: remembered.user } : remembered);
else showSignIn();
