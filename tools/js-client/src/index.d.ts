// Types of the Switchboard client (PROTOCOL.md's frames, as the client hands them out).

export type State = 'connecting' | 'connected' | 'disconnected';

export interface Welcome {
  t: 'welcome';
  user: string;
  session: string;
  node: string;
  heartbeat_ms: number;
  nodes?: string[];
}

export interface Ack {
  id: string;
  conv: string;
  seq: number;
  ts: number;
  dup: boolean;
}

export interface Message {
  t: 'msg';
  conv: string;
  seq: number;
  id: string;
  from: string;
  ts: number;
  kind: string;
  body: unknown;
}

export interface Receipt {
  t: 'receipt';
  conv: string;
  user: string;
  seq: number;
  kind: 'delivered' | 'read';
}

export interface Typing {
  t: 'typing';
  conv: string;
  user: string;
}

export interface Notify {
  t: 'notify';
  conv: string;
  head: number;
}

export interface Membership {
  t: 'joined' | 'left';
  conv: string;
  kind: string;
}

export interface Gap {
  t: 'gap';
  conv: string;
  from: number;
  to: number;
}

export interface Presence {
  user: string;
  online: boolean;
  last_seen?: number;
}

export interface InboxEntry {
  conv: string;
  kind: string;
  head: number;
  delivered: number;
  read: number;
}

export interface ConvInfo {
  conv: string;
  kind: string;
  title: string;
  head: number;
  members_count: number;
}

export interface HistoryPage {
  messages: Message[];
  next_cursor: string | null;
}

export interface Events {
  message: Message;
  receipt: Receipt;
  typing: Typing;
  notify: Notify;
  joined: Membership;
  left: Membership;
  presence: { t: 'presence'; users: Presence[] };
  gap: Gap;
  state: State;
  error: Error;
}

export interface Options {
  url: string;
  token: string | (() => string | Promise<string>);
  WebSocket?: unknown;
  urls?: string[];
  fetch?: typeof fetch;
  /** `webtransport`: race WebTransport (first) against WebSocket and keep the winner. */
  transport?: 'websocket' | 'webtransport';
  /** The node's `https://HOST:QUIC_PORT/v1/wt`, and options for `new WebTransport`. */
  webtransport?: { url: string; serverCertificateHashes?: { algorithm: 'sha-256'; value: BufferSource }[] };
  WebTransport?: unknown;
}

export class SwitchboardError extends Error {
  code: string;
  frame?: unknown;
}

export class Switchboard {
  constructor(options: Options);
  state: State;
  /** The transport of the current (or last) connection. */
  transport: 'websocket' | 'webtransport' | null;
  welcome: Welcome | null;
  connect(): Promise<Welcome>;
  close(conv?: string): void;
  on<E extends keyof Events>(event: E, fn: (value: Events[E]) => void): () => void;
  send(message: { to?: string; conv?: string; body: unknown; id?: string; kind?: string }): Promise<Ack>;
  pending(): string[];
  receipt(conv: string, seq: number, kind?: 'delivered' | 'read'): boolean;
  typing(conv: string): boolean;
  open(conv: string): void;
  presence(users: string[]): Promise<Presence[]>;
  inbox(afterTs?: number): Promise<InboxEntry[]>;
  sync(conv: string, after?: number): Promise<Message[]>;
  follow(conv: string, seq: number): void;
  history(conv: string, page?: { cursor?: string | null; limit?: number; after?: number }): Promise<HistoryPage>;
  create(conv: { kind: 'group' | 'channel'; members?: string[]; title?: string }): Promise<string>;
  members(conv: string, change: { add?: string[]; remove?: string[] }): Promise<unknown>;
  info(conv: string): Promise<ConvInfo>;
}

export default Switchboard;
