// The consent banner: its pure parts (src/banner.js exports), then the built dist/banner.js
// in a small fake DOM (test/banner-dom.mjs) against a fake tag, and against the real tag.
import assert from "node:assert/strict";
import { test } from "node:test";
import { bundle } from "../build.mjs";
import { EN, checked, choices, gpcNote, lang, next, purposes } from "../src/banner.js";
import { Doc, run, settle, shadows } from "./banner-dom.mjs";
import { container, load } from "./fake.mjs";

const BANNER = await bundle("banner.js");
const CSS = await bundle("banner.css");

const P = [
  { id: "necessary", required: true, default: false },
  { id: "analytics", required: false, default: false },
  { id: "personalization", required: false, default: true },
  { id: "marketing", required: false, default: false },
];

// ---- the pure parts --------------------------------------------------------------------

test("language: the page's, else the browser's, else English; only well-formed tags", () => {
  assert.equal(lang("de-DE", "en-US"), "de-DE");
  assert.equal(lang("", "fr"), "fr");
  assert.equal(lang("de-CH-1996", "fr"), "de-CH-1996");
  assert.equal(lang(undefined, "pt-BR"), "pt-BR");
  assert.equal(lang("de_DE", "<x>"), "en");
  assert.equal(lang("", ""), "en");
  assert.equal(lang("de-", "x"), "en"); // one letter: not a language the collector has
  assert.equal(lang("toolonglanguage", undefined), "en");
});

test("choices: accept all, reject all, save (explicit for every purpose but required ones)", () => {
  assert.equal(choices("accept", P, {}), "all");
  assert.equal(choices("reject", P, { analytics: true }), "none");
  assert.deepEqual(choices("save", P, { necessary: false, analytics: true, marketing: 0 }), {
    analytics: true,
    personalization: false,
    marketing: false,
  });
  assert.deepEqual(choices("save", P, { marketing: true, personalization: true, analytics: true }), {
    analytics: true,
    personalization: true,
    marketing: true,
  });
});

test("the GPC note: GPC on and a marketing purpose to keep off", () => {
  assert.equal(gpcNote({ gpc: true }, P), true);
  assert.equal(gpcNote({ gpc: false }, P), false);
  assert.equal(gpcNote({}, P), false);
  assert.equal(gpcNote({ gpc: true }, P.filter((p) => p.id != "marketing")), false);
  assert.equal(gpcNote({ gpc: true }, [{ id: "marketing", required: true }]), false);
});

test("focus trap: Tab and Shift+Tab cycle", () => {
  assert.equal(next(-1, 3, false), 0); // from the dialog itself: the first
  assert.equal(next(-1, 3, true), 2); // ... or the last
  assert.equal(next(0, 3, false), 1);
  assert.equal(next(2, 3, false), 0); // wraps forward
  assert.equal(next(0, 3, true), 2); // wraps back
  assert.equal(next(1, 3, true), 0);
  assert.equal(next(0, 1, false), 0);
  assert.equal(next(0, 1, true), 0);
  assert.equal(next(6, 7, false), 0);
});

test("checkboxes: required on; others off before a decision (none pre-ticked), else current", () => {
  const granted = { necessary: true, analytics: true, personalization: true, marketing: false };
  assert.equal(checked({ decided: false, granted }, P[0]), true);
  assert.equal(checked({ decided: false, granted }, P[2]), false); // default true: not pre-ticked
  assert.equal(checked({ decided: true, granted }, P[1]), true);
  assert.equal(checked({ decided: true, granted }, P[3]), false);
  assert.equal(checked({ decided: true }, P[1]), false);
});

test("purposes: the tag's list and order, with the texts' names", () => {
  const x = {
    purposes: [
      { id: "marketing", name: "Werbung", description: "Anzeigen" },
      { id: "necessary", name: "Notwendig", description: "" },
      { id: "gone", name: "Gone" },
    ],
  };
  const want = [
    { id: "necessary", required: true, name: "Notwendig", description: "" },
    { id: "analytics", required: false, name: "analytics", description: "" },
    { id: "personalization", required: false, name: "personalization", description: "" },
    { id: "marketing", required: false, name: "Werbung", description: "Anzeigen" },
  ];
  assert.deepEqual(purposes({ purposes: P }, x), want);
  assert.deepEqual(purposes({ purposes: P.slice(0, 1) }, {})[0].name, "necessary");
});

