import assert from "node:assert/strict";
import { beforeEach, mock, test } from "node:test";

const tick = () => new Promise((r) => setImmediate(r));
const settle = async () => {
  for (let i = 0; i < 5; i++) await tick();
};
let n = 0;
let net;
// A fresh send.js per test (module state), with fake fetch/beacon/localStorage.
const fresh = async ({ status = 200, beacon = true, stored } = {}) => {
  net = { fetches: [], beacons: [], status };
  globalThis.localStorage = stored ? { tw_q: JSON.stringify(stored) } : {};
  // the tw_q cookie: what send.js writes to document.cookie
  net.cookies = [];
  globalThis.location = { protocol: "https:" };
  globalThis.document = {
    set cookie(v) {
      net.cookies.push(v);
    },
  };
  globalThis.navigator = {
    sendBeacon: (u, b) => beacon && net.beacons.push({ url: u, events: JSON.parse(b).events }) > 0,
  };
  globalThis.fetch = (u, o) => {
    const body = JSON.parse(o.body);
    net.fetches.push({ url: u, opts: o, body });
    const s = typeof net.status == "function" ? net.status(body) : net.status;
    return s == "offline" ? Promise.reject(new TypeError("Failed to fetch")) : Promise.resolve({ status: s });
  };
  const m = await import(`../src/send.js?fresh=${++n}`);
  m.setup("https://c.example/collect", "demo", false, !!stored);
  return m;
};
const ev = (i) => ({ event_id: `id-${i}`, event: "e" });
const ids = (events) => events.map((e) => e.event_id);

beforeEach(() => {
  mock.timers.reset();
  mock.timers.enable({ apis: ["setTimeout"] });
});

test("batches: one request 5 s after the first event", async () => {
  const s = await fresh();
  s.add(ev(1));
  s.add(ev(2));
  assert.equal(net.fetches.length, 0);
  mock.timers.tick(4999);
  assert.equal(net.fetches.length, 0);
  mock.timers.tick(1);
  assert.equal(net.fetches.length, 1);
  const f = net.fetches[0];
  assert.equal(f.url, "https://c.example/collect");
  assert.deepEqual(f.body, { site: "demo", events: [ev(1), ev(2)] });
  assert.equal(f.opts.method, "POST");
  assert.equal(f.opts.keepalive, true);
  assert.equal(f.opts.credentials, "include");
  assert.equal(typeof f.opts.body, "string"); // no Content-Type: text/plain, no preflight
  assert.equal(f.opts.headers, undefined);
  await settle();
  assert.deepEqual(s.queue(), []);
});

test("flushes at once at 10 waiting events", async () => {
  const s = await fresh();
  for (let i = 0; i < 9; i++) s.add(ev(i));
  assert.equal(net.fetches.length, 0);
  s.add(ev(9));
  assert.equal(net.fetches.length, 1);
  assert.equal(net.fetches[0].body.events.length, 10);
});

test("an event leaves the queue only after a 2xx", async () => {
  const s = await fresh({ status: 503 });
  s.add(ev(1));
  mock.timers.tick(5000);
  await settle();
  assert.deepEqual(ids(s.queue()), ["id-1"]);
  net.status = 200;
  mock.timers.tick(1000); // first retry after 1 s
  await settle();
  assert.equal(net.fetches.length, 2);
  assert.deepEqual(ids(net.fetches[1].body.events), ["id-1"]); // the same event_id again
  assert.deepEqual(s.queue(), []);
});

test("retries with exponential backoff, and at once when back online", async () => {
  const s = await fresh({ status: "offline" });
  s.add(ev(1));
  mock.timers.tick(5000);
  await settle();
  const at = [];
  for (let t = 0; t < 16000; t += 250) {
    const before = net.fetches.length;
    mock.timers.tick(250);
    await settle();
    if (net.fetches.length > before) at.push(t + 250);
  }
  assert.deepEqual(at, [1000, 3000, 7000, 15000]); // waits 1, 2, 4, 8 s
  assert.deepEqual([0, 1, 2, 5, 6, 7, 30].map(s.backoff), [1e3, 2e3, 4e3, 32e3, 6e4, 6e4, 6e4]);
  net.status = 200;
  s.online();
  await settle();
  assert.deepEqual(s.queue(), []);
});

