// Entry of dist/engine.js, the tag-manager engine (DESIGN.md §2): tags, triggers, variables,
// timers, element visibility, GTM's data model. Served per site at /t/{site}/tm.js with the
// site's variables, triggers and tags inlined in place of the string literal below
// (collector/tagjs.py `engine_config`: {v: variables, r: triggers, g: tags}, names, empty
// lists and default values left out). The core (main.js) loads it only when it has
// something to do, and it registers itself with tagwerk('tm', init): init gets the core's
// parts and the log of this page's signals ([signal, consent state then, dataLayer length
// then]), replays it, then handles each signal as it comes.
import { ready, script, safe } from "./util.js";
import { resolve } from "./vars.js";
import { select } from "./triggers.js";
import { merge } from "./datalayer.js";

var X = "__TAGWERK_CONFIG__";

var engine = (I) => {
  var d = document,
    me = d.currentScript || {}, // inserted by the core, with the nonce, from the tag's origin
    N = me.nonce,
    DL = window.dataLayer, // the core's, hooked before the engine loads
    K = X.r,
    V = {}, // variables by id
    M = {}, // the dataLayer model, merged up to entry n
    n = 0,
    H = {}, // tags held for consent on this page: id -> [tag, trigger id]
    S = {}, // script tags inserted on this document
    W = [], // element_visible: per trigger, (e) => observe what matches in e's subtree, e too
    val = (i, v) => ((v = V[i] && resolve(V[i], M)) == null ? "" : "" + v),
    // A tag whose trigger fired: run it if its purpose is granted (in G, the state at the
    // signal's time), else hold it for this page; rel: released by a later decision.
    fire = (g, tr, G, rel, u, t) => {
      I.dbg({
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
          ? // once per document; a relative URL against the tag's origin
            S[g.id] || (S[g.id] = script(new URL(u, me.src), N))
          : t == "html" &&
            ((t = d.createRange().createContextualFragment(g.html)),
            t.querySelectorAll("script").forEach((s) => (s.nonce = N)),
            d.body.appendChild(t));
    },
    // A signal (G and k given when replayed from the log), or none: consent changed, release.
    E = (s, G, k, o) => {
      // GTM's model as it was at the signal (k: the dataLayer's length then), or is now.
      for (k = k == null ? DL.length : k; n < k; n++)
        (o = DL[n]) && o.length == null && o[0] != "consent" && merge(M, o);
      G = G || I.g();
      if (s) {
        s.t == "page_view" && (H = {});
        select(K, X.g, s, val).forEach(safe((x) => fire(...x, G)));
      } else for (k in H) G[H[k][0].purpose] && safe(fire)(...H[k], G, 1);
    };

  X.v.forEach((v) => (V[v.id] = v));
  K.forEach((tr, c, i, o) => {
    tr.type == "timer" &&
      ((c = 0),
      (i = setInterval(
        safe(() => {
          tr.limit && ++c >= tr.limit && clearInterval(i);
          E({ t: "timer", id: tr.id });
        }),
        tr.interval_ms
      )));
    // element_visible: once per element (o: the elements given to the observer; one that
    // fired was unobserved, and observing it again would fire it again).
    tr.type == "element_visible" &&
      ((c = tr.ratio || 0),
      (i = new IntersectionObserver(
        safe((es) =>
          es.forEach(
            (e) =>
              e.isIntersecting &&
              e.intersectionRatio >= c &&
              (i.unobserve(e.target), E({ t: "element_visible", id: tr.id, el: e.target }))
          )
        ),
        { threshold: c }
      )),
      (o = new WeakSet()),
      W.push(
        safe((e, s = tr.selector, f = (x) => o.has(x) || (o.add(x), i.observe(x))) => (
          e.matches(s) && f(e), e.querySelectorAll(s).forEach(f)
        ))
      ));
  });
  // Visibility is watched from now on (the core loads the engine at boot, when the DOM is
  // ready, if there are such triggers): in the body, then in what is added to the page later
  // (SPA routes, lazy lists, dialogs). One observer for all triggers, none without them; a
  // callback searches only the subtrees added (elements: text nodes have no matches()),
  // never the whole document.
  W[0] &&
    (W.forEach((f) => f(d.body)),
    new MutationObserver(
      safe((rs) => rs.forEach((r) => r.addedNodes.forEach((n) => n.matches && W.forEach((f) => f(n)))))
    ).observe(d, { childList: 1, subtree: 1 }));
  I.l.forEach((x) => safe(E)(...x));
  E();
  return E;
};

ready(X) && safe(() => window.tagwerk("tm", engine))();
