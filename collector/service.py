"""The running collector: storage, site registry, spool, flusher, enrichment and metrics,
started and stopped together."""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable

from collector.config import Settings
from collector.containers import Containers, Previews
from collector.containers.demo import demo_container
from collector.enrich import uarules
from collector.enrich.client_hash import ClientSalts
from collector.enrich.geo import GeoIP
from collector.enrich.useragent import Resolver
from collector.files import write_atomic
from collector.identity.cache import PersonAnswers
from collector.identity.changes import ChangeFeed
from collector.identity.copurchase_refresh import CopurchaseRefresh
from collector.identity.link_index import LinkIndex
from collector.metrics import Metrics
from collector.migrations import migrate
from collector.privacy import key as privacy_key
from collector.privacy import retention
from collector.privacy.erase import FLUSH_WAIT, wait_flushed
from collector.privacy.tombstones import Tombstones
from collector.sites import Sites
from collector.spool.disk import Spool
from collector.spool.flusher import Flusher
from collector.storage import StorageError, Store, open_store
from collector.web.batches import Batcher

log = logging.getLogger("tagwerk")

DEMO_SITE = "demo"
CONTAINER_REFRESH_SECONDS = 2.0
DEMO_ORIGINS = ("http://127.0.0.1:8000", "http://localhost:8000")


