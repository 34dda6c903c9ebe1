// The core of the tag at run time (DESIGN.md §2, §3): the consent state, events, page views,
// commands, auto-tracking, dataLayer, sending; the tag-manager engine (tags, triggers,
// variables) is src/engine.js, a separate file loaded only when it has something to do
// (below), and making consent decisions is src/decide.js's, loaded on first use (toDecide).
// `config` is the compact config the collector inlines (collector/tag/serving.py `core_config`): short
// keys, defaults left out, asset URLs as one version hash. A broken one makes start() throw,
// which tag.js catches: the page is never affected.
//
// Names: locals are written out, since esbuild shortens them in the build; property names,
// config keys and wire fields are not renamed by the build, so they stay as short as the
// protocol (DESIGN.md §2) has them.
//
// Main-thread cost: the first access of a page to document.cookie or the storages is a
// synchronous call to the browser process (for the storages a permission check and the
// storage's load too): milliseconds while the page loads, about one afterwards. So start()
// only reads the nonce, installs a queueing `tagwerk` and the listeners; boot() reads the
// cookies once (tw_consent, the session tw_s, the stored-queue flag tw_q), creates the
// first page view and replays what was queued, 300 ms after the window's load event (after
// start if the page had loaded; 4 s after start at the latest), or earlier when something
// needs it: a click, a submit, a scroll, a route change, the page being hidden, or
// tagwerk('consent', 'state'). Why 300 ms: right at load the browser process is still busy
// with the load, and the synchronous cookie read waits for it (A/B, 20 loads each: median
// 7.9 -> 6.2 ms main-thread wall time, p90 15.4 -> 8.0; requestIdleCallback came too early
// to help). The first page view keeps the time and URL of the tag's start.
// A normal visit touches neither storage: sessionStorage only when tw_s says a user id is
// kept there, localStorage only when tw_q says a queue was stored (send.js).
//
// The session (with analytics only): the first-party session cookie tw_s (no Max-Age, so it
// ends with the browser session, shared by the site's tabs, as GA4's), value
// "<session id>.<minute of last activity>[.u]", written when it changes (at most once a minute
// per page), a new id after session_timeout_minutes idle; ".u": the customer id (identify) is
// kept in sessionStorage tw_u, not in a cookie the browser sends to the shop's server with
// every request. Removed with analytics withdrawn and on reset.
//
// Order at boot: consent from the tw_consent cookie (or the defaults) -> debug
// (?tagwerk_debug=1) -> dataLayer so far (gtag consent) -> `consent` commands queued in
// tagwerk.q -> the page view -> dataLayer so far (events) -> the other queued commands.
// So the first page view carries the consent a CMP gave before boot (decide.js is loaded at
// start when the page has such calls, and the load event waits for it), and events pushed
// before boot come after the page view, as with GTM.
//
// The engine: a signal (what happened: {t: trigger type, el, p, e, id}) goes to the engine
// when it is loaded; until then it is logged with the consent state of its time and the
// dataLayer's length, for the current page. The engine is loaded (once, async, with the
// nonce) when a purpose some tag needs is granted, when debugging, or at boot when the
// container has timer or element_visible triggers; it replays the log first, so it fires
// and holds what it would have fired and held had it been there from the start.
import { cookie, cset, on, running, script, safe, uuid } from "./util.js";
import { list, read } from "./consent.js";
import { add, flush, online, persist, setup } from "./send.js";

