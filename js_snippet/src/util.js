// Small shared helpers. The tag is size-budgeted (README "Size budget"): keep these tiny and
// reuse them instead of writing variants.

// Wrap an entry point so that nothing ever throws into the page: listeners, timers, the
// command function and the dataLayer push hook all go through this.
export var safe =
  (fn) =>
  (...args) => {
    try {
      return fn(...args);
    } catch (e) {}
  };

// The script element running now: document.currentScript, unless HTML on the page clobbered
// it (<img name=currentScript src=//elsewhere/> would have the tag load its files, and send
// its hits, there): then {}, and paths resolve against the page. A script element has a
// text; the elements HTML can name so (img, form, iframe, embed, object) have none, and the
// check costs fewer bytes than the tag name's.
export var running = (s = document.currentScript) => (s && s.text != null ? s : {});

// addEventListener with the listener wrapped.
export var on = (target, type, listener, options) => target.addEventListener(type, safe(listener), options);

// The server inlines the container in place of a JS string literal; while that literal is
// still a string the tag is not configured and does nothing.
export var ready = (config) => !!config && typeof config == "object";

// Main-thread cost: no RegExp in what runs at load and boot. Compiling one costs about 0.1 ms
// at its first use (measured in Chromium), more than the code around it; string methods
// instead.

// 128 random bits as 32 hex digits: an event id (the collector takes a UUID with or without
// dashes), a consent id (32 hex digits is its format) or a session id. One
// crypto.getRandomValues call: crypto.randomUUID exists only in secure contexts.
export var uuid = () =>
  [...crypto.getRandomValues(new Uint16Array(8))].map((n) => (n + 65536).toString(16).slice(1)).join("");

// A cookie's value by name ("" when absent), from cookies (a cookie string read once) or
// document.cookie, which browsers give as "a=1; b=2". Not URI-decoded: the tag's cookies
// hold no escapes (the collector sets tw_consent again with the value the tag wrote).
export var cookie = (name, cookies = document.cookie) =>
  (("; " + cookies).split("; " + name + "=")[1] || "").split(";")[0];

// The string for document.cookie: first party, Path=/, SameSite=Lax, Secure on https;
// domain: Domain ("" = host-only); maxAge: in seconds (none: a session cookie; 0 removes it).
export var cstr = (name, value, domain, maxAge) =>
  name +
  "=" +
  value +
  (maxAge >= 0 ? ";Max-Age=" + maxAge : "") +
  ";Path=/;SameSite=Lax" +
  (location.protocol == "https:" ? ";Secure" : "") +
  (domain ? ";Domain=" + domain : "");

// Insert a script: async, with the nonce (CSP), in <head>. The core, the engine and
// decide.js each load with it (each bundle gets its own copy).
export var script = (src, nonce, element = document.createElement("script")) => (
  (element.src = src), (element.async = 1), (element.nonce = nonce), document.head.appendChild(element)
);

// Write a cookie (a non-blocking call in browsers, unlike reading document.cookie).
export var cset = (...args) => (document.cookie = cstr(...args));