// ---- the built banner in a fake DOM against a fake tag ---------------------------------

const TEXTS = {
  lang: "de",
  title: "Ihre Datenschutz-Einstellungen",
  body: "Wir verwenden Cookies.\nAblehnen hat keine Nachteile.",
  accept_all: "Alle akzeptieren",
  reject_all: "Alle ablehnen",
  settings: "Einstellungen",
  save: "Auswahl speichern",
  gpc: "GPC: Marketing bleibt aus.",
  purposes: [
    { id: "necessary", required: true, name: "Notwendig", description: "Immer an." },
    { id: "analytics", required: false, name: "Statistik", description: "Zählt Besuche." },
    { id: "personalization", required: false, name: "Personalisierung", description: "Passt an." },
    { id: "marketing", required: false, name: "Marketing", description: "Werbung." },
  ],
};

const STATE = {
  site: "demo",
  endpoint: "https://collect.shop.example/collect",
  purposes: P,
  granted: { necessary: true, analytics: false, personalization: true, marketing: false },
  decided: false,
  gpc: false,
  nonce: "n0nce",
};

// Start the banner. texts: an object (200), a status number, "offline" or "hang".
async function banner({ state = {}, texts = TEXTS, pageLang = "de", css = "load", tagwerk } = {}) {
  const doc = new Doc({
    lang: pageLang,
    script: { src: "https://collect.shop.example/t/banner.js?v=b1", nonce: "n0nce" },
  });
  let S = { ...STATE, ...state };
  const calls = [];
  const fetches = [];
  const timers = [];
  const t = {
    doc,
    calls,
    fetches,
    timers,
    opener: null,
    set state(v) {
      S = { ...S, ...v };
    },
  };
  const globals = {
    document: doc,
    navigator: { language: "en-US" },
    setTimeout: (f, ms) => timers.push({ f, ms }),
    fetch: (u) => {
      fetches.push(String(u));
      if (texts == "offline") return Promise.reject(new TypeError("offline"));
      if (texts == "hang") return new Promise(() => {});
      if (typeof texts == "number") return Promise.resolve({ ok: false, status: texts });
      return Promise.resolve({ ok: true, status: 200, json: () => Promise.resolve(texts) });
    },
    tagwerk:
      tagwerk ||
      ((...a) => {
        calls.push(a);
        if (a[0] == "consent" && a[1] == "state") return structuredClone(S);
        if (a[0] == "consent" && a[1] == "banner") t.opener = a[2];
      }),
  };
  t.ctx = run(BANNER, globals);
  t.root = shadows(doc)[0];
  t.link = t.root && t.root.find((e) => e.tagName == "LINK");
  if (t.link && css) t.link.fire(css);
  await settle();
  return t;
}

const dialog = (t) => t.root.find((e) => e.getAttribute("role") == "dialog");
const byText = (t, s) => t.root.find((e) => e.tagName == "BUTTON" && e.textContent == s);
const boxes = (t) => t.root.all().filter((e) => e.tagName == "INPUT");
// (JSON: the banner's objects come from another realm, the vm context)
const updates = (t) => JSON.parse(JSON.stringify(t.calls.filter((a) => a[1] == "update")));

test("opens itself: stylesheet with the nonce, texts in the page's language, opener", async () => {
  const t = await banner();
  assert.equal(t.link.getAttribute("rel"), "stylesheet");
  assert.equal(t.link.getAttribute("nonce"), "n0nce");
  assert.equal(t.link.getAttribute("href"), "https://collect.shop.example/t/banner.css?v=b1");
  assert.deepEqual(t.fetches, ["https://collect.shop.example/t/demo/consent.json?lang=de"]);
  assert.equal(typeof t.opener, "function");
  const d = dialog(t);
  assert.ok(d, "the dialog is shown");
  assert.equal(d.getAttribute("aria-modal"), "true");
  assert.equal(d.getAttribute("tabindex"), "-1");
  const title = t.root.find((e) => e.id == d.getAttribute("aria-labelledby"));
  assert.equal(title.tagName, "H2");
  assert.equal(title.textContent, TEXTS.title);
  const desc = t.root.find((e) => e.id == d.getAttribute("aria-describedby").split(" ")[0]);
  assert.equal(desc.textContent, TEXTS.body);
  // focus moved into the dialog
  assert.equal(t.root.activeElement, d);
  assert.equal(t.doc.activeElement, t.root.host);
  // the host hangs off <html>, not <body> (pages that replace <body> keep it)
  assert.equal(t.root.host.parentNode, t.doc.documentElement);
});

