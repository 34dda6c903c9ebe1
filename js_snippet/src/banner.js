// The consent banner (dist/banner.js = assets.banner). The contract with the tag is the
// header of src/consent.js: the tag loads this script when it has to ask (or on
// tagwerk('consent', 'show')); it opens itself at once, registers its opener with
// tagwerk('consent', 'banner', open), and reports the choice with
// tagwerk('consent', 'update', "all" | "none" | {purpose: bool}, 'banner').
//
// - Texts: GET {origin of state.endpoint}/t/{site}/consent.json?lang=.. (collector/
//   consent_texts.py), in the page's language; tiny English texts when that fails.
// - Styles: dist/banner.css through a <link> with the tag's nonce, inside a shadow root (the
//   page's CSS does not reach in, ours does not leak out). No inline styles: strict CSPs work.
// - A modal dialog: role=dialog, aria-modal, labelled by its title and described by its
//   text; focus moves in and is trapped (Tab / Shift+Tab cycle), and goes back on close.
//   Escape closes it only when a decision already exists: it never decides.
// - "Accept all" and "Reject all" are the same element with the same class, side by side.
// - Never throws into the page: every entry point goes through safe().
//
// The pure parts are exported for the tests (test/banner.test.mjs).
import { running, safe } from "./util.js";

var MK = "marketing";

// The built-in texts when the collector cannot be asked (kept tiny: a size budget).
export var EN = {
  title: "Privacy choices",
  body: "We use cookies and similar technologies for the purposes below, some only with your consent.",
  accept_all: "Accept all",
  reject_all: "Reject all",
  settings: "Settings",
  save: "Save choices",
  gpc: "Your browser sends Global Privacy Control: marketing stays off unless you switch it on here.",
};

// The language to ask for: the page's <html lang>, else the browser's, else English. Only
// well-formed tags (the collector answers 400 to anything else).
export var lang = (...c) => c.find((l) => /^[a-z]{2,8}(-[a-z\d]{1,8})*$/i.test(l)) || "en";

// The GPC note is shown when GPC is on and there is a marketing purpose to keep off.
export var gpcNote = (s, P) => !!s.gpc && P.some((p) => p.id == MK && !p.required);

// What the banner reports: k = "accept" | "reject" | "save"; on = the checkboxes' states.
// Save is explicit for every purpose the person can choose (required ones are the tag's).
export var choices = (k, P, on, o = {}) =>
  k == "accept"
    ? "all"
    : k == "reject"
      ? "none"
      : (P.forEach((p) => p.required || (o[p.id] = !!on[p.id])), o);

// A checkbox's initial state: required purposes are on; the others show the current state
// once a decision exists, and are off before (no pre-ticked boxes).
export var checked = (s, p) => !!(p.required || (s.decided && s.granted && s.granted[p.id]));

// The container's purposes (the tag's state decides which and in what order) with the
// names and descriptions of the texts.
export var purposes = (s, x) =>
  s.purposes.map((p, t) => (
    (t = (x.purposes || []).find((q) => q.id == p.id) || {}),
    { id: p.id, required: !!p.required, name: t.name || p.id, description: t.description || "" }
  ));

// Focus trap: the index to focus after Tab (back = Shift+Tab) from index i of n focusable
// elements (i = -1: focus is on the dialog itself or outside).
export var next = (i, n, back) => (i < 0 ? (back ? n - 1 : 0) : (i + (back ? n - 1 : 1)) % n);

