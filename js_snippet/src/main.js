// The core of the tag at run time (DESIGN.md §2, §3): the consent state, events, page views,
// commands, auto-tracking, dataLayer, sending; the tag-manager engine (tags, triggers,
// variables) is src/engine.js, a separate file loaded only when it has something to do
// (below), and making consent decisions is src/decide.js's, loaded on first use (xc).
// C is the compact config the collector inlines (collector/tagjs.py `core_config`): short
// keys, defaults left out, asset URLs as one version hash. A broken one makes start() throw,
// which tag.js catches: the page is never affected.
//
// Main-thread cost: the first access of a page to document.cookie or the storages is a
// synchronous call to the browser process (for the storages a permission check and the
// storage's load too): milliseconds while the page loads, about one afterwards. So start()
// only reads the nonce, installs a queueing `tagwerk` and the listeners; boot() reads the
// cookies once (tw_consent, the session tw_s, the stored-queue flag tw_q), creates the
// first page view and replays what was queued, 300 ms after the window's load event (after
// start if the page had loaded; 4 s after start at the latest), or earlier when something
// needs it: a click, a submit, a scroll, a route change, the page being hidden, or
// tagwerk('consent', 'state'). Why 300 ms: right at load the browser process is still busy
// with the load, and the synchronous cookie read waits for it (A/B, 20 loads each: median
// 7.9 -> 6.2 ms main-thread wall time, p90 15.4 -> 8.0; requestIdleCallback came too early
// to help). The first page view keeps the time and URL of the tag's start.
// A normal visit touches neither storage: sessionStorage only when tw_s says a user id is
// kept there, localStorage only when tw_q says a queue was stored (send.js).
//
// The session (with analytics only): the first-party session cookie tw_s (no Max-Age, so it
// ends with the browser session, shared by the site's tabs, as GA4's), value
// "<session id>.<minute of last activity>[.u]", written when it changes (at most once a minute
// per page), a new id after session_timeout_minutes idle; ".u": the customer id (identify) is
// kept in sessionStorage tw_u, not in a cookie the browser sends to the shop's server with
// every request. Removed with analytics withdrawn and on reset.
//
// Order at boot: consent from the tw_consent cookie (or the defaults) -> debug
// (?tagwerk_debug=1) -> dataLayer so far (gtag consent) -> `consent` commands queued in
// tagwerk.q -> the page view -> dataLayer so far (events) -> the other queued commands.
// So the first page view carries the consent a CMP gave before boot (decide.js is loaded at
// start when the page has such calls, and the load event waits for it), and events pushed
// before boot come after the page view, as with GTM.
//
// The engine: a signal (what happened: {t: trigger type, el, p, e, id}) goes to the engine
// when it is loaded; until then it is logged with the consent state of its time and the
// dataLayer's length, for the current page. The engine is loaded (once, async, with the
// nonce) when a purpose some tag needs is granted, when debugging, or at boot when the
// container has timer or element_visible triggers; it replays the log first, so it fires
// and holds what it would have fired and held had it been there from the start.
import { cookie, cset, on, script, T, uuid } from "./util.js";
import { list, read } from "./consent.js";
import { add, flush, online, persist, setup } from "./send.js";

