// The debug overlay (dist/debug.js = assets.debug). The tag loads it on ?tagwerk_debug=1 or
// tagwerk('debug', true), and from then on pushes records to the array
// window.__tagwerk_debug (DESIGN.md §2; src/main.js):
//   {kind: "event", payload}                                 each event sent
//   {kind: "tag", tag, trigger, purpose, fired, why}         each tag fired or held back
//   {kind: "consent", granted: [...], how}                   each consent change
// The overlay lists the records already there, then wraps the array's push to see the new
// ones as they come, in order. SPA route changes arrive as page_view events; the panel hangs
// off <html> in its own shadow root, so the page's re-renders and CSS do not touch it.
// Its stylesheet (dist/debug.css, beside this script) comes through a <link> with the tag's
// nonce: no inline styles. Never throws into the page.
//
// The pure parts are exported for the tests (test/debug.test.mjs).
import { running, safe } from "./util.js";

var MAX = 500; // rows kept in the panel

// "12:34:56" of a time (ms or an ISO string); "" when unknown.
export var hms = (t) => (t ? new Date(t).toTimeString().slice(0, 8) : "");

// The path, query and hash of a URL ("" when it is not one).
var path = (u) => ("" + (u || "")).replace(/^[a-z]+:\/\/[^/]+/i, "");

// One record -> {c: class, t: title, s: summary, j: the record as indented JSON, at: time}.
export var fmt = (r, p) =>
  r.kind == "event"
    ? ((p = r.payload || {}),
      {
        c: p.event == "page_view" ? "ev pv" : "ev",
        t: "event " + p.event,
        s: p.event == "page_view" ? path(p.url) : p.props ? JSON.stringify(p.props).slice(0, 80) : "",
        j: JSON.stringify(p, null, 2),
        at: p.ts,
      })
    : r.kind == "tag"
      ? {
          c: r.fired ? "ok" : "no",
          t: "tag " + r.tag + (r.fired ? " fired" : " held back"),
          s: "trigger " + r.trigger + ", purpose " + r.purpose + ": " + r.why,
          j: JSON.stringify(r, null, 2),
        }
      : r.kind == "consent"
        ? {
            c: "cs",
            t: "consent (" + r.how + ")",
            s: (r.granted || []).join(", ") || "nothing granted",
            j: JSON.stringify(r, null, 2),
          }
        : { c: "x", t: "" + (r && r.kind), s: "", j: JSON.stringify(r, null, 2) };

// The consent line: "necessary on, analytics off, ..., decided, GPC on" (ASCII only: the
// overlay must read right whatever charset a page declares).
export var state = (s) =>
  s
    ? Object.keys(s.granted || {})
        .map((k) => k + (s.granted[k] ? " on" : " off"))
        .concat(s.decided ? "decided" : "no decision yet", s.gpc ? "GPC on" : [])
        .join(", ")
    : "";

var start = () => {
  var w = window,
    d = document,
    me = running(),
    A = (w.__tagwerk_debug = w.__tagwerk_debug || []),
    push = A.push,
    st = () => safe(w.tagwerk)("consent", "state"),
    s = st() || {},
    host = d.createElement("div"),
    R = host.attachShadow({ mode: "open" }),
    n = 0,
    h = (t, a, kids, e = d.createElement(t)) => {
      for (var k in a) /^on/.test(k) ? e.addEventListener(k.slice(2), safe(a[k])) : e.setAttribute(k, a[k]);
      kids && e.append(...kids);
      return e;
    },
    cs = h("p", { class: "st" }),
    list = h("ol"),
    body = h("div", { id: "tw-body", class: "body" }, [cs, list]),
    // The heading is the minimise toggle (a disclosure button): "tagwerk debug (12)".
    count = h("span", {}, ["0"]),
    min = h(
      "button",
      {
        type: "button",
        "aria-expanded": "true",
        "aria-controls": "tw-body",
        onclick: () => min.setAttribute("aria-expanded", "" + !(body.hidden = !body.hidden)),
      },
      ["tagwerk debug (", count, ")"]
    ),
    add = (r, at, f, e) => {
      f = fmt(r);
      e = list.lastChild;
      // Keep following the newest row unless the person scrolled up to read.
      e = !e || body.scrollTop + body.clientHeight >= body.scrollHeight - 8;
      list.append(
        h("li", { class: f.c }, [
          h("details", {}, [
            h("summary", {}, [h("time", {}, [hms(f.at || at)]), " ", h("b", {}, [f.t]), " ", f.s]),
            h("pre", {}, [f.j]),
          ]),
        ])
      );
      list.children.length > MAX && list.firstChild.remove();
      count.textContent = ++n;
      r.kind == "consent" && (cs.textContent = state(st()));
      e && (body.scrollTop = body.scrollHeight);
    };
  if (A.tw) return; // already watching
  A.tw = 1;
  R.append(
    h("link", { rel: "stylesheet", nonce: s.nonce || "", href: (me.src || "").replace(/debug\.js/, "debug.css") }),
    h("section", { class: "p", "aria-label": "tagwerk debug" }, [
      h("h2", {}, [min]),
      body,
    ])
  );
  cs.textContent = state(s);
  A.forEach((r) => safe(add)(r)); // recorded before the overlay loaded: time unknown
  A.push = function (...a) {
    a.forEach((r) => safe(add)(r, Date.now()));
    return push.apply(this, a);
  };
  d.documentElement.append(host);
};

typeof document == "object" && safe(start)();