test("429, 408 and 5xx are retried; other 4xx are dropped (retrying cannot fix them)", async () => {
  for (const [status, kept] of [[429, 1], [408, 1], [500, 1], [400, 0], [413, 0], [204, 0]]) {
    const s = await fresh({ status });
    s.add(ev(1));
    mock.timers.tick(5000);
    await settle();
    assert.equal(s.queue().length, kept, String(status));
  }
});

test("one request at a time; what came meanwhile goes next", async () => {
  let answer;
  const s = await fresh({ status: 200 });
  net.status = () => 200;
  globalThis.fetch = (u, o) => {
    net.fetches.push({ body: JSON.parse(o.body) });
    return new Promise((r) => (answer = r));
  };
  s.add(ev(1));
  mock.timers.tick(5000);
  for (let i = 2; i < 15; i++) s.add(ev(i)); // 13 more, while the first is in flight
  assert.equal(net.fetches.length, 1);
  answer({ status: 200 });
  await settle();
  assert.deepEqual(ids(s.queue()).length, 13);
  mock.timers.tick(5000);
  assert.equal(net.fetches.length, 2);
  assert.deepEqual(ids(net.fetches[1].body.events), ids([...Array(13)].map((_, i) => ev(i + 2))));
});

test("page hide: everything not in flight goes by sendBeacon", async () => {
  const s = await fresh({ status: "offline" });
  for (let i = 0; i < 45; i++) s.add(ev(i)); // the 10th event sends 10, not answered yet
  assert.equal(net.fetches.length, 1);
  s.flush(true);
  // the 10 in the unanswered fetch stay; the other 35 are beaconed in batches of 20
  assert.deepEqual(net.beacons.map((b) => b.events.length), [20, 15]);
  assert.equal(net.beacons[0].url, "https://c.example/collect");
  assert.deepEqual(ids(net.beacons[0].events)[0], "id-10");
  assert.deepEqual(ids(s.queue()), ids([...Array(10)].map((_, i) => ev(i))));
});

test("a refused beacon keeps the events", async () => {
  const s = await fresh({ beacon: false });
  s.add(ev(1));
  s.flush(true);
  assert.deepEqual(ids(s.queue()), ["id-1"]);
});

test("the queue is bounded: 200 events, the oldest go first", async () => {
  const s = await fresh({ status: "offline", beacon: false });
  s.persist(true);
  for (let i = 0; i < 250; i++) s.add(ev(i));
  assert.equal(s.queue().length, 200);
  assert.equal(s.queue()[0].event_id, "id-50");
  s.flush(true); // the page goes: the beacon is refused, the queue is stored
  assert.equal(JSON.parse(localStorage.tw_q).length, 200);
});

test("localStorage only with analytics consent, memory otherwise", async () => {
  const s = await fresh({ status: "offline" });
  s.add(ev(1));
  mock.timers.tick(5000);
  await settle();
  assert.equal(localStorage.tw_q, undefined);
  s.persist(true);
  s.add(ev(2));
  mock.timers.tick(1000); // the retry fails too; its outcome writes once
  await settle();
  assert.deepEqual(ids(JSON.parse(localStorage.tw_q)), ["id-1", "id-2"]);
  s.persist(false); // consent withdrawn: the stored copy goes
  assert.equal(localStorage.tw_q, undefined);
  assert.deepEqual(ids(s.queue()), ["id-1", "id-2"]);
});

