// dataLayer compatibility with Google Tag Manager and gtag.js (DESIGN.md §2).

// GTM's data model: each push is merged into one model, later pushes override earlier keys;
// plain objects merge key by key (copied, never aliased), anything else replaces
// ({ecommerce: null} clears the previous ecommerce object). A "__proto__" key (JSON.parse
// makes one) is skipped: through it the page's Object.prototype would be merged into (a
// pushed {"__proto__": {"marketing": true}} would grant every consent lookup), and no other
// key of a plain object leads there.
var isObj = (v) => !!v && v.constructor == Object;
export var merge = (t, s) => {
  for (var k in s) k != "__proto__" && (t[k] = isObj(s[k]) ? merge(isObj(t[k]) ? t[k] : {}, s[k]) : s[k]);
  return t;
};

// Google Consent Mode -> tagwerk purposes. Where two GCM types map to one purpose
// (ad_storage and ad_user_data -> marketing) it is granted only if both are.
var GCM = {
  analytics_storage: "analytics",
  ad_storage: "marketing",
  ad_user_data: "marketing",
  ad_personalization: "personalization",
  personalization_storage: "personalization",
};
export var gcm = (o, r = {}) => {
  for (var k in o) GCM[k] && (r[GCM[k]] = r[GCM[k]] !== false && o[k] == "granted");
  return r;
};
