// The tag at run time: wires the container (DESIGN.md §1, §2) to the page. start(C) runs once,
// synchronously while the tag's <script> executes (document.currentScript is read then).
// C is the config the collector inlines (collector/tagjs.py): a normalized container, every
// setting, list and default present, so the tag does not guard against missing parts (a
// broken one makes start() throw, which tag.js catches: the page is never affected).
//
// Order at start: consent from the tw_consent cookie (or the container defaults) -> debug
// (?tagwerk_debug=1) -> dataLayer history (model, gtag consent) -> `consent` commands queued
// in tagwerk.q -> the page view -> dataLayer history (events) -> the other queued commands.
// So the first page view carries the consent a CMP gave before the tag loaded, and events
// pushed before load come after the page view, as with GTM.
import { cookie, on, T, uuid } from "./util.js";
import { resolve } from "./vars.js";
import { select } from "./triggers.js";
import { ga4, gcm, merge } from "./datalayer.js";
import { decide, defaults, format, list, parse, record } from "./consent.js";
import { add, flush, online, persist, setup } from "./send.js";

export var start = (C) => {
  var w = window,
    d = document,
    L = location,
    nv = navigator,
    S = C.settings,
    A = S.auto,
    P = C.consent.purposes,
    AS = C.assets,
    K = C.triggers,
    ST = S.scroll_thresholds,
    TH = [...ST], // thresholds of the settings and of scroll_depth triggers
    V = {}, // variables by id
    M = {}, // the dataLayer model
    H = {}, // tags held for consent on this page: id -> [tag, trigger id]
    X = {}, // script tags inserted on this document
    N = (d.currentScript || {}).nonce || "", // "" without CSP
    EP = new URL(C.endpoint, L),
    gpc = !!nv.globalPrivacyControl,
    ref = d.referrer, // sent with the first page view only
    now = () => (Date.now() / 1e3) | 0,
    c0 = parse(cookie("tw_consent"), C, now()),
    cid = c0.i || uuid().replace(/-/g, ""), // 32 hex digits
    G = c0.g || defaults(P, gpc), // purpose -> granted
    D = !!c0.g, // a valid decision exists
    U, // user id (kept only with analytics)
    W, // window.__tagwerk_debug while debugging
    B, // the banner's opener
    bl, // banner script inserted
    dl, // debug script inserted
    last, // URL of the last page view
    SD, // scroll thresholds reached on this page
    q = (w.tagwerk || {}).q || [],
    DL = (w.dataLayer = w.dataLayer || []),
    hist = [...DL],
    push = DL.push,
    val = (i, v) => ((v = V[i] && resolve(V[i], M)) == null ? "" : "" + v),
    // Debug records (README "Debug overlay"): pushed, one by one, to window.__tagwerk_debug.
    dbg = (r) => W && W.push(r),
    load = (u, s) =>
      u &&
      (((s = d.createElement("script")).src = new URL(u, EP)),
      (s.async = 1),
      (s.nonce = N),
      d.head.appendChild(s)),
    // One event: the common fields, the session (only with analytics), then the queue.
    ev = (o, s, t) => {
      o = {
        event_id: uuid(),
        ts: new Date().toISOString(),
        consent: list(G),
        url: L.href.slice(0, 4096),
        title: d.title.slice(0, 1024),
        language: nv.language,
        screen: screen.width + "x" + screen.height,
        ...o,
      };
      if (G.analytics)
        try {
          s = JSON.parse(sessionStorage.tw_s || 0);
          t = Date.now();
          (!s || t - s.t > S.session_timeout_minutes * 6e4) && (s = { i: uuid() });
          s.t = t;
          U ? (s.u = U) : (U = s.u);
          sessionStorage.tw_s = JSON.stringify(s);
          o.session_id = s.i;
          U && (o.user_id = U);
        } catch (e) {}
      dbg({ kind: "event", payload: o });
      add(o);
    },
    page = () => {
      ev({ event: "page_view", referrer: ref });
      ref = void 0;
    },
    // A tag whose trigger fired: run it if its purpose is granted, else hold it for this page.
    fire = (g, tr, rel, u, t) => {
      dbg({
        kind: "tag",
        tag: g.id,
        trigger: tr,
        purpose: g.purpose,
        fired: !!(u = G[g.purpose]),
        why: u ? (rel ? "consent given" : "granted") : "no consent",
      });
      if (!u) return (H[g.id] = [g, tr]);
      delete H[g.id];
      u = (g.url || g.src || "").replace(/\{\{([\w-]+)\}\}/g, (_, i) => encodeURIComponent(val(i)));
      (t = g.type) == "pixel"
        ? (new Image().src = u)
        : t == "script"
          ? X[g.id] || (X[g.id] = load(u))
          : t == "html" &&
            ((t = d.createRange().createContextualFragment(g.html)),
            t.querySelectorAll("script").forEach((s) => (s.nonce = N)),
            d.body.appendChild(t));
    },
    sig = (s) => select(K, C.tags, s, val).forEach(T((x) => fire(...x))),
    // Auto-tracking: the event when settings.auto[k] is on, the trigger signal always.
    au = (k, t, props, el, p) => {
      A[k] && ev({ event: t, props });
      sig({ t, el, p });
    },
    apply = (how) => {
      for (var k in H) G[H[k][0].purpose] && T(fire)(...H[k], 1);
      dbg({ kind: "consent", granted: list(G), how });
      persist(G.analytics);
      G.analytics || ((U = 0), delete sessionStorage.tw_s);
    },
    // A decision (banner, CMP, gtag update): state, cookie, held tags, /consent. A valid
    // decision repeated unchanged (CMPs send gtag updates on every page) is not a new one.
    setc = (ch, how, r, same) => {
      r = decide(ch, G, P, gpc);
      same = D && list(r[0]) + "" == list(G);
      G = r[0];
      D = true;
      how = r[1] ? "gpc" : how;
      same || (d.cookie = format(C, cid, G, now(), how));
      apply(how);
      same || nv.sendBeacon(new URL("/consent", EP), JSON.stringify(record(C, cid, G, how)));
    },
    banner = () => (B ? B() : bl || (bl = load(AS.banner))),
    cmd = (a, c, x, y) => (
      (c = a[0]),
      (x = a[1]),
      (y = a[2]),
      c == "track"
        ? x && (ev({ event: x, props: y }), sig({ t: "custom_event", e: x }))
        : c == "page"
          ? page()
          : c == "identify"
            ? x != null && (G.analytics && (U = x), ev({ event: c, type: c, user_id: x, props: y }))
            : c == "reset"
              ? // Sign-out: forget the customer and start a new session (a shared device).
                ((U = void 0), delete sessionStorage.tw_s)
              : c == "debug"
              ? (W = x && (w.__tagwerk_debug = w.__tagwerk_debug || [])) && (dl = dl || load(AS.debug))
              : c == "consent" &&
                (x == "update"
                  ? y && setc(y, a[3] == "banner" ? "banner" : "api")
                  : x == "show"
                    ? banner()
                    : x == "banner"
                      ? (B = y) && 0
                      : x == "state" && { ...C, endpoint: "" + EP, granted: { ...G }, decided: D, gpc, nonce: N })
    ),
    // A dataLayer entry. m: 1 = history before the page view (model and consent only),
    // 2 = history after it (model and events), undefined = a live push (everything).
    dlp = (o, m) => {
      if (o && o[0] == "consent")
        // gtag('consent', 'default'|'update', {...}) pushes its `arguments`.
        m != 2 &&
          (o[1] == "update"
            ? setc(gcm(o[2]), "gcm")
            : D ||
              ((G = decide(gcm(o[2]), G, P, gpc)[0]),
              gpc && (G.marketing = !1),
              apply("default")));
      else if (o && o.length == null) {
        merge(M, o);
        m != 1 &&
          o.event &&
          (sig({ t: "custom_event", e: o.event }),
          A.ecommerce && (o = ga4(o.event, o.ecommerce)) && ev(o));
      }
    },
    // A page view: the first, or a new URL after an SPA route change.
    pv = (spa) => {
      if (L.href != last) {
        last = L.href;
        H = {};
        SD = {};
        A.page_views && (!spa || A.spa) && page();
        sig({ t: "page_view" });
        spa && sig({ t: "history_change" });
      }
    },
    route = T(() => pv(1)),
    cm = T(cmd),
    dd = T(dlp),
    // element_visible triggers: once per element, from DOM ready on.
    vis = () =>
      K.forEach(
        (tr, r, o) =>
          tr.type == "element_visible" &&
          ((r = tr.ratio || 0),
          (o = new IntersectionObserver(
            T((es) =>
              es.forEach(
                (e) =>
                  e.isIntersecting &&
                  e.intersectionRatio >= r &&
                  (o.unobserve(e.target), sig({ t: "element_visible", id: tr.id, el: e.target }))
              )
            ),
            { threshold: r }
          )),
          d.querySelectorAll(tr.selector).forEach((e) => o.observe(e)))
      );

  C.variables.forEach((v) => (V[v.id] = v));
  K.forEach((tr, n, i) => {
    tr.type == "scroll_depth" && TH.push(tr.percent);
    tr.type == "timer" &&
      ((n = 0),
      (i = setInterval(
        T(() => {
          tr.limit && ++n >= tr.limit && clearInterval(i);
          sig({ t: "timer", id: tr.id });
        }),
        tr.interval_ms
      )));
  });

  setup(EP, C.site, G.analytics);
  /[?&]tagwerk_debug=1/.test(L.search) && cm(["debug", 1]);

  (w.tagwerk = (...a) => cm(a)).x = 1; // x: this page has a running tag
  DL.push = function (...a) {
    a.forEach((o) => dd(o));
    return push.apply(DL, a);
  };
  hist.forEach((o) => dd(o, 1));
  q.forEach((a) => a[0] == "consent" && cm(a));
  pv();
  hist.forEach((o) => dd(o, 2));
  q.forEach((a) => a[0] != "consent" && cm(a));

  ["pushState", "replaceState"].forEach((k, f) => {
    f = history[k];
    history[k] = function () {
      var r = f.apply(this, arguments);
      route();
      return r;
    };
  });
  on(w, "popstate", route);
  on(w, "hashchange", route);

  on(
    d,
    "click",
    (e, el, a) => {
      au("clicks", "click", { tag: (el = e.target).tagName, text: el.textContent.trim().slice(0, 99) }, el);
      if ((a = el.closest("a[href]"))) {
        e = { url: a.href };
        au(0, "link_click", e, a);
        S.download_extensions.includes(a.pathname.split(".").pop().toLowerCase())
          ? au("downloads", "file_download", e, a)
          : a.host != L.host && /^http/.test(a.protocol) && au("outbound_links", "outbound_link", e, a);
      }
    },
    !0
  );
  on(
    d,
    "submit",
    (e) =>
      au("forms", "form_submit", { id: (e = e.target).getAttribute("id"), action: e.getAttribute("action") }, e),
    !0
  );
  on(w, "scroll", (e, p) => {
    p = ((scrollY + innerHeight) / d.documentElement.scrollHeight) * 100;
    TH.forEach(
      (t) =>
        p >= t &&
        !SD[t] &&
        ((SD[t] = 1), au(ST.includes(t) && "scroll_depth", "scroll_depth", { percent: t }, 0, t))
    );
  });
  on(w, "pagehide", flush);
  on(d, "visibilitychange", () => d.hidden && flush(1));
  on(w, "online", online);

  d.readyState == "loading" ? on(d, "DOMContentLoaded", vis) : T(vis)();
  // No decision and no CMP by the time the page has loaded: ask.
  q = () => D || banner();
  d.readyState == "complete" ? T(q)() : on(w, "load", q);
};
