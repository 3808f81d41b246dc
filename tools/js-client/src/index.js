// The Switchboard client: PROTOCOL.md over WebSocket, in browsers and in Node (which passes
// its WebSocket class in), or over WebTransport in browsers that have it, raced against
// WebSocket. No dependencies.
//
// What it keeps so that the application never sees a message twice, out of order, or lost:
// - every send until its `ack` (or an error that retrying cannot cure), under one `id` for
//   all its retries, across reconnects: a message composed offline is sent once, later;
// - per conversation, the highest `seq` delivered to the application. A `msg` at or below it
//   is a duplicate and dropped; one past a hole is held while the hole is filled by `sync`;
// - after every reconnect, a `sync` of each conversation it has seen, from that seq.

const BACKOFF_BASE_MS = 250;
const BACKOFF_CAP_MS = 30_000;
/// Close codes after which reconnecting cannot help (PROTOCOL.md §5).
const FATAL_CLOSES = new Set([4001, 4003]);
/// Errors a retry of the same send may cure, after `retry_after_ms`.
const RETRIED_ERRORS = new Set(['rate_limited', 'unavailable']);
/// Without a `retry_after_ms`, a retried send waits this long.
const RETRY_DEFAULT_MS = 1_000;
const SYNC_PAGE = 1_000;
/// With `transport: 'webtransport'`, WebSocket starts this long after WebTransport unless
/// WebTransport failed first (moq's head start).
const WEBTRANSPORT_HEAD_START_MS = 500;

/// An error the server answered with (`code` as in PROTOCOL.md), or the client's own
/// (`not_connected`, `closed`).
export class SwitchboardError extends Error {
  constructor(code, message, frame) {
    super(`${code}: ${message}`);
    this.name = 'SwitchboardError';
    this.code = code;
    this.frame = frame;
  }
}

/// A random UUID (version 4), for message ids. Web Crypto where there is one (browsers,
/// Node 19+); elsewhere `Math.random`, which is enough for an id that only needs to be unique.
function uuid() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  const b = new Uint8Array(16);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/// A WebTransport session and its one bidirectional stream (PROTOCOL.md §1: each frame a u32
/// big-endian length, then its bytes), shaped like the WebSocket the client drives:
/// `onopen`, `onmessage({data})`, `onclose({code, reason})`, `send(text)`, `close(code)`.
/// The close code is the session's (`WebTransportCloseInfo.closeCode`), which the server sets
/// to the protocol's close code; a session that fails instead closes with 1006.
export class WebTransportSocket {
  constructor(WebTransport, url, options) {
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    this._ended = false;
    this._writer = null;
    this._session = null;
    this._start(WebTransport, url, options);
  }

  async _start(WebTransport, url, options) {
    try {
      this._session = new WebTransport(url, options);
      this._session.closed.then(
        (info) => this._end(info?.closeCode ?? 1005, info?.reason ?? ''),
        (e) => this._end(1006, String(e?.message ?? e)),
      );
      await this._session.ready;
      const stream = await this._session.createBidirectionalStream();
      if (this._ended) return;
      this._writer = stream.writable.getWriter();
      this.onopen?.();
      this._read(stream.readable.getReader());
    } catch (e) {
      this._end(1006, String(e?.message ?? e));
    }
  }

  async _read(reader) {
    const text = new TextDecoder();
    let held = new Uint8Array(0);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        const joined = new Uint8Array(held.length + value.length);
        joined.set(held);
        joined.set(value, held.length);
        let at = 0;
        while (joined.length - at >= 4) {
          const len = new DataView(joined.buffer, at, 4).getUint32(0);
          if (joined.length - at - 4 < len) break;
          const frame = joined.subarray(at + 4, at + 4 + len);
          at += 4 + len;
          if (!this._ended) this.onmessage?.({ data: text.decode(frame) });
        }
        held = joined.slice(at);
      }
    } catch {
      // The session's `closed` says how it ended.
    }
  }

  send(data) {
    const bytes = new TextEncoder().encode(data);
    const framed = new Uint8Array(4 + bytes.length);
    new DataView(framed.buffer).setUint32(0, bytes.length);
    framed.set(bytes, 4);
    this._writer?.write(framed).catch(() => {});
  }

  close(code = 1000, reason = '') {
    try {
      this._session?.close({ closeCode: code, reason });
    } catch {}
    this._end(code, reason);
  }

  _end(code, reason) {
    if (this._ended) return;
    this._ended = true;
    this.onclose?.({ code, reason });
  }
}

