// The whole tag, as built, in a fake browser (fake.mjs).
import assert from "node:assert/strict";
import { test } from "node:test";
import { BOOT_DELAY, El, TAG, TAG_BASIC, browser, compact, container, link, load, normalize, sent, tick } from "./fake.mjs";

// 128 random bits in 32 hex digits: the collector reads an event id as a UUID
const UUID = /^[0-9a-f]{32}$/;
const POLICY = "3c1d0e7a9b2f4c11";
const now = () => Math.floor(Date.now() / 1000);
const consentCookie = (granted, how = "banner", t = now(), policy = POLICY) =>
  `v1.c0ffee.${policy}.${granted}.${t}.${how}`;
const ANALYTICS = { tw_consent: consentCookie("necessary,analytics") };
const ALL = { tw_consent: consentCookie("necessary,analytics,personalization,marketing") };
const flushed = async (b) => {
  await b.clock.advance(5000);
  return sent(b);
};
const names = (events) => events.map((e) => e.event);
// objects made in the page's realm, as plain objects of this one (for deepStrictEqual)
const plain = (x) => JSON.parse(JSON.stringify(x));
// The scripts the tag inserted, without decide.js (the consent module, loaded on first use).
const scripts = (b) => b.net.scripts.filter((s) => !s.src.includes("/t/decide.js?"));
const decideLoaded = (b) => b.net.scripts.some((s) => s.src.includes("/t/decide.js?"));
const snippet = (calls) =>
  "window.tagwerk=window.tagwerk||function(){(tagwerk.q=tagwerk.q||[]).push(arguments)};" + calls;

