import assert from "node:assert/strict";
import { test } from "node:test";
import { days, decide, format, list, purposes, read, record } from "../src/consent.js";

globalThis.location = new URL("https://shop.example/p?x=1");
const P = [
  { id: "necessary", required: true },
  { id: "analytics", default: false },
  { id: "personalization", default: true },
  { id: "marketing", default: true },
];
// The compact config's consent part (collector/tag/serving.py core_config): site, policy, lifetimes.
const C = { s: "demo", p: "3c1d0e7a9b2f4c11", l: 365, r: 182, P: "necessary!,analytics,personalization+,marketing+", g: "necessary,personalization,marketing" };
const T0 = 1795350383;
const G = (granted) => Object.fromEntries(P.map((p) => [p.id, granted.includes(p.id)]));

// The state as the core keeps it: the granted purposes (true), marketing false under GPC.
const on = (granted) => Object.fromEntries(granted.map((k) => [k, true]));
const defaults = (gpc) => read("", C, gpc)[1];

test("the purposes of the compact config, and its defaults", () => {
  assert.deepEqual(purposes(C), P.map((q) => ({ required: false, default: false, ...q })));
  assert.deepEqual(purposes({}).map((q) => q.id), ["necessary", "analytics", "personalization", "marketing"]);
  assert.deepEqual(read("", {}, false), [undefined, { necessary: true }, false]);
});

test("defaults come from the container; required purposes are always granted", () => {
  assert.deepEqual(defaults(false), on(["necessary", "personalization", "marketing"]));
});

test("GPC: marketing stays off by default", () => {
  assert.deepEqual(defaults(true), { ...on(["necessary", "personalization"]), marketing: false });
});

test("accept all / reject all / per purpose", () => {
  const cur = defaults(false);
  assert.deepEqual(decide("all", cur, P, false), [G(["necessary", "analytics", "personalization", "marketing"]), false]);
  assert.deepEqual(decide("none", cur, P, false), [G(["necessary"]), false]);
  assert.deepEqual(
    decide({ analytics: true, marketing: false, necessary: false }, cur, P, false),
    [G(["necessary", "analytics", "personalization"]), false]
  );
});

test("GPC: accept all leaves marketing off and is logged as gpc", () => {
  const cur = defaults(true);
  assert.deepEqual(decide("all", cur, P, true), [G(["necessary", "analytics", "personalization"]), true]);
  // purposes left out keep their state, which GPC shaped
  assert.deepEqual(decide({ analytics: true }, cur, P, true), [G(["necessary", "analytics", "personalization"]), true]);
});

test("GPC: an explicit per-purpose choice wins", () => {
  const cur = defaults(true);
  assert.deepEqual(decide({ marketing: true }, cur, P, true), [G(["necessary", "personalization", "marketing"]), false]);
  // an explicit "no" is the person's choice, not GPC's
  assert.deepEqual(decide({ marketing: false }, cur, P, true)[1], false);
  assert.deepEqual(decide("none", cur, P, true)[1], false);
});

test("cookie format is v1.<id>.<policy>.<granted>.<unix s>.<how>", () => {
  const s = format(C, P, "8f3ae1", G(["necessary", "analytics"]), T0, "banner");
  assert.equal(
    s,
    "tw_consent=v1.8f3ae1.3c1d0e7a9b2f4c11.necessary,analytics.1795350383.banner" +
      ";Max-Age=31536000;Path=/;SameSite=Lax;Secure"
  );
  const r = format({ ...C, d: ".shop.example" }, P, "i", G(["necessary"]), T0, "api");
  assert.match(r, /^tw_consent=v1\.i\.3c1d0e7a9b2f4c11\.necessary\.1795350383\.api;Max-Age=15724800;/);
  assert.match(r, /;Domain=\.shop\.example$/);
  globalThis.location = new URL("http://localhost/");
  assert.doesNotMatch(format(C, P, "i", G([]), T0, "api"), /Secure/);
  globalThis.location = new URL("https://shop.example/p?x=1");
});

test("read round-trips what format wrote; GPC does not touch a decision", () => {
  const v = (g, how = "banner") => format(C, P, "8f3ae1", G(g), T0, how).split(";")[0].slice(11);
  assert.deepEqual(read(v(["necessary", "analytics"]), C, false), ["8f3ae1", on(["necessary", "analytics"]), true]);
  assert.deepEqual(read(v(["necessary", "marketing"]), C, true)[1], on(["necessary", "marketing"]));
  assert.deepEqual(read(v([]), C, false), ["8f3ae1", {}, true]);
});

test("the lifetime is the cookie's Max-Age: a decision's, or a rejection's (shorter)", () => {
  assert.equal(days(C, P, G(["necessary"])), 182);
  assert.equal(days(C, P, G(["necessary", "marketing"])), 365);
  assert.equal(days({}, P, G(["necessary", "marketing"])), 365);
  assert.equal(days({ l: 30, r: 7 }, P, G(["necessary"])), 7);
});

test("a changed policy hash asks again, but the consent id is kept", () => {
  const v = format(C, P, "keep-me", G(["necessary"]), T0, "banner").split(";")[0].slice(11);
  const r = read(v, { ...C, p: "ffffffffffffffff" }, false);
  assert.equal(r[2], false);
  assert.equal(r[0], "keep-me");
  assert.deepEqual(r[1], defaults(false));
});

test("garbage and absent cookies are no decision", () => {
  for (const x of ["", "v2.a.b.c.d.e", "v1", "nonsense", "v1.a.ffff.necessary.1.api"]) {
    assert.equal(read(x, C, false)[2], false, String(x));
  }
});

test("the /consent record", () => {
  assert.deepEqual(record(C, "cid", G(["necessary", "analytics"]), "gpc"), {
    site: "demo",
    consent_id: "cid",
    granted: ["necessary", "analytics"],
    denied: ["personalization", "marketing"],
    policy: "3c1d0e7a9b2f4c11",
    how: "gpc",
    url: "https://shop.example/p?x=1",
  });
  assert.deepEqual(list(G(["marketing"])), ["marketing"]);
});

test("cookie(): a value by its exact name, from a string read once, without RegExp", async () => {
  const { cookie, uuid } = await import("../src/util.js");
  const s = "xtw_s=no; tw_s=abc.123.u; tw_consent=v1.a%2Cb; e=; tw_q=1";
  assert.equal(cookie("tw_s", s), "abc.123.u"); // not xtw_s
  assert.equal(cookie("tw_consent", s), "v1.a%2Cb"); // as stored: the tag's cookies hold no escapes
  assert.equal(cookie("xtw_s", s), "no"); // the first one
  assert.equal(cookie("tw_q", s), "1"); // the last one
  assert.equal(cookie("e", s), "");
  assert.equal(cookie("missing", s), "");
  assert.equal(cookie("tw_s", ""), "");
  globalThis.crypto ??= (await import("node:crypto")).webcrypto;
  const ids = new Set();
  for (let i = 0; i < 50; i++) ids.add(assert.match(uuid(), /^[0-9a-f]{32}$/) || uuid());
  assert.equal(ids.size, 50);
});
