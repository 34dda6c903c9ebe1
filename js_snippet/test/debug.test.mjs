// The debug overlay: record formatting (src/debug.js exports), then the built dist/debug.js
// in a small fake DOM (test/banner-dom.mjs), alone and with the real tag.
import assert from "node:assert/strict";
import { test } from "node:test";
import { bundle } from "../build.mjs";
import { fmt, hms, state } from "../src/debug.js";
import { Doc, run, settle, shadows } from "./banner-dom.mjs";
import { container, load } from "./fake.mjs";

const DEBUG = await bundle("debug.js");
const CSS = await bundle("debug.css");

const PV = {
  kind: "event",
  payload: {
    event_id: "e1",
    ts: "2026-03-01T10:11:12.000Z",
    event: "page_view",
    url: "https://shop.example/products/1?x=2#top",
    consent: ["necessary"],
  },
};

// ---- formatting ------------------------------------------------------------------------

test("an event: its name, the page path for page views, the payload as JSON", () => {
  const f = fmt(PV);
  assert.equal(f.c, "ev pv");
  assert.equal(f.t, "event page_view");
  assert.equal(f.s, "/products/1?x=2#top");
  assert.deepEqual(JSON.parse(f.j), PV.payload);
  assert.match(f.j, /\n  "event": "page_view"/); // indented, to read
  assert.equal(f.at, PV.payload.ts);
  const tr = fmt({ kind: "event", payload: { event: "add_to_cart", props: { sku: "A1" } } });
  assert.deepEqual([tr.c, tr.t, tr.s], ["ev", "event add_to_cart", '{"sku":"A1"}']);
  assert.equal(fmt({ kind: "event", payload: { event: "x", props: { s: "y".repeat(200) } } }).s.length, 80);
  assert.equal(fmt({ kind: "event" }).t, "event undefined"); // never throws
});

test("a tag: fired or held back, with trigger, purpose and why", () => {
  const held = fmt({ kind: "tag", tag: "ads", trigger: "bought", purpose: "marketing", fired: false, why: "no consent" });
  assert.deepEqual([held.c, held.t, held.s], ["no", "tag ads held back", "trigger bought, purpose marketing: no consent"]);
  const fired = fmt({ kind: "tag", tag: "chat", trigger: "all_pages", purpose: "personalization", fired: true, why: "consent given" });
  assert.deepEqual([fired.c, fired.t], ["ok", "tag chat fired"]);
  assert.match(fired.s, /consent given$/);
  assert.equal(JSON.parse(fired.j).trigger, "all_pages");
});

test("consent, and records of unknown kinds", () => {
  const c = fmt({ kind: "consent", granted: ["necessary", "analytics"], how: "banner" });
  assert.deepEqual([c.c, c.t, c.s], ["cs", "consent (banner)", "necessary, analytics"]);
  assert.equal(fmt({ kind: "consent", granted: [], how: "gpc" }).s, "nothing granted");
  const x = fmt({ kind: "future", a: 1 });
  assert.deepEqual([x.c, x.t, JSON.parse(x.j).a], ["x", "future", 1]);
  assert.equal(fmt({}).t, "undefined");
});

test("the consent line and times", () => {
  assert.equal(
    state({ granted: { necessary: true, marketing: false }, decided: false, gpc: true }),
    "necessary on, marketing off, no decision yet, GPC on"
  );
  assert.equal(state({ granted: { necessary: true }, decided: true }), "necessary on, decided");
  assert.equal(state(undefined), "");
  assert.equal(hms(0), "");
  assert.equal(hms(undefined), "");
  assert.match(hms(Date.now()), /^\d\d:\d\d:\d\d$/);
  assert.match(hms(PV.payload.ts), /^\d\d:\d\d:\d\d$/);
});

// ---- the built overlay in a fake DOM ---------------------------------------------------

function overlay({ records = [], tagwerk } = {}) {
  const doc = new Doc({ script: { src: "https://collect.shop.example/t/debug.js?v=d1", nonce: "n0nce" } });
  const A = [...records];
  const S = {
    nonce: "n0nce",
    granted: { necessary: true, analytics: false },
    decided: false,
    gpc: false,
  };
  const ctx = run(DEBUG, {
    document: doc,
    __tagwerk_debug: A,
    tagwerk: tagwerk === undefined ? (...a) => (a[1] == "state" ? S : undefined) : tagwerk,
  });
  const root = shadows(doc)[0];
  return { doc, A, S, ctx, root };
}
const rows = (o) => o.root.all().filter((e) => e.tagName == "LI");
const title = (li) => li.find((e) => e.tagName == "B").textContent;

