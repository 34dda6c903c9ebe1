// dataLayer compatibility with Google Tag Manager and gtag.js (DESIGN.md §2).

// GTM's data model: each push is merged into one model, later pushes override earlier keys;
// plain objects merge key by key (copied, never aliased), anything else replaces
// ({ecommerce: null} clears the previous ecommerce object).
var isObj = (v) => !!v && v.constructor == Object;
export var merge = (t, s) => {
  for (var k in s) t[k] = isObj(s[k]) ? merge(isObj(t[k]) ? t[k] : {}, s[k]) : s[k];
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

// GA4 e-commerce events -> tagwerk events in the README's wire format (undefined for other
// events). `e` is the push's `ecommerce` object.
var EC = "view_item view_item_list select_item add_to_cart remove_from_cart begin_checkout purchase";
// (PURE: the engine bundles this file for merge() alone; esbuild then drops the list.)
var ITEM = /* @__PURE__ */ "item_id product_id item_name name item_category category item_brand brand item_variant variant".split(" ");
export var ga4 = (n, e) =>
  EC.split(" ").includes(n) && e
    ? {
        event: n,
        order_id: e.transaction_id,
        revenue: e.value,
        currency: e.currency,
        coupon: e.coupon,
        items: (e.items || []).map((i, o, k) => {
          // The collector wants strings for ids and names and a whole number for quantity.
          o = { price: i.price, quantity: ~~i.quantity || 1 };
          for (k = 0; k < 10; k += 2) i[ITEM[k]] != null && (o[ITEM[k + 1]] = "" + i[ITEM[k]]);
          return o;
        }),
      }
    : void 0;
