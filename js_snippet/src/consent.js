// Consent (DESIGN.md §3): the tw_consent cookie, defaults, the GPC rule, and the contract
// between the tag and the consent banner. The core reads the cookie (read, list); making a
// decision (decide, format, record) is decide.js's, a file the core loads on first use.
//
// ---------------------------------------------------------------------------------------
// THE BANNER CONTRACT (for the author of src/banner.js -> dist/banner.js = assets.banner)
// ---------------------------------------------------------------------------------------
// When it is loaded: decide.js (which the core loads first) inserts <script src=assets.banner
// async nonce=...> at most once per page (the nonce copied from the tag's own <script>):
//   - when the page has loaded (window "load", or at once if it already has) and there is no
//     valid decision: no valid tw_consent cookie, and no `consent update` from the site's CMP,
//     from tagwerk('consent', 'update', ...) or from gtag('consent', 'update', ...);
//   - on tagwerk('consent', 'show') (e.g. a "Cookie settings" link), if no banner registered
//     an opener yet (see 2).
// The banner opens itself as soon as its script runs. Then:
//
// 1. Read the state (decide.js answers it; it loaded the banner, so it is there; for another
//    caller it answers undefined until decide.js has loaded):
//    var s = tagwerk('consent', 'state')  ->
//      s.site      "demo"
//      s.purposes  [{id, required, default}...], in order (the container's)
//      s.endpoint  "https://collect.../collect"   absolute URL of the collector
//      s.granted   {necessary: true, analytics: false, ...}  the current state (a copy)
//      s.decided   false     whether a valid decision exists (cookie, CMP or banner)
//      s.gpc       true      navigator.globalPrivacyControl is on
//      s.nonce     "..."     for the banner's own <link rel=stylesheet> ("" without CSP)
//    The banner's stylesheet is banner.css next to its own script (same ?v=), its texts
//    {site, version, policy, texts: {lang: {...}}} GET /t/{site}/consent.json?lang= on the
//    endpoint's origin (collector/tag/consent_texts.py).
// 2. Register an opener:  tagwerk('consent', 'banner', open)
//      Later tagwerk('consent', 'show') calls open() instead of loading the script again.
// 3. Report the person's choice:  tagwerk('consent', 'update', choices, 'banner')
//      choices = "all"   Accept all: every purpose, except that marketing stays off when GPC
//                        is on (logged with how = "gpc");
//              = "none"  Reject all: only the required purposes;
//              = {analytics: true, marketing: false, ...}  Save choices: explicit per
//                        purpose (purposes left out keep their current state); an explicit
//                        marketing: true wins over GPC.
//      Required purposes are always granted. The tag writes tw_consent, posts the decision
//      to /consent, releases held tags and records it for the debug overlay; the banner only
//      closes itself. Nothing the banner calls throws.
// 4. No inline styles: the banner brings a stylesheet (with the nonce) and uses classes.
// A CMP instead of the banner uses the same call with its own `how` left out ("api"):
//   tagwerk('consent', 'update', {analytics: true, marketing: false})
// ---------------------------------------------------------------------------------------
//
// Cookie value: v1.<consent id>.<policy hash>.<granted, comma-separated>.<unix s>.<how>
// where the consent id is 32 hex digits (a v4 UUID without dashes, kept across decisions:
// consent/cookie.py and consent/log.py check that), <unix s> is the time of the decision,
// and how is banner, api, gcm or gpc. The decision is valid while the cookie lives (its
// Max-Age: lifetime_days, or rejection_lifetime_days when nothing but required purposes was
// granted) and its policy hash is the container's. The hash covers the lifetimes too
// (consent/policy.py), so a shortened lifetime asks again instead of trusting the old Max-Age.

import { cstr } from "./util.js";

// The granted purposes of a state {purpose: bool}.
export var list = (state) => Object.keys(state).filter((purpose) => state[purpose]);

// config: the compact config (collector/tag/serving.py core_config: s site, p policy hash, l and r
// the lifetimes in days of a decision and of a rejection, d the cookie domain, P the
// purposes, g the purposes granted by default).

// The cookie's value -> [its consent id, the state, whether it holds a valid decision]. The
// state is the cookie's granted purposes, or without a decision the defaults (config.g:
// required and default-on purposes), marketing off under GPC whatever its default.
export var read = (value, config, gpc) => {
  var fields = value.split("."), // v1, consent id, policy hash, granted, time, how
    valid = fields[0] == "v1" && fields[2] == config.p,
    state = {};
  (valid ? fields[3] : config.g || "necessary")
    .split(",")
    .forEach((purpose) => purpose && (state[purpose] = valid || !gpc || purpose != "marketing"));
  return [fields[1], state, valid];
};

// The purposes [{id, required, default}], in order, from config.P: "id" + "!" when
// required, "+" when granted by default.
export var purposes = (config) =>
  (config.P || "necessary!,analytics,personalization,marketing").split(",").map((item) => {
    var mark = item.slice(-1); // "!", "+" or the id's last letter
    return { id: mark < "0" ? item.slice(0, -1) : item, required: mark == "!", default: mark == "+" };
  });

// Lifetime of a decision in days: shorter when only required purposes were granted.
export var days = (config, purposeList, state) =>
  purposeList.some(({ id, required }) => !required && state[id]) ? config.l || 365 : config.r || 182;

// A decision: choices ("all" | "none" | {purpose: bool}) applied to the current state.
// -> [new state, true when GPC shaped it (marketing off only because of GPC)].
export var decide = (choices, current, purposeList, gpc) => {
  var state = {},
    explicit = typeof choices == "object";
  purposeList.forEach(
    ({ id, required }) =>
      (state[id] = !!(
        required ||
        (explicit ? (id in choices ? choices[id] : current[id]) : choices == "all" && !(gpc && id == "marketing"))
      ))
  );
  return [
    state,
    !!gpc && "marketing" in state && !state.marketing && (choices == "all" || (explicit && !("marketing" in choices))),
  ];
};

// The string for document.cookie (config.d: the container's cookie_domain, "" = host-only).
export var format = (config, purposeList, id, state, now, how) =>
  cstr(
    "tw_consent",
    ["v1", id, config.p, list(state), now, how].join("."),
    config.d,
    86400 * days(config, purposeList, state)
  );

// The body posted to /consent.
export var record = (config, id, state, how) => ({
  site: config.s,
  consent_id: id,
  granted: list(state),
  denied: Object.keys(state).filter((purpose) => !state[purpose]),
  policy: config.p,
  how,
  url: location.href.slice(0, 4096),
});
