// Entry of dist/engine.js, the tag-manager engine (DESIGN.md §2): tags, triggers, variables,
// timers, element visibility, GTM's data model. Served per site at /t/{site}/tm.js with the
// site's variables, triggers and tags inlined in place of the string literal below
// (collector/tag/serving.py `engine_config`: {v: variables, r: triggers, g: tags}, names, empty
// lists and default values left out). The core (main.js) loads it only when it has
// something to do, and it registers itself with tagwerk('tm', engine): engine() gets the core's
// parts and the log of this page's signals ([signal, consent state then, dataLayer length
// then]), replays it, then handles each signal as it comes.
import { ready, running, script, safe } from "./util.js";
import { resolve } from "./vars.js";
import { select } from "./triggers.js";
import { merge } from "./datalayer.js";

var config = "__TAGWERK_CONFIG__";

// core: {g: () => the consent state now, l: the log, dbg(record)} (main.js, the `tm` command).
var engine = (core) => {
  var doc = document,
    ownScript = running(), // inserted by the core, with the nonce, from the tag's origin
    nonce = ownScript.nonce,
    dataLayer = window.dataLayer, // the core's, hooked before the engine loads
    triggers = config.r,
    variables = {}, // by id
    model = {}, // GTM's data model, merged up to entry `merged`
    merged = 0,
    held = {}, // tags held for consent on this page: id -> [tag, trigger id]
    inserted = {}, // script tags inserted on this document, by tag id
    watchers = [], // element_visible: per trigger, (root) => observe what matches in root's subtree, root too
    // A variable's current value as a string ("" when it has none).
    variableValue = (id, value = variables[id] && resolve(variables[id], model)) => (value == null ? "" : "" + value),
    // A tag whose trigger fired: run it if its purpose is granted (in `granted`, the state at
    // the signal's time), else hold it for this page; released: by a later decision.
    fire = (tag, trigger, granted, released) => {
      var allowed = granted[tag.purpose];
      core.dbg({
        kind: "tag",
        tag: tag.id,
        trigger,
        purpose: tag.purpose,
        fired: !!allowed,
        why: allowed ? (released ? "consent given" : "granted") : "no consent",
      });
      if (!allowed) return (held[tag.id] = [tag, trigger]);
      delete held[tag.id];
      var url = (tag.url || tag.src || "").replace(/\{\{([\w-]+)\}\}/g, (_, id) => encodeURIComponent(variableValue(id)));
      if (tag.type == "pixel") new Image().src = url;
      // once per document; a relative URL against the tag's origin
      else if (tag.type == "script")
        inserted[tag.id] || (inserted[tag.id] = script(new URL(url, ownScript.src), nonce));
      else if (tag.type == "html") insertHtml(doc.createRange().createContextualFragment(tag.html));
    },
    // A custom HTML tag: its scripts get the nonce (so a strict CSP runs them).
    insertHtml = (fragment) => {
      fragment.querySelectorAll("script").forEach((element) => (element.nonce = nonce));
      doc.body.appendChild(fragment);
    },
    // A signal (granted and length given when replayed from the log), or none: consent
    // changed, release what is held.
    handle = (signal, granted, length) => {
      // GTM's model as it was at the signal (length: the dataLayer's then), or is now.
      for (length = length == null ? dataLayer.length : length; merged < length; merged++) {
        var entry = dataLayer[merged];
        entry && entry.length == null && entry[0] != "consent" && merge(model, entry);
      }
      granted = granted || core.g();
      if (signal) {
        if (signal.t == "page_view") held = {};
        select(triggers, config.g, signal, variableValue).forEach(safe((match) => fire(...match, granted)));
      } else for (var id in held) granted[held[id][0].purpose] && safe(fire)(...held[id], granted, 1);
    };

  config.v.forEach((variable) => (variables[variable.id] = variable));
  triggers.forEach((trigger) => {
    if (trigger.type == "timer") {
      var count = 0,
        timer = setInterval(
          safe(() => {
            trigger.limit && ++count >= trigger.limit && clearInterval(timer);
            handle({ t: "timer", id: trigger.id });
          }),
          trigger.interval_ms
        );
    }
    // element_visible: once per element (seen: the elements given to the observer; one that
    // fired was unobserved, and observing it again would fire it again).
    if (trigger.type == "element_visible") {
      var ratio = trigger.ratio || 0,
        seen = new WeakSet(),
        observer = new IntersectionObserver(
          safe((entries) =>
            entries.forEach(
              (entry) =>
                entry.isIntersecting &&
                entry.intersectionRatio >= ratio &&
                (observer.unobserve(entry.target), handle({ t: "element_visible", id: trigger.id, el: entry.target }))
            )
          ),
          { threshold: ratio }
        ),
        observe = (element) => seen.has(element) || (seen.add(element), observer.observe(element));
      watchers.push(
        safe((root) => {
          root.matches(trigger.selector) && observe(root);
          root.querySelectorAll(trigger.selector).forEach(observe);
        })
      );
    }
  });
  // Visibility is watched from now on (the core loads the engine at boot, when the DOM is
  // ready, if there are such triggers): in the body, then in what is added to the page later
  // (SPA routes, lazy lists, dialogs). One observer for all triggers, none without them; a
  // callback searches only the subtrees added (elements: text nodes have no matches()),
  // never the whole document.
  if (watchers[0]) {
    watchers.forEach((watch) => watch(doc.body));
    new MutationObserver(
      safe((records) =>
        records.forEach((record) =>
          record.addedNodes.forEach((node) => node.matches && watchers.forEach((watch) => watch(node)))
        )
      )
    ).observe(doc, { childList: 1, subtree: 1 });
  }
  core.l.forEach((logged) => safe(handle)(...logged));
  handle();
  return handle;
};

ready(config) && safe(() => window.tagwerk("tm", engine))();
