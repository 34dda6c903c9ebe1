// A small hand-made DOM for the banner and debug overlay tests (no jsdom): elements with
// attributes, children, text, listeners, shadow roots and a focus model (document.
// activeElement is the shadow host while focus is inside a shadow root, as in browsers).
// run() evaluates a built bundle (dist/banner.js, dist/debug.js) in a fresh node:vm context.
import vm from "node:vm";

export class Text {
  constructor(data) {
    this.nodeType = 3;
    this.data = String(data);
    this.parentNode = null;
  }
  get textContent() {
    return this.data;
  }
}

export class Node {
  constructor(doc) {
    this.doc = doc;
    this.childNodes = [];
    this.parentNode = null;
    this.listeners = {};
  }
  get children() {
    return this.childNodes.filter((c) => c instanceof Elem);
  }
  get firstChild() {
    return this.childNodes[0] || null;
  }
  get lastChild() {
    return this.childNodes.at(-1) || null;
  }
  append(...kids) {
    for (let k of kids) {
      if (!(k instanceof Node || k instanceof Text)) k = new Text(k);
      if (k.parentNode) k.remove();
      k.parentNode = this;
      this.childNodes.push(k);
    }
  }
  appendChild(k) {
    this.append(k);
    return k;
  }
  get textContent() {
    return this.childNodes.map((c) => c.textContent).join("");
  }
  set textContent(v) {
    this.childNodes = [];
    this.append(String(v));
  }
  addEventListener(type, f) {
    (this.listeners[type] ||= []).push(f);
  }
  // Dispatch an event here and up through the parents (and from a shadow root to its host).
  fire(type, props = {}) {
    const ev = {
      type,
      target: this,
      defaultPrevented: false,
      preventDefault() {
        this.defaultPrevented = true;
      },
      ...props,
    };
    for (let n = this; n; n = n.parentNode || n.host) (n.listeners[type] || []).forEach((f) => f(ev));
    return ev;
  }
  // All descendants (not into shadow roots), depth first, in document order.
  all() {
    return this.children.flatMap((c) => [c, ...c.all()]);
  }
  find(pred) {
    return this.all().find(pred) || null;
  }
  get root() {
    let n = this;
    while (n.parentNode) n = n.parentNode;
    return n;
  }
}

export class Elem extends Node {
  constructor(doc, tag) {
    super(doc);
    this.tagName = tag.toUpperCase();
    this.attributes = {};
    this.scrollTop = 0;
    this.scrollHeight = 0;
    this.clientHeight = 0;
  }
  setAttribute(k, v) {
    this.attributes[k] = String(v);
  }
  getAttribute(k) {
    return k in this.attributes ? this.attributes[k] : null;
  }
  get id() {
    return this.getAttribute("id") || "";
  }
  get className() {
    return this.getAttribute("class") || "";
  }
  remove() {
    if (this.parentNode) {
      const p = this.parentNode;
      p.childNodes = p.childNodes.filter((c) => c !== this);
      this.parentNode = null;
      if (this.doc.focused && (this.doc.focused === this || this.contains(this.doc.focused)))
        this.doc.focused = null;
    }
  }
  contains(e) {
    for (let n = e; n; n = n.parentNode || n.host) if (n === this) return true;
    return false;
  }
  attachShadow({ mode }) {
    this.shadowRoot = new ShadowRoot(this.doc, this, mode);
    return this.shadowRoot;
  }
  focus() {
    this.doc.focused = this;
    (this.doc.listeners.focusin || []).forEach((f) => f({ target: this }));
  }
  click() {
    return this.fire("click");
  }
}

export class ShadowRoot extends Node {
  constructor(doc, host, mode) {
    super(doc);
    this.host = host;
    this.mode = mode;
  }
  get activeElement() {
    const f = this.doc.focused;
    return f && f.root === this ? f : null;
  }
}

export class Doc extends Node {
  constructor({ lang = "", script = {} } = {}) {
    super(null);
    this.doc = this;
    this.focused = null;
    this.documentElement = new Elem(this, "html");
    this.documentElement.lang = lang;
    this.body = new Elem(this, "body");
    this.documentElement.append(this.body);
    this.currentScript = { text: "", ...script }; // the script element running
  }
  createElement(tag) {
    return new Elem(this, tag);
  }
  get activeElement() {
    const f = this.focused;
    if (!f) return this.body;
    let n = f.root;
    let e = f;
    while (n instanceof ShadowRoot) {
      e = n.host;
      n = e.root;
    }
    return e;
  }
}

// Shadow roots attached to <html>'s children, in order.
export const shadows = (doc) => doc.documentElement.children.map((e) => e.shadowRoot).filter(Boolean);

// Run a bundle in a fresh context whose globals are `globals` (window = the context).
export function run(code, globals) {
  const ctx = vm.createContext({ URL, Promise, JSON, Date, console, ...globals });
  ctx.window = ctx;
  vm.runInContext(code, ctx);
  return ctx;
}

export const tick = () => new Promise((r) => setImmediate(r));
export const settle = async (n = 5) => {
  for (let i = 0; i < n; i++) await tick();
};
