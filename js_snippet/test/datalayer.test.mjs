import assert from "node:assert/strict";
import { test } from "node:test";
import { gcm, merge } from "../src/datalayer.js";

test("GTM model: later pushes override earlier keys, objects merge, arrays replace", () => {
  const M = {};
  merge(M, { page: "home", user: { id: 1, tier: "gold" }, list: [1, 2] });
  merge(M, { page: "cart", user: { tier: "silver" }, list: [3] });
  assert.deepEqual(M, { page: "cart", user: { id: 1, tier: "silver" }, list: [3] });
  merge(M, { user: null });
  assert.equal(M.user, null);
});

test("the model copies pushed objects instead of aliasing them", () => {
  const M = {};
  const pushed = { ecommerce: { transaction_id: "T1" } };
  merge(M, pushed);
  merge(M, { ecommerce: { value: 5 } });
  assert.deepEqual(pushed, { ecommerce: { transaction_id: "T1" } });
  assert.deepEqual(M.ecommerce, { transaction_id: "T1", value: 5 });
});

test("ecommerce: null clears the previous ecommerce object (GA4 practice)", () => {
  const M = {};
  merge(M, { event: "view_item", ecommerce: { items: [{ item_id: "A" }], value: 1 } });
  merge(M, { ecommerce: null });
  merge(M, { event: "purchase", ecommerce: { transaction_id: "T2" } });
  assert.deepEqual(M.ecommerce, { transaction_id: "T2" });
});

test("a pushed __proto__ key never reaches Object.prototype (it would grant consent)", () => {
  const M = {};
  merge(M, JSON.parse('{"event": "x", "__proto__": {"marketing": true, "polluted": "yes"}}'));
  merge(M, { user: JSON.parse('{"__proto__": {"polluted": "yes"}}') });
  assert.equal({}.polluted, undefined);
  assert.equal({}.marketing, undefined);
  assert.equal(Object.getPrototypeOf(M), Object.prototype);
  assert.equal(M.polluted, undefined);
  assert.equal(M.user.polluted, undefined);
  assert.equal(M.event, "x");
});

test("gtag consent maps to purposes", () => {
  assert.deepEqual(
    gcm({ analytics_storage: "granted", ad_storage: "denied", ad_personalization: "granted",
      functionality_storage: "granted" }),
    { analytics: true, marketing: false, personalization: true }
  );
  // marketing needs both ad_storage and ad_user_data when both are given
  assert.deepEqual(gcm({ ad_storage: "granted", ad_user_data: "denied" }), { marketing: false });
  assert.deepEqual(gcm({ ad_user_data: "denied", ad_storage: "granted" }), { marketing: false });
  assert.deepEqual(gcm({ ad_storage: "granted", ad_user_data: "granted" }), { marketing: true });
  assert.deepEqual(gcm({}), {});
});