test("Accept all and Reject all are equally prominent real buttons", async () => {
  const t = await banner();
  const a = byText(t, "Alle akzeptieren");
  const r = byText(t, "Alle ablehnen");
  assert.equal(a.getAttribute("type"), "button");
  assert.equal(a.className, "tw-btn");
  assert.equal(r.className, a.className);
  assert.equal(a.parentNode, r.parentNode); // side by side
  // no inline styles anywhere (strict CSP)
  for (const e of t.root.all()) {
    assert.equal(e.getAttribute("style"), null);
    assert.notEqual(e.tagName, "STYLE");
  }
});

test("accept all -> update('all', 'banner'), closes, focus goes back", async () => {
  const t = await banner();
  byText(t, "Alle akzeptieren").click();
  assert.deepEqual(updates(t), [["consent", "update", "all", "banner"]]);
  assert.equal(dialog(t), null);
});

test("reject all -> update('none', 'banner')", async () => {
  const t = await banner();
  byText(t, "Alle ablehnen").click();
  assert.deepEqual(updates(t), [["consent", "update", "none", "banner"]]);
  assert.equal(dialog(t), null);
});

test("settings: per-purpose boxes with labels and descriptions; save sends each choice", async () => {
  const t = await banner();
  const set = byText(t, "Einstellungen");
  const panel = t.root.find((e) => e.id == set.getAttribute("aria-controls"));
  assert.equal(panel.hidden, true);
  assert.equal(set.getAttribute("aria-expanded"), "false");
  set.click();
  assert.equal(panel.hidden, false);
  assert.equal(set.getAttribute("aria-expanded"), "true");
  const b = boxes(t);
  assert.equal(b.length, 4);
  assert.deepEqual(
    b.map((x) => [x.getAttribute("type"), x.checked, x.disabled]),
    [
      ["checkbox", true, true], // necessary: checked and disabled
      ["checkbox", false, false],
      ["checkbox", false, false], // personalization is granted by default, but not pre-ticked
      ["checkbox", false, false],
    ]
  );
  // each box sits in a <label> with its name, and is described by its description
  assert.equal(b[1].parentNode.tagName, "LABEL");
  assert.equal(b[1].parentNode.textContent, "Statistik");
  assert.equal(t.root.find((e) => e.id == b[1].getAttribute("aria-describedby")).textContent, "Zählt Besuche.");
  // focus went to the first box one can change
  assert.equal(t.root.activeElement, b[1]);
  b[1].checked = true;
  b[1].fire("change");
  byText(t, "Auswahl speichern").click();
  assert.deepEqual(updates(t), [
    ["consent", "update", { analytics: true, personalization: false, marketing: false }, "banner"],
  ]);
  assert.equal(dialog(t), null);
});

test("the focus is trapped: Tab and Shift+Tab cycle through the dialog's controls", async () => {
  const t = await banner();
  const [a, r, s] = ["Alle akzeptieren", "Alle ablehnen", "Einstellungen"].map((x) => byText(t, x));
  const tab = (shift) => {
    const ev = dialog(t).fire("keydown", { key: "Tab", shiftKey: shift });
    assert.equal(ev.defaultPrevented, true);
  };
  tab(false);
  assert.equal(t.root.activeElement, a);
  tab(false);
  tab(false);
  assert.equal(t.root.activeElement, s);
  tab(false);
  assert.equal(t.root.activeElement, a); // wraps
  tab(true);
  assert.equal(t.root.activeElement, s);
  s.click(); // the panel opens: its boxes and Save join the cycle
  const save = byText(t, "Auswahl speichern");
  save.focus();
  tab(false);
  assert.equal(t.root.activeElement, a);
  tab(true);
  assert.equal(t.root.activeElement, save);
  tab(true);
  assert.equal(t.root.activeElement, boxes(t)[3]);
  assert.ok(r);
});