class Collector:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._owns_store = store is None
        self.store = store or open_store(settings.clickhouse_url, str(settings.chdb_dir),
                                         settings.memory_limit_bytes)
        self.metrics = Metrics()
        self.geo = GeoIP(settings.geoip_db)
        self.sites = Sites(self.store, settings.data_dir / "sites.json")
        self.containers = Containers(self.store)
        key = privacy_key.load(settings.privacy_key, settings.data_dir)
        self.previews = Previews(self.store, key)
        self.tombstones = Tombstones(self.store, key)
        self.client_salts = ClientSalts(self.store)  # browsers' clients (public lists)
        self.spool = Spool(settings.spool_dir, settings.spool_segment_bytes,
                           settings.spool_max_bytes, settings.spool_commit_delay_ms / 1000,
                           settings.spool_segment_seconds)
        self.flusher = Flusher(self.spool, self.store, self.metrics,
                               interval=settings.flush_interval_ms / 1000,
                               max_bytes=settings.flush_bytes,
                               stretch=settings.flush_stretch)
        self.flusher.blocked = self.tombstones.blocks
        self.flusher.agents = Resolver()
        self.changes = ChangeFeed(self.store)
        self.copurchase = (CopurchaseRefresh(self.store, settings.copurchase_refresh_seconds,
                                             last_look=settings.clickhouse_url is not None)
                           if settings.copurchase_refresh_seconds > 0 and not settings.cluster
                           else None)
        self.flusher.inserted = self._stored
        self.person_answers = PersonAnswers(self.changes)
        self.link_index = LinkIndex(self.store, self.changes,
                                    copy_hits=settings.identity_links_in_memory)
        self.batches = Batcher()  # concurrent reads answered together (cold profiles)
        self.metrics.gauge("tagwerk_person_answers_hits_total",
                           "Answers about persons served from memory.",
                           lambda: self.person_answers.hits)
        self.metrics.gauge("tagwerk_person_answers_misses_total",
                           "Answers about persons read from ClickHouse.",
                           lambda: self.person_answers.misses)
        self.metrics.gauge("tagwerk_identity_links_loads_total",
                           "Copies of the identity links loaded into memory (link_index.py).",
                           lambda: self.link_index.state()["generation"])
        self.metrics.gauge("tagwerk_person_hits_copy_refreshes_total",
                           "Builds and refreshes of the hits' copy (link_index.py).",
                           lambda: self.link_index.state()["hits_refreshes"])
        self.metrics.gauge("tagwerk_person_hits_copy_refresh_seconds",
                           "The last refresh's duration (of its stale keys).",
                           lambda: self.link_index.state()["hits_refresh_seconds"])
        if (refresh := self.copurchase) is not None:
            self.metrics.gauge("tagwerk_copurchase_refreshes_total",
                               "Co-purchase refreshes asked after purchases or identities "
                               "changed (copurchase_refresh.py).", lambda: refresh.asked)
            self.metrics.gauge("tagwerk_copurchase_refresh_seconds",
                               "The last co-purchase refresh's duration, as last read.",
                               lambda: refresh.last_duration)
        self.metrics.gauge("tagwerk_spool_unflushed_bytes", "Bytes on disk not yet in ClickHouse.",
                           self.spool.unflushed_bytes)
        self.metrics.gauge("tagwerk_spool_fsyncs_total", "Group commits (fsyncs) of the spool.",
                           lambda: self.spool.fsyncs)
        self.sql_password = ""
        self._stopping = threading.Event()
        self.draining = False  # the server began to stop (``drain``)
        self.demo_created = False  # this start created the demo site (its sample shoppers)
        self._drains: list[Callable[[], None]] = []

    # -- start and stop ---------------------------------------------------------------------

    def start(self) -> None:
        self._prepare_storage()
        # Matomo's rules take ~2 s to load: not in the first batch that needs them.
        threading.Thread(target=uarules.warm_up, name="ua-rules", daemon=True).start()
        if self.copurchase is not None:
            self.copurchase.start()
        self.flusher.start()
        self.changes.start()
        # What an earlier run copied of the hits may since have been erased or have expired.
        self.link_index.drop_hits()
        if self.settings.identity_links_in_memory:
            self.link_index.start()
        threading.Thread(target=self._refresh_sites, name="sites", daemon=True).start()
        threading.Thread(target=self._apply_retention, name="retention", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        self.link_index.stop()
        self.changes.stop()
        self.flusher.stop()
        if self.copurchase is not None:  # (after the flusher: its last batch is looked at)
            self.copurchase.stop()
        self.spool.close()
        self.geo.close()
        if self._owns_store:
            self.store.close()

    def _stored(self, events: bytes) -> None:
        """The flusher stored a batch (``events``: its rows of events)."""
        self.changes.inserted()
        if self.copurchase is not None:
            self.copurchase.stored(events)

    def identities_changed(self) -> None:
        """Whose hits are whose changed (an admin's merge, split, undo or erasure, or the
        retention's removal of operations): no kept answer about a person holds, and the
        co-purchase pairs are looked at soon."""
        self.person_answers.clear()
        if self.copurchase is not None:
            self.copurchase.changed()

    def when_draining(self, end: Callable[[], None]) -> None:
        """``end`` runs (in the event loop) when the server begins to stop, at once if it
        has: answers that never end on their own (streams) end then, instead of holding
        the shutdown for its grace and being cut."""
        if self.draining:
            end()
        else:
            self._drains.append(end)

    def drain(self) -> None:
        """The server is stopping (called by each open connection: runs once)."""
        if not self.draining:
            self.draining = True
            for end in self._drains:
                end()

    def _prepare_storage(self) -> None:
        """Migrate and load sites; with ClickHouse down, serve from the last snapshot of the
        sites so that hits are still accepted into the spool."""
        try:
            applied = migrate(self.store, self.settings.cluster)
            for migration in applied:
                log.info("applied migration %04d_%s", migration.version, migration.name)
            if self.settings.demo_site:
                self._ensure_demo_site()
            self.sites.load()
            self.tombstones.load()
            self.client_salts.look()
            # What the spool holds was acknowledged before this start: maybe before an
            # erasure of one of its identifiers.
            self.flusher.recheck(self.spool.durable)
        except StorageError as exc:
            if not self.sites.load_snapshot():
                raise
            log.warning("ClickHouse unavailable (%s); using the saved site list", exc)

    def _ensure_demo_site(self) -> None:
        self.sites.load()
        origins = {*DEMO_ORIGINS, f"http://127.0.0.1:{self.settings.port}",
                   f"http://localhost:{self.settings.port}"}
        demo = self.sites.get(DEMO_SITE)
        if demo is None:
            _, keys = self.sites.create(DEMO_SITE, sorted(origins), name="Demo shop")
            path = self.settings.data_dir / "demo-keys.json"
            write_atomic(path, json.dumps(keys, indent=2))
            log.info("created site 'demo'; its keys are in %s", path)
            self.demo_created = True
        elif not origins <= set(demo.origins):
            # Started on another port than before: the demo shop must still be allowed.
            self.sites.set_origins(DEMO_SITE, sorted(origins | set(demo.origins)))
        # A published container (the demo shop's: the default one and a marketing tag, see
        # collector/containers/demo.py), so that /t/demo.js works at once.
        if self.containers.live_version(DEMO_SITE) is None:
            self.containers.put_draft(DEMO_SITE, demo_container())
            self.containers.publish(DEMO_SITE, note="the demo shop's container")

    def _refresh_sites(self) -> None:
        """Pick up sites and containers changed by other processes, off the hot path: hits
        read the last known live container (cookie domain, consent policy) without I/O."""
        last_sites = time.monotonic()
        while True:
            for site_id in list(self.sites.ids()):
                try:
                    self.containers.live(site_id)
                except StorageError:
                    break  # ClickHouse is away: keep what is known
                except Exception:  # one site's error must not end the thread
                    log.exception("refreshing the live container of %s", site_id)
            if self._stopping.wait(CONTAINER_REFRESH_SECONDS):
                return
            self.client_salts.look()  # (each minute: it says when)
            try:
                if self.tombstones.load():  # erasures made through any collector
                    # Rows spooled before were checked against fewer tombstones.
                    self.flusher.recheck(self.spool.durable)
            except StorageError:
                pass  # ClickHouse is away: keep what is known
            except privacy_key.KeyMismatch as exc:  # started while ClickHouse was away
                log.critical("%s", exc)
            except Exception:  # the thread must outlive it: erasures elsewhere depend on it
                log.exception("loading the erasures' tombstones")
            if time.monotonic() - last_sites >= self.sites.refresh_seconds:
                try:
                    self.sites.reload()
                except Exception:
                    log.exception("reloading the sites")
                last_sites = time.monotonic()

    def _apply_retention(self) -> None:
        """Merges and splits whose subjects the retention took (``privacy/retention.py``),
        every ``retention.EVERY`` seconds: a thread of its own, since a pass reads the raw
        events' indexes (seconds on a large site)."""
        flushed = wait_flushed(lambda: self.spool.durable, lambda: self.spool.checkpoint.flushed)
        last = float("-inf")
        while not self._stopping.wait(CONTAINER_REFRESH_SECONDS):
            if time.monotonic() - last < retention.EVERY:
                continue
            last = time.monotonic()
            # What this collector acknowledged counts: an identifier back after a long
            # absence is active, not gone.
            if not flushed(FLUSH_WAIT):
                last = float("-inf")  # a backlog is being stored: at the next look
                continue
            for site_id in list(self.sites.ids()):
                site = self.sites.get(site_id)
                if site is None:
                    continue
                try:
                    removed = retention.expire(self.store, site)
                except StorageError:
                    break  # ClickHouse is away: next time
                except Exception:  # a bug must not end the retention for good
                    log.exception("site %s: the retention's pass over operations failed",
                                  site_id)
                    continue
                if any(removed.values()):
                    log.info("site %s: retention removed %s", site_id, removed)
                    self.identities_changed()

    def ready(self) -> bool:
        return self.store.ping()

    def new_sql_password(self) -> str:
        self.sql_password = secrets.token_urlsafe(24)
        return self.sql_password

    def write_runtime_info(self, info: dict) -> None:
        """Tell local commands (``tagwerk sql``...) how to reach this running collector."""
        write_atomic(self.settings.data_dir / "serve.json",
                       json.dumps({**info, "pid": os.getpid(), "started": time.time()}))
