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
import { cset, safe } from "./util.js";

var waiting = [], // events not sent yet, oldest first
  inFlight = 0, // how many of them (from the front) are in an unanswered fetch
  failures = 0, // failed requests in a row
  timer, // the pending flush
  keepStored, // keep the queue in localStorage (analytics granted)
  stored, // tw_q holds a queue (the tw_q cookie says so)
  storedRead, // tw_q has been read (or there was none)
  endpoint,
  site,
  markStored = (isStored) => cset("tw_q", (stored = isStored), "", isStored ? 4e7 : 0),
  // save(): read tw_q once, the first time, if stored (the stored events, an earlier page's,
  // go before this page's; no fetch is in flight yet then, so inFlight stays right);
  // save(1): then store what is left (with analytics), or remove the stored copy.
  save = (write) => {
    try {
      if (!storedRead) {
        storedRead = 1;
        if (stored) waiting = [...JSON.parse(localStorage.tw_q || "[]"), ...waiting].slice(-200);
      }
      if (write) {
        if (keepStored && waiting[0]) {
          localStorage.tw_q = JSON.stringify(waiting);
          if (!stored) markStored(1);
        } else if (stored) {
          delete localStorage.tw_q;
          markStored(0);
        }
      }
    } catch (e) {}
  },
  flushIn = (ms) => {
    clearTimeout(timer);
    timer = setTimeout(safe(flush), ms);
  },
  schedule = () => {
    if (!timer) flushIn(5e3);
  },
  remove = (batch) => (waiting = waiting.filter((event) => !batch.includes(event))),
  body = (batch) => JSON.stringify({ site, events: batch });

export var queue = () => waiting;

export var backoff = (failures) => Math.min(6e4, 1e3 * 2 ** failures);

// Granting only sets the mode (the next flush writes); withdrawing removes the stored copy at
// once (after taking its events into memory).
export var persist = (on) => {
  keepStored = on;
  if (storedRead || !on) save(1);
};

// analytics: granted at start; isStored: the tw_q cookie is set. Storage is left alone until
// the first flush (5 s), and then too unless isStored.
export var setup = (url, siteId, analytics, isStored) => {
  endpoint = url;
  site = siteId;
  keepStored = analytics;
  stored = isStored;
  schedule();
};

// A copy of the event goes in: the page may change what it pushed (props, a GA4 ecommerce
// object) before the send, and what cannot be sent (a cycle, a BigInt) throws here, into the
// caller's safe(), instead of at every flush.
export var add = (event) => {
  waiting = [...waiting, JSON.parse(JSON.stringify(event))].slice(-200);
  if (waiting.length - inFlight > 9 && !failures) flush();
  else schedule();
};

export var flush = (hide) => {
  var batch;
  clearTimeout(timer);
  timer = 0;
  save();
  if (hide) {
    // The page goes away: hand everything not in flight to the browser, store the rest.
    while ((batch = waiting.slice(inFlight, inFlight + 20))[0] && navigator.sendBeacon(endpoint, body(batch)))
      remove(batch);
    save(1);
  } else if (!inFlight && (batch = waiting.slice(0, 20))[0]) {
    fetch(endpoint, { method: "POST", body: body(batch), keepalive: true, credentials: "include" })
      .then(
        (response) => response.status,
        () => 500 // a network error: retried as a 5xx is
      )
      .then((status) => {
        inFlight = 0;
        // Done: 2xx, or a 4xx that no retry can fix.
        if (status < 500 && status != 408 && status != 429) {
          failures = 0;
          remove(batch);
          if (waiting[0]) schedule();
        } else flushIn(backoff(failures++));
        save(1);
      });
    inFlight = batch.length; // after fetch(): if it threw, nothing is in flight
  }
};

export var online = () => {
  failures = 0;
  flush();
};