test("focus that leaves for the page comes back into the dialog", async () => {
  const t = await banner();
  const outside = t.doc.createElement("a");
  t.doc.body.append(outside);
  outside.focus();
  assert.equal(t.root.activeElement, dialog(t));
});

test("a click on the backdrop keeps the focus in the dialog", async () => {
  const t = await banner();
  const backdrop = dialog(t).parentNode;
  assert.equal(backdrop.fire("mousedown").defaultPrevented, true);
  assert.equal(dialog(t).fire("mousedown").defaultPrevented, false);
});

test("Escape never decides: it does nothing without a decision", async () => {
  const t = await banner();
  const ev = dialog(t).fire("keydown", { key: "Escape" });
  assert.ok(dialog(t));
  assert.equal(updates(t).length, 0);
  assert.equal(ev.defaultPrevented, false);
});

test("reopened (consent show): the current state, settings open; Escape closes", async () => {
  const t = await banner();
  byText(t, "Alle ablehnen").click();
  t.state = {
    decided: true,
    granted: { necessary: true, analytics: true, personalization: false, marketing: true },
  };
  t.opener();
  await settle();
  assert.ok(dialog(t));
  assert.equal(t.fetches.length, 1); // the texts are fetched once
  assert.deepEqual(boxes(t).map((b) => b.checked), [true, true, false, true]);
  const set = byText(t, "Einstellungen");
  assert.equal(set.getAttribute("aria-expanded"), "true");
  dialog(t).fire("keydown", { key: "Escape" });
  assert.equal(dialog(t), null);
  assert.equal(updates(t).length, 1); // only the earlier reject
  // opening twice shows one dialog
  t.opener();
  t.opener();
  await settle();
  assert.equal(t.root.all().filter((e) => e.getAttribute("role") == "dialog").length, 1);
});

test("GPC: a short note, part of the dialog's description", async () => {
  const t = await banner({ state: { gpc: true } });
  const note = t.root.find((e) => e.id == "tw-g");
  assert.equal(note.textContent, "GPC: Marketing bleibt aus.");
  assert.deepEqual(dialog(t).getAttribute("aria-describedby").split(" "), ["tw-x", "tw-g"]);
  const u = await banner({ state: { gpc: false } });
  assert.equal(u.root.find((e) => e.id == "tw-g"), null);
});

for (const texts of ["offline", 404, { error: "nope" }]) {
  test(`texts cannot be fetched (${JSON.stringify(texts)}): the built-in English texts`, async () => {
    const t = await banner({ texts, state: { gpc: true } });
    assert.equal(t.root.find((e) => e.tagName == "H2").textContent, EN.title);
    assert.ok(byText(t, "Accept all") && byText(t, "Reject all") && byText(t, "Settings"));
    assert.equal(t.root.find((e) => e.id == "tw-g").textContent, EN.gpc);
    byText(t, "Settings").click();
    assert.equal(boxes(t)[1].parentNode.textContent, "analytics"); // the id as the name
    byText(t, "Save choices").click();
    assert.deepEqual(updates(t)[0][2], { analytics: false, personalization: false, marketing: false });
  });
}

test("texts that hang: the fallback after 5 s", async () => {
  const t = await banner({ texts: "hang" });
  assert.equal(dialog(t), null);
  t.timers.filter((x) => x.ms == 5e3).forEach((x) => x.f());
  await settle();
  assert.equal(t.root.find((e) => e.tagName == "H2").textContent, EN.title);
});

test("the dialog waits for its stylesheet (loaded or failed)", async () => {
  const t = await banner({ css: null });
  assert.equal(dialog(t), null);
  t.link.fire("error");
  await settle();
  assert.ok(dialog(t));
});

test("the language: <html lang>, else navigator.language; a malformed one is not sent", async () => {
  assert.match((await banner({ pageLang: "" })).fetches[0], /lang=en-US$/);
  assert.match((await banner({ pageLang: "de_AT" })).fetches[0], /lang=en-US$/);
  assert.match((await banner({ pageLang: "fr-CA" })).fetches[0], /lang=fr-CA$/);
});

