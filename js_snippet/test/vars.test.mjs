import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";
import { El } from "./fake.mjs";
import { resolve } from "../src/vars.js";

beforeEach(() => {
  const body = new El("body");
  new El("h1", {}, "  Winter sale  ", body);
  new El("div", { "data-sku": "SKU-9", id: "p" }, "", body);
  globalThis.location = new URL("https://shop.example:8443/shoes/red?utm_campaign=nov&x=1#top");
  globalThis.document = {
    cookie: "a=1; ab_group=B%20two; z=3",
    querySelector: (s) => body.descendants().find((e) => e.matches(s)) || null,
  };
});

test("url parts", () => {
  const u = (part) => resolve({ type: "url", part }, {});
  assert.equal(u("href"), "https://shop.example:8443/shoes/red?utm_campaign=nov&x=1#top");
  assert.equal(u("host"), "shop.example");
  assert.equal(u("path"), "/shoes/red");
  assert.equal(u("query"), "utm_campaign=nov&x=1");
  assert.equal(u("hash"), "top");
  assert.equal(u(undefined), location.href);
});

test("query parameter", () => {
  assert.equal(resolve({ type: "query", name: "utm_campaign" }, {}), "nov");
  assert.equal(resolve({ type: "query", name: "missing" }, {}), null);
});

test("data_layer key with dotted paths", () => {
  const M = { ecommerce: { transaction_id: "T-1", items: [{ item_id: "A" }] }, page: "home" };
  assert.equal(resolve({ type: "data_layer", key: "ecommerce.transaction_id" }, M), "T-1");
  assert.equal(resolve({ type: "data_layer", key: "ecommerce.items.0.item_id" }, M), "A");
  assert.equal(resolve({ type: "data_layer", key: "page" }, M), "home");
  assert.equal(resolve({ type: "data_layer", key: "nope.deeper" }, M), undefined);
  assert.equal(resolve({ type: "data_layer", key: "page" }, {}), undefined);
});

test("cookie, URI-decoded", () => {
  assert.equal(resolve({ type: "cookie", name: "ab_group" }, {}), "B two");
  assert.equal(resolve({ type: "cookie", name: "a" }, {}), "1");
  assert.equal(resolve({ type: "cookie", name: "b" }, {}), "");
});

test("element text and attribute", () => {
  assert.equal(resolve({ type: "element_text", selector: "h1" }, {}), "Winter sale");
  assert.equal(
    resolve({ type: "element_attribute", selector: "[data-sku]", attribute: "data-sku" }, {}),
    "SKU-9"
  );
  assert.equal(resolve({ type: "element_text", selector: "h2" }, {}), null);
});

test("constant", () => {
  assert.equal(resolve({ type: "constant", value: "berlin" }, {}), "berlin");
});