test("lists what was recorded before it loaded, then follows new records in order", () => {
  const tag = { kind: "tag", tag: "chat", trigger: "all_pages", purpose: "personalization", fired: false, why: "no consent" };
  const o = overlay({ records: [PV, tag] });
  const link = o.root.find((e) => e.tagName == "LINK");
  assert.equal(link.getAttribute("href"), "https://collect.shop.example/t/debug.css?v=d1");
  assert.equal(link.getAttribute("nonce"), "n0nce");
  assert.deepEqual(rows(o).map(title), ["event page_view", "tag chat held back"]);
  assert.deepEqual(rows(o).map((r) => r.className), ["ev pv", "no"]);
  // a record pushed later (the tag pushes to the same array)
  o.S.granted = { necessary: true, analytics: true }; // the tag's state, then its record
  assert.equal(o.A.push({ kind: "consent", granted: ["necessary", "personalization"], how: "banner" }), 3);
  o.A.push({ kind: "tag", tag: "chat", trigger: "all_pages", purpose: "personalization", fired: true, why: "consent given" });
  assert.equal(o.A.length, 4); // the array still records
  assert.deepEqual(rows(o).map(title), ["event page_view", "tag chat held back", "consent (banner)", "tag chat fired"]);
  // the collapsible JSON: <details><summary>...</summary><pre>JSON</pre></details>
  const details = rows(o)[0].children[0];
  assert.equal(details.tagName, "DETAILS");
  assert.equal(details.children[0].tagName, "SUMMARY");
  assert.deepEqual(JSON.parse(details.children[1].textContent), PV.payload);
  // times: the event's own ts; later records the time they arrived
  assert.match(rows(o)[3].find((e) => e.tagName == "TIME").textContent, /^\d\d:\d\d:\d\d$/);
  assert.equal(rows(o)[1].find((e) => e.tagName == "TIME").textContent, ""); // unknown
  // the consent line follows
  const line = o.root.find((e) => e.className == "st");
  assert.match(line.textContent, /^necessary on, analytics on/);
  // the count
  assert.match(o.root.find((e) => e.tagName == "BUTTON").textContent, /\(4\)$/);
});

test("minimisable with a real button (aria-expanded)", () => {
  const o = overlay({ records: [PV] });
  const btn = o.root.find((e) => e.tagName == "BUTTON");
  const body = o.root.find((e) => e.id == btn.getAttribute("aria-controls"));
  assert.equal(btn.getAttribute("type"), "button");
  assert.equal(btn.parentNode.tagName, "H2");
  assert.equal(btn.getAttribute("aria-expanded"), "true");
  btn.click();
  assert.equal(body.hidden, true);
  assert.equal(btn.getAttribute("aria-expanded"), "false");
  o.A.push(PV); // still recorded while minimised
  btn.click();
  assert.equal(body.hidden, false);
  assert.equal(btn.getAttribute("aria-expanded"), "true");
  assert.equal(rows(o).length, 2);
  const section = o.root.find((e) => e.tagName == "SECTION");
  assert.equal(section.getAttribute("aria-label"), "tagwerk debug");
  for (const e of o.root.all()) assert.equal(e.getAttribute("style"), null);
});

test("keeps the last 500 rows", () => {
  const o = overlay();
  for (let i = 0; i < 520; i++) o.A.push({ kind: "event", payload: { event: "e" + i } });
  assert.equal(rows(o).length, 500);
  assert.equal(title(rows(o)[0]), "event e20");
  assert.equal(o.A.length, 520);
});

test("loaded twice: one panel, records not doubled", () => {
  const o = overlay({ records: [PV] });
  run(DEBUG, { document: o.doc, __tagwerk_debug: o.A, tagwerk: () => ({}) });
  // (a second context shares the array: it sees the marker and stays out)
  assert.equal(shadows(o.doc).length, 1);
  o.A.push(PV);
  assert.equal(rows(o).length, 2);
});

test("never throws into the page", () => {
  overlay({ tagwerk: null }); // no tag
  const o = overlay({
    tagwerk: () => {
      throw new Error("x");
    },
  });
  o.A.push(null, undefined, 5, { kind: "event", payload: null }, { kind: "tag" });
  assert.equal(o.A.length, 5);
  const cyclic = { kind: "x" };
  cyclic.self = cyclic;
  o.A.push(cyclic); // JSON.stringify throws: the row is skipped, the push goes through
  assert.equal(o.A.length, 6);
});

test("the bundle is ASCII (right under any page charset)", () => {
  assert.match(DEBUG, /^[\x00-\x7f]*$/);
  assert.match(CSS, /^[\x00-\x7f]*$/);
});

test("the stylesheet: no @import, a focus style", () => {
  assert.doesNotMatch(CSS, /@import|url\(/);
  assert.match(CSS, /:focus-visible/);
});

// ---- with the real tag: SPA navigation ---------------------------------------------------

test("with the real tag: earlier records, then SPA route changes as page views", async () => {
  const b = load(container(), { url: "https://shop.example/?tagwerk_debug=1" });
  const s = b.net.scripts.find((x) => /debug\.js/.test(x.src));
  assert.ok(s, "the tag loads the overlay");
  const doc = new Doc({ script: { src: s.src, nonce: s.nonce } });
  Object.assign(b.w.document, { createElement: (n) => doc.createElement(n), documentElement: doc.documentElement });
  b.w.document.currentScript = doc.currentScript;
  b.run(DEBUG);
  const o = { root: shadows(doc)[0] };
  const before = rows(o).map(title);
  assert.equal(before[0], "event page_view");
  assert.ok(before.includes("tag chat held back"));
  assert.match(o.root.find((e) => e.className == "st").textContent, /no decision yet/);
  b.run("history.pushState({}, '', '/products/2')");
  b.run("tagwerk('consent', 'update', 'all', 'banner')");
  b.run("tagwerk('track', 'signup', {plan: 'pro'})");
  await settle();
  const after = rows(o).slice(before.length);
  assert.deepEqual(after.map(title).slice(0, 1), ["event page_view"]);
  assert.equal(after[0].find((e) => e.tagName == "SUMMARY").textContent.endsWith("/products/2"), true);
  assert.ok(after.map(title).includes("consent (banner)"));
  assert.ok(after.map(title).includes("tag chat fired"));
  assert.equal(after.map(title).at(-1), "event signup");
  assert.match(o.root.find((e) => e.className == "st").textContent, /analytics on.*, decided/);
  assert.equal(rows(o).length, b.w.__tagwerk_debug.length);
});
