// A minimal hand-made browser for the tests: just what the tag touches. No jsdom.
// browser() makes a window to run dist/tag.js in (node:vm), with a manual clock, a cookie
// jar, storages, a fake DOM (elements with closest/matches for simple selectors), recorded
// network calls (fetch, sendBeacon, images, inserted scripts), listeners to fire, and the
// Intersection/MutationObservers made (the tests call their callbacks).
import vm from "node:vm";
import { bundle } from "../build.mjs";

// The bundles of the current sources (built in memory, like `npm run build` would).
export const TAG = await bundle("tag.js");
export const TAG_BASIC = await bundle("tag.basic.js");
export const ENGINE = await bundle("engine.js");
export const DECIDE = await bundle("decide.js");

// The demo container of DESIGN.md §1 as the server would inline it (§2), normalized as
// collector/containers.py does (conditions and blocking_triggers always present).
export const container = (over = {}) => normalize({
  site: "demo",
  endpoint: "https://collect.shop.example/collect",
  version: 7,
  policy: "3c1d0e7a9b2f4c11",
  settings: {
    endpoint: "/collect",
    tag_path: "/t/{site}.js",
    cookie_domain: "",
    session_timeout_minutes: 30,
    auto: {
      page_views: true,
      spa: true,
      clicks: false,
      outbound_links: true,
      downloads: true,
      scroll_depth: true,
      forms: true,
      ecommerce: true,
    },
    download_extensions: ["pdf", "zip", "csv", "xlsx", "docx", "mp3", "mp4", "dmg", "exe"],
    scroll_thresholds: [25, 50, 75, 90],
  },
  consent: {
    purposes: [
      { id: "necessary", required: true },
      { id: "analytics", default: false },
      { id: "personalization", default: false },
      { id: "marketing", default: false },
    ],
    lifetime_days: 365,
    rejection_lifetime_days: 182,
  },
  variables: [
    { id: "page_path", type: "url", part: "path" },
    { id: "campaign", type: "query", name: "utm_campaign" },
    { id: "order_id", type: "data_layer", key: "ecommerce.transaction_id" },
    { id: "ab", type: "cookie", name: "ab_group" },
    { id: "hero", type: "element_text", selector: "h1" },
    { id: "sku", type: "element_attribute", selector: "[data-sku]", attribute: "data-sku" },
    { id: "shop", type: "constant", value: "berlin" },
  ],
  triggers: [
    { id: "all_pages", type: "page_view" },
    { id: "route", type: "history_change" },
    { id: "buy_click", type: "click", selector: ".buy" },
    { id: "links", type: "link_click", selector: "a.track" },
    { id: "out", type: "outbound_link" },
    { id: "dl", type: "file_download" },
    { id: "newsletter", type: "form_submit", selector: "form#newsletter" },
    { id: "half", type: "scroll_depth", percent: 50 },
    { id: "t30", type: "timer", interval_ms: 30000, limit: 1 },
    { id: "hero_seen", type: "element_visible", selector: "#hero", ratio: 0.5 },
    {
      id: "bought",
      type: "custom_event",
      event: "purchase",
      conditions: [{ variable: "page_path", operator: "starts_with", value: "/checkout" }],
    },
  ],
  tags: [
    {
      id: "ads",
      name: "Ads pixel",
      type: "pixel",
      purpose: "marketing",
      url: "https://ads.example/p?o={{order_id}}&s={{shop}}",
      triggers: ["bought"],
      blocking_triggers: [],
    },
    {
      id: "chat",
      name: "Chat widget",
      type: "script",
      purpose: "personalization",
      src: "https://chat.example/w.js",
      triggers: ["all_pages"],
    },
    {
      id: "survey",
      name: "Survey",
      type: "html",
      purpose: "analytics",
      html: "<div id=survey></div>",
      triggers: ["t30"],
    },
  ],
  ...over,
});

