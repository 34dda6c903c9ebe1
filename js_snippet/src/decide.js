// Entry of dist/decide.js: making consent decisions (DESIGN.md §3), for the banner, a CMP
// (tagwerk('consent', ...)) and Google Consent Mode (gtag('consent', ...)). The core loads it
// on the first such call, or at start when the page already has one (a CMP's gtag defaults),
// so that it is there at boot; and before the banner, which it loads. A returning visitor
// with a valid decision on a site without a CMP never loads it. It registers with
// tagwerk('cx', init); init gets the core's parts (core) and returns the handler of the
// consent commands, which the core passes on in order:
//   ["consent", "update", choices, how?]  a decision (banner, or "api")
//   ["consent", "show"]                   the banner: open it, or load it once
//   ["consent", "banner", open]           the banner registers its opener
//   ["consent", "state"]                  -> the banner contract's state (consent.js)
//   ["gcm", "default"|"update", params]   a gtag consent call from the dataLayer
import { running, script, safe, uuid } from "./util.js";
import { gcm } from "./datalayer.js";
import { decide, format, list, purposes, record } from "./consent.js";

// core: {c: the compact config, s: () => [state, decided, consent id], set(state, decision),
// dbg(record)} (main.js, the `cx` command).
var init = (core) => {
  var config = core.c,
    ownScript = running(), // inserted by the core: the tag's origin and nonce
    gpc = !!navigator.globalPrivacyControl,
    endpoint = new URL(config.e || "/collect", ownScript.src), // as the core's
    purposeList = purposes(config),
    openBanner, // the banner's opener
    bannerScript, // banner script inserted
    consentId, // the cookie's, or a new one kept for the page
    // The new state to the core, and its record for the debug overlay.
    apply = (state, how, isDecision) => (
      core.set(state, isDecision), core.dbg({ kind: "consent", granted: list(state), how })
    ),
    // A decision: state, cookie, held tags, /consent. A valid decision repeated unchanged
    // (CMPs send gtag updates on every page) is not a new one.
    decision = (choices, how) => {
      var [current, decided, id] = core.s(),
        [state, byGpc] = decide(choices, current, purposeList, gpc),
        same = decided && list(state) + "" == list(current);
      consentId = id || consentId || uuid();
      how = byGpc ? "gpc" : how;
      same || (document.cookie = format(config, purposeList, consentId, state, (Date.now() / 1e3) | 0, how));
      apply(state, how, true);
      same ||
        navigator.sendBeacon(new URL("/consent", endpoint), JSON.stringify(record(config, consentId, state, how)));
    },
    // gtag's consent default: the state, marketing off under GPC.
    gtagDefault = (choices, current) => {
      var state = decide(choices, current, purposeList, gpc)[0];
      if (gpc) state.marketing = false;
      apply(state, "default");
    };
  // The command handler. The core passes each command on with one argument (also as
  // waitingForDecide.forEach(handler)). tagwerk('consent', action, value, how): the banner
  // contract (consent.js); ["gcm", "default"|"update", params]: a gtag consent call.
  return (args) => {
    var action = args[1],
      value = args[2],
      [current, decided] = core.s();
    if (args[0] == "gcm")
      // A default only sets the state (no decision, nothing stored), never over one.
      return action == "update" ? decision(gcm(value), "gcm") : decided || gtagDefault(gcm(value), current);
    if (action == "update") return value && decision(value, args[3] == "banner" ? "banner" : "api");
    if (action == "show")
      return openBanner
        ? openBanner()
        : // beside this file, the same ?v=
          bannerScript ||
            (bannerScript = script(
              new URL("banner.js" + new URL(ownScript.src).search, ownScript.src),
              ownScript.nonce
            ));
    if (action == "banner") return void (openBanner = value);
    return (
      action == "state" && {
        site: config.s,
        purposes: purposeList,
        endpoint: "" + endpoint,
        granted: decide({}, current, purposeList)[0], // every purpose, in order
        decided,
        gpc,
        nonce: ownScript.nonce || "",
      }
    );
  };
};

safe(() => window.tagwerk("cx", init))();