test("the bundle holds the config placeholder exactly once and no eval", () => {
  assert.equal(TAG.split('"__TAGWERK_CONFIG__"').length, 2);
  assert.doesNotMatch(TAG, /\beval\(|new Function|Function\(/);
  assert.doesNotMatch(TAG, /setTimeout\(["'`]|setInterval\(["'`]/);
  assert.doesNotMatch(TAG, /\?\.|\?\?/); // ES2018: no optional chaining or nullish coalescing
  assert.doesNotMatch(TAG, /\.style\b|setAttribute\(["']style/); // no inline styles
});

test("not configured (the placeholder is still a string): does nothing", () => {
  const b = load(null, { before: snippet("tagwerk('track','x')") });
  assert.equal(b.w.dataLayer, undefined);
  assert.equal(b.w.tagwerk.q.length, 1); // the snippet's stub, untouched
  assert.deepEqual(Object.keys(b.listeners), []);
  assert.deepEqual(b.net, { fetches: [], beacons: [], images: [], scripts: [], html: [], engine: [] });
});

test("page view on load with the common fields and no identifiers without consent", async () => {
  const b = load(container(), { url: "https://shop.example/shoes?utm_source=news" });
  const [e, ...rest] = await flushed(b);
  assert.equal(rest.length, 0);
  assert.match(e.event_id, UUID);
  assert.ok(Number.isInteger(e.ts) && Math.abs(e.ts - Date.now()) < 5000); // epoch ms
  assert.deepEqual(
    { ...e, event_id: 0, ts: 0 },
    {
      event_id: 0,
      ts: 0,
      event: "page_view",
      consent: ["necessary"],
      url: "https://shop.example/shoes?utm_source=news",
      title: "Shop",
      referrer: "https://www.search.example/",
      screen: "1280x800", // no language: the collector takes the request's Accept-Language
    }
  );
  const f = b.net.fetches[0];
  assert.equal(f.url, "https://collect.shop.example/collect");
  assert.equal(f.body.site, "demo");
  assert.equal(f.opts.keepalive, true);
  assert.equal(f.opts.credentials, "include");
  assert.equal(b.w.sessionStorage.tw_s, undefined);
  assert.equal(b.w.localStorage.tw_q, undefined);
});

test("calls queued before load are replayed; consent first, so the page view carries it", async () => {
  const b = load(container(), {
    before: snippet(
      "tagwerk('track','signup',{plan:'pro'});tagwerk('consent','update',{analytics:true})"
    ),
  });
  const events = await flushed(b);
  assert.deepEqual(names(events), ["page_view", "signup"]);
  assert.deepEqual(events[0].consent, ["necessary", "analytics"]);
  assert.deepEqual(events[1].props, { plan: "pro" });
  assert.match(events[0].session_id, UUID);
  assert.equal(events[1].session_id, events[0].session_id);
  assert.equal(typeof b.w.tagwerk, "function");
  assert.equal(b.w.tagwerk.q, undefined);
});

test("HTML on the page that clobbers document.currentScript never picks where files load", async () => {
  // <img name=currentScript src=https://evil.example/x/> shadows document.currentScript.
  const clobber = "document.currentScript = {tagName: 'IMG', src: 'https://evil.example/x/'}";
  const b = load(container(), { before: clobber });
  await flushed(b);
  const urls = [...b.net.scripts.map((s) => s.src), ...b.net.engine.map((s) => s.src),
    ...b.net.fetches.map((f) => String(f.url)), ...b.net.beacons.map((x) => String(x.url))];
  assert.ok(urls.length > 0);
  assert.deepEqual(urls.filter((u) => /evil/.test(u)), []);
});

test("a tag included twice runs once", async () => {
  const b = load(container());
  b.run(TAG.replace('"__TAGWERK_CONFIG__"', JSON.stringify(compact(container()).core)));
  assert.deepEqual(names(await flushed(b)), ["page_view"]);
  b.run("tagwerk('track','once')");
  b.run("dataLayer.push({event:'x'})");
  assert.deepEqual(names((await flushed(b)).slice(1)), ["once"]);
});

test("track, page and the 10-event flush", async () => {
  const b = load(container());
  for (let i = 0; i < 8; i++) b.run(`tagwerk('track','e${i}')`);
  assert.equal(b.net.fetches.length, 0);
  b.run("tagwerk('page')");
  assert.equal(b.net.fetches.length, 1);
  const events = b.net.fetches[0].body.events;
  assert.equal(events.length, 10);
  assert.equal(events[9].event, "page_view");
  assert.equal(events[9].referrer, undefined); // only the first page view has one
  b.run("tagwerk('track')"); // no name: ignored, it would make the collector refuse the batch
  assert.equal(new Set(events.map((e) => e.event_id)).size, 10);
});

test("SPA: pushState, replaceState, popstate (also for hash changes); each URL once", async () => {
  const b = load(container(), { cookies: ALL });
  b.run("history.pushState({}, '', '/p/1')");
  b.run("history.replaceState({}, '', '/p/1')"); // same URL: no page view
  b.run("history.pushState({}, '', '/p/1')"); // still the same URL
  b.run("history.replaceState({}, '', '/p/2')"); // replaceState to a new URL: a page view
  b.run("history.pushState({}, '', '/p/2#reviews')");
  b.fire("window:popstate"); // also for a hash change (before hashchange, not listened to)
  b.fire("window:popstate"); // the same URL: no page view
  const events = await flushed(b);
  assert.deepEqual(
    events.map((e) => e.url.replace("https://shop.example", "")),
    ["/", "/p/1", "/p/2", "/p/2#reviews"]
  );
  assert.ok(events.every((e) => e.event == "page_view"));
  // history_change fires the trigger "route" too (seen in the debug records below)
});

test("the page's history calls keep working and return what they return", () => {
  const b = load(container());
  b.run("history.pushState = history.pushState"); // patched function is callable
  assert.equal(b.run("history.pushState({}, '', '/x')"), undefined);
  assert.equal(b.w.location.pathname, "/x");
});

test("no valid decision: the banner is loaded at page load, with the nonce", async () => {
  const b = load(container(), { readyState: "interactive" });
  assert.equal(b.net.scripts.length, 0);
  b.fire("window:load");
  // decide.js first (it makes the decision the banner reports), then the banner
  assert.deepEqual(b.net.scripts, [
    { src: "https://collect.shop.example/t/decide.js?v=v1", nonce: "n0nce", async: 1 },
    { src: "https://collect.shop.example/t/banner.js?v=v1", nonce: "n0nce", async: 1 },
  ]);
  b.run("tagwerk('consent','show')"); // not loaded twice
  assert.equal(b.net.scripts.length, 2);
});

test("a valid cookie or a CMP decision before load: no banner", () => {
  // a returning visitor without a CMP loads neither the banner nor decide.js
  assert.deepEqual(load(container(), { cookies: ANALYTICS }).net.scripts, []);
  const cmp = load(container(), {
    readyState: "interactive",
    before: snippet("tagwerk('consent','update',{analytics:false})"),
  });
  assert.ok(decideLoaded(cmp)); // at start: the page has a consent call already
  cmp.fire("window:load");
  assert.deepEqual(scripts(cmp), []);
  const late = load(container(), { readyState: "interactive" });
  late.run("tagwerk('consent','update','none')"); // the CMP answers before load
  late.fire("window:load");
  assert.deepEqual(scripts(late), []);
});

test("a changed policy asks again (expiry is the cookie's own Max-Age)", () => {
  const changed = { tw_consent: consentCookie("necessary,analytics", "banner", now(), "0000") };
  const b = load(container(), { cookies: changed });
  assert.equal(scripts(b).length, 1);
  assert.equal(b.run("tagwerk('consent','state')").decided, false);
  // the decision's time is not checked in the page: the browser removes the cookie at its
  // Max-Age, and a changed lifetime changes the policy hash (consent/policy.py)
  const old = { tw_consent: consentCookie("necessary,analytics", "banner", now() - 366 * 86400) };
  assert.equal(scripts(load(container(), { cookies: old })).length, 0);
});

test("the banner interface: state, opener, update", async () => {
  const b = load(container(), { gpc: true });
  const s = b.run("tagwerk('consent','state')");
  assert.equal(s.site, "demo");
  assert.equal(s.endpoint, "https://collect.shop.example/collect");
  assert.deepEqual(
    plain(s.purposes.map((p) => p.id)),
    ["necessary", "analytics", "personalization", "marketing"]
  );
  assert.deepEqual({ ...s.granted }, { necessary: true, analytics: false, personalization: false, marketing: false });
  assert.equal(s.decided, false);
  assert.equal(s.gpc, true);
  assert.equal(s.nonce, "n0nce");
  b.run("var opened = 0; tagwerk('consent','banner', function(){ opened++ })");
  b.run("tagwerk('consent','show')");
  assert.equal(b.run("opened"), 1);
  b.run("tagwerk('consent','update','all','banner')");
  const after = b.run("tagwerk('consent','state')");
  assert.equal(after.decided, true);
  // GPC: accept all leaves marketing off, and the decision is logged as shaped by GPC
  assert.deepEqual({ ...after.granted }, { necessary: true, analytics: true, personalization: true, marketing: false });
  assert.match(b.jar.c.tw_consent, new RegExp(`^v1\\.[0-9a-f]{32}\\.${POLICY}\\.necessary,analytics,personalization\\.\\d+\\.gpc$`));
  const posted = b.net.beacons.find((x) => x.url.endsWith("/consent"));
  assert.match(posted.body.consent_id, /^[0-9a-f]{32}$/); // what the collector accepts
  assert.equal(posted.url, "https://collect.shop.example/consent");
  assert.deepEqual({ ...posted.body, consent_id: 0 }, {
    site: "demo",
    consent_id: 0,
    granted: ["necessary", "analytics", "personalization"],
    denied: ["marketing"],
    policy: POLICY,
    how: "gpc",
    url: "https://shop.example/",
  });
  // an explicit per-purpose choice wins over GPC
  b.run("tagwerk('consent','update',{marketing:true},'banner')");
  assert.match(b.jar.c.tw_consent, /\.necessary,analytics,personalization,marketing\.\d+\.banner$/);
});

test("the consent cookie: attributes, lifetimes, the kept consent id", () => {
  const b = load(container({ settings: { ...container().settings, cookie_domain: ".shop.example" } }), {
    cookies: { tw_consent: `v1.keep.${POLICY}.necessary.1.api` }, // expired, id kept
  });
  b.run("tagwerk('consent','update',{analytics:true})");
  const w = b.jar.writes.at(-1);
  assert.match(w, /^tw_consent=v1\.keep\./);
  assert.match(w, /;Max-Age=31536000;Path=\/;SameSite=Lax;Secure;Domain=\.shop\.example$/);
  b.run("tagwerk('consent','update','none')");
  assert.match(b.jar.writes.at(-1), /necessary\.\d+\.api;Max-Age=15724800;/);
});

test("tags: held without consent, released once it arrives, on this page only", async () => {
  const b = load(container(), { readyState: "interactive" });
  b.fire("window:load");
  // chat (personalization) fires on all_pages: held
  assert.equal(scripts(b).length, 1); // the banner
  b.net.scripts.length = 0;
  b.run("tagwerk('consent','update',{personalization:true})");
  assert.deepEqual(b.net.scripts, [{ src: "https://chat.example/w.js", nonce: "n0nce", async: 1 }]);
  // a script tag is inserted once per document, even on the next page view
  b.run("history.pushState({}, '', '/next')");
  assert.equal(b.net.scripts.length, 1);

  // held on one page, the route changes, consent arrives: not fired for the old page
  const cfg = container();
  cfg.triggers.push({ id: "promo", type: "custom_event", event: "promo", conditions: [] });
  cfg.tags.push({ id: "px", type: "pixel", purpose: "marketing", url: "https://px.example/",
    triggers: ["promo"], blocking_triggers: [] });
  const c = load(cfg, { readyState: "interactive" });
  c.fire("window:load");
  c.run("dataLayer.push({event: 'promo'})");
  c.run("history.pushState({}, '', '/next')");
  c.run("tagwerk('consent','update',{marketing:true})");
  assert.deepEqual(c.net.images, []);
  const same = load(cfg, { readyState: "interactive" });
  same.fire("window:load");
  same.run("dataLayer.push({event: 'promo'})");
  same.run("tagwerk('consent','update',{analytics:true})"); // another purpose: still held
  assert.deepEqual(same.net.images, []);
  same.run("tagwerk('consent','update',{marketing:true})");
  assert.deepEqual(same.net.images, ["https://px.example/"]);
});

test("pixel tags: dataLayer custom event, conditions, {{var}} substitution URL-encoded", async () => {
  const b = load(container(), { url: "https://shop.example/checkout/done", cookies: ALL });
  b.run(`dataLayer.push({ecommerce: null});
         dataLayer.push({event: 'purchase', ecommerce: {transaction_id: 'T 1/&', value: 10,
           currency: 'EUR', items: [{item_id: 'A', price: 10, quantity: 1}]}})`);
  assert.deepEqual(b.net.images, ["https://ads.example/p?o=T%201%2F%26&s=berlin"]);
  // the condition (page_path starts_with /checkout) fails elsewhere
  const c = load(container(), { url: "https://shop.example/cart", cookies: ALL });
  c.run("dataLayer.push({event: 'purchase', ecommerce: {transaction_id: 'T2'}})");
  assert.deepEqual(c.net.images, []);
  // without marketing consent: held, then fired with the values of now
  const d = load(container(), { url: "https://shop.example/checkout", cookies: ANALYTICS });
  d.run("dataLayer.push({event: 'purchase', ecommerce: {transaction_id: 'T3'}})");
  assert.deepEqual(d.net.images, []);
  d.run("tagwerk('consent','update',{marketing:true})");
  assert.deepEqual(d.net.images, ["https://ads.example/p?o=T3&s=berlin"]);
  d.run("tagwerk('consent','update',{marketing:true})"); // once
  assert.equal(d.net.images.length, 1);
});

test("blocking triggers stop a tag on the same signal", () => {
  const cfg = container();
  cfg.triggers.push({
    id: "on_cart",
    type: "page_view",
    conditions: [{ variable: "page_path", operator: "equals", value: "/cart" }],
  });
  cfg.tags[1].blocking_triggers = ["on_cart"];
  assert.equal(load(cfg, { url: "https://shop.example/cart", cookies: ALL }).net.scripts.length, 0);
  assert.equal(load(cfg, { url: "https://shop.example/", cookies: ALL }).net.scripts.length, 1);
});

test("GA4 e-commerce via dataLayer becomes tagwerk events (also pushed before load)", async () => {
  const b = load(container(), {
    cookies: ANALYTICS,
    before: `window.dataLayer = [{event: 'view_item', ecommerce: {currency: 'EUR', value: 5,
      items: [{item_id: 7, item_name: 'Sock', price: 5, quantity: 2}]}}];`,
  });
  b.run(`dataLayer.push({ecommerce: null});
         dataLayer.push({event: 'purchase', ecommerce: {transaction_id: 'T9', value: 12.5,
           currency: 'EUR', coupon: 'X', items: [{item_id: 'A', item_brand: 'B', price: 12.5}]}});
         dataLayer.push({event: 'newsletter_signup'})`);
  const events = await flushed(b);
  assert.deepEqual(names(events), ["page_view", "view_item", "purchase"]);
  // sent as pushed: the collector maps GA4's fields (collector/ingest/events.py)
  assert.deepEqual(events[1].ecommerce, { currency: "EUR", value: 5,
    items: [{ item_id: 7, item_name: "Sock", price: 5, quantity: 2 }] });
  const p = events[2];
  assert.deepEqual(p.ecommerce, { transaction_id: "T9", value: 12.5, currency: "EUR", coupon: "X",
    items: [{ item_id: "A", item_brand: "B", price: 12.5 }] });
  assert.deepEqual(p.consent, ["necessary", "analytics"]);
});

test("gtag.js e-commerce: gtag('event', name, params) is the same event (also before load)", async () => {
  const gtag = "window.dataLayer = window.dataLayer || []; function gtag(){dataLayer.push(arguments)};";
  const b = load(container(), {
    cookies: ANALYTICS,
    before: gtag + "gtag('event', 'view_item', {currency: 'EUR', value: 5, items: [{item_id: 7, price: 5}]});",
  });
  b.run(`function gtag(){dataLayer.push(arguments)}
         gtag('event', 'purchase', {transaction_id: 'T9', value: 12.5, currency: 'EUR',
           items: [{item_id: 'A', item_name: 'Sock', price: 12.5, quantity: 2}]});
         gtag('event', 'sign_up', {method: 'mail'});
         gtag('config', 'G-XYZ');`);
  const events = await flushed(b);
  // events whose params have items (GA4 requires them on e-commerce events); not sign_up
  assert.deepEqual(names(events), ["page_view", "view_item", "purchase"]);
  assert.deepEqual(events[1].ecommerce, { currency: "EUR", value: 5, items: [{ item_id: 7, price: 5 }] });
  assert.deepEqual(events[2].ecommerce, { transaction_id: "T9", value: 12.5, currency: "EUR",
    items: [{ item_id: "A", item_name: "Sock", price: 12.5, quantity: 2 }] });
});

test("dataLayer.push keeps its result and the model follows GTM", () => {
  const b = load(container(), { before: "window.dataLayer=[{a:{x:1}}]" });
  assert.equal(b.run("dataLayer.push({a:{y:2}}, {b:1})"), 3);
  assert.equal(b.run("dataLayer.length"), 3);
  b.run("dataLayer.push(null, 5, 'str', [1,2])"); // junk never throws
});

test("gtag consent: update decides (how gcm), default only sets the state", async () => {
  const gtag = "window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments)}";
  const b = load(container(), {
    readyState: "interactive",
    before: `${gtag};gtag('consent','default',{analytics_storage:'denied',ad_storage:'denied'});
             gtag('consent','default',{analytics_storage:'granted'});`,
  });
  assert.equal(b.run("tagwerk('consent','state')").decided, false);
  assert.equal(b.jar.c.tw_consent, undefined);
  const [pv] = await flushed(b);
  assert.deepEqual(pv.consent, ["necessary", "analytics"]);
  b.run("gtag('consent','update',{analytics_storage:'granted',ad_storage:'granted',ad_user_data:'granted',ad_personalization:'denied'})");
  assert.match(b.jar.c.tw_consent, /\.necessary,analytics,marketing\.\d+\.gcm$/);
  b.fire("window:load");
  assert.deepEqual(scripts(b), []); // a CMP decided: no banner
});

test("a valid decision repeated unchanged (CMPs do so on every page) is not logged again", () => {
  const gtag = "window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments)}";
  const update = "gtag('consent','update',{analytics_storage:'granted',ad_storage:'denied'})";
  const b = load(container(), { cookies: ANALYTICS, before: `${gtag};${update}` });
  const consentPosts = () => b.net.beacons.filter((x) => x.url.endsWith("/consent")).length;
  assert.equal(consentPosts(), 0);
  assert.deepEqual(b.jar.writes.filter((x) => x.startsWith("tw_consent=")), []);
  b.run(update);
  assert.equal(consentPosts(), 0);
  b.run("gtag('consent','update',{analytics_storage:'denied'})"); // a change is a decision
  assert.equal(consentPosts(), 1);
  assert.match(b.jar.c.tw_consent, /\.necessary\.\d+\.gcm$/);
  // without a valid decision, even the same state is one
  const n = load(container(), { before: `${gtag};gtag('consent','update',{analytics_storage:'denied'})` });
  assert.equal(n.net.beacons.filter((x) => x.url.endsWith("/consent")).length, 1);
});

test("calls without their arguments do nothing", async () => {
  const b = load(container());
  b.run("tagwerk('consent','update')");
  b.run("tagwerk('identify')");
  b.run("tagwerk('track')");
  assert.equal(b.jar.writes.length, 0);
  assert.deepEqual(names(await flushed(b)), ["page_view"]);
});

test("GPC: gtag default granting ad_storage does not switch marketing on", () => {
  const b = load(container(), {
    gpc: true,
    before: "window.dataLayer=[];(function(){dataLayer.push(arguments)})('consent','default',{ad_storage:'granted'})",
  });
  assert.equal(b.run("tagwerk('consent','state')").granted.marketing, false);
});

test("reset (sign-out) forgets the customer and starts a new session", async () => {
  const b = load(container(), { cookies: ANALYTICS });
  b.run("tagwerk('identify', 'C-42')");
  b.run("tagwerk('track', 'before')");
  b.run("tagwerk('reset')");
  b.run("tagwerk('track', 'after')");
  const events = await flushed(b);
  const before = events.find((e) => e.event == "before");
  const after = events.find((e) => e.event == "after");
  assert.equal(before.user_id, "C-42");
  assert.equal(after.user_id, undefined);
  assert.ok(after.session_id && after.session_id != before.session_id);
  assert.equal(b.w.sessionStorage.tw_u, undefined);
  assert.ok(b.jar.writes.some((x) => /^tw_s=;Max-Age=0;Path=\/;SameSite=Lax;Secure$/.test(x)));
  assert.equal(b.jar.c.tw_s.split(".")[0], after.session_id);
});

test("identify: sent with user_id; kept for later events only with analytics", async () => {
  const b = load(container(), { cookies: ANALYTICS });
  b.run("tagwerk('identify', 'C-42', {tier: 'gold'})");
  b.run("tagwerk('track', 'after')");
  let events = await flushed(b);
  assert.deepEqual(
    events.slice(1).map((e) => [e.event, e.type, e.user_id]),
    [["identify", "identify", "C-42"], ["after", undefined, "C-42"]]
  );
  assert.deepEqual(events[1].props, { tier: "gold" });
  // the customer id in sessionStorage (not in a cookie the shop's server gets), flagged in tw_s
  assert.equal(b.w.sessionStorage.tw_u, "C-42");
  assert.match(b.jar.c.tw_s, /^[0-9a-f]{32}\.\d+\.u$/);
  assert.doesNotMatch(Object.values(b.jar.c).join(";"), /C-42/);
  // the next page of the session reads it back (the flag says it is there)
  const next = load(container(), { cookies: { ...ANALYTICS, tw_s: b.jar.c.tw_s }, session: { tw_u: "C-42" } });
  next.run("tagwerk('identify', 'C-42')"); // the same id again: not written again
  const [pv, id] = await flushed(next);
  assert.equal(pv.user_id, "C-42");
  assert.equal(pv.session_id, events[0].session_id);
  assert.equal(id.user_id, "C-42");
  assert.equal(next.w.sessionStorage.n, 1); // one read, no write

  const n = load(container());
  n.run("tagwerk('identify', 'C-43')");
  n.run("tagwerk('track', 'after')");
  events = await flushed(n);
  assert.equal(events[1].user_id, "C-43");
  assert.equal(events[2].user_id, undefined);
  assert.equal(events[2].session_id, undefined);
  assert.equal(n.w.sessionStorage.n, 0);
  assert.equal(n.jar.c.tw_s, undefined);
});

test("session id: in the session cookie tw_s, kept across pages, new after the timeout", async () => {
  const m = Math.floor(Date.now() / 6e4); // minutes
  const b = load(container(), { cookies: { ...ANALYTICS, tw_s: `s-live.${m - 1}` } });
  assert.equal((await flushed(b))[0].session_id, "s-live");
  assert.equal(b.jar.c.tw_s, `s-live.${m}`); // the last activity, a session cookie
  assert.deepEqual(b.jar.writes, [`tw_s=s-live.${m};Path=/;SameSite=Lax;Secure`]);
  b.run("tagwerk('track','x')"); // the same minute: not written again
  assert.equal(b.jar.writes.length, 1);
  // no storage access at all on such a visit (no user id kept, no stored queue)
  assert.equal(b.w.sessionStorage.n + b.w.localStorage.n, 0);
  const stale = { ...ANALYTICS, tw_s: `s-old.${m - 31}.u` };
  const c = load(container(), { cookies: stale, session: { tw_u: "C-1" } });
  const [e] = await flushed(c);
  assert.match(e.session_id, UUID);
  assert.equal(e.user_id, undefined);
  assert.equal(c.w.sessionStorage.n, 0);
  assert.match(c.jar.c.tw_s, new RegExp(`^${e.session_id}\\.${m}$`));
  // the cookie domain of the container, as tw_consent's
  const d = load({ ...container(), settings: { ...container().settings, cookie_domain: ".shop.example" } }, { cookies: ANALYTICS });
  assert.match(d.jar.writes[0], /^tw_s=[0-9a-f]{32}\.\d+;Path=\/;SameSite=Lax;Secure;Domain=\.shop\.example$/);
  // without analytics: no session cookie, and one left over goes
  const n = load(container(), { cookies: { tw_s: `s-live.${m}` } });
  assert.equal((await flushed(n))[0].session_id, undefined);
  assert.equal(n.jar.c.tw_s, undefined);
});

test("a session kept alive by another tab is taken over, not replaced", async () => {
  const m = Math.floor(Date.now() / 6e4);
  const b = load(container(), { cookies: { ...ANALYTICS, tw_s: `s-1.${m}` } });
  await flushed(b);
  b.jar.c.tw_s = `s-1.${m + 40}`; // the other tab, 40 minutes on
  const real = Date.now;
  b.w.Date = class extends Date {
    static now() {
      return real() + 40 * 6e4;
    }
  };
  try {
    b.run("tagwerk('track','back')");
  } finally {
    b.w.Date = Date;
  }
  const [, e] = await flushed(b);
  assert.equal(e.session_id, "s-1");
});

test("withdrawing analytics drops the session, the user id and the stored queue", async () => {
  const b = load(container(), { cookies: ANALYTICS, fetchStatus: "offline" });
  b.run("tagwerk('identify','C-1')");
  assert.ok(b.jar.c.tw_s);
  assert.equal(b.w.sessionStorage.tw_u, "C-1");
  assert.equal(b.w.localStorage.tw_q, undefined); // written by the first flush, not per event
  await b.clock.advance(5000);
  assert.equal(JSON.parse(b.w.localStorage.tw_q).length, 2);
  assert.equal(b.jar.c.tw_q, "1");
  b.run("tagwerk('consent','update',{analytics:false})");
  assert.equal(b.jar.c.tw_s, undefined);
  assert.equal(b.w.sessionStorage.tw_u, undefined);
  assert.equal(b.w.localStorage.tw_q, undefined);
  assert.equal(b.jar.c.tw_q, undefined);
  b.run("tagwerk('track','x')");
  assert.equal(b.w.localStorage.tw_q, undefined); // kept in memory now
  assert.equal(b.jar.c.tw_s, undefined);
});

test("auto-tracking: outbound links, downloads, forms; clicks only when on", async () => {
  const b = load(container(), { cookies: ALL });
  const buy = new El("button", { class: "buy" }, "Buy now", b.body);
  b.fire("document:click", { target: buy });
  b.fire("document:click", { target: link("https://other.example/x") });
  b.fire("document:click", { target: link("/files/Price-List.PDF") });
  b.fire("document:click", { target: link("/about") });
  b.fire("document:click", { target: link("mailto:a@b.example") });
  const form = new El("form", { id: "newsletter", action: "/subscribe" }, "", b.body);
  b.fire("document:submit", { target: form });
  const events = (await flushed(b)).slice(1);
  assert.deepEqual(
    events.map((e) => [e.event, e.props]),
    [
      ["outbound_link", { url: "https://other.example/x" }],
      ["file_download", { url: "https://shop.example/files/Price-List.PDF" }],
      ["form_submit", { id: "newsletter", action: "/subscribe" }],
    ]
  );
  const cfg = container();
  cfg.settings.auto.clicks = true;
  cfg.settings.auto.outbound_links = false;
  const c = load(cfg);
  c.fire("document:click", { target: new El("span", {}, "  Add to cart ") });
  c.fire("document:click", { target: link("https://other.example/x") });
  assert.deepEqual(
    (await flushed(c)).slice(1).map((e) => [e.event, e.props]),
    [
      ["click", { tag: "SPAN", text: "Add to cart" }],
      ["click", { tag: "A", text: "link" }],
    ]
  );
});

test("scroll depth: each threshold once per page", async () => {
  const b = load(container());
  const scroll = (y) => {
    b.w.scrollY = y;
    b.fire("window:scroll");
  };
  scroll(300); // (300 + 800) / 4000 = 27.5 %
  scroll(0);
  scroll(300);
  scroll(3200); // 100 %
  b.run("history.pushState({}, '', '/next')");
  scroll(300);
  const events = (await flushed(b)).filter((e) => e.event == "scroll_depth");
  assert.deepEqual(
    events.map((e) => [e.url.slice(20), e.props.percent]),
    [["/", 25], ["/", 50], ["/", 75], ["/", 90], ["/next", 25]]
  );
});

test("debug: records of events, tags (fired or held, trigger, purpose, why) and consent", async () => {
  const b = load(container(), { url: "https://shop.example/?tagwerk_debug=1" });
  assert.deepEqual(b.net.scripts[0], {
    src: "https://collect.shop.example/t/debug.js?v=v1",
    nonce: "n0nce",
    async: 1,
  });
  b.run("tagwerk('consent','update',{personalization:true},'banner')");
  const r = plain(b.w.__tagwerk_debug);
  assert.deepEqual(r.map((x) => x.kind), ["event", "tag", "tag", "consent"]);
  assert.equal(r[0].payload.event, "page_view");
  assert.deepEqual(r[1], { kind: "tag", tag: "chat", trigger: "all_pages", purpose: "personalization", fired: false, why: "no consent" });
  assert.deepEqual(r[2], { kind: "tag", tag: "chat", trigger: "all_pages", purpose: "personalization", fired: true, why: "consent given" });
  assert.deepEqual(r[3], { kind: "consent", granted: ["necessary", "personalization"], how: "banner" });
  // without the flag nothing is recorded; tagwerk('debug', true) turns it on later
  const c = load(container());
  assert.equal(c.w.__tagwerk_debug, undefined);
  c.run("tagwerk('debug', true)");
  c.run("tagwerk('track','x')");
  assert.equal(c.w.__tagwerk_debug.length, 1);
  assert.equal(c.net.scripts.at(-1).src, "https://collect.shop.example/t/debug.js?v=v1");
});

test("timer trigger: html tag after 30 s, once, with consent; nonce on its scripts", async () => {
  const b = load(container(), { cookies: ANALYTICS });
  await b.clock.advance(29000);
  assert.equal(b.net.html.length, 0);
  await b.clock.advance(1000);
  assert.deepEqual(b.net.html, [{ html: "<div id=survey></div>", nonces: [] }]);
  await b.clock.advance(60000);
  assert.equal(b.net.html.length, 1);
  const cfg = container();
  cfg.tags[2].html = "<script>window.x=1</script>";
  const c = load(cfg, { cookies: ANALYTICS });
  await c.clock.advance(30000);
  assert.deepEqual(c.net.html[0].nonces, ["n0nce"]);
});

test("element_visible: observed from boot (the engine loads then), once per element at the ratio", () => {
  const b = load(container(), {
    cookies: ALL,
    readyState: "loading",
  });
  const hero = new El("section", { id: "hero" }, "", b.body);
  assert.equal(b.w.observers.length, 0);
  b.fire("window:load");
  assert.equal(b.net.engine.length, 1);
  const [o] = b.w.observers;
  assert.equal(o.opts.threshold, 0.5);
  assert.deepEqual([...o.els], [hero]);
  const cfg = container();
  assert.ok(cfg.triggers.find((t) => t.type == "element_visible"));
  o.cb([{ isIntersecting: true, intersectionRatio: 0.6, target: hero }]);
  assert.deepEqual([...o.els], []); // unobserved: once
});

// A container with two element_visible triggers, each with a pixel tag (marketing).
const visible = () => {
  const c = container();
  c.triggers.push({ id: "tile_seen", type: "element_visible", selector: ".tile", conditions: [] });
  c.tags.push(
    { id: "hero_px", type: "pixel", purpose: "marketing", url: "https://ads.example/hero",
      triggers: ["hero_seen"], blocking_triggers: [] },
    { id: "tile_px", type: "pixel", purpose: "marketing", url: "https://ads.example/tile",
      triggers: ["tile_seen"], blocking_triggers: [] }
  );
  return c;
};
const seen = (o, ...els) => o.cb(els.map((target) => ({ isIntersecting: true, intersectionRatio: 1, target })));

test("element_visible: elements added later (SPA routes, lazy lists) fire too, once per trigger", () => {
  const b = load(visible(), { cookies: ALL, readyState: "loading" });
  const hero = new El("section", { id: "hero" }, "", b.body); // there at load
  b.fire("window:load");
  const [heroIO, tileIO] = b.w.observers;
  const [mo] = b.w.mutationObservers;
  assert.equal(b.w.mutationObservers.length, 1); // one for all triggers
  assert.equal(mo.target, b.w.document);
  assert.ok(mo.opts.childList && mo.opts.subtree);
  assert.deepEqual([...heroIO.els], [hero]);
  seen(heroIO, hero);
  assert.deepEqual(b.net.images, ["https://ads.example/hero"]);

  // An SPA route: the old hero goes, a new one comes; the new one fires when visible.
  b.body.children.length = 0;
  const hero2 = new El("section", { id: "hero" }, "", b.body);
  mo.cb([{ addedNodes: [hero2] }]);
  assert.deepEqual([...heroIO.els], [hero2]);
  assert.deepEqual([...tileIO.els], []);
  seen(heroIO, hero2);
  assert.equal(b.net.images.length, 2);

  // A lazy list: matching descendants of an added subtree; text nodes are skipped.
  const list = new El("ul", { class: "grid" }, "", b.body);
  const tiles = [new El("li", { class: "tile" }, "", list), new El("li", { class: "tile" }, "", list)];
  new El("li", { class: "ad" }, "", list);
  mo.cb([{ addedNodes: [{ nodeType: 3, textContent: "\n" }] }, { addedNodes: [list] }]);
  assert.deepEqual([...tileIO.els], tiles);
  assert.deepEqual([...heroIO.els], []);
  seen(tileIO, tiles[1]);
  assert.deepEqual(b.net.images.slice(2), ["https://ads.example/tile"]);

  // Moved (removed and added again): an element that fired stays fired; the one that did
  // not stays observed and still fires, once.
  mo.cb([{ addedNodes: [hero2] }, { addedNodes: [list] }]);
  assert.deepEqual([...heroIO.els], []);
  assert.deepEqual([...tileIO.els], [tiles[0]]);
  seen(tileIO, tiles[0]);
  mo.cb([{ addedNodes: [list] }]);
  assert.deepEqual([...tileIO.els], []);
  assert.deepEqual(b.net.images.slice(2), ["https://ads.example/tile", "https://ads.example/tile"]);

  // A trigger with a selector the browser refuses does not stop the others.
  const c = visible();
  c.triggers.unshift({ id: "bad", type: "element_visible", selector: "!!", conditions: [] });
  const x = load(c, { cookies: ALL, readyState: "loading" });
  const tile = new El("li", { class: "tile" }, "", x.body);
  x.fire("window:load");
  assert.deepEqual([...x.w.observers[2].els], [tile]);
  const late = new El("li", { class: "tile" }, "", x.body);
  x.w.mutationObservers[0].cb([{ addedNodes: [late] }]);
  assert.deepEqual([...x.w.observers[2].els], [tile, late]);
});

test("element_visible: no MutationObserver without element_visible triggers", () => {
  const timers = container();
  timers.triggers = timers.triggers.filter((t) => t.type != "element_visible");
  const b = load(timers, { cookies: ALL });
  assert.equal(b.net.engine.length, 1); // the engine runs (for the timer)...
  assert.deepEqual(b.w.mutationObservers, []); // ...and watches no DOM changes
  assert.deepEqual(b.w.observers, []);
  const none = container(); // tags only: the engine comes with consent
  none.triggers = none.triggers.filter((t) => t.type != "element_visible" && t.type != "timer");
  none.tags = none.tags.filter((t) => t.id != "survey");
  const c = load(none, { cookies: ALL });
  assert.equal(c.net.engine.length, 1);
  assert.deepEqual(c.w.mutationObservers, []);
});

test("page hide sends what waits with sendBeacon", async () => {
  const b = load(container());
  b.run("tagwerk('track','bye')");
  b.w.document.hidden = true;
  b.fire("document:visibilitychange");
  assert.deepEqual(b.net.fetches, []);
  assert.deepEqual(b.net.beacons[0].body.events.map((e) => e.event), ["page_view", "bye"]);
  assert.equal(b.net.beacons[0].url, "https://collect.shop.example/collect");
  b.fire("window:pagehide");
  assert.equal(b.net.beacons.length, 1); // nothing left
});

test("offline: kept in localStorage with analytics, sent when back online", async () => {
  const b = load(container(), { cookies: ANALYTICS, fetchStatus: "offline" });
  await b.clock.advance(5000);
  assert.equal(JSON.parse(b.w.localStorage.tw_q).length, 1);
  assert.match(b.jar.writes.at(-1), /^tw_q=1;Max-Age=40000000;Path=\/;SameSite=Lax;Secure$/); // host-only
  b.net.fetches.length = 0;
  const ok = load(container(), { cookies: { ...ANALYTICS, tw_q: "1" }, local: { tw_q: b.w.localStorage.tw_q } });
  await ok.clock.advance(5000);
  // the next page sends the stored page view with its own, then removes the stored copy
  assert.equal(ok.net.fetches[0].body.events.length, 2);
  assert.equal(ok.w.localStorage.tw_q, undefined);
  assert.equal(ok.jar.c.tw_q, undefined);
  // without the tw_q cookie, localStorage is not read (nor written when all was sent)
  const no = load(container(), { cookies: ANALYTICS, local: { tw_q: b.w.localStorage.tw_q } });
  await no.clock.advance(5000);
  assert.equal(no.net.fetches[0].body.events.length, 1);
  assert.equal(no.w.localStorage.n, 0);
});

test("ids on plain http too (no crypto.randomUUID there), and each one new", async () => {
  const b = load(container(), { randomUUID: false, cookies: ANALYTICS });
  b.run("tagwerk('track','a');tagwerk('track','b')");
  const events = await flushed(b);
  for (const e of events) assert.match(e.event_id, UUID);
  assert.equal(new Set(events.map((e) => e.event_id)).size, 3);
});

test("never throws into the page", async () => {
  const b = load(container(), { cookies: ANALYTICS });
  b.w.fetch = () => {
    throw new Error("blocked");
  };
  b.w.navigator.sendBeacon = undefined;
  b.w.sessionStorage = null;
  for (const call of [
    "tagwerk('consent','update',null)",
    "tagwerk('consent','update')",
    "tagwerk('nonsense', 1, 2)",
    "tagwerk()",
    "tagwerk('track','x',{a:1})",
    "tagwerk('identify')",
    "dataLayer.push({event:'purchase', ecommerce: 5})",
    "history.pushState({}, '', '/y')",
  ])
    b.run(call);
  b.fire("document:click", { target: {} });
  b.fire("document:submit", { target: null });
  b.fire("window:scroll");
  b.fire("window:pagehide");
  b.fire("window:online");
  await b.clock.advance(70000);
  await tick();
});

test("cookies and storages that throw (sandboxed frames) never throw into the page", async () => {
  const b = load(container(), { readyState: "interactive", cookies: ANALYTICS });
  Object.defineProperty(b.w.document, "cookie", {
    get() {
      throw new Error("SecurityError");
    },
    set() {
      throw new Error("SecurityError");
    },
  });
  b.run("tagwerk('consent','state')");
  b.run("tagwerk('identify','C-1')");
  b.run("tagwerk('reset')");
  b.fire("window:load");
  await b.clock.advance(5000);
});

test("a broken container never throws either", () => {
  for (const c of ["{}", '{"settings":{}}', "null", "5", "[]", '{"consent":{}}']) {
    const b = browser();
    b.run(TAG.replace('"__TAGWERK_CONFIG__"', c));
  }
});

// ---- boot at load (main-thread cost) and the lazily loaded engine

test("before the page has loaded: no cookie or storage access, calls keep their order", async () => {
  const gtag = "window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments)}";
  const b = load(container(), { readyState: "interactive", cookies: ANALYTICS, before: gtag });
  b.run("tagwerk('track','early',{n:1})");
  b.run("dataLayer.push({event:'view_item', ecommerce:{items:[{item_id:'A'}]}})");
  b.run("gtag('consent','update',{ad_storage:'granted',ad_user_data:'granted'})");
  b.run("tagwerk('consent','update',{personalization:true})");
  assert.equal(b.jar.reads, 0);
  assert.equal(b.w.sessionStorage.n + b.w.localStorage.n, 0);
  assert.equal(b.net.engine.length, 0);
  b.fire("window:load");
  assert.ok(b.jar.reads > 0);
  const events = await flushed(b);
  // consent first (so the page view carries it), then the page view, dataLayer, commands
  assert.deepEqual(names(events), ["page_view", "view_item", "early"]);
  assert.deepEqual(events[0].consent, ["necessary", "analytics", "personalization", "marketing"]);
  assert.equal(events[0].session_id, events[2].session_id);
  assert.equal(b.net.scripts.filter((s) => /chat/.test(s.src)).length, 1); // the chat tag fired
  b.fire("window:load"); // once
  assert.equal(names(sent(b)).filter((n) => n == "page_view").length, 1);
});

test("boot comes 300 ms after the load event (the browser is busy then; the first page view keeps its time)", () => {
  const b = load(container(), { readyState: "interactive", cookies: ANALYTICS });
  const t0 = Date.now();
  b.listeners["window:load"].forEach((f) => f({})); // the event alone, no wait
  b.clock.due(BOOT_DELAY - 1);
  assert.equal(b.jar.reads, 0);
  b.clock.due(1);
  assert.ok(b.jar.reads > 0);
  b.fire("window:pagehide");
  const pv = sent(b)[0];
  assert.equal(pv.event, "page_view");
  assert.ok(pv.ts <= t0); // the time the tag started
});

test("one cookie read at boot (tw_consent, tw_s, tw_q), no storage access without a reason", async () => {
  const m = Math.floor(Date.now() / 6e4);
  const b = load(container(), { readyState: "interactive", cookies: { ...ANALYTICS, tw_s: `s-1.${m}` } });
  b.fire("window:load");
  b.run("tagwerk('track','x')");
  b.fire("window:scroll");
  await flushed(b);
  b.fire("window:pagehide");
  assert.equal(b.jar.reads, 1);
  assert.equal(b.w.sessionStorage.n + b.w.localStorage.n, 0);
  assert.deepEqual([...new Set(sent(b).map((e) => e.session_id))], ["s-1"]);
});

test("the first page view carries the time the tag started, not the time of boot", async () => {
  const before = Date.now();
  const b = load(container(), { readyState: "interactive" });
  const started = Date.now();
  await new Promise((r) => setTimeout(r, 30));
  b.fire("window:load");
  const [pv] = await flushed(b);
  // Within the tag's start, however slow the machine; the load fired 30 ms after it.
  assert.ok(before <= pv.ts && pv.ts <= started, `${before} <= ${pv.ts} <= ${started}`);
});

test("boot before load when needed: page hidden, a click, a route change, 'state', 4 s", async () => {
  const hidden = load(container(), { readyState: "interactive" });
  hidden.run("tagwerk('track','bye')");
  hidden.fire("window:pagehide", { persisted: false });
  assert.deepEqual(hidden.net.beacons[0].body.events.map((e) => e.event), ["page_view", "bye"]);

  const click = load(container(), { readyState: "interactive" });
  click.fire("document:click", { target: link("https://other.example/x") });
  assert.deepEqual(names(await flushed(click)), ["page_view", "outbound_link"]);

  const route = load(container(), { readyState: "interactive" });
  route.run("history.pushState({}, '', '/p/1')");
  assert.deepEqual((await flushed(route)).map((e) => e.url.slice(20)), ["/", "/p/1"]);

  // 'state' boots, and answers once decide.js is there (at once: the fake runs it on insert)
  const state = load(container(), { readyState: "interactive", decideMode: "never" });
  assert.equal(state.run("tagwerk('consent','state')"), undefined);
  assert.equal(state.jar.reads, 1);
  assert.ok(decideLoaded(state));
  const state2 = load(container(), { readyState: "interactive" });
  state2.run("tagwerk('consent','state')");
  assert.equal(state2.run("tagwerk('consent','state')").decided, false);

  const slow = load(container(), { readyState: "loading" });
  await slow.clock.advance(3999);
  assert.equal(slow.jar.reads, 0);
  await slow.clock.advance(1);
  assert.equal(slow.jar.reads, 1);
  assert.equal(slow.net.scripts.length, 0); // the banner still waits for the load
  slow.fire("window:load");
  assert.equal(scripts(slow).length, 1);
});

// A container whose tags the engine handles from signals the core logs (no timer, no
// element_visible): the engine is loaded only once a purpose a tag needs is granted.
const lazy = () => {
  const c = container();
  c.triggers = c.triggers.filter((t) => t.type != "timer" && t.type != "element_visible");
  c.tags = c.tags.filter((t) => t.id != "survey");
  return c;
};

test("the engine: not loaded without a purpose its tags need; served config is compact", () => {
  const { core, engine } = compact(lazy());
  assert.deepEqual(core, { s: "demo", p: POLICY, v: "v1", n: "marketing,personalization" });
  assert.equal(engine.g[0].name, undefined);
  const b = load(lazy(), { cookies: ANALYTICS });
  b.run("dataLayer.push({event:'purchase'})");
  assert.deepEqual(b.net.engine, []);
  const none = load({ ...lazy(), tags: [] }, { cookies: ALL });
  assert.deepEqual(none.net.engine, []); // no tags: nothing to do
  const all = load(lazy(), { cookies: ALL });
  assert.deepEqual(all.net.engine, [
    { src: "https://collect.shop.example/t/demo/tm.js?v=v1", nonce: "n0nce", async: 1 },
  ]);
  assert.deepEqual(all.net.scripts.map((s) => s.src), ["https://chat.example/w.js"]);
  // timers or element_visible triggers: loaded at boot whatever the consent
  assert.equal(load(container(), { cookies: ANALYTICS }).net.engine.length, 1);
});

test("the engine replays the page's signals: held tags fire when consent arrives", () => {
  const b = load(lazy(), { url: "https://shop.example/checkout", engineMode: "manual" });
  b.run("dataLayer.push({event: 'purchase', ecommerce: {transaction_id: 'T1'}})");
  b.run("dataLayer.push({ecommerce: {transaction_id: 'LATER'}})");
  b.run("tagwerk('consent','update',{marketing:true})");
  assert.equal(b.net.engine.length, 1);
  assert.deepEqual(b.net.images, []); // the engine is still on its way
  b.arrive();
  // held (no consent at the signal), released now: the values of now, like a held tag
  assert.deepEqual(b.net.images, ["https://ads.example/p?o=LATER&s=berlin"]);
  const chat = () => b.net.scripts.filter((s) => /chat/.test(s.src)).length;
  assert.equal(chat(), 0); // personalization still not granted
  b.run("tagwerk('consent','update',{personalization:true})");
  assert.equal(chat(), 1);

  // granted when the signal happened, the engine not there yet: fired for each signal
  const c = load(lazy(), { url: "https://shop.example/checkout", cookies: ALL, engineMode: "manual" });
  c.run("dataLayer.push({event: 'purchase', ecommerce: {transaction_id: 'A'}})");
  c.run("dataLayer.push({event: 'purchase', ecommerce: {transaction_id: 'B'}})");
  c.arrive();
  assert.equal(c.net.images.length, 2);
  c.run("dataLayer.push({event: 'purchase', ecommerce: {transaction_id: 'C'}})");
  assert.equal(c.net.images.length, 3);

  // conditions on the dataLayer see the model as it was at the signal
  const cfg = lazy();
  cfg.variables.push({ id: "tier", type: "data_layer", key: "tier" });
  cfg.triggers.push({ id: "gold", type: "custom_event", event: "go",
    conditions: [{ variable: "tier", operator: "equals", value: "gold" }] });
  cfg.tags.push({ id: "g", type: "pixel", purpose: "marketing", url: "https://g.example/", triggers: ["gold"] });
  const m = load(cfg, { engineMode: "manual" });
  m.run("dataLayer.push({tier: 'gold', event: 'go'})");
  m.run("dataLayer.push({tier: 'silver', event: 'go'})");
  m.run("tagwerk('consent','update',{marketing:true})");
  m.arrive();
  assert.deepEqual(m.net.images, ["https://g.example/"]);

  // a new page drops what was held on the old one, before and after the engine came
  const r = load(lazy(), { url: "https://shop.example/checkout", engineMode: "manual" });
  r.run("dataLayer.push({event: 'purchase'})");
  r.run("history.pushState({}, '', '/checkout/2')");
  r.run("tagwerk('consent','update',{marketing:true})");
  r.arrive();
  assert.deepEqual(r.net.images, []);
});

test("compact() is the collector's core_bundle, core_config and engine_config (compact.json)", async () => {
  const { readFileSync } = await import("node:fs");
  const f = JSON.parse(readFileSync(new URL("./compact.json", import.meta.url)));
  const c = compact(normalize({ ...f.document, site: f.site, policy: f.policy }));
  assert.deepEqual(plain({ bundle: c.bundle, core: c.core }), { bundle: f.bundle, core: f.core });
});

// The default container's build: no click event, no signals but page views.
const basic = () => {
  const c = container();
  c.triggers = c.triggers.filter((t) => ["page_view", "timer", "element_visible"].includes(t.type));
  c.tags = c.tags.map((t) => ({ ...t, triggers: t.triggers.filter((i) => c.triggers.some((r) => r.id == i)) }));
  return c;
};

test("tag.basic.js: every automatic event but clicks, page-view tags, and less code", async () => {
  assert.equal(compact(basic()).bundle, "tag.basic.js");
  assert.equal(compact({ ...basic(), settings: { ...basic().settings, auto: { ...basic().settings.auto, clicks: true } } }).bundle, "tag.js");
  assert.equal(compact({ ...container(), tags: [] }).bundle, "tag.basic.js"); // no tags: no signals
  assert.ok(TAG_BASIC.length < TAG.length - 150);
  const b = load(basic(), { cookies: ALL, url: "https://shop.example/p" });
  assert.deepEqual(b.net.scripts.filter((s) => s.src.includes("chat.example")).length, 1); // page_view tag
  b.fire("document:click", { target: link("https://other.example/x") });
  b.fire("document:click", { target: link("/files/a.PDF") });
  b.fire("document:submit", { target: new El("form", { id: "f", action: "/s" }) });
  b.w.scrollY = 3200;
  b.fire("window:scroll");
  b.run("dataLayer.push({event: 'purchase', ecommerce: {transaction_id: 'T1', items: []}}); tagwerk('track', 'x')");
  b.run("history.pushState({}, '', '/q')");
  await b.clock.advance(6000); // two batches: at 10 events, then the rest
  assert.deepEqual(names(await flushed(b)), ["page_view", "outbound_link", "file_download", "form_submit",
    "scroll_depth", "scroll_depth", "scroll_depth", "scroll_depth", "purchase", "x", "page_view"]);
});

test("an event the page changes after the call, or that cannot be sent, harms nothing", async () => {
  const b = load(container(), { cookies: ANALYTICS });
  b.run(`var p = {step: 1}; tagwerk('track', 'a', p); p.step = 2;
         var cyc = {}; cyc.self = cyc; tagwerk('track', 'cycle', cyc);
         dataLayer.push({event: 'purchase', ecommerce: {items: [], big: 1n}});
         tagwerk('track', 'b')`);
  const events = await flushed(b);
  assert.deepEqual(names(events), ["page_view", "a", "b"]); // the unsendable ones are dropped
  assert.deepEqual(events[1].props, { step: 1 }); // as it was at the call
});

test("decide.js blocked: tracking goes on with the cookie's or the default consent", async () => {
  const b = load(container(), { decideMode: "never", readyState: "interactive" });
  b.fire("window:load");
  assert.deepEqual(scripts(b), []); // no banner without decide.js
  b.run("tagwerk('consent','update','all')"); // waits for decide.js: nothing is decided
  b.run("tagwerk('track','x')");
  const events = await flushed(b);
  assert.deepEqual(names(events), ["page_view", "x"]);
  assert.deepEqual(events[1].consent, ["necessary"]);
  assert.equal(b.jar.c.tw_consent, undefined);
});