// TW_BASIC, a constant of the build (build.mjs VARIANTS): true in tag.basic.js, which the
// collector serves for a container without automatic click events and without triggers
// other than page views, the default container (collector/tagjs.py core_bundle). It leaves
// out the click event (the element's tag and text) and the trigger signals the engine needs
// only for other triggers (click, link, download, outbound, form, scroll, history change,
// custom event): about 100 B gzipped.
/* global TW_BASIC */
export var start = (C) => {
  var w = window,
    d = document,
    L = location,
    nv = navigator,
    me = d.currentScript || {},
    N = me.nonce || "", // "" without CSP
    O = me.src || L, // paths resolve against the tag's own URL (the collector)
    A = C.a || "psodxfe", // auto-tracking switches on, one letter each (tagjs.py AUTO)
    ST = C.t || [25, 50, 75, 90],
    TH = TW_BASIC ? ST : [...ST, ...(C.k || [])], // with the percents of scroll_depth triggers
    TO = C.m || 30, // session timeout, minutes
    EP = new URL(C.e || "/collect", O),
    gpc = !!nv.globalPrivacyControl,
    ref = d.referrer, // sent with the first page view only
    // The first page view's time and URL: when the tag started (boot may come later).
    hr = () => L.href.slice(0, 4096),
    t0 = { ts: Date.now(), url: hr() },
    mn = () => (Date.now() / 6e4) | 0, // minutes
    q = (w.tagwerk || {}).q || [],
    lg = [], // the signals of this page while the engine is not loaded
    b, // booted
    cid, // the tw_consent cookie's consent id
    G, // purpose -> granted
    D, // a valid decision exists
    U, // user id (kept only with analytics)
    S = [], // the session, from tw_s: [id, minute of last activity, "u" if tw_u holds U]
    SV, // the tw_s value last read or written
    W, // window.__tagwerk_debug while debugging
    X, // the consent module's command function, once loaded (decide.js)
    xl, // decide.js inserted
    xq = [], // consent commands waiting for it
    dl, // debug script inserted
    E, // the engine's signal function, once loaded
    el, // engine script inserted
    last, // URL of the last page view
    SD, // scroll thresholds reached on this page
    DL,
    // Debug records (README "Debug overlay"): pushed, one by one, to window.__tagwerk_debug.
    dbg = (r) => W && W.push(r),
    // One of the tag's files (/t/<n>, this version), async, with the nonce (the others load
    // their own scripts: the engine a tag's, decide.js the banner).
    load = (n) => script(new URL("/t/" + n + "?v=" + C.v, O), N),
    // One event: the common fields, the session (only with analytics), then the queue.
    ev = (o, s, t) => {
      o = {
        event_id: uuid(),
        ts: Date.now(), // epoch ms (the collector takes ISO 8601 or that): no Date object
        consent: list(G),
        url: hr(),
        title: d.title.slice(0, 1024),
        screen: screen.width + "x" + screen.height,
        ...o,
      };
      if (G.analytics) {
        // Idle too long here: another tab may have kept the session alive (one more read).
        live((t = mn())) || (S[1] && live(t, (S = cookie("tw_s").split(".")))) || (S = [uuid(), t]);
        S[1] = t;
        U && ((S[2] = "u"), (o.user_id = U));
        (s = S.join(".")) != SV && cset("tw_s", (SV = s), C.d);
        o.session_id = S[0];
      }
      dbg({ kind: "event", payload: o });
      add(o);
    },
    live = (t, s = S) => s[1] && t - s[1] <= TO,
    // Forget the session and the customer id (their cookie and storage, if any).
    drop = () => {
      SV && cset("tw_s", "", C.d, 0);
      (U || S[2]) && T(() => delete sessionStorage.tw_u)();
      U = SV = void 0;
      S = [];
    },
    page = (x) => {
      ev({ event: "page_view", referrer: ref, ...x });
      ref = void 0;
    },
    sig = (s) => (E ? E(s) : C.n && lg.push([s, { ...G }, DL.length])),
    // The engine, when it has something to do (C.n: the purposes tags need; C.w: timers or
    // visibility to watch from the start).
    need = () =>
      C.n &&
      (C.w || W || C.n.split(",").some((p) => G[p])) &&
      (el = el || load(C.s + "/tm.js")),
    // Auto-tracking: the event when its switch (a letter of A) is on; the trigger signal (not
    // in the basic build, which the collector serves only to containers without such triggers).
    au = (k, t, props, el, p) => {
      k && A.includes(k) && ev({ event: t, props });
      TW_BASIC || sig({ t, el, p });
    },
    // Consent commands and gtag consent entries go to decide.js, loaded on first use (or at
    // start, when the page has some already), and wait for it in order.
    xload = () => xl || (xl = load("decide.js")),
    xc = (a) => (X ? X(a) : void (xq.push(a), xload())),
    cmd = (a, c, x, y) => (
      (c = a[0]),
      (x = a[1]),
      (y = a[2]),
      c == "track"
        ? x && (ev({ event: x, props: y }), TW_BASIC || sig({ t: "custom_event", e: x }))
        : c == "page"
          ? page()
          : c == "identify"
            ? x != null &&
              (G.analytics && x != U && ((U = x), T(() => (sessionStorage.tw_u = x))()),
              ev({ event: c, type: c, user_id: x, props: y }))
            : c == "reset"
              ? // Sign-out: forget the customer and start a new session (a shared device).
                drop()
              : c == "debug"
                ? (W = x && (w.__tagwerk_debug = w.__tagwerk_debug || [])) &&
                  ((dl = dl || load("debug.js")), need(), xload())
                : c == "tm"
                  ? // The engine registers itself: it gets what it needs and replays the log.
                    E || (E = x({ g: () => G, l: lg, dbg }))
                  : c == "cx"
                    ? // So does decide.js: it reads and sets the state through these.
                      X ||
                      ((X = T(
                        x({
                          c: C,
                          s: () => [G, D, cid],
                          // The new state (dd: a decision): held tags whose purpose is
                          // granted now fire, storage and identifiers follow analytics.
                          set: (g, dd) => (
                            (G = g), (D = dd || D), E && E(), persist(G.analytics), G.analytics || drop(), need()
                          ),
                          dbg,
                        })
                      )),
                      xq.forEach(X))
                    : c == "consent" && xc(a)
    ),
    // A dataLayer entry. m: 1 = before the first page view (consent only), 2 = after it
    // (events), undefined = a live push (everything). The engine keeps GTM's data model.
    dlp = (o, m) => {
      if (o && o[0] == "consent")
        // gtag('consent', 'default'|'update', {...}) pushes its `arguments`.
        m != 2 && xc(["gcm", o[1], o[2]]);
      else
        o &&
          m != 1 &&
          // gtag('event', name, params) pushes its `arguments`: params with items are GA4
          // e-commerce (GA4 requires items on every e-commerce event).
          (o[0] == "event" ? (o = { event: o[1], ecommerce: (o[2] || 0).items && o[2] }) : o.length == null) &&
          o.event &&
          (TW_BASIC || sig({ t: "custom_event", e: o.event }),
          // GA4 e-commerce goes as pushed: the collector maps it (collector/events.py).
          A.includes("e") && o.ecommerce && ev({ event: o.event, ecommerce: o.ecommerce }));
    },
    // A page view: the first, or a new URL after an SPA route change.
    pv = (spa, h = spa ? hr() : t0.url) => {
      if (h != last) {
        last = h;
        lg = [];
        SD = {};
        A.includes("p") && (!spa || A.includes("s")) && page(!spa && t0);
        sig({ t: "page_view" });
        TW_BASIC || spa && sig({ t: "history_change" });
      }
    },
    cm = T(cmd),
    dd = T(dlp),
    // One document.cookie read for the boot (cookieStore.getAll() was measured: in Chromium
    // its first use costs more main thread than the synchronous read, README).
    boot = () => b || ((b = 1), T(init)()),
    init = (ck = d.cookie, hist, push) => {
      [cid, G, D] = read(cookie("tw_consent", ck), C, gpc);
      S = (SV = cookie("tw_s", ck)).split(".");
      live(mn()) || (S = []);
      // The customer id only when the live session says it is kept (one storage access);
      // without analytics, a session cookie left over goes.
      G.analytics ? S[2] && T(() => (U = sessionStorage.tw_u))() : drop();
      setup(EP, C.s, G.analytics, cookie("tw_q", ck));
      DL = w.dataLayer = w.dataLayer || [];
      hist = [...DL];
      push = DL.push;
      // Each entry is in the array before it is handled (the engine's model reads it there).
      DL.push = function (...a) {
        a.forEach((o) => (push.call(DL, o), dd(o)));
        return DL.length;
      };
      L.search.includes("tagwerk_debug=1") && cm(["debug", 1]);
      hist.forEach((o) => dd(o, 1));
      q.forEach((a) => a[0] == "consent" && cm(a));
      pv();
      hist.forEach((o) => dd(o, 2));
      q.forEach((a) => a[0] != "consent" && cm(a));
      need();
    },
    // A listener that boots first: nothing that happens before boot is lost.
    ob = (t, n, f, o) => on(t, n, (e) => (boot(), f(e)), o),
    route = () => pv(1),
    // Boot 300 ms after the page has loaded (see the header); then, without a decision and a
    // CMP, ask.
    loaded = () => setTimeout(T(() => (boot(), D || xc(["consent", "show"]))), 300);

  // Until boot, calls are queued (in order); 'state' answers at once, so it boots.
  // decide.js registers at once, also before boot.
  (w.tagwerk = (...a) => (a[1] == "state" && boot(), b || a[0] == "cx" ? cm(a) : q.push(a))).x = 1; // x: running
  // Consent already on the page (a CMP's gtag defaults, queued commands): decide.js now, so
  // that it is there at boot (the load event waits for it) and the first page view has it.
  [...(w.dataLayer || []), ...q].some((o) => o && o[0] == "consent") && xload();

  ["pushState", "replaceState"].forEach((k, f) => {
    f = history[k];
    history[k] = function () {
      var r = f.apply(this, arguments);
      T(() => (boot(), route()))();
      return r;
    };
  });
  // popstate: back and forward, and every change of the hash (browsers fire it before
  // hashchange for each fragment navigation: one listener for both).
  ob(w, "popstate", route);
  ob(
    d,
    "click",
    (e, el, a) => {
      el = e.target;
      TW_BASIC || au("c", "click", { tag: el.tagName, text: el.textContent.trim().slice(0, 99) }, el);
      if ((a = el.closest("a[href]"))) {
        e = { url: a.href };
        TW_BASIC || au(0, "link_click", e, a);
        (C.x || "pdf zip csv xlsx docx mp3 mp4 dmg exe").split(" ").includes(a.pathname.split(".").pop().toLowerCase())
          ? au("d", "file_download", e, a)
          : a.host != L.host && a.protocol.startsWith("http") && au("o", "outbound_link", e, a);
      }
    },
    !0
  );
  ob(
    d,
    "submit",
    (e) => au("f", "form_submit", { id: (e = e.target).getAttribute("id"), action: e.getAttribute("action") }, e),
    !0
  );
  ob(w, "scroll", (e, p) => {
    p = ((scrollY + innerHeight) / d.documentElement.scrollHeight) * 100;
    TH.forEach(
      (t) =>
        p >= t && !SD[t] && ((SD[t] = 1), au((TW_BASIC || ST.includes(t)) && "x", "scroll_depth", { percent: t }, 0, t))
    );
  });
  ob(w, "pagehide", flush);
  ob(d, "visibilitychange", () => d.hidden && flush(1));
  on(w, "online", online);
  d.readyState == "complete" ? loaded() : (on(w, "load", loaded), setTimeout(T(boot), 4e3));
};