var start = () => {
  var d = document,
    me = running(),
    t = window.tagwerk,
    s = t("consent", "state"),
    host = d.createElement("div"),
    R = host.attachShadow({ mode: "open" }),
    last, // the element focused before the dialog opened
    box, // the open dialog's backdrop
    tx, // the texts (a promise)
    // An element: attributes (on* = listeners, booleans = properties) and children.
    h = (n, a, kids, e = d.createElement(n)) => {
      for (var k in a)
        /^on/.test(k)
          ? e.addEventListener(k.slice(2), safe(a[k]))
          : a[k] === !!a[k]
            ? (e[k] = a[k])
            : e.setAttribute(k, a[k]);
      kids && e.append(...kids);
      return e;
    },
    // The stylesheet: the dialog waits for it (loaded or failed; at most 5 s).
    css = new Promise((r) =>
      R.append(
        h("link", {
          rel: "stylesheet",
          nonce: s.nonce || "",
          href: (me.src || "").replace(/banner\.js/, "banner.css"),
          onload: r,
          onerror: r,
        })
      ) || setTimeout(r, 5e3)
    ),
    texts = () =>
      tx ||
      (tx = Promise.race([
        // In an executor: a fetch or URL that throws becomes a rejection (the fallback).
        new Promise((r) =>
          r(
            fetch(
              new URL(
                "/t/" + s.site + "/consent.json?lang=" + lang(d.documentElement.lang, navigator.language),
                s.endpoint
              )
            ).then((r) => r.ok && r.json())
          )
        ),
        new Promise((r) => setTimeout(r, 5e3)),
      ])
        .catch(() => 0)
        .then((x) => ({ ...EN, ...(x && x.title ? x : 0) }))),
    close = (back) => {
      box && box.remove();
      box = 0;
      back && last && last.focus && last.focus();
    },
    render = (x) => {
      close();
      last = d.activeElement;
      var P = purposes(s, x),
        on = {},
        act = (k) => () => {
          t("consent", "update", choices(k, P, on), "banner");
          close(1);
        },
        btn = (k, label) => h("button", { type: "button", class: "tw-btn", onclick: act(k) }, [label]),
        boxes = [],
        rows = P.map((p, c) => (
          (on[p.id] = checked(s, p)),
          boxes.push(
            (c = h("input", {
              type: "checkbox",
              checked: on[p.id],
              disabled: p.required,
              "aria-describedby": "tw-d-" + p.id,
              onchange: () => (on[p.id] = c.checked),
            }))
          ),
          h("div", { class: "tw-p" }, [
            h("label", {}, [c, h("span", {}, [p.name])]),
            h("p", { id: "tw-d-" + p.id }, [p.description]),
          ])
        )),
        save = btn("save", x.save),
        panel = h("div", { id: "tw-s", class: "tw-s", hidden: !s.decided }, [...rows, save]),
        set = h(
          "button",
          {
            type: "button",
            class: "tw-btn tw-2",
            "aria-controls": "tw-s",
            "aria-expanded": "" + !panel.hidden,
            onclick: () => {
              set.setAttribute("aria-expanded", "" + !(panel.hidden = !panel.hidden));
              panel.hidden || focusable()[3].focus();
            },
          },
          [x.settings]
        ),
        base = [btn("accept", x.accept_all), btn("reject", x.reject_all), set],
        // In document order: the buttons, then the open panel's enabled boxes and Save.
        focusable = () => (panel.hidden ? base : [...base, ...boxes.filter((b) => !b.disabled), save]),
        dlg = h(
          "div",
          {
            class: "tw-d",
            role: "dialog",
            "aria-modal": "true",
            "aria-labelledby": "tw-t",
            "aria-describedby": "tw-x tw-g",
            tabindex: "-1",
            onkeydown: (e, f) => {
              if (e.key == "Tab") {
                e.preventDefault();
                (f = focusable())[next(f.indexOf(R.activeElement), f.length, e.shiftKey)].focus();
              } else if (e.key == "Escape" && s.decided) close(1);
            },
          },
          [
            h("h2", { id: "tw-t" }, [x.title]),
            h("p", { id: "tw-x" }, [x.body]),
            ...(gpcNote(s, P) ? [h("p", { id: "tw-g" }, [x.gpc])] : []),
            h("div", { class: "tw-a" }, base),
            panel,
          ]
        );
      // A click on the backdrop must not take the focus out of the dialog.
      R.append((box = h("div", { class: "tw-b", onmousedown: (e) => e.target == box && e.preventDefault() }, [dlg])));
      dlg.focus();
    },
    open = () => {
      s = t("consent", "state") || s;
      Promise.all([texts(), css]).then(safe((a) => render(a[0])));
    };
  d.documentElement.append(host);
  // Focus that leaves for the page while the dialog is open comes back (the trap).
  d.addEventListener("focusin", safe(() => box && !R.activeElement && box.firstChild.focus()));
  t("consent", "banner", safe(open));
  open();
};

typeof document == "object" && safe(start)();
