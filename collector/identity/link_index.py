"""The identity links held in the engine's memory (``clickhouse/0032``), for resolutions that
read no table, and which of them are too new to trust; with them the consent decisions by
id (``clickhouse/0052``), which a profile lists, and on the embedded engine a copy of the
persons' hits by key (``clickhouse/0054``), which it is computed from, kept the same way.

A cold profile resolves who it is about from the links of a few identifiers and the
identifiers a few persons hold (``graph.SEEN``, ``HELD``, ``LINKS_OF``): three table reads of
8-11 ms each on the 10M bench, where the same keys cost 3 ms as a dictGet. The dictionaries
are a copy as of their last load, so the index follows the change feed (``changes.py``):
every new link's keys (``link:<kind>:<id>``, ``link:user:<id>``), decision's
(``consent:<id>``) and hit's (``device:<id>``...) are *stale* until the next load, and a
resolution that depends on a stale key is read from the tables again
(``resolutions.resolve_kept``), as is a stale decision, and a person with a stale hit key
(``profile.profiles_and_keys``). What the feed cannot follow row by row (an
erasure, a merge, a burst) makes the whole copy stale until it is loaded again: the tables
answer meanwhile.

The hits' copy is a table (EmbeddedRocksDB: a point read per key, where person_hits' primary
key search costs 22-45 ms for a batch of 32 persons on the 10M bench), brought up to date
apart from the links (``refresh_hits``, its own pace): built whole once the links are
loaded, after an erasure, what the feed cannot follow or a pause of the feed, and every
``HITS_MAX_AGE`` (11-26 s of one core for the bench's 8M rows); otherwise only its stale keys
are read again, ``RELOAD_AFTER`` seconds after the last refresh at the earliest. Builds and
refreshes each take at most a twentieth of the time too (``LOAD_SHARE``): after an erasure
the tables answer until the next build is due. It is kept
on the embedded engine alone, whose loads are all this process's: an erasure cancels a
build under way and empties the copy before it answers.

The index loads in its own thread, once a resolution asks for it (a collector nobody asks
for profiles holds nothing): then after ``RELOAD_AFTER`` seconds with stale links, soon
(``MIN_INTERVAL``) when everything is stale, and every ``MAX_AGE`` whatever happened (links a
retention TTL removed are no news to the feed); never sooner than ``LOAD_SHARE`` times the
last load's duration after it, so that loads take at most a twentieth of the engine's time
(3 s for the 10M bench's 640k identifiers on a slow machine), as the hits' copy's builds and
its refreshes each do. While a copy is in use it
keeps the feed watching. An erasure drops it before it answers (``forget_erased``),
cancelling a load under way: no erased identifier stays in this collector's memory.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import orjson

from collector.identity.changes import CONSENT, LINK, ChangeFeed
from collector.storage import StorageError, Store

log = logging.getLogger("tagwerk.links")

DICTIONARIES = ("tagwerk.identity_links_dict", "tagwerk.identity_held_dict",
                "tagwerk.consent_decisions_dict")
# The keys of the feed's changes that make the links or the decisions stale (any other key is
# a hit's, of person_hits).
FOLLOWED = (LINK, CONSENT)
RELOAD_AFTER = 60.0  # seconds a copy with stale keys is kept before loading it again
MIN_INTERVAL = 10.0  # between loads when everything went stale (a burst must not reload
#                      the whole graph over and over)
MAX_AGE = 600.0
# How long an unload waits for the queries that still hold a detached dictionary.
ATTACH_SECONDS = 30.0
STILL_USED = "Code: 57. "  # TABLE_ALREADY_EXISTS, as the engine answers a held one
LOAD_SHARE = 20  # a load waits at least this many times the last one's duration
# The log comment of the dictionaries' source queries (clickhouse/0053) and of the hits'
# copy's builds and refreshes: an erasure cancels a load under way by it.
LOADING = "tagwerk: identity links in memory"
CANCEL_EVERY = 0.05  # seconds between an erasure's cancellations of loads, until it may drop
#                     the copy
MOST_STALE = 10_000  # stale keys remembered; beyond, everything is stale
# The hits' copy (clickhouse/0054): the live table, and the one a whole build fills.
HITS_COPY, HITS_NEXT = "tagwerk.person_hits_copy", "tagwerk.person_hits_copy_next"
HITS_PER_KEY = 2_000  # a key's hits the copy holds; a person with a key past it reads the table
MOST_STALE_HITS = 50_000  # stale hit keys remembered (a few MB); beyond, the hits' copy is
#                          stale, and built whole when builds' pace allows
HITS_MAX_AGE = 3600.0  # seconds between whole builds (rows a retention removed are no news
#                        to the feed)
HITS_REFRESHED_AT_ONCE = 5_000  # stale keys read again per statement

# The values of some identifiers, each a JSON text that repeats its key: a hash collision
# must not pass one key's value off as another's.
LINKS = f"""
SELECT dictGetOrDefault('{DICTIONARIES[0]}', 'value', cityHash64({{site:String}}, k.1, k.2), '')
    AS v
