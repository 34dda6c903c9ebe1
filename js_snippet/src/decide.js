// Entry of dist/decide.js: making consent decisions (DESIGN.md §3), for the banner, a CMP
// (tagwerk('consent', ...)) and Google Consent Mode (gtag('consent', ...)). The core loads it
// on the first such call, or at start when the page already has one (a CMP's gtag defaults),
// so that it is there at boot; and before the banner, which it loads. A returning visitor
// with a valid decision on a site without a CMP never loads it. It registers with
// tagwerk('cx', init); init gets the core's parts (I) and returns the handler of the
// consent commands, which the core passes on in order:
//   ["consent", "update", choices, how?]  a decision (banner, or "api")
//   ["consent", "show"]                   the banner: open it, or load it once
//   ["consent", "banner", open]           the banner registers its opener
//   ["consent", "state"]                  -> the banner contract's state (consent.js)
//   ["gcm", "default"|"update", params]   a gtag consent call from the dataLayer
import { script, T, uuid } from "./util.js";
import { gcm } from "./datalayer.js";
import { decide, format, list, purposes, record } from "./consent.js";

var init = (I) => {
  var C = I.c,
    me = document.currentScript || {}, // inserted by the core: the tag's origin and nonce
    gpc = !!navigator.globalPrivacyControl,
    EP = new URL(C.e || "/collect", me.src), // as the core's
    P = purposes(C),
    B, // the banner's opener
    bl, // banner script inserted
    id, // the consent id: the cookie's, or a new one kept for the page
    // The new state to the core, and its record for the debug overlay.
    apply = (G, how, dd) => (I.set(G, dd), I.dbg({ kind: "consent", granted: list(G), how })),
    // A decision: state, cookie, held tags, /consent. A valid decision repeated unchanged
    // (CMPs send gtag updates on every page) is not a new one.
    set = (ch, how, [G, D, c] = I.s(), r = decide(ch, G, P, gpc), same = D && list(r[0]) + "" == list(G)) => {
      id = c || id || uuid();
      how = r[1] ? "gpc" : how;
      same || (document.cookie = format(C, P, id, r[0], (Date.now() / 1e3) | 0, how));
      apply(r[0], how, !0);
      same || navigator.sendBeacon(new URL("/consent", EP), JSON.stringify(record(C, id, r[0], how)));
    };
  // (x, y, S are locals: the core calls this with one argument, also as xq.forEach(X).)
  return (a, x, y, S) =>
    ((x = a[1]), (y = a[2]), (S = I.s()), a[0] == "gcm")
      ? x == "update"
        ? set(gcm(y), "gcm")
        : // A default only sets the state (no decision, nothing stored), never over one.
          S[1] ||
          ((S = decide(gcm(y), S[0], P, gpc)[0]),
          gpc && (S.marketing = !1),
          apply(S, "default"))
      : x == "update"
        ? y && set(y, a[3] == "banner" ? "banner" : "api")
        : x == "show"
          ? B
            ? B()
            : // next to this file, the same ?v=
              bl || (bl = script(new URL("banner.js" + new URL(me.src).search, me.src), me.nonce))
          : x == "banner"
            ? (B = y) && 0
            : x == "state" && {
                site: C.s,
                purposes: P,
                endpoint: "" + EP,
                granted: decide({}, S[0], P)[0], // every purpose, in order
                decided: S[1],
                gpc,
                nonce: me.nonce || "",
              };
};

T(() => window.tagwerk("cx", init))();
