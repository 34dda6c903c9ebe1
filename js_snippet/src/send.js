// Sending (DESIGN.md §2): batches of at most 20 events as text/plain JSON {"site", "events"}.
// - flush 1 s after an event was queued, at once at 10 waiting events, and with
//   navigator.sendBeacon on pagehide / visibilitychange hidden (flush(truthy));
// - otherwise fetch(endpoint, {keepalive: true, credentials: "include"}), one at a time;
// - an event leaves the queue only once a request carrying it was answered 2xx (or a 4xx
//   other than 408/429, which no retry can fix: one bad event must not block the queue
//   forever) or was taken by sendBeacon. On a network error, 5xx, 408 or 429 it stays and is
//   retried with exponential backoff (1 s, 2 s, 4 s ... 60 s), and at once on `online`.
//   A resend after a lost answer repeats the event_id, which the collector drops;
// - the queue is bounded (200 events, the oldest go first) and kept in localStorage `tw_q`
//   only while analytics is granted (persist(true)), in memory otherwise.
import { T } from "./util.js";

var Q = [], // waiting events, oldest first
  F = 0, // how many of them (from the front) are in an unanswered fetch
  R = 0, // failures in a row
  tm, // the pending flush timer
  P, // keep the queue in localStorage
  EP,
  SITE,
  save = () => {
    try {
      P ? (localStorage.tw_q = JSON.stringify(Q)) : delete localStorage.tw_q;
    } catch (e) {}
  },
  later = (ms) => {
    clearTimeout(tm);
    tm = setTimeout(T(flush), ms);
  },
  sched = () => tm || later(1e3),
  done = (b) => {
    Q = Q.filter((e) => !b.includes(e));
    save();
  },
  body = (b) => JSON.stringify({ site: SITE, events: b });

export var queue = () => Q;

export var backoff = (n) => Math.min(6e4, 1e3 * 2 ** n);

export var persist = (on) => {
  P = on;
  save();
};

export var setup = (ep, site) => {
  EP = ep;
  SITE = site;
  try {
    Q = JSON.parse(localStorage.tw_q) || [];
  } catch (e) {}
  Q[0] && sched();
};

export var add = (e) => {
  Q.push(e);
  Q.splice(0, Q.length - 200);
  save();
  Q.length - F > 9 && !R ? flush() : sched();
};

export var flush = (hide, b) => {
  clearTimeout(tm);
  tm = 0;
  if (hide)
    // The page goes away: hand everything not in flight to the browser.
    while ((b = Q.slice(F, F + 20))[0] && navigator.sendBeacon(EP, body(b))) done(b);
  else if (!F && (b = Q.slice(0, 20))[0]) {
    fetch(EP, { method: "POST", body: body(b), keepalive: true, credentials: "include" })
      .then(
        (r) => (r = r.status) < 500 && r != 408 && r != 429,
        () => 0
      )
      .then((ok) => {
        F = 0;
        ok ? ((R = 0), done(b), Q[0] && sched()) : later(backoff(R++));
      });
    F = b.length; // after fetch(): if it threw, nothing is in flight
  }
};

export var online = () => {
  R = 0;
  flush();
};
