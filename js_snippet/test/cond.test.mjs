import assert from "node:assert/strict";
import { test } from "node:test";
import { all, test as cond } from "../src/cond.js";

const vars = { path: "/checkout/pay", n: "42", empty: "" };
const get = (id) => (id in vars ? vars[id] : "");
const c = (variable, operator, value) => cond({ variable, operator, value }, get);

test("string operators", () => {
  assert.equal(c("path", "equals", "/checkout/pay"), true);
  assert.equal(c("path", "equals", "/checkout"), false);
  assert.equal(c("path", "not_equals", "/checkout"), true);
  assert.equal(c("path", "not_equals", "/checkout/pay"), false);
  assert.equal(c("path", "contains", "out/p"), true);
  assert.equal(c("path", "contains", "cart"), false);
  assert.equal(c("path", "starts_with", "/checkout"), true);
  assert.equal(c("path", "starts_with", "checkout"), false);
  assert.equal(c("path", "ends_with", "/pay"), true);
  assert.equal(c("path", "ends_with", "/checkout"), false);
});

test("matches compiles a regular expression, never code", () => {
  assert.equal(c("path", "matches", "^/check(out)?/"), true);
  assert.equal(c("path", "matches", "^/cart"), false);
  assert.throws(() => c("path", "matches", "(")); // the trigger engine counts it as no match
});

test("greater_than and less_than compare numbers", () => {
  assert.equal(c("n", "greater_than", 9), true); // as strings "42" < "9"
  assert.equal(c("n", "greater_than", "42"), false);
  assert.equal(c("n", "less_than", 100), true);
  assert.equal(c("n", "less_than", 42), false);
  assert.equal(c("path", "greater_than", 1), false); // NaN never compares
});

test("unknown variables are empty strings; unknown operators throw", () => {
  assert.equal(c("nope", "equals", ""), true);
  assert.equal(c("empty", "contains", ""), true);
  assert.throws(() => c("path", "like", "x"));
});

test("every condition must hold", () => {
  const a = { variable: "path", operator: "starts_with", value: "/checkout" };
  const b = { variable: "n", operator: "equals", value: "42" };
  const x = { variable: "n", operator: "equals", value: "7" };
  assert.equal(all([a, b], get), true);
  assert.equal(all([a, x], get), false);
  assert.equal(all([], get), true);
});