FROM (SELECT arrayJoin(arrayZip({{kinds:Array(String)}}, {{ids:Array(String)}})) AS k)
"""
# Some consent decisions, each a JSON array that repeats its key (0052).
DECISIONS = f"""
SELECT dictGetOrDefault('{DICTIONARIES[2]}', 'value', cityHash64({{site:String}}, c), '') AS v
FROM (SELECT arrayJoin({{ids:Array(String)}}) AS c)
"""
# Each (site, key)'s hits as person_hits holds them, packed (clickhouse/0031), joined by
# commas; '' past HITS_PER_KEY. Read in key order, in small blocks, on one thread: the
# build's memory stays bounded (0054), and a load leaves the other core to ingestion.
_HITS_SELECT = (
    "SELECT concat(site_id, '\\0', key) AS k, "
    f"if(count() > {HITS_PER_KEY}, '', "
    f"arrayStringConcat(groupArray({HITS_PER_KEY + 1})(hit), ',')) "
    "FROM tagwerk.person_hits {where}GROUP BY site_id, key "
    "SETTINGS optimize_aggregation_in_order = 1, max_threads = 1, max_block_size = 4096, "
    "max_insert_block_size = 4096, min_insert_block_size_rows = 4096, "
    f"min_insert_block_size_bytes = 8388608, log_comment = '{LOADING}'")
BUILD_HITS = f"INSERT INTO {HITS_NEXT} " + _HITS_SELECT.replace("{where}", "")
REFRESH_HITS = f"INSERT INTO {HITS_COPY} " + _HITS_SELECT.replace(
    "{where}", "WHERE site_id = {site:String} AND key IN {keys:Array(String)} ")
# The copy's own row: which build it is (a JSON string), so that a reader tells a copy
# emptied or built by another index (one in another thread of this process: tests) from
# keys without hits. (A site id is never empty: no key starts with the NUL.)
BUILD_KEY = "\0build"
MARK_BUILD = f"INSERT INTO {HITS_NEXT} SELECT {{k:String}}, toJSONString({{build:String}})"
# Some keys' hits from the copy, one JSON array a line: [k, [hit, ...]] ([] past HITS_PER_KEY).
HITS = (f"SELECT concat('[', toJSONString(k), ',[', hits, ']]') FROM {HITS_COPY} "
        "WHERE k IN {keys:Array(String)}")

# The loads under way, anyone's: their source queries (by LOADING).
CANCEL_LOADS = "KILL QUERY WHERE Settings['log_comment'] = {comment:String} ASYNC"
# Whether the engine holds any of the dictionaries in memory, whoever loaded it.
IN_MEMORY = """
SELECT count() AS n FROM system.dictionaries
WHERE database = 'tagwerk' AND name IN {names:Array(String)} AND status != 'NOT_LOADED'
"""
# Some persons' held identifiers, each person's row with the links of what they hold ('a': the
# person, 'v': their value, 'links': [kind, id, value] each), in one statement: a statement
# costs milliseconds however little it reads, and one lookup per person with the links
# looked up beside it costs 3.9 ms where a UNION of the two lookups cost 5.1 (10M bench).
# (Identifiers a colliding value names are looked up too; the reader checks the keys and
# skips them.)
_LINKS_OF_PAIR = (f"k -> (k.1, k.2, dictGetOrDefault('{DICTIONARIES[0]}', 'value', "
                  "cityHash64({site:String}, k.1, k.2), ''))")
HELD_AND_LINKS = f"""
SELECT pid AS a, v, arrayMap({_LINKS_OF_PAIR},
    JSONExtract(v, 'Tuple(String, String, Array(Tuple(String, String)))').3) AS links