// TW_BASIC, a constant of the build (build.mjs VARIANTS): true in tag.basic.js, which the
// collector serves for a container without automatic click events and without triggers
// other than page views, the default container (collector/tag/serving.py core_bundle). It leaves
// out the click event (the element's tag and text) and the trigger signals the engine needs
// only for other triggers (click, link, download, outbound, form, scroll, history change,
// custom event): about 100 B gzipped.
/* global TW_BASIC */
export var start = (config) => {
  var win = window,
    doc = document,
    loc = location,
    ownScript = running(),
    nonce = ownScript.nonce || "", // "" without CSP
    base = ownScript.src || loc, // paths resolve against the tag's own URL (the collector)
    autoSwitches = config.a || "psodxfe", // auto-tracking switches on, one letter each (collector/tag/serving.py AUTO)
    scrollThresholds = config.t || [25, 50, 75, 90],
    // The percents watched: with those of scroll_depth triggers (which only signal).
    scrollWatched = TW_BASIC ? scrollThresholds : [...scrollThresholds, ...(config.k || [])],
    sessionTimeout = config.m || 30, // minutes
    endpoint = new URL(config.e || "/collect", base),
    gpc = !!navigator.globalPrivacyControl,
    referrer = doc.referrer, // sent with the first page view only
    currentUrl = () => loc.href.slice(0, 4096),
    // The first page view's time and URL: when the tag started (boot may come later).
    started = { ts: Date.now(), url: currentUrl() },
    minuteNow = () => (Date.now() / 6e4) | 0,
    queued = (win.tagwerk || {}).q || [], // calls made before the tag ran, or before boot
    signalLog = [], // the signals of this page while the engine is not loaded
    booted,
    consentId, // the tw_consent cookie's consent id
    granted, // purpose -> granted
    decided, // a valid decision exists
    userId, // the customer id (kept only with analytics)
    session = [], // from tw_s: [id, minute of last activity, "u" if tw_u holds userId]
    sessionValue, // the tw_s value last read or written
    debugRecords, // window.__tagwerk_debug while debugging
    consentHandler, // decide.js's command function, once it has registered
    decideScript, // decide.js inserted
    waitingForDecide = [], // consent commands waiting for it
    debugScript, // debug.js inserted
    engine, // the engine's signal function, once it has registered
    engineScript, // the engine inserted
    lastPageUrl, // URL of the last page view
    scrollReached, // scroll thresholds reached on this page
    dataLayer,
    // Debug records (README "Debug overlay"): pushed, one by one, to window.__tagwerk_debug.
    debug = (record) => {
      if (debugRecords) debugRecords.push(record);
    },
    // One of the tag's files (/t/<name>, this version), async, with the nonce (the others
    // load their own scripts: the engine a tag's, decide.js the banner).
    loadFile = (name) => script(new URL("/t/" + name + "?v=" + config.v, base), nonce),
    sessionAlive = (minute) => session[1] && minute - session[1] <= sessionTimeout,
    // One event: the common fields, the session (only with analytics), then the queue.
    sendEvent = (fields) => {
      var event = {
        event_id: uuid(),
        ts: Date.now(), // epoch ms (the collector takes ISO 8601 or that): no Date object
        consent: list(granted),
        url: currentUrl(),
        title: doc.title.slice(0, 1024),
        screen: screen.width + "x" + screen.height,
        ...fields,
      };
      if (granted.analytics) {
        var minute = minuteNow();
        if (!sessionAlive(minute)) {
          // Idle too long here: another tab may have kept the session alive (one more read);
          // else a new session starts.
          if (session[1]) session = cookie("tw_s").split(".");
          if (!sessionAlive(minute)) session = [uuid(), minute];
        }
        session[1] = minute;
        if (userId) {
          session[2] = "u";
          event.user_id = userId;
        }
        var value = session.join(".");
        if (value != sessionValue) cset("tw_s", (sessionValue = value), config.d);
        event.session_id = session[0];
      }
      debug({ kind: "event", payload: event });
      add(event);
    },
    // Forget the session and the customer id (their cookie and storage, if any).
    forgetUser = () => {
      if (sessionValue) cset("tw_s", "", config.d, 0);
      if (userId || session[2]) safe(() => delete sessionStorage.tw_u)();
      userId = sessionValue = undefined;
      session = [];
    },
    sendPageView = (fields) => {
      sendEvent({ event: "page_view", referrer, ...fields });
      referrer = undefined;
    },
    signal = (what) => {
      if (engine) engine(what);
      else if (config.n) signalLog.push([what, { ...granted }, dataLayer.length]);
    },
    // The engine, when it has something to do (config.n: the purposes tags need; config.w:
    // timers or visibility to watch from the start).
    loadEngineIfNeeded = () => {
      if (config.n && (config.w || debugRecords || config.n.split(",").some((purpose) => granted[purpose])))
        engineScript ||= loadFile(config.s + "/tm.js");
    },
    // Auto-tracking: the event when its switch (a letter of autoSwitches) is on; the trigger
    // signal (not in the basic build, which the collector serves only to containers without
    // such triggers).
    autoTrack = (letter, type, props, element) => {
      if (autoSwitches.includes(letter)) sendEvent({ event: type, props });
      if (!TW_BASIC) signal({ t: type, el: element });
    },
    // Consent commands and gtag consent entries go to decide.js, loaded on first use (or at
    // start, when the page has some already), and wait for it in order.
    loadDecide = () => (decideScript ||= loadFile("decide.js")),
    toDecide = (args) => {
      if (consentHandler) return consentHandler(args);
      waitingForDecide.push(args);
      loadDecide();
    },
    // The commands: tagwerk(name, value, extra) calls commands[name](value, extra, args).
    commands = {
      track: (name, props) => {
        if (name) {
          sendEvent({ event: name, props });
          if (!TW_BASIC) signal({ t: "custom_event", e: name });
        }
      },
      page: () => sendPageView(),
      identify: (id, props) => {
        if (id != null) {
          if (granted.analytics && id != userId) {
            userId = id;
            safe(() => (sessionStorage.tw_u = id))();
          }
          sendEvent({ event: "identify", type: "identify", user_id: id, props });
        }
      },
      // Sign-out: forget the customer and start a new session (a shared device).
      reset: forgetUser,
      debug: (on) => {
        debugRecords = on && (win.__tagwerk_debug ||= []);
        if (debugRecords) {
          debugScript ||= loadFile("debug.js");
          loadEngineIfNeeded();
          loadDecide();
        }
      },
      // The engine registers itself: it gets what it needs and replays the log.
      tm: (init) => (engine ||= init({ g: () => granted, l: signalLog, dbg: debug })),
      // So does decide.js: it reads and sets the state through these.
      cx: (init) => {
        if (!consentHandler) {
          consentHandler = safe(
            init({
              c: config,
              s: () => [granted, decided, consentId],
              // The new state (isDecision: a decision): held tags whose purpose is granted
              // now fire, storage and identifiers follow analytics.
              set: (state, isDecision) => {
                granted = state;
                decided = isDecision || decided;
                if (engine) engine();
                persist(granted.analytics);
                if (!granted.analytics) forgetUser();
                loadEngineIfNeeded();
              },
              dbg: debug,
            })
          );
          waitingForDecide.forEach(consentHandler);
        }
      },
      // The answer to 'state' is decide.js's, and returned.
      consent: (value, extra, args) => toDecide(args),
    },
    command = safe((args) => {
      var handler = commands[args[0]];
      return handler && handler(args[1], args[2], args);
    }),
    // A dataLayer entry. phase: 1 = before the first page view (consent only), 2 = after it
    // (events), undefined = a live push (everything). The engine keeps GTM's data model.
    onDataLayer = safe((entry, phase) => {
      if (entry && entry[0] == "consent") {
        // gtag('consent', 'default'|'update', {...}) pushes its `arguments`.
        if (phase != 2) toDecide(["gcm", entry[1], entry[2]]);
      } else if (entry && phase != 1) {
        // gtag('event', name, params) pushes its `arguments`: params with items are GA4
        // e-commerce (GA4 requires items on every e-commerce event). Other arguments
        // objects (gtag('config', ...) and such) are not events.
        if (entry[0] == "event") entry = { event: entry[1], ecommerce: (entry[2] || 0).items && entry[2] };
        if (entry.length == null && entry.event) {
          if (!TW_BASIC) signal({ t: "custom_event", e: entry.event });
          // GA4 e-commerce goes as pushed: the collector maps it (collector/ingest/events.py).
          if (autoSwitches.includes("e") && entry.ecommerce)
            sendEvent({ event: entry.event, ecommerce: entry.ecommerce });
        }
      }
    }),
    // A page view: the first, or a new URL after an SPA route change.
    pageChange = (isRoute) => {
      var url = isRoute ? currentUrl() : started.url;
      if (url != lastPageUrl) {
        lastPageUrl = url;
        signalLog = [];
        scrollReached = {};
        if (autoSwitches.includes("p") && (!isRoute || autoSwitches.includes("s"))) sendPageView(!isRoute && started);
        signal({ t: "page_view" });
        if (!TW_BASIC && isRoute) signal({ t: "history_change" });
      }
    },
    routeChange = () => pageChange(1),
    // One document.cookie read for the boot (cookieStore.getAll() was measured: in Chromium
    // its first use costs more main thread than the synchronous read, README).
    boot = () => {
      if (booted) return;
      booted = 1;
      safe(() => {
        var cookies = doc.cookie;
        [consentId, granted, decided] = read(cookie("tw_consent", cookies), config, gpc);
        session = (sessionValue = cookie("tw_s", cookies)).split(".");
        if (!sessionAlive(minuteNow())) session = [];
        // The customer id only when the live session says it is kept (one storage access);
        // without analytics, a session cookie left over goes.
        if (!granted.analytics) forgetUser();
        else if (session[2]) safe(() => (userId = sessionStorage.tw_u))();
        setup(endpoint, config.s, granted.analytics, cookie("tw_q", cookies));
        dataLayer = win.dataLayer = win.dataLayer || [];
        var earlier = [...dataLayer],
          push = dataLayer.push;
        // Each entry is in the array before it is handled (the engine's model reads it there).
        dataLayer.push = (...entries) => {
          entries.forEach((entry) => {
            push.call(dataLayer, entry);
            onDataLayer(entry);
          });
          return dataLayer.length;
        };
        if (loc.search.includes("tagwerk_debug=1")) command(["debug", 1]);
        earlier.forEach((entry) => onDataLayer(entry, 1));
        queued.forEach((args) => args[0] == "consent" && command(args));
        pageChange();
        earlier.forEach((entry) => onDataLayer(entry, 2));
        queued.forEach((args) => args[0] != "consent" && command(args));
        loadEngineIfNeeded();
      })();
    },
    // A listener that boots first: nothing that happens before boot is lost.
    onAndBoot = (target, type, listener, capture) =>
      on(
        target,
        type,
        (event) => {
          boot();
          listener(event);
        },
        capture
      ),
    // Boot 300 ms after the page has loaded (see the header); then, without a decision and a
    // CMP, ask.
    afterLoad = () =>
      setTimeout(
        safe(() => {
          boot();
          if (!decided) toDecide(["consent", "show"]);
        }),
        300
      );

  // Until boot, calls are queued (in order); 'state' answers at once, so it boots.
  // decide.js registers at once, also before boot. x: the tag is running (tag.js).
  (win.tagwerk = (...args) => {
    if (args[1] == "state") boot();
    return booted || args[0] == "cx" ? command(args) : queued.push(args);
  }).x = 1;
  // Consent already on the page (a CMP's gtag defaults, queued commands): decide.js now, so
  // that it is there at boot (the load event waits for it) and the first page view has it.
  if ([...(win.dataLayer || []), ...queued].some((entry) => entry && entry[0] == "consent")) loadDecide();

  ["pushState", "replaceState"].forEach((method) => {
    var original = history[method];
    history[method] = function () {
      var result = original.apply(this, arguments);
      safe(() => {
        boot();
        routeChange();
      })();
      return result;
    };
  });
  // popstate: back and forward, and every change of the hash (browsers fire it before
  // hashchange for each fragment navigation: one listener for both).
  onAndBoot(win, "popstate", routeChange);
  onAndBoot(
    doc,
    "click",
    (event) => {
      var element = event.target;
      if (!TW_BASIC)
        autoTrack("c", "click", { tag: element.tagName, text: element.textContent.trim().slice(0, 99) }, element);
      var link = element.closest("a[href]");
      if (link) {
        var props = { url: link.href };
        if (!TW_BASIC) signal({ t: "link_click", el: link }); // a trigger's only: no such event
        // A download by the file extension (config.x: the container's list), else outbound.
        if (
          (config.x || "pdf zip csv xlsx docx mp3 mp4 dmg exe")
            .split(" ")
            .includes(link.pathname.split(".").pop().toLowerCase())
        )
          autoTrack("d", "file_download", props, link);
        else if (link.host != loc.host && link.protocol.startsWith("http"))
          autoTrack("o", "outbound_link", props, link);
      }
    },
    true
  );
  onAndBoot(
    doc,
    "submit",
    (event) => {
      var form = event.target;
      autoTrack("f", "form_submit", { id: form.getAttribute("id"), action: form.getAttribute("action") }, form);
    },
    true
  );
  onAndBoot(win, "scroll", () => {
    var percent = ((scrollY + innerHeight) / doc.documentElement.scrollHeight) * 100;
    scrollWatched.forEach((threshold) => {
      if (percent >= threshold && !scrollReached[threshold]) {
        scrollReached[threshold] = 1;
        // The event for the container's thresholds; a trigger's own percent only signals.
        if ((TW_BASIC || scrollThresholds.includes(threshold)) && autoSwitches.includes("x"))
          sendEvent({ event: "scroll_depth", props: { percent: threshold } });
        if (!TW_BASIC) signal({ t: "scroll_depth", p: threshold });
      }
    });
  });
  // pagehide passes its event: flush(truthy), hand everything to sendBeacon.
  onAndBoot(win, "pagehide", flush);
  onAndBoot(doc, "visibilitychange", () => {
    if (doc.hidden) flush(1);
  });
  on(win, "online", online);
  if (doc.readyState == "complete") afterLoad();
  else {
    on(win, "load", afterLoad);
    setTimeout(safe(boot), 4e3);
  }
};