// The configs the collector serves (collector/tag/serving.py core_config and engine_config, the
// same rules; test/compact.json pins both to the same output): the core's compact one and
// the engine's. v is the assets' version hash.
const AUTO = { page_views: "p", spa: "s", clicks: "c", outbound_links: "o", downloads: "d",
  scroll_depth: "x", forms: "f", ecommerce: "e" };
const EXT = "pdf zip csv xlsx docx mp3 mp4 dmg exe";
const same = (a, b) => JSON.stringify(a) == JSON.stringify(b);
export const compact = (c, v = "v1") => {
  const s = c.settings, k = c.consent, o = { s: c.site, p: c.policy, v };
  if (s.endpoint && s.endpoint != "/collect") o.e = s.endpoint;
  if (s.cookie_domain) o.d = s.cookie_domain;
  if ((s.session_timeout_minutes || 30) != 30) o.m = s.session_timeout_minutes;
  const a = Object.keys(AUTO).filter((x) => s.auto[x]).map((x) => AUTO[x]).join("");
  if (a != "psodxfe") o.a = a || "-";
  const x = s.download_extensions.map((e) => e.toLowerCase()).join(" ");
  if (x != EXT) o.x = x || "-";
  if (!same(s.scroll_thresholds, [25, 50, 75, 90])) o.t = s.scroll_thresholds;
  const P = k.purposes.map((p) => p.id + (p.required ? "!" : p.default ? "+" : "")).join(",");
  if (P != "necessary!,analytics,personalization,marketing") o.P = P;
  const g = k.purposes.filter((p) => p.required || p.default).map((p) => p.id).join(",");
  if (g != "necessary") o.g = g;
  if (k.lifetime_days != 365) o.l = k.lifetime_days;
  if (k.rejection_lifetime_days != 182) o.r = k.rejection_lifetime_days;
  if (c.tags.length) {
    const pc = [...new Set(c.triggers.filter((t) => t.type == "scroll_depth").map((t) => t.percent))]
      .filter((p) => !s.scroll_thresholds.includes(p))
      .sort((a, b) => a - b);
    if (pc.length) o.k = pc;
    o.n = [...new Set(c.tags.map((t) => t.purpose))].sort().join(",");
    if (c.triggers.some((t) => t.type == "timer" || t.type == "element_visible")) o.w = 1;
  }
  const drop = (t, ks) => Object.fromEntries(Object.entries(t).filter(([k, v]) =>
    !(ks.includes(k) && (k == "name" || (Array.isArray(v) && !v.length)))));
  // The core's build (tagjs.py core_bundle): tag.basic.js without click events and without
  // trigger signals other than page views.
  const signalled = ["click", "link_click", "outbound_link", "file_download", "form_submit",
    "scroll_depth", "history_change", "custom_event"];
  const full = s.auto.clicks || (c.tags.length && c.triggers.some((t) => signalled.includes(t.type)));
  return {
    bundle: full ? "tag.js" : "tag.basic.js",
    core: o,
    engine: {
      v: c.variables,
      r: c.triggers.map((t) => drop(t, ["conditions"])),
      g: c.tags.map((t) => drop(t, ["name", "blocking_triggers"])),
    },
  };
};

// A container as collector/containers.py normalizes it: conditions and blocking_triggers
// always present.
export const normalize = (c) => ({
  ...c,
  triggers: c.triggers.map((t) => ({ conditions: [], ...t })),
  tags: c.tags.map((t) => ({ blocking_triggers: [], ...t })),
});

