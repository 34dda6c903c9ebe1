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

// A random v4 UUID, made with crypto.getRandomValues (crypto.randomUUID exists only in
// secure contexts: one way for every page is smaller).
export var uuid = () =>
  ([1e7] + -1e3 + -4e3 + -8e3 + -1e11).replace(/[018]/g, (x) =>
    (x ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (x / 4)))).toString(16)
  );

// A cookie's value by name ("" when absent).
export var cookie = (n) =>
  decodeURIComponent((document.cookie.match("(^|;) ?" + n + "=([^;]*)") || "")[2] || "");