/// `ws://host:port/v1/ws` → `http://host:port`, for REST on the same port.
function httpBase(wsUrl) {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  return u.origin;
}

export class Switchboard {
  /**
   * @param {object} options
   * @param {string} options.url the node's WebSocket URL, `ws://HOST:PORT/v1/ws`
   * @param {string | (() => string | Promise<string>)} options.token a JWT, or a function
   *   that gives a fresh one for each connection
   * @param {typeof WebSocket} [options.WebSocket] the WebSocket class (Node: `ws`'s)
   * @param {string[]} [options.urls] more nodes to reconnect to, besides `welcome.nodes`
   * @param {typeof fetch} [options.fetch] for `history` (defaults to the global one)
   * @param {'websocket' | 'webtransport'} [options.transport] `webtransport`: race
   *   WebTransport (first) against WebSocket (after a head start) and keep the winner
   * @param {{url: string, serverCertificateHashes?: object[]}} [options.webtransport] the
   *   node's WebTransport URL, `https://HOST:QUIC_PORT/v1/wt`, and the options for
   *   `new WebTransport` (a development certificate is trusted by its hash)
   * @param {typeof WebTransport} [options.WebTransport] the WebTransport class
   */
  constructor({ url, token, WebSocket, urls = [], fetch, transport = 'websocket', webtransport, WebTransport } = {}) {
    if (!url) throw new TypeError('url is required');
    this.WebSocket = WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocket) throw new TypeError('no WebSocket class: pass options.WebSocket');
    if (transport !== 'websocket' && transport !== 'webtransport') {
      throw new TypeError(`transport must be 'websocket' or 'webtransport', not ${transport}`);
    }
    this.WebTransport = WebTransport ?? globalThis.WebTransport;
    this._webtransport = transport === 'webtransport' && webtransport?.url ? webtransport : null;
    /** the transport of the current (or last) connection: `websocket` or `webtransport` */
    this.transport = null;
    this.token = token;
    this.fetch = fetch ?? globalThis.fetch?.bind(globalThis);
    this.state = 'disconnected';
    this.welcome = null;
    this._configured = [url, ...urls];
    this._nodes = [];
    this._urlIndex = 0;
    this._url = url;
    this._ws = null;
    this._listeners = new Map();
    this._attempt = 0;
    this._reconnectAfterMs = null;
    this._timer = null;
    this._closedByUser = false;
    this._connecting = null;
    /** @type {Map<string, {frame: object, resolve: Function, reject: Function, timer: any}>} */
    this._sends = new Map();
    /** @type {Map<string, {frame: object, resolve: Function, reject: Function, answer: string}>} */
    this._requests = new Map();
    this._nextReq = 1;
    /** conv → highest seq delivered to the application */
    this._last = new Map();
    /** conv → messages past a hole, by seq, waiting for it to be filled */
    this._held = new Map();
    /** conv → the sync in progress: {after, collect, resolve, reject, req} */
    this._syncs = new Map();
    /** conv → a promise chain, so that one conversation's syncs run one at a time */
    this._syncChains = new Map();
    /** channels open on this client, opened again after a reconnect */
    this._open = new Set();
    /** when the last frame came (liveness) */
    this._heardAt = 0;
    this._liveness = null;
  }

  // ---- Events ---------------------------------------------------------------------------

  /** Listens for `message`, `receipt`, `typing`, `notify`, `joined`, `left`, `presence`,
   *  `gap`, `state` or `error`; returns a function that stops listening. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this._listeners.get(event)?.delete(fn);
  }

  _emit(event, value) {
    for (const fn of this._listeners.get(event) ?? []) {
      try {
        fn(value);
      } catch (e) {
        if (event !== 'error') this._emit('error', e);
      }
    }
  }

  _setState(state) {
    if (this.state !== state) {
      this.state = state;
      this._emit('state', state);
    }
  }

  // ---- Connection -----------------------------------------------------------------------

  /** Connects (and keeps reconnecting until `close()`); resolves with the first `welcome`. */
  connect() {
    this._closedByUser = false;
    if (this.state === 'connected') return Promise.resolve(this.welcome);
    if (!this._connecting) {
      this._connecting = {};
      this._connecting.promise = new Promise((resolve, reject) => {
        Object.assign(this._connecting, { resolve, reject });
      });
      this._openSocket();
    }
    return this._connecting.promise;
  }

  /** `close()` disconnects for good; `close(conv)` stops a channel's full pushes. */
  close(conv) {
    if (conv !== undefined) {
      this._open.delete(conv);
      this._transmit({ t: 'close', conv });
      return;
    }
    this._closedByUser = true;
    clearTimeout(this._timer);
    clearInterval(this._liveness);
    this._ws?.close(1000);
    this._ws = null;
    this._fail(new SwitchboardError('closed', 'the client was closed'));
    this._setState('disconnected');
  }

  /** Rejects everything waiting (the client was closed, or may not reconnect). */
  _fail(error) {
    for (const s of this._sends.values()) {
      clearTimeout(s.timer);
      s.reject(error);
    }
    this._sends.clear();
    for (const r of this._requests.values()) r.reject(error);
    this._requests.clear();
    for (const s of this._syncs.values()) s.reject(error);
    this._syncs.clear();
    if (this._connecting) {
      this._connecting.reject(error);
      this._connecting = null;
    }
  }

  async _openSocket() {
    this._setState('connecting');
    let token;
    try {
      token = typeof this.token === 'function' ? await this.token() : this.token;
    } catch (e) {
      this._emit('error', e);
      return this._scheduleReconnect();
    }
    if (this._closedByUser) return;
    let ws;
    try {
      ({ socket: ws, transport: this.transport } = await this._dial());
    } catch (e) {
      this._emit('error', e);
      return this._scheduleReconnect();
    }
    if (this._closedByUser) return ws.close(1000);
    this._ws = ws;
    ws.send(JSON.stringify({ t: 'hello', token }));
    ws.onmessage = (event) => {
      if (ws !== this._ws) return;
      this._heardAt = Date.now();
      let frame;
      try {
        frame = JSON.parse(typeof event.data === 'string' ? event.data : new TextDecoder().decode(event.data));
      } catch {
        return this._emit('error', new SwitchboardError('bad_request', 'the server sent a frame that is not JSON'));
      }
      this._frame(frame);
    };
    ws.onerror = () => {};
    ws.onclose = (event) => {
      if (ws !== this._ws) return;
      this._ws = null;
      this._closed(event.code, event.reason);
    };
  }

  /** An open socket to the node: a WebSocket, or with `transport: 'webtransport'` (to the
   *  first configured node, whose WebTransport URL is known) whichever of WebTransport and
   *  WebSocket opens first, WebSocket starting after a head start or as soon as
   *  WebTransport fails. The loser is closed. */
  _dial() {
    const url = this._url;
    const race = this._webtransport && this.WebTransport && url === this._configured[0];
    return new Promise((resolve, reject) => {
      const tried = [];
      let settled = false;
      let failed = 0;
      let wsTimer = null;
      const attempt = (transport, open) => {
        let socket;
        try {
          socket = open();
        } catch (e) {
          return lost(transport, e);
        }
        tried.push(socket);
        socket.onerror = () => {};
        socket.onopen = () => {
          if (settled) return socket.close(1000);
          settled = true;
          clearTimeout(wsTimer);
          for (const other of tried) {
            if (other === socket) continue;
            other.onopen = other.onclose = null;
            other.close(1000);
          }
          socket.onopen = socket.onclose = null;
          resolve({ socket, transport });
        };
        socket.onclose = (event) =>
          lost(transport, new SwitchboardError('not_connected', `${transport} closed ${event.code} before it opened`));
      };
      const websocket = () => attempt('websocket', () => new this.WebSocket(url));
      const lost = (transport, error) => {
        failed += 1;
        if (transport === 'webtransport' && wsTimer !== null) {
          // No need to wait out the head start.
          clearTimeout(wsTimer);
          wsTimer = null;
          websocket();
        }
        if (!settled && failed === (race ? 2 : 1)) {
          settled = true;
          reject(error);
        }
      };
      if (!race) return websocket();
      wsTimer = setTimeout(() => {
        wsTimer = null;
        websocket();
      }, WEBTRANSPORT_HEAD_START_MS);
      attempt('webtransport', () => new WebTransportSocket(this.WebTransport, this._webtransport.url, this._webtransport));
    });
  }

  /** Every heartbeat: a `ping` when nothing came for one, and the socket given up when
   *  nothing came for two (a browser never shows the server's WebSocket pings, and a
   *  network that went away closes nothing by itself). */
  _checkLiveness(ws, heartbeatMs) {
    if (ws !== this._ws) return;
    const silent = Date.now() - this._heardAt;
    if (silent >= 2 * heartbeatMs) {
      this._ws = null;
      ws.onclose = null;
      ws.onmessage = null;
      try {
        ws.close();
      } catch {}
      return this._closed(1006, 'nothing from the server for two heartbeats');
    }
    if (silent >= heartbeatMs) this._transmit({ t: 'ping' });
  }

  _closed(code, reason) {
    clearInterval(this._liveness);
    for (const s of this._syncs.values()) s.interrupted = true;
    if (this._closedByUser) return;
    this._setState('disconnected');
    if (FATAL_CLOSES.has(code)) {
      const error = new SwitchboardError(code === 4001 ? 'unauthorized' : 'forbidden', `closed ${code}: ${reason}`);
      this._emit('error', error);
      this._closedByUser = true;
      return this._fail(error);
    }
    this._scheduleReconnect();
  }

  /** The next node to try: the configured URLs, then the nodes the last `welcome` named. */
  _nextUrl() {
    const all = [...new Set([...this._configured, ...this._nodes])];
    this._urlIndex = (this._urlIndex + 1) % all.length;
    return all[this._urlIndex];
  }

  _scheduleReconnect() {
    if (this._closedByUser) return;
    let delay;
    if (this._reconnectAfterMs !== null) {
      delay = this._reconnectAfterMs;
      this._reconnectAfterMs = null;
    } else {
      // Full jitter: anywhere from 0 to the exponential bound.
      const bound = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this._attempt);
      delay = Math.random() * bound;
    }
    this._attempt += 1;
    this._url = this._nextUrl();
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._openSocket(), delay);
  }

  _transmit(frame) {
    if (this.state !== 'connected' || !this._ws) return false;
    this._ws.send(JSON.stringify(frame));
    return true;
  }

  _welcomed(frame) {
    const first = this.welcome === null;
    this.welcome = frame;
    this._nodes = frame.nodes ?? [];
    this._attempt = 0;
    this._setState('connected');
    clearInterval(this._liveness);
    const ws = this._ws;
    const heartbeatMs = frame.heartbeat_ms || 30_000;
    this._liveness = setInterval(() => this._checkLiveness(ws, heartbeatMs), heartbeatMs / 2);
    this._liveness.unref?.();
    if (this._connecting) {
      this._connecting.resolve(frame);
      this._connecting = null;
    }
    // What waited for the connection goes now, under the same ids.
    for (const s of this._sends.values()) this._transmit(s.frame);
    for (const r of this._requests.values()) this._transmit(r.frame);
    for (const conv of this._open) this._transmit({ t: 'open', conv });
    for (const [conv, sync] of this._syncs) {
      // A sync cut off by the reconnect starts again from where it got to.
      if (sync.interrupted) {
        sync.interrupted = false;
        this._syncPage(conv, sync);
      }
    }
    if (!first) {
      for (const [conv, last] of this._last) {
        this._resync(conv, last);
      }
    }
  }

  // ---- Frames from the server -----------------------------------------------------------

  _frame(f) {
    switch (f.t) {
      case 'welcome':
        return this._welcomed(f);
      case 'ack': {
        const s = this._sends.get(f.id);
        if (!s) return;
        this._sends.delete(f.id);
        if (!f.dup) this._acked(f.conv, f.seq);
        return s.resolve({ id: f.id, conv: f.conv, seq: f.seq, ts: f.ts, dup: f.dup });
      }
      case 'msg':
        return this._message(f);
      case 'gap':
        return this._gap(f);
      case 'synced':
        return this._synced(f);
      case 'error':
        return this._error(f);
      case 'reconnect':
        this._reconnectAfterMs = f.after_ms ?? 0;
        return;
      case 'presence':
      case 'inbox':
        if (f.req && this._requests.has(f.req)) {
          const r = this._requests.get(f.req);
          this._requests.delete(f.req);
          return r.resolve(f.t === 'presence' ? f.users : f.convs);
        }
        return this._emit(f.t, f);
      case 'joined':
      case 'left':
        if (f.t === 'left') this._open.delete(f.conv);
        return this._emit(f.t, f);
      case 'receipt':
      case 'typing':
      case 'notify':
        return this._emit(f.t, f);
      case 'pong':
      case 'ping':
        // The server's heartbeat on QUIC: hearing it is all that matters.
        return;
      default:
        return;
    }
  }

  _error(f) {
    const error = new SwitchboardError(f.code, f.message, f);
    if (f.id && this._sends.has(f.id)) {
      const s = this._sends.get(f.id);
      if (RETRIED_ERRORS.has(f.code)) {
        clearTimeout(s.timer);
        s.timer = setTimeout(() => this._transmit(s.frame), f.retry_after_ms ?? RETRY_DEFAULT_MS);
        return;
      }
      this._sends.delete(f.id);
      return s.reject(error);
    }
    if (f.req && this._requests.has(f.req)) {
      const r = this._requests.get(f.req);
      this._requests.delete(f.req);
      return r.reject(error);
    }
    for (const [conv, sync] of this._syncs) {
      if (f.req && sync.req === f.req) {
        this._syncs.delete(conv);
        return sync.reject(error);
      }
    }
    this._emit('error', error);
  }

  /** A `msg`, live or from a sync: delivered once, in seq order, or held past a hole. */
  _message(m) {
    const sync = this._syncs.get(m.conv);
    if (sync && m.seq > sync.after) sync.collect.set(m.seq, m);
    const last = this._last.get(m.conv);
    if (last === undefined) {
      // The first of a conversation this client has seen: nothing before it is owed.
      this._last.set(m.conv, m.seq);
      this._emit('message', m);
      return;
    }
    if (m.seq <= last) return;
    if (m.seq === last + 1) {
      this._deliver(m);
      return;
    }
    if (!this._held.has(m.conv)) this._held.set(m.conv, new Map());
    this._held.get(m.conv).set(m.seq, m);
    if (!sync) this._resync(m.conv, last);
  }

  /** This connection gets no `msg` of its own sends (PROTOCOL.md): the ack moves its place
   *  in the conversation instead, so the next message is not taken for a hole. (An ack that
   *  overtakes an earlier message leaves the place alone; a sync then fills it.) */
  _acked(conv, seq) {
    const last = this._last.get(conv);
    if (last !== undefined && seq !== last + 1) return;
    this._advance(conv, seq);
  }

  /** `conv` is had up to `seq` without a message to deliver (an own ack, a gap): the held
   *  message right after it, if any, goes now. */
  _advance(conv, seq) {
    this._last.set(conv, seq);
    const held = this._held.get(conv);
    const next = held?.get(seq + 1);
    if (next) {
      held.delete(seq + 1);
      this._deliver(next);
    }
  }

  _deliver(m) {
    this._last.set(m.conv, m.seq);
    this._emit('message', m);
    const held = this._held.get(m.conv);
    if (!held) return;
    let next = m.seq + 1;
    while (held.has(next)) {
      const h = held.get(next);
      held.delete(next);
      this._last.set(m.conv, next);
      this._emit('message', h);
      next += 1;
    }
    for (const seq of held.keys()) if (seq < next) held.delete(seq);
    if (held.size === 0) this._held.delete(m.conv);
  }

  /** Seqs `from..=to` will never arrive (retention): skip past them. */
  _gap(g) {
    this._emit('gap', g);
    const last = this._last.get(g.conv);
    if (last !== undefined && g.from <= last + 1 && g.to > last) this._advance(g.conv, g.to);
  }

  // ---- Requests -------------------------------------------------------------------------

  /**
   * Sends a message; resolves with its `ack` once it is durable. Retried under the same id
   * after `rate_limited` and `unavailable`, and after every reconnect until acknowledged.
   */
  send({ to, conv, body, id, kind } = {}) {
    if ((to === undefined) === (conv === undefined)) {
      return Promise.reject(new TypeError('send needs exactly one of to and conv'));
    }
    id = id ?? uuid();
    const existing = this._sends.get(id);
    if (existing) return existing.promise;
    const frame = { t: 'send', id, body };
    if (to !== undefined) frame.to = to;
    else frame.conv = conv;
    if (kind !== undefined) frame.kind = kind;
    const entry = { frame, timer: null };
    entry.promise = new Promise((resolve, reject) => {
      entry.resolve = resolve;
      entry.reject = reject;
    });
    this._sends.set(id, entry);
    this._transmit(frame);
    return entry.promise;
  }

  /** Ids of sends not yet acknowledged (composed offline, or waiting on a retry). */
  pending() {
    return [...this._sends.keys()];
  }

  receipt(conv, seq, kind = 'read') {
    return this._transmit({ t: 'receipt', conv, seq, kind });
  }

  typing(conv) {
    return this._transmit({ t: 'typing', conv });
  }

  /** Full pushes of a channel to this connection (kept across reconnects). */
  open(conv) {
    this._open.add(conv);
    this._transmit({ t: 'open', conv });
  }

  _request(frame) {
    const req = `r${this._nextReq++}`;
    frame.req = req;
    return new Promise((resolve, reject) => {
      this._requests.set(req, { frame, resolve, reject });
      this._transmit(frame);
    });
  }

  /** Resolves with `[{user, online, last_seen?}]`. */
  presence(users) {
    return this._request({ t: 'presence', users });
  }

  /** Resolves with `[{conv, kind, head, delivered, read}]`. */
  inbox(afterTs) {
    const frame = { t: 'inbox' };
    if (afterTs !== undefined) frame.after_ts = afterTs;
    return this._request(frame);
  }

  /** The application has `conv` up to `seq` (from `inbox` or history): deliver what comes
   *  after it, and resync from it after a reconnect. A conversation this client already
   *  follows keeps its own place (what it delivered), so nothing it owes is skipped. */
  follow(conv, seq) {
    if (this._last.has(conv)) return;
    this._last.set(conv, seq);
  }

  /** Every message of `conv` after `after`, all pages, in seq order (and each one not yet
   *  delivered goes to `message` listeners too). */
  sync(conv, after = 0) {
    const run = () =>
      new Promise((resolve, reject) => {
        const sync = { after, from: after, collect: new Map(), resolve, reject, req: null, interrupted: false };
        this._syncs.set(conv, sync);
        this._syncPage(conv, sync);
      });
    const chain = (this._syncChains.get(conv) ?? Promise.resolve()).then(run, run);
    this._syncChains.set(
      conv,
      chain.catch(() => {}),
    );
    return chain;
  }

  _syncPage(conv, sync) {
    sync.req = `s${this._nextReq++}`;
    this._transmit({ t: 'sync', conv, after: sync.from, limit: SYNC_PAGE, req: sync.req });
  }

  _synced(f) {
    const sync = this._syncs.get(f.conv);
    if (!sync || (f.req && f.req !== sync.req)) return;
    if (f.more) {
      sync.from = f.upto;
      return this._syncPage(f.conv, sync);
    }
    this._syncs.delete(f.conv);
    const messages = [...sync.collect.values()].sort((a, b) => a.seq - b.seq);
    sync.resolve(messages);
    // A hole that opened while this sync ran: fill it too.
    if (this._held.has(f.conv)) this._resync(f.conv, this._last.get(f.conv));
  }

  /** After a reconnect or a hole: what this client missed of `conv`, through `message`. */
  _resync(conv, last) {
    this.sync(conv, last).catch((e) => this._emit('error', e));
  }

  /** One REST call (PROTOCOL.md section 6) with this client's token. */
  async _rest(method, path, body) {
    if (!this.fetch) throw new TypeError('no fetch: pass options.fetch');
    const token = typeof this.token === 'function' ? await this.token() : this.token;
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const response = await this.fetch(`${httpBase(this._url)}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    const answer = text ? JSON.parse(text) : {};
    if (!response.ok) {
      throw new SwitchboardError(answer.code ?? 'internal', answer.message ?? response.statusText, answer);
    }
    return answer;
  }

  /** A page of REST history, newest first (or oldest first from `after`):
   *  `{messages, next_cursor}`. */
  history(conv, { cursor, limit, after } = {}) {
    const params = new URLSearchParams();
    if (limit !== undefined) params.set('limit', String(limit));
    if (cursor !== undefined && cursor !== null) params.set('cursor', cursor);
    if (after !== undefined) params.set('after', String(after));
    return this._rest('GET', `/v1/conversations/${encodeURIComponent(conv)}/messages?${params}`);
  }

  /** A new group or channel; the caller becomes its owner. Resolves to its id. */
  async create({ kind, members = [], title } = {}) {
    const answer = await this._rest('POST', '/v1/conversations', { kind, members, title });
    return answer.conv;
  }

  /** Adds and removes members (the owner, or an admin token). */
  members(conv, { add = [], remove = [] } = {}) {
    return this._rest('POST', `/v1/conversations/${encodeURIComponent(conv)}/members`, { add, remove });
  }

  /** `{conv, kind, title, head, members_count}`. */
  info(conv) {
    return this._rest('GET', `/v1/conversations/${encodeURIComponent(conv)}`);
  }
}

export default Switchboard;
