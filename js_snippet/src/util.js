// Small shared helpers. The tag is size-budgeted (README "Size budget"): keep these tiny and
// reuse them instead of writing variants.

// Wrap an entry point so that nothing ever throws into the page: listeners, timers, the
// command function and the dataLayer push hook all go through this.
export var T =
  (f) =>
  (...a) => {
    try {
      return f(...a);
    } catch (e) {}
  };

// addEventListener with the listener wrapped.
export var on = (t, n, f, o) => t.addEventListener(n, T(f), o);

// The server inlines the container in place of a JS string literal; while that literal is
// still a string the tag is not configured and does nothing.
export var ready = (c) => !!c && typeof c == "object";

// Main-thread cost: no RegExp in what runs at load and boot. Compiling one costs about 0.1 ms
// at its first use (measured in Chromium), more than the code around it; string methods
// instead.

// 128 random bits as 32 hex digits: an event id (the collector takes a UUID with or without
// dashes), a consent id (32 hex digits is its format) or a session id. One
// crypto.getRandomValues call: crypto.randomUUID exists only in secure contexts.
export var uuid = () =>
  [...crypto.getRandomValues(new Uint16Array(8))].map((x) => (x + 65536).toString(16).slice(1)).join("");

// A cookie's value by name ("" when absent), from s (a cookie string read once) or
// document.cookie, which browsers give as "a=1; b=2". Not URI-decoded: the tag's cookies
// hold no escapes (the collector sets tw_consent again with the value the tag wrote).
export var cookie = (n, s = document.cookie) => (("; " + s).split("; " + n + "=")[1] || "").split(";")[0];

// The string for document.cookie: first party, Path=/, SameSite=Lax, Secure on https;
// dom: Domain ("" = host-only); age: Max-Age in seconds (none: a session cookie; 0 removes it).
export var cstr = (n, v, dom, age) =>
  n +
  "=" +
  v +
  (age >= 0 ? ";Max-Age=" + age : "") +
  ";Path=/;SameSite=Lax" +
  (location.protocol == "https:" ? ";Secure" : "") +
  (dom ? ";Domain=" + dom : "");

// Insert a script: async, with the nonce (CSP), in <head>. The core, the engine and
// decide.js each load with it (each bundle gets its own copy).
export var script = (src, nonce, s = document.createElement("script")) => (
  (s.src = src), (s.async = 1), (s.nonce = nonce), document.head.appendChild(s)
);

// Write a cookie (a non-blocking call in browsers, unlike reading document.cookie).
export var cset = (...a) => (document.cookie = cstr(...a));
