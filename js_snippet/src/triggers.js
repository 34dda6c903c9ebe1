// The trigger engine. A signal is what happened on the page:
//   {t: trigger type, el?: element, p?: scroll percent, e?: custom event name, id?: trigger id}
// (timer and element_visible signals name the one trigger they come from).
// A tag fires when one of its `triggers` matches the signal and none of its
// `blocking_triggers` matches the same signal (GTM's exceptions). Empty lists may be left
// out (the served engine config drops them).
import { all } from "./cond.js";

export var match = (tr, s, get) =>
  tr.type == s.t &&
  (!tr.selector || !!s.el.closest(tr.selector)) &&
  (!s.id || s.id == tr.id) &&
  (s.p == null || s.p == tr.percent) &&
  (s.e == null || s.e == tr.event) &&
  all(tr.conditions || [], get);

// -> [[tag, id of the trigger that fired it], ...]
export var select = (triggers, tags, s, get, m = {}) => (
  triggers.forEach((tr) => {
    try {
      match(tr, s, get) && (m[tr.id] = 1);
    } catch (e) {}
  }),
  tags
    .map((g) => [g, g.triggers.find((i) => m[i])])
    .filter((x) => x[1] && !(x[0].blocking_triggers || []).some((i) => m[i]))
);
