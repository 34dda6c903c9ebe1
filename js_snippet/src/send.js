// Sending (DESIGN.md §2): batches of at most 20 events as text/plain JSON {"site", "events"}.
// - flush 5 s after an event was queued, at once at 10 waiting events, and with
//   navigator.sendBeacon on pagehide / visibilitychange hidden (flush(truthy)). 5 s, not
//   less: the first request of a page (fetch's first use costs about 1 ms of main thread in
//   Chromium) then comes after the page's load, not during it (bench/tag_mainthread.py), and
//   leaving the page sends at once, so the next page's requests see every event before;
//   Segment's batching waits as long;
// - otherwise fetch(endpoint, {keepalive: true, credentials: "include"}), one at a time;
// - an event leaves the queue only once a request carrying it was answered 2xx (or a 4xx
//   other than 408/429, which no retry can fix: one bad event must not block the queue
//   forever) or was taken by sendBeacon. On a network error, 5xx, 408 or 429 it stays and is
//   retried with exponential backoff (1 s, 2 s, 4 s ... 60 s), and at once on `online`.
//   A resend after a lost answer repeats the event_id, which the collector drops;
// - the queue is bounded (200 events, the oldest go first) and kept in localStorage `tw_q`
//   only while analytics is granted (persist(true)), in memory otherwise.
// Main-thread cost: the first localStorage access of a page is a synchronous call into the
// browser (a storage permission check, then loading the origin's storage: milliseconds), so
// a normal visit never touches localStorage: `tw_q` is written only when events are left
// over at a flush outcome (a failure, the page hidden with a request in flight), and then a
// first-party cookie `tw_q=1` (host-only, like localStorage; 400 days) says so. The tag
// reads that cookie at boot with tw_consent (setup(..., stored)); only then is `tw_q` read,
// once, at the first flush (5 s after setup, or pagehide; or a withdrawal of analytics),
// its events going before this page's. Once the queue is empty again, `tw_q` and the
// cookie are removed.
import { cset, T } from "./util.js";

var Q = [], // waiting events, oldest first
  F = 0, // how many of them (from the front) are in an unanswered fetch
  R = 0, // failures in a row
  tm, // the pending flush timer
  P, // keep the queue in localStorage
  H, // tw_q holds a queue (the tw_q cookie says so)
  LD, // tw_q has been read (or there was none)
  EP,
  SITE,
  mark = (h) => cset("tw_q", (H = h), "", h ? 4e7 : 0),
  // save(): read tw_q once, the first time, if stored (the stored events, an earlier page's,
  // go before this page's; no fetch is in flight yet then, so F stays right); save(1): then
  // store what is left (with analytics), or remove the stored copy.
  save = (w) => {
    try {
      LD || ((LD = 1), H && (Q = [...JSON.parse(localStorage.tw_q || "[]"), ...Q].slice(-200)));
      w && (P && Q[0] ? ((localStorage.tw_q = JSON.stringify(Q)), H || mark(1)) : H && (delete localStorage.tw_q, mark(0)));
    } catch (e) {}
  },
  later = (ms) => {
    clearTimeout(tm);
    tm = setTimeout(T(flush), ms);
  },
  sched = () => tm || later(5e3),
  rm = (b) => (Q = Q.filter((e) => !b.includes(e))),
  body = (b) => JSON.stringify({ site: SITE, events: b });

export var queue = () => Q;

export var backoff = (n) => Math.min(6e4, 1e3 * 2 ** n);

// Granting only sets the mode (the next flush writes); withdrawing removes the stored copy at
// once (after taking its events into memory).
export var persist = (on) => {
  P = on;
  (LD || !on) && save(1);
};

// p: analytics granted at start; h: the tw_q cookie is set. Storage is left alone until the
// first flush (5 s), and then too unless h.
export var setup = (ep, site, p, h) => {
  EP = ep;
  SITE = site;
  P = p;
  H = h;
  sched();
};

// A copy of the event goes in: the page may change what it pushed (props, a GA4 ecommerce
// object) before the send, and what cannot be sent (a cycle, a BigInt) throws here, into the
// caller's T, instead of at every flush.
export var add = (e) => {
  Q = [...Q, JSON.parse(JSON.stringify(e))].slice(-200);
  Q.length - F > 9 && !R ? flush() : sched();
};

export var flush = (hide, b) => {
  clearTimeout(tm);
  tm = 0;
  save();
  if (hide) {
    // The page goes away: hand everything not in flight to the browser, store the rest.
    while ((b = Q.slice(F, F + 20))[0] && navigator.sendBeacon(EP, body(b))) rm(b);
    save(1);
  } else if (!F && (b = Q.slice(0, 20))[0]) {
    fetch(EP, { method: "POST", body: body(b), keepalive: true, credentials: "include" })
      .then(
        (r) => (r = r.status) < 500 && r != 408 && r != 429,
        () => 0
      )
      .then((ok) => {
        F = 0;
        ok ? ((R = 0), rm(b), Q[0] && sched()) : later(backoff(R++));
        save(1);
      });
    F = b.length; // after fetch(): if it threw, nothing is in flight
  }
};

export var online = () => {
  R = 0;
  flush();
};