FROM (SELECT pid, dictGetOrDefault('{DICTIONARIES[1]}', 'value', cityHash64({{site:String}}, pid),
                                   '') AS v
      FROM (SELECT arrayJoin({{pids:Array(String)}}) AS pid))
"""
# The links of some more identifiers (anchors that are not user ids), as one more row.
AND_LINKS_OF = f"""
UNION ALL
SELECT '' AS a, '' AS v,
       arrayMap({_LINKS_OF_PAIR}, arrayZip({{kinds:Array(String)}}, {{ids:Array(String)}}))
"""


class LoadCancelled(StorageError):
    """An erasure cancelled the load under way: what it read may hold the erased rows."""


class LinkIndex:
    def __init__(self, store: Store, feed: ChangeFeed, reload_after: float = RELOAD_AFTER,
                 min_interval: float = MIN_INTERVAL, max_age: float = MAX_AGE,
                 copy_hits: bool = True) -> None:
        self.store, self.feed = store, feed
        self.reload_after, self.min_interval, self.max_age = reload_after, min_interval, max_age
        self._lock = threading.Lock()
        self._generation = 0  # copies loaded so far
        self._loaded = False  # a copy of ours is in memory
        self._loaded_at = float("-inf")
        self._stale: set[tuple[str, str]] = set()  # (site, link key) newer than the copy
        self._all_stale = True
        # Decisions apart: every new visitor's banner stores one, and their churn must not
        # make the links stale nor load the copy sooner (a stale decision costs a few ids
        # read from the table); past MOST_STALE only the decisions are all stale.
        self._stale_decisions: set[tuple[str, str]] = set()  # (site, consent key)
        self._decisions_all_stale = False
        # The hits' copy, on the embedded engine (module docstring): whether it holds every
        # key as of its build (built since this start, not emptied since), which build, in
        # which watch of the feed, when and how long that took, and its keys newer than the
        # copy (stale alone: a hit's keys are no link's).
        self._hits_kept = copy_hits and store.kind == "embedded"
        self._hits_ready = False
        self._hits_build = ""  # the build it holds (BUILD_KEY)
        self._hits_epoch = -1
        self._hits_built_at = float("-inf")
        self._hits_tried_at = float("-inf")  # a whole build last began, whatever its end
        self._hits_build_took = 0.0
        self._hits_refreshed_at = float("-inf")  # its stale keys last read again
        self._hits_took = 0.0  # seconds that took
        self._hits_refreshes = 0  # builds and refreshes (``refresh_hits``)
        self._stale_hits: set[tuple[str, str]] = set()  # (site, person_hits key)
        self._hits_all_stale = True
        # Changes reported while a copy loads: they may or may not be in it.
        self._during: set[tuple[str, str]] | None = None
        self._during_all = False
        self._during_decisions_all = False
        self._during_hits_all = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._load_lock = threading.RLock()  # one load (or unload) at a time
        self._epoch = -1  # the feed's watch the copy was loaded in (ChangeFeed.epoch)
        self._took = 0.0  # seconds the last load took
        # Erasures under way, and begun so far: a load that overlaps one is no copy (it may
        # have been cancelled, and a cancelled load may also end as if complete).
        self._erasing = 0
        self._erasures = 0
        self._asked = float("-inf")  # when a resolution last wanted the copy
        # Before the kept answers hear of a change (cache.PersonAnswers), the index knows it:
        # an answer recomputed at once must not resolve from the stale copy.
        feed.listeners.insert(0, self.changed)
        # A copy in use keeps the feed watching: were it to stop, the copy would have to be
        # loaded again (whatever was stored meanwhile went unseen).
        feed.needed.append(self._in_use)

    def start(self) -> None:
        """Load when first asked (``begin``), if the feed can tell what is newer than the
        copy: a collector nobody asks for profiles holds nothing."""
        if not self.feed.usable:
            return
        self._stop.clear()  # again after ``stop``
        self._thread = threading.Thread(target=self._run, name="link-index", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    # -- what the feed reports ----------------------------------------------------------------

    def changed(self, changes: dict[str, set[str]] | None) -> None:
        with self._lock:
            if changes is None:
                self._all_stale = self._hits_all_stale = True
                self._during_all = self._during_hits_all = True
            else:
                new = {(site, key) for site, keys in changes.items() for key in keys
                       if self._hits_kept or key.startswith(FOLLOWED)}
                self._stale |= {pair for pair in new if pair[1].startswith(LINK)}
                self._stale_decisions |= {pair for pair in new if pair[1].startswith(CONSENT)}
                self._stale_hits |= {pair for pair in new if not pair[1].startswith(FOLLOWED)}
                if self._during is not None:
                    self._during |= new
                    # Past what the stale sets would hold (new hits' keys, mostly): the hits'
                    # copy is all stale, and the hits' keys no longer remembered.
                    if len(self._during) > 2 * MOST_STALE + MOST_STALE_HITS:
                        self._hits_all_stale = self._during_hits_all = True
                        self._stale_hits.clear()
                        self._during = {pair for pair in self._during
                                        if pair[1].startswith(FOLLOWED)}
                if len(self._stale) > MOST_STALE:
                    self._all_stale = True
                    self._stale.clear()
                if len(self._stale_decisions) > MOST_STALE:
                    self._decisions_all_stale = self._during_decisions_all = True
                    self._stale_decisions.clear()
                if len(self._stale_hits) > MOST_STALE_HITS:
                    self._hits_all_stale = self._during_hits_all = True
                    self._stale_hits.clear()
            if self._all_stale:
                self._wake.set()

    # -- lookups --------------------------------------------------------------------------------

    def begin(self) -> int | None:
        """Before a resolution (the feed watching: ``PersonAnswers.begin``): a token for
        ``fresh``, or None when the copy is not usable (none loaded yet, everything stale,
        or the feed stopped watching since it loaded, so changes may have gone unseen):
        then read the tables, and the copy is loaded again in the background."""
        with self._lock:
            self._asked = time.monotonic()
            if self._usable():
                return self._generation
        self._wake.set()
        return None

    def _in_use(self) -> bool:
        with self._lock:
            return self._loaded and time.monotonic() - self._asked < self.max_age

    def _usable(self) -> bool:
        return (self._loaded and not self._all_stale
                and self.feed.watching and self.feed.epoch == self._epoch)

    def fresh(self, site_id: str, keys: Iterable[str], token: int) -> bool:
        """Whether a resolution begun at ``token`` depends on no key newer than the copy it
        read (``resolutions.link_keys``): the same copy still, nothing stale among them."""
        with self._lock:
            return (token == self._generation and self._usable()
                    and not any(self._is_stale((site_id, key)) for key in keys))

    def _is_stale(self, pair: tuple[str, str]) -> bool:
        if pair[1].startswith(LINK):
            return pair in self._stale
        if pair[1].startswith(CONSENT):
            return self._decisions_all_stale or pair in self._stale_decisions
        return not self._hits_usable() or pair in self._stale_hits

    def _hits_usable(self) -> bool:
        """The hits' copy holds every key as of its build, and the feed has watched since."""
        return (self._hits_ready and not self._hits_all_stale and self.feed.watching
                and self.feed.epoch == self._hits_epoch)

    def links(self, site_id: str, pairs: list[tuple[str, str]]
              ) -> dict[tuple[str, str], tuple[int, list[dict[str, str]]]]:
        """Per identifier found: how many links it has, and its first 500 by time (rows as
        ``graph.LINKS_OF``'s). An identifier without links is left out; one whose value
        names another key (a hash collision) raises LookupError."""
        rows = self.store.rows(LINKS, {"site": site_id, "kinds": [k for k, _ in pairs],
                                       "ids": [i for _, i in pairs]})
        found: dict[tuple[str, str], tuple[int, list[dict[str, str]]]] = {}
        for pair, row in zip(pairs, rows, strict=True):
            _links_of(site_id, pair, row["v"], found)
        return found

    def decisions(self, site_id: str, ids: list[str]) -> dict[str, Any]:
        """Per consent id found, its last decision as ``profile.DECISIONS`` reads it:
        ``[[granted, denied, how, policy], at]``. An id without one is left out; one whose
        value names another key (a hash collision) raises LookupError."""
        rows = self.store.rows(DECISIONS, {"site": site_id, "ids": ids})
        found: dict[str, Any] = {}
        for consent_id, row in zip(ids, rows, strict=True):
            if row["v"]:
                site, key, decision, at = orjson.loads(row["v"])
                if (site, key) != (site_id, consent_id):
                    raise LookupError(f"consent_decisions_dict: another key under {consent_id}")
                found[consent_id] = [decision, at]
        return found

    def hits(self, site_id: str, keys: list[str]) -> tuple[dict[str, list[Any]], set[str]]:
        """Per key of ``person_hits`` found in the hits' copy, its hits (packed, as
        ``profile.ROWS`` reads them); and the keys with more hits than the copy holds. A key
        not found had no hits when the copy was made. LookupError when the copy is not the
        build this index made (emptied, or built by another)."""
        lines = self.store.query(HITS, {"keys": [BUILD_KEY, *(f"{site_id}\0{key}"
                                                              for key in keys)]},
                                 "TSVRaw").rstrip(b"\n")
        found: dict[str, list[Any]] = {}
        heavy: set[str] = set()
        build = None
        for k, hits in orjson.loads(b"[" + lines.replace(b"\n", b",") + b"]") if lines else ():
            site, _, key = k.partition("\0")
            if not site:
                build = hits[0] if hits else None  # (its value, a JSON string, in the array)
            elif site != site_id:  # (looked up by the whole key: cannot be)
                raise LookupError(f"person_hits_copy: another site's key under {key}")
            elif hits:
                found[key] = hits
            else:
                heavy.add(key)
        with self._lock:
            if build != self._hits_build or not build:
                raise LookupError("person_hits_copy: not the build of this index")
        return found, heavy

    def held_and_links(self, site_id: str, pids: list[str], pairs: list[tuple[str, str]]
                       ) -> tuple[dict[str, list[tuple[str, str]]],
                                  dict[tuple[str, str], tuple[int, list[dict[str, str]]]]]:
        """Per person (of a user id): the identifiers ever linked to it (``graph.HELD``);
        and ``links`` of those and of ``pairs``: in one lookup."""
        rows = self.store.rows(HELD_AND_LINKS + (AND_LINKS_OF if pairs else ""), {
            "site": site_id, "pids": pids, "kinds": [k for k, _ in pairs],
            "ids": [i for _, i in pairs]})
        held: dict[str, list[tuple[str, str]]] = {}
        for row in rows:
            if row["a"]:
                _held_of(site_id, row["a"], row["v"], held)
        # Only these: a colliding value may name others, whose lookups are no one's.
        wanted = {pair for pid in pids for pair in held.get(pid, ())} | set(pairs)
        links: dict[tuple[str, str], tuple[int, list[dict[str, str]]]] = {}
        for row in rows:
            for kind, ident, value in row["links"]:
                if (kind, ident) in wanted:
                    _links_of(site_id, (kind, ident), value, links)
        return held, links

    # -- loading ----------------------------------------------------------------------------------

    def reload_now(self) -> None:
        """Load a new copy (blocking); the one in memory serves until it is in place.
        Raises StorageError (the copy is then unusable)."""
        with self._load_lock:
            self.feed.watch()  # every link stored from now on is reported
            with self._lock:
                if self._erasing:  # it would be cancelled, and hold the erasure up
                    raise LoadCancelled("an erasure is under way")
                erasures = self._erasures
                self._during, self._during_all = set(), False
                self._during_decisions_all = False
                epoch = self.feed.epoch
            began = time.monotonic()
            try:
                for name in DICTIONARIES:
                    self._attach(name)  # an unload that could not attach it: now
                    self.store.execute(f"SYSTEM RELOAD DICTIONARY {name}")
                    if self._erasures != erasures:
                        raise LoadCancelled(f"an erasure cancelled the load of {name}")
            except StorageError as exc:
                with self._lock:
                    self._during, self._all_stale = None, True
                if self._erasures != erasures and not isinstance(exc, LoadCancelled):
                    raise LoadCancelled(f"an erasure cancelled the load: {exc}") from None
                raise
            with self._lock:
                if self._erasures != erasures:  # (one began since the last check)
                    self._during, self._all_stale = None, True
                    raise LoadCancelled("an erasure cancelled the load")
                during = self._during or set()
                self._stale = {pair for pair in during if pair[1].startswith(LINK)}
                self._stale_decisions = {pair for pair in during
                                         if pair[1].startswith(CONSENT)}
                self._all_stale = self._during_all
                self._decisions_all_stale = self._during_decisions_all
                self._during = None
                self._generation += 1
                self._loaded = True
                self._epoch = epoch
                self._loaded_at = time.monotonic()
                self._took = self._loaded_at - began

    def refresh_hits(self) -> None:
        """Bring the hits' copy up to date (blocking), apart from the links: built whole
        when it does not hold every key as of a build in the feed's present watch (none yet,
        emptied, all stale, the feed paused, or ``HITS_MAX_AGE`` old), else its stale keys
        read again; keys the feed reports meanwhile stay stale. Raises StorageError (what
        was stale stays so)."""
        with self._load_lock:
            self.feed.watch()  # every hit stored from now on is reported
            with self._lock:
                if self._erasing:  # it would be cancelled, and hold the erasure up
                    raise LoadCancelled("an erasure is under way")
                if not self._hits_kept:
                    return
                erasures, epoch, began = self._erasures, self.feed.epoch, time.monotonic()
                whole = (not self._hits_usable()
                         or began - self._hits_built_at > HITS_MAX_AGE)
                keys = set() if whole else set(self._stale_hits)
                self._during, self._during_hits_all = set(), False
            try:
                build = self._load_hits(whole, keys, erasures)
            except BaseException as exc:
                with self._lock:
                    self._during = None
                    if whole:  # (paced as a build that ended: cancelled ones too)
                        self._hits_tried_at = began
                        self._hits_build_took = time.monotonic() - began
                if isinstance(exc, StorageError) and self._erasures != erasures \
                        and not isinstance(exc, LoadCancelled):
                    raise LoadCancelled(f"an erasure cancelled the hits' copy's refresh: "
                                        f"{exc}") from None
                raise
            # What the feed reported meanwhile, taken and applied at once: a key reported in
            # between would be neither in it nor left stale.
            with self._lock:
                during, self._during = self._during or set(), None
                if self._erasures != erasures:  # (the erasure empties the copy)
                    raise LoadCancelled("an erasure cancelled the hits' copy's refresh")
                now = time.monotonic()
                if whole or build != self._hits_build:  # (another's build: built whole)
                    self._hits_ready, self._hits_build, self._hits_epoch = True, build, epoch
                    self._hits_built_at = self._hits_tried_at = began
                    self._hits_build_took = now - began
                    self._stale_hits = {pair for pair in during
                                        if not pair[1].startswith(FOLLOWED)}
                    self._hits_all_stale = self._during_hits_all
                else:  # (those reported meanwhile may have rows the read missed)
                    self._stale_hits -= keys - during
                    self._hits_took = now - began
                self._hits_refreshed_at = now
                self._hits_refreshes += 1

    def _load_hits(self, whole: bool, stale: set[tuple[str, str]], erasures: int) -> str:
        """The hits' copy brought up to now (under the load lock), and its build: built
        whole into the next table and exchanged with the live one, whose readers go on with
        either (both as new as the copy they began with, or newer); or, when the live one
        is still this index's build, only its ``stale`` keys read again, into it. Raises
        StorageError; LoadCancelled when an erasure began meanwhile (a cancelled build may
        end as if complete: never exchanged)."""
        if not whole:
            rows = self.store.rows(f"SELECT hits FROM {HITS_COPY} WHERE k = {{k:String}}",
                                   {"k": BUILD_KEY})
            whole = not self._hits_build or [row["hits"] for row in rows] != [
                orjson.dumps(self._hits_build).decode()]
        if whole:
            build = uuid.uuid4().hex
            self.store.execute(f"TRUNCATE TABLE {HITS_NEXT}")
            self.store.execute(BUILD_HITS)
            self.store.execute(MARK_BUILD, {"k": BUILD_KEY, "build": build})
            if self._erasures != erasures:
                raise LoadCancelled("an erasure cancelled the build of the hits' copy")
            self.store.execute(f"EXCHANGE TABLES {HITS_COPY} AND {HITS_NEXT}")
            self.store.execute(f"TRUNCATE TABLE {HITS_NEXT}")  # the old copy's disk
            return build
        by_site: dict[str, list[str]] = {}
        for site_id, key in sorted(stale):
            by_site.setdefault(site_id, []).append(key)
        for site_id, keys in by_site.items():
            for at in range(0, len(keys), HITS_REFRESHED_AT_ONCE):
                self.store.execute(REFRESH_HITS, {
                    "site": site_id, "keys": keys[at:at + HITS_REFRESHED_AT_ONCE]})
        return self._hits_build

    def unload(self) -> None:
        """Drop the copy from the engine's memory (blocking): detached and attached again,
        a dictionary is not loaded until the next load (or a read of it); and empty the
        hits' copy. Raises StorageError."""
        with self._load_lock:
            self.drop_hits()  # first: it needs nothing of the dictionaries
            with self._lock:
                self._loaded, self._all_stale = False, True
            for name in DICTIONARIES:
                self.store.execute(f"DETACH DICTIONARY IF EXISTS {name}")
                self._attach(name)

    def drop_hits(self) -> None:
        """Empty the hits' copy (blocking; on the embedded engine, where it may be kept):
        also at a start, since what an earlier run copied (with the copy on or off now) may
        since have been erased or have expired. Raises StorageError."""
        if self.store.kind != "embedded":
            return
        with self._load_lock:
            with self._lock:
                self._hits_ready, self._hits_all_stale, self._hits_build = False, True, ""
                self._stale_hits.clear()
            for table in (HITS_COPY, HITS_NEXT):
                self.store.execute(f"TRUNCATE TABLE IF EXISTS {table}")

    def _attach(self, name: str) -> None:
        """Attach the dictionary if detached. The engine refuses while a query that read it
        as a table still holds the detached one ("Retry later", code 57): tried again for
        up to ``ATTACH_SECONDS``. Raises StorageError."""
        deadline = time.monotonic() + ATTACH_SECONDS
        while True:
            try:
                self.store.execute(f"ATTACH DICTIONARY IF NOT EXISTS {name}")
                return
            except StorageError as exc:
                if STILL_USED not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def forget_erased(self) -> None:
        """After an erasure (blocking; before it answers): no copy in the engine's memory
        holds the erased links. Whatever loaded it (this index, a load under way, which may
        predate the erasure, another collector, a query reading it), a copy in memory is
        dropped, in milliseconds, where loading it again would add seconds to each erasure
        (3 s on the 10M bench); the next load comes when profiles ask for it, at the pace
        loads keep (``LOAD_SHARE``). On the embedded engine a load under way is cancelled
        first (its source queries, by their log comment), not waited for: that added up to
        a whole load to the erasure; no load starts until the copy is dropped. (On a server
        shared by several collectors, another's load that ends after the drop keeps its
        copy, stale to it, until it loads again.) Raises StorageError: the erasure must not
        answer as done while the copy may hold them."""
        with self._lock:
            self._erasing += 1
            self._erasures += 1
        try:
            # Cancelled (the embedded engine's loads are all this process's: ours, or a
            # lookup's of a dropped copy), a load ends within a block read; one whose source
            # query had not begun yet is cancelled on the next turn. On a server, other
            # collectors' loads are theirs to cancel: one cancelled could end as if
            # complete, and they would not know; there it is waited for, as before.
            cancelling = self.store.kind == "embedded" and self._cancel_loads()
            while not self._load_lock.acquire(timeout=CANCEL_EVERY if cancelling else -1):
                cancelling = self._cancel_loads()
            try:
                found = self.store.rows(IN_MEMORY,
                                        {"names": [n.split(".")[1] for n in DICTIONARIES]})
                if int(found[0]["n"]):
                    self.unload()
                else:
                    self.drop_hits()  # (it may hold keys whatever the dictionaries do)
            finally:
                self._load_lock.release()
        finally:
            with self._lock:
                self._erasing -= 1

    def _cancel_loads(self) -> bool:
        """Cancel the copy's loads under way; False if the engine refused."""
        try:
            self.store.execute(CANCEL_LOADS, {"comment": LOADING})
            return True
        except StorageError as exc:
            log.warning("identity links in memory: cannot cancel a load: %s", exc)
            return False

    def _next(self) -> str | None:
        """What the loading thread should do now: "load", "hits" (``refresh_hits``),
        "unload" or nothing."""
        with self._lock:
            if self._erasing:  # a load would be refused (and each profile's ask wake it)
                return None
            now = time.monotonic()
            if now - self._asked > self.max_age:
                # Nobody resolves: a copy is dropped rather than kept up to date (links a
                # retention TTL or an erasure elsewhere removed must not stay in memory).
                return "unload" if self._loaded else None
            age = now - self._loaded_at
            # Loads take at most a twentieth of the time (the whole graph is read again).
            least, stale_for = (max(wait, LOAD_SHARE * self._took)
                                for wait in (self.min_interval, self.reload_after))
            if not self._usable():
                return "load" if age >= least else None
            if bool(self._stale) and age >= stale_for or age >= self.max_age:
                return "load"
            if not self._hits_kept:
                return None
            # The hits' copy at its own pace: builds and refreshes each take at most a
            # twentieth of the time (a build is seconds; a burst of new visitors must not
            # have the copy built over and over).
            if not self._hits_usable() or now - self._hits_built_at > HITS_MAX_AGE:
                due = self._hits_tried_at + max(self.min_interval,
                                                LOAD_SHARE * self._hits_build_took)
            elif self._stale_hits:
                due = self._hits_refreshed_at + max(self.reload_after,
                                                    LOAD_SHARE * self._hits_took)
            else:
                return None
            return "hits" if now >= due else None

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            action = self._next()
            try:
                if action == "load":
                    self.reload_now()
                elif action == "hits":
                    self.refresh_hits()
                elif action == "unload":
                    self.unload()
                failures = 0
                if action == "load" and self._next() == "hits":
                    continue  # the hits' copy brought up to date at once, not a turn later
            except LoadCancelled as exc:  # done again when next due (the erasure made the
                #                             links stale, and emptied the hits' copy)
                log.info("identity links in memory: %s", exc)
            except StorageError as exc:  # e.g. a server whose default user may not read
                failures += 1
                log.warning("identity links in memory: %s failed (attempt %d): %s",
                            action, failures, exc)
            self._wake.wait(min(self.min_interval * (1 + failures), 300.0))
            self._wake.clear()

    def state(self) -> dict[str, Any]:
        """For tests and metrics: the copy's generation, and what is stale."""
        with self._lock:
            return {"generation": self._generation, "all_stale": self._all_stale,
                    "stale": len(self._stale), "stale_decisions": len(self._stale_decisions),
                    "decisions_all_stale": self._decisions_all_stale,
                    "hits_ready": self._hits_ready, "stale_hits": len(self._stale_hits),
                    "hits_all_stale": self._hits_all_stale,
                    "hits_refreshes": self._hits_refreshes, "hits_refresh_seconds": self._hits_took}


def _links_of(site_id: str, pair: tuple[str, str], value: str,
              found: dict[tuple[str, str], tuple[int, list[dict[str, str]]]]) -> None:
    """An identifier's looked-up value (if any) into ``found``; LookupError when it is
    another identifier's (a hash collision)."""
    if not value:
        return
    site, kind, ident, n, links = orjson.loads(value)
    if (site, kind, ident) != (site_id, *pair):
        raise LookupError(f"identity_links_dict: another key under {pair[0]}:{pair[1]}")
    found[pair] = (int(n), [{"part": "link", "kind": kind, "id": ident, "user_id": user,
                             "ts": ts} for ts, user in links])


def _held_of(site_id: str, pid: str, value: str,
             found: dict[str, list[tuple[str, str]]]) -> None:
    """A person's looked-up value (if any) into ``found``; LookupError when it is another
    person's (a hash collision)."""
    if not value:
        return
    site, person, held = orjson.loads(value)
    if (site, person) != (site_id, pid):
        raise LookupError(f"identity_held_dict: another key under {pid}")
    found[pid] = [(kind, ident) for kind, ident in held]
