// Interop: Node `ws` (a client nobody here wrote) against the real daemon.
// Usage: node client.mjs WS_URL ALICE_TOKEN BOB_TOKEN. Prints OK and exits 0 when hello, send,
// ack, receive, sync and a clean close all behave as PROTOCOL.md says.
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const WebSocket = require("ws");

const [url, aliceToken, bobToken] = process.argv.slice(2);
const fail = (why) => { console.error(why); process.exit(1); };
setTimeout(() => fail("timed out"), 15000).unref();

function open(u, protocols) {
  const ws = new WebSocket(u, protocols);
  const queue = [];
  const waiters = [];
  ws.on("message", (data, isBinary) => {
    if (isBinary) fail("binary frame on a JSON connection");
    const frame = JSON.parse(data.toString());
    const w = waiters.shift();
    if (w) w(frame); else queue.push(frame);
  });
  ws.next = () => new Promise((resolve) => { const f = queue.shift(); if (f) resolve(f); else waiters.push(resolve); });
  ws.expect = async (t) => { const f = await ws.next(); if (f.t !== t) fail(`expected ${t}, got ${JSON.stringify(f)}`); return f; };
  return new Promise((resolve, reject) => { ws.on("open", () => resolve(ws)); ws.on("error", reject); });
}

const alice = await open(url, ["switchboard.v1.json"]);
if (alice.protocol !== "switchboard.v1.json") fail(`subprotocol ${alice.protocol}`);
const bob = await open(url, undefined);
alice.send(JSON.stringify({ t: "hello", token: aliceToken }));
const welcome = await alice.expect("welcome");
if (welcome.user !== "js-alice") fail(JSON.stringify(welcome));
bob.send(JSON.stringify({ t: "hello", token: bobToken }));
await bob.expect("welcome");

alice.send(JSON.stringify({ t: "send", to: "js-bob", id: "js-1", body: [1, "two", { three: 3 }] }));
const ack = await alice.expect("ack");
if (ack.conv !== "dm:js-alice:js-bob" || ack.seq !== 1 || ack.dup !== false) fail(JSON.stringify(ack));
const msg = await bob.expect("msg");
if (JSON.stringify(msg.body) !== JSON.stringify([1, "two", { three: 3 }]) || msg.from !== "js-alice") fail(JSON.stringify(msg));

bob.send(JSON.stringify({ t: "sync", conv: ack.conv, after: 0 }));
if ((await bob.expect("msg")).id !== "js-1") fail("sync msg");
const synced = await bob.expect("synced");
if (synced.upto !== 1 || synced.head !== 1 || synced.more !== false) fail(JSON.stringify(synced));

const code = await new Promise((resolve) => { alice.on("close", (c) => resolve(c)); alice.close(1000); });
if (code !== 1000) fail(`close code ${code}`);
bob.close(1000);
console.log("OK");