test("no storage access while the page loads; tw_q read once, written once per flush", async () => {
  const s = await fresh({ stored: [ev(7)] });
  const log = [];
  const store = { tw_q: JSON.stringify([ev(7)]) };
  globalThis.localStorage = new Proxy(store, {
    get: (t, k) => (log.push("get"), t[k]),
    set: (t, k, v) => (log.push("set"), (t[k] = v), true),
    deleteProperty: (t, k) => (log.push("delete"), delete t[k]),
  });
  s.persist(true);
  for (let i = 0; i < 5; i++) s.add(ev(i));
  assert.deepEqual(log, []);
  mock.timers.tick(5000);
  await settle();
  assert.deepEqual(ids(net.fetches[0].body.events), ["id-7", "id-0", "id-1", "id-2", "id-3", "id-4"]);
  assert.deepEqual(log, ["get", "delete"]); // all sent: the stored copy and its cookie go
  assert.equal(store.tw_q, undefined);
  assert.deepEqual(net.cookies, ["tw_q=0;Max-Age=0;Path=/;SameSite=Lax;Secure"]);
});

test("no tw_q cookie: localStorage is never touched while sending works", async () => {
  const s = await fresh();
  const log = [];
  globalThis.localStorage = new Proxy({ tw_q: JSON.stringify([ev(7)]) }, {
    get: (t, k) => (log.push("get"), t[k]),
    set: (t, k, v) => (log.push("set"), (t[k] = v), true),
    deleteProperty: (t, k) => (log.push("delete"), delete t[k]),
  });
  s.persist(true);
  s.add(ev(1));
  mock.timers.tick(5000);
  await settle();
  s.add(ev(2));
  s.flush(true);
  s.persist(false);
  assert.deepEqual(ids(net.fetches[0].body.events), ["id-1"]);
  assert.deepEqual(ids(net.beacons[0].events), ["id-2"]);
  assert.deepEqual(log, []);
  assert.deepEqual(net.cookies, []);
});

test("events left over are stored with the tw_q cookie; removed once sent", async () => {
  const s = await fresh({ status: "offline" });
  s.persist(true);
  s.add(ev(1));
  mock.timers.tick(5000);
  await settle();
  assert.deepEqual(ids(JSON.parse(localStorage.tw_q)), ["id-1"]);
  assert.deepEqual(net.cookies, ["tw_q=1;Max-Age=40000000;Path=/;SameSite=Lax;Secure"]);
  s.add(ev(2));
  mock.timers.tick(5000);
  await settle();
  assert.equal(net.cookies.length, 1); // the flag is set once
  net.status = 200;
  s.online();
  await settle();
  assert.equal(localStorage.tw_q, undefined);
  assert.deepEqual(net.cookies.slice(1), ["tw_q=0;Max-Age=0;Path=/;SameSite=Lax;Secure"]);
});

test("pagehide before the first flush sends the stored events and this page's", async () => {
  const s = await fresh({ stored: [ev(7)], beacon: true });
  s.add(ev(1));
  s.flush(true);
  assert.deepEqual(ids(net.beacons[0].events), ["id-7", "id-1"]);
  assert.equal(localStorage.tw_q, undefined); // without analytics nothing is kept
  assert.deepEqual(s.queue(), []);
});

test("a stored queue from an earlier page is sent again (the collector drops repeats)", async () => {
  const s = await fresh({ stored: [ev(7), ev(8)] });
  s.persist(true);
  mock.timers.tick(5000);
  await settle();
  assert.deepEqual(ids(net.fetches[0].body.events), ["id-7", "id-8"]);
  assert.equal(localStorage.tw_q, undefined);
});

test("storage that throws does not break sending", async () => {
  const s = await fresh();
  globalThis.localStorage = {
    get tw_q() {
      throw new Error("SecurityError");
    },
    set tw_q(v) {
      throw new Error("QuotaExceeded");
    },
  };
  s.persist(true);
  s.add(ev(1));
  mock.timers.tick(5000);
  await settle();
  assert.equal(net.fetches.length, 1);
});
