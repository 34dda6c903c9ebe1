import assert from "node:assert/strict";
import { test } from "node:test";
import { El, link } from "./fake.mjs";
import { match, select } from "../src/triggers.js";

const vars = { page_path: "/checkout/done" };
// as the collector serves them: conditions and blocking_triggers always present
const T = (t) => ({ conditions: [], ...t });
const G = (g) => ({ blocking_triggers: [], ...g });
const get = (id) => vars[id] ?? "";
const body = new El("body");
const buyBox = new El("div", { class: "buy big" }, "", body);
const buyText = new El("span", {}, "Buy", buyBox);
const other = new El("p", {}, "text", body);
const form = new El("form", { id: "newsletter" }, "", body);
const tracked = link("/a", { class: "track" });

test("each trigger type matches its own signal", () => {
  const cases = [
    [{ id: "a", type: "page_view" }, { t: "page_view" }],
    [{ id: "a", type: "history_change" }, { t: "history_change" }],
    [{ id: "a", type: "click", selector: ".buy" }, { t: "click", el: buyText }],
    [{ id: "a", type: "link_click", selector: "a.track" }, { t: "link_click", el: tracked }],
    [{ id: "a", type: "outbound_link" }, { t: "outbound_link", el: tracked }],
    [{ id: "a", type: "file_download" }, { t: "file_download", el: tracked }],
    [{ id: "a", type: "form_submit", selector: "form#newsletter" }, { t: "form_submit", el: form }],
    [{ id: "a", type: "scroll_depth", percent: 50 }, { t: "scroll_depth", p: 50 }],
    [{ id: "a", type: "timer", interval_ms: 10 }, { t: "timer", id: "a" }],
    [{ id: "a", type: "element_visible", selector: "#x" }, { t: "element_visible", id: "a", el: new El("i", { id: "x" }) }],
    [{ id: "a", type: "custom_event", event: "purchase" }, { t: "custom_event", e: "purchase" }],
  ];
  for (const [tr, s] of cases) {
    assert.equal(match(T(tr), s, get), true, tr.type);
    assert.equal(match(T(tr), { ...s, t: "other" }, get), false, tr.type);
  }
  assert.equal(cases.length, 11);
});

test("selectors, percents, event names and trigger ids must agree", () => {
  assert.equal(match(T({ type: "click", selector: ".buy" }), { t: "click", el: other }, get), false);
  assert.equal(match(T({ type: "click" }), { t: "click", el: other }, get), true);
  assert.equal(match(T({ type: "scroll_depth", percent: 75 }), { t: "scroll_depth", p: 50 }, get), false);
  assert.equal(match(T({ type: "custom_event", event: "a" }), { t: "custom_event", e: "b" }, get), false);
  assert.equal(match(T({ id: "t1", type: "timer" }), { t: "timer", id: "t2" }, get), false);
  assert.equal(
    match(T({ type: "form_submit", selector: "form#other" }), { t: "form_submit", el: form }, get),
    false
  );
});

test("conditions must all hold", () => {
  const tr = {
    type: "custom_event",
    event: "purchase",
    conditions: [{ variable: "page_path", operator: "starts_with", value: "/checkout" }],
  };
  assert.equal(match(tr, { t: "custom_event", e: "purchase" }, get), true);
  vars.page_path = "/cart";
  assert.equal(match(tr, { t: "custom_event", e: "purchase" }, get), false);
  vars.page_path = "/checkout/done";
});

test("select fires tags by trigger and honours blocking triggers", () => {
  const triggers = [
    { id: "pv", type: "page_view" },
    { id: "pv_checkout", type: "page_view", conditions: [{ variable: "page_path", operator: "contains", value: "checkout" }] },
    { id: "bad", type: "click", selector: "!!" }, // an invalid selector never matches, never throws
    { id: "buy", type: "click", selector: ".buy" },
  ].map(T);
  const tags = [
    { id: "everywhere", triggers: ["pv"] },
    { id: "not_checkout", triggers: ["pv"], blocking_triggers: ["pv_checkout"] },
    { id: "clicks", triggers: ["bad", "buy"] },
    { id: "none", triggers: [] },
  ].map(G);
  const ids = (s) => select(triggers, tags, s, get).map(([g, tr]) => `${g.id}<${tr}`);
  assert.deepEqual(ids({ t: "page_view" }), ["everywhere<pv"]);
  vars.page_path = "/home";
  assert.deepEqual(ids({ t: "page_view" }), ["everywhere<pv", "not_checkout<pv"]);
  assert.deepEqual(ids({ t: "click", el: buyText }), ["clicks<buy"]);
  assert.deepEqual(ids({ t: "click", el: other }), []);
  vars.page_path = "/checkout/done";
});