// ---- a tiny selector engine: compounds of tag, #id, .class, [attr], [attr=value], joined
// by commas (enough for the selectors in the tests).
const compound = /^([a-z0-9]+)?((?:#[\w-]+|\.[\w-]+|\[[\w-]+(?:=[^\]]+)?\])*)$/i;
export const matches = (e, sel) =>
  sel.split(",").some((part) => {
    const m = compound.exec(part.trim());
    if (!m) throw new SyntaxError(`bad selector ${part}`);
    if (m[1] && e.tagName != m[1].toUpperCase()) return false;
    for (const t of m[2].match(/#[\w-]+|\.[\w-]+|\[[^\]]+\]/g) || []) {
      if (t[0] == "#" && e.getAttribute("id") != t.slice(1)) return false;
      if (t[0] == "." && !(e.getAttribute("class") || "").split(" ").includes(t.slice(1)))
        return false;
      if (t[0] == "[") {
        const [k, v] = t.slice(1, -1).split("=");
        const have = e.getAttribute(k);
        if (have == null || (v != null && have != v.replace(/^["']|["']$/g, ""))) return false;
      }
    }
    return true;
  });

export class El {
  constructor(tag, attrs = {}, text = "", parent = null) {
    this.tagName = tag.toUpperCase();
    if (this.tagName == "SCRIPT") this.text = text; // as a browser's script element
    this.attrs = { ...attrs };
    this.textContent = text;
    this.parent = parent;
    this.children = [];
    if (parent) parent.children.push(this);
  }
  getAttribute(n) {
    return n in this.attrs ? String(this.attrs[n]) : null;
  }
  matches(sel) {
    return matches(this, sel);
  }
  closest(sel) {
    for (let e = this; e; e = e.parent) if (e.matches(sel)) return e;
    return null;
  }
  descendants() {
    return this.children.flatMap((c) => [c, ...c.descendants()]);
  }
  querySelectorAll(sel) {
    return this.descendants().filter((e) => e.matches(sel));
  }
}

// A link with the URL properties HTMLAnchorElement has.
export const link = (href, attrs = {}, base = "https://shop.example/") => {
  const e = new El("a", { href, ...attrs }, attrs.text || "link");
  const u = new URL(href, base);
  Object.assign(e, {
    href: u.href,
    host: u.host,
    pathname: u.pathname,
    protocol: u.protocol,
  });
  return e;
};

// main.js boots this long after the window's load event.
export const BOOT_DELAY = 300;

// A manual clock for setTimeout/setInterval; advance() runs what is due, in order, letting
// promises settle in between.
export const tick = () => new Promise((r) => setImmediate(r));
export function clock() {
  let now = 0,
    seq = 0;
  const timers = new Map();
  // Run the earliest timer due by end, if any: true when one ran.
  const runNext = (end) => {
    let next;
    for (const [id, t] of timers) if (t.at <= end && (!next || t.at < next[1].at)) next = [id, t];
    if (!next) return false;
    const [id, t] = next;
    now = t.at;
    if (t.every) t.at += t.every;
    else timers.delete(id);
    t.f();
    return true;
  };
  return {
    timers,
    setTimeout(f, ms) {
      timers.set(++seq, { f, at: now + (+ms || 0) });
      return seq;
    },
    setInterval(f, ms) {
      timers.set(++seq, { f, at: now + Math.max(1, +ms || 0), every: Math.max(1, +ms || 0) });
      return seq;
    },
    // The synchronous form: run what is due within ms, without letting promises settle.
    due(ms) {
      const end = now + ms;
      while (runNext(end));
      now = end;
    },
    clearTimeout: (id) => timers.delete(id),
    clearInterval: (id) => timers.delete(id),
    async advance(ms) {
      const end = now + ms;
      while (runNext(end)) {
        await tick();
        await tick();
      }
      now = end;
      await tick();
    },
  };
}

// A cookie jar behind document.cookie.
function jar(initial = {}) {
  const c = { ...initial };
  const writes = [];
  const j = {
    c,
    writes,
    reads: 0,
    get cookie() {
      j.reads++;
      return Object.entries(c)
        .map(([k, v]) => `${k}=${v}`)
        .join("; ");
    },
    set cookie(s) {
      writes.push(s);
      const [kv, ...attrs] = s.split(";");
      const i = kv.indexOf("=");
      const age = attrs.map((a) => a.trim()).find((a) => /^max-age=/i.test(a));
      if (age && +age.split("=")[1] <= 0) delete c[kv.slice(0, i)];
      else c[kv.slice(0, i)] = kv.slice(i + 1);
    },
  };
  return j;
}

// A storage that counts every access (storage.n): the first one of a page is the slow one.
const counted = (init, n = { n: 0 }) =>
  new Proxy({ ...init }, {
    get: (o, k) => (k == "n" ? n.n : (n.n++, o[k])),
    set: (o, k, v) => (n.n++, (o[k] = v), true),
    deleteProperty: (o, k) => (n.n++, delete o[k]),
  });

// fetch answers: a status number, "offline" (rejects), or a function of the request.
export function browser({
  url = "https://shop.example/",
  cookies = {},
  gpc = false,
  nonce = "n0nce",
  readyState = "complete",
  referrer = "https://www.search.example/",
  title = "Shop",
  local = {},
  session = {},
  fetchStatus = 200,
  beacon = true,
  randomUUID = true,
  before = "",
  engineSrc = null,
  engineMode = "sync",
  decideMode = "sync",
} = {}) {
  const t = clock();
  const listeners = {};
  const addEventListener = (target) => (type, f) => (listeners[`${target}:${type}`] ||= []).push(f);
  const c = jar(cookies);
  const loc = new URL(url);
  const location = {
    get href() {
      return loc.href;
    },
    get host() {
      return loc.host;
    },
    get hostname() {
      return loc.hostname;
    },
    get pathname() {
      return loc.pathname;
    },
    get search() {
      return loc.search;
    },
    get hash() {
      return loc.hash;
    },
    get protocol() {
      return loc.protocol;
    },
    toString() {
      return loc.href;
    },
  };
  const net = { fetches: [], beacons: [], images: [], scripts: [], html: [], engine: [] };
  const body = new El("body");
  const head = new El("head");
  const observers = [];
  const mutationObservers = []; // a test delivers records itself: mo.cb([{addedNodes: [el]}])
  const w = {
    ...t,
    net,
    listeners,
    body,
    observers,
    mutationObservers,
    jar: c,
    URL,
    URLSearchParams,
    Promise,
    console,
    crypto: randomUUID
      ? crypto
      : { getRandomValues: (a) => crypto.getRandomValues(a) },
    localStorage: counted(local),
    sessionStorage: counted(session),
    screen: { width: 1280, height: 800 },
    innerHeight: 800,
    scrollY: 0,
    location,
    navigator: {
      language: "de-DE",
      globalPrivacyControl: gpc || undefined,
      sendBeacon(u, b) {
        if (!beacon) return false;
        net.beacons.push({ url: String(u), body: JSON.parse(b) });
        return true;
      },
    },
    history: {
      pushState(s, _, u) {
        if (u) loc.href = new URL(u, loc).href;
      },
      replaceState(s, _, u) {
        if (u) loc.href = new URL(u, loc).href;
      },
    },
    fetch(u, o) {
      const req = { url: String(u), opts: o, body: JSON.parse(o.body) };
      net.fetches.push(req);
      const s = typeof fetchStatus == "function" ? fetchStatus(req) : fetchStatus;
      return s == "offline" ? Promise.reject(new TypeError("offline")) : Promise.resolve({ status: s });
    },
    Image: class {
      set src(v) {
        net.images.push(v);
      }
    },
    IntersectionObserver: class {
      constructor(cb, opts) {
        this.cb = cb;
        this.opts = opts;
        this.els = new Set();
        observers.push(this);
      }
      observe(e) {
        this.els.add(e);
      }
      unobserve(e) {
        this.els.delete(e);
      }
      disconnect() {
        this.els.clear();
      }
    },
    MutationObserver: class {
      constructor(cb) {
        this.cb = cb;
        mutationObservers.push(this);
      }
      observe(target, opts) {
        Object.assign(this, { target, opts });
      }
    },
    addEventListener: addEventListener("window"),
  };
  w.window = w;
  w.document = {
    get cookie() {
      return c.cookie;
    },
    set cookie(v) {
      c.cookie = v;
    },
    currentScript: { text: "", nonce, src: "https://collect.shop.example/t/demo.js" },
    referrer,
    title,
    readyState,
    hidden: false,
    body,
    head,
    documentElement: { scrollHeight: 4000 },
    addEventListener: addEventListener("document"),
    createElement(tag) {
      const e = new El(tag);
      return e;
    },
    querySelector(sel) {
      return body.descendants().find((e) => e.matches(sel)) || null;
    },
    querySelectorAll(sel) {
      return body.descendants().filter((e) => e.matches(sel));
    },
    createRange: () => ({
      createContextualFragment(html) {
        const f = new El("fragment", {}, html);
        f.html = html;
        f.querySelectorAll = (sel) => f.descendants().filter((e) => e.matches(sel));
        if (/<script/.test(html)) new El("script", {}, "", f);
        return f;
      },
    }),
  };
  // The engine (/t/{site}/tm.js) runs when inserted ("sync"), or when the test calls
  // b.arrive() ("manual"): a network answer that takes its time. Other scripts are recorded.
  const pending = [];
  head.appendChild = (e) => {
    if (/\/decide\.js\?/.test(String(e.src))) {
      // decide.js: a static file, run when inserted (or decideMode "never": blocked).
      net.scripts.push({ src: String(e.src), nonce: e.nonce, async: e.async });
      if (decideMode == "sync") runAs(e, DECIDE);
    } else if (/\/tm\.js\?/.test(String(e.src))) {
      net.engine.push({ src: String(e.src), nonce: e.nonce, async: e.async });
      pending.push(() => engineSrc && runAs(e, engineSrc));
      if (engineMode == "sync") pending.shift()();
    } else net.scripts.push({ src: String(e.src), nonce: e.nonce, async: e.async });
    return e;
  };
  body.appendChild = (f) => {
    net.html.push({ html: f.html, nonces: f.querySelectorAll("script").map((s) => s.nonce) });
    return f;
  };
  const ctx = vm.createContext(w);
  const run = (code) => vm.runInContext(code, ctx);
  // document.currentScript is the inserted element while it runs, as in a browser.
  const runAs = (e, code, tag = w.document.currentScript) => {
    w.document.currentScript = e;
    try {
      return run(code);
    } finally {
      w.document.currentScript = tag;
    }
  };
  // fire a listener registered by the tag: fire("window:load"), fire("document:click", ev)
  // The tag boots BOOT_DELAY ms after the window's load: "window:load" includes that wait.
  const fire = (key, ev = {}) => (
    (listeners[key] || []).forEach((f) => f(ev)), key == "window:load" && t.due(BOOT_DELAY)
  );
  if (before) run(before);
  const arrive = () => pending.length && pending.shift()();
  return { w, ctx, run, fire, net, clock: t, jar: c, listeners, body, arrive };
}

// Load the built tag with a container in its served form (compacted here as the collector
// does), or the bare placeholder when config is null.
export function load(config, opts = {}) {
  const cfg = config && compact(config);
  const b = browser({
    ...opts,
    engineSrc: cfg && ENGINE.replace('"__TAGWERK_CONFIG__"', JSON.stringify(cfg.engine)),
  });
  let src = cfg && cfg.bundle == "tag.basic.js" ? TAG_BASIC : TAG;
  if (cfg) src = src.replace('"__TAGWERK_CONFIG__"', JSON.stringify(cfg.core));
  b.run(src);
  b.w.document.readyState == "complete" && b.clock.due(BOOT_DELAY); // the page had loaded
  return b;
}

// All events sent so far (fetch and beacon), in order.
export const sent = (b) =>
  [...b.net.fetches.map((f) => f.body), ...b.net.beacons.filter((x) => x.body.events).map((x) => x.body)]
    .flatMap((x) => x.events);