test("the stylesheet is banner.css next to the banner's own script; the state's purposes", async () => {
  const t = await banner({ state: { purposes: P.slice(0, 2) } });
  assert.equal(t.link.getAttribute("href"), "https://collect.shop.example/t/banner.css?v=b1");
  byText(t, "Einstellungen").click();
  assert.equal(boxes(t).length, 2);
});

test("never throws into the page", async () => {
  // no tag, a tag that throws, a state that is not one
  await banner({ tagwerk: null });
  await banner({
    tagwerk: () => {
      throw new Error("x");
    },
  });
  const t = await banner({ tagwerk: (...a) => (a[1] == "state" ? { site: "demo" } : undefined) });
  assert.ok(t.root); // the host was made before the state turned out useless
  // an update that throws still closes the dialog? It must not throw out of the click.
  const u = await banner({
    tagwerk: (...a) => {
      if (a[1] == "state") return structuredClone(STATE);
      if (a[1] == "update") throw new Error("boom");
    },
  });
  byText(u, "Alle akzeptieren").click();
});

test("the bundle is ASCII (right under any page charset)", () => {
  assert.match(BANNER, /^[\x00-\x7f]*$/);
  assert.match(CSS, /^[\x00-\x7f]*$/);
});

test("the stylesheet: no @import, relative units, reduced motion, focus styles", () => {
  assert.doesNotMatch(CSS, /@import|url\(/);
  assert.match(CSS, /prefers-reduced-motion:\s*no-preference/);
  assert.match(CSS, /:focus-visible/);
  assert.match(CSS, /max-height:calc\(100% - 1em\)/);
  assert.match(CSS, /overflow:auto/);
  assert.match(CSS, /font:medium/);
});

// ---- the built banner against the real tag ---------------------------------------------

test("with the real tag: loaded at page load, state, update -> cookie and /consent", async () => {
  const b = load(container(), { gpc: true });
  const s = b.net.scripts.find((x) => /banner\.js/.test(x.src));
  assert.ok(s, "the tag loads the banner");
  const doc = new Doc({ lang: "de", script: { src: s.src, nonce: s.nonce } });
  const d = b.w.document;
  Object.assign(d, { createElement: (n) => doc.createElement(n), documentElement: doc.documentElement });
  Object.defineProperty(d, "activeElement", { get: () => doc.activeElement });
  d.currentScript = doc.currentScript;
  b.w.fetch = (u) => {
    b.net.texts = String(u);
    return Promise.resolve({ ok: true, json: () => Promise.resolve(TEXTS) });
  };
  b.run(BANNER);
  const root = shadows(doc)[0];
  root.find((e) => e.tagName == "LINK").fire("load");
  await settle();
  assert.equal(b.net.texts, "https://collect.shop.example/t/demo/consent.json?lang=de");
  const t = { root, calls: [] };
  assert.ok(dialog(t));
  assert.ok(root.find((e) => e.id == "tw-g"), "GPC note");
  byText(t, "Einstellungen").click();
  assert.equal(boxes(t).length, 4);
  byText(t, "Alle akzeptieren").click();
  assert.equal(dialog(t), null);
  assert.match(b.jar.c.tw_consent, /\.necessary,analytics,personalization\.\d+\.gpc$/);
  const posted = b.net.beacons.find((x) => x.url.endsWith("/consent"));
  assert.equal(posted.body.how, "gpc");
  // "Cookie settings" link: tagwerk('consent', 'show') reopens it, with the current state
  b.run("tagwerk('consent', 'show')");
  await settle();
  assert.ok(dialog(t));
  assert.deepEqual(boxes(t).map((x) => x.checked), [true, true, true, false]);
  assert.equal(b.net.scripts.filter((x) => /banner\.js/.test(x.src)).length, 1); // not loaded again
  boxes(t)[3].checked = true;
  boxes(t)[3].fire("change");
  byText(t, "Auswahl speichern").click();
  assert.match(b.jar.c.tw_consent, /\.necessary,analytics,personalization,marketing\.\d+\.banner$/);
});
