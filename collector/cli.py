"""The ``tagwerk`` command: serve, migrate, sql, site create, container, export."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import logging
import os
import sys
import threading
from pathlib import Path
from urllib.parse import urlencode

from collector.config import Settings, load_settings
from collector.storage import StorageError, Store, open_store


def tune_gc() -> None:
    """Once started: hits allocate many short-lived objects and no cycles, so the young
    generation is collected less often, and the long-lived start-up objects are kept out
    of every collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="where the spool and embedded data live "
                        "(default ./var; env TAGWERK_DATA_DIR)")
    parser.add_argument("--clickhouse-url", help="a ClickHouse server, "
                        "http(s)://user:password@host:port/database (env TAGWERK_CLICKHOUSE_URL); "
                        "default: the embedded engine")
    parser.add_argument("--cluster", help="render DDL for this ClickHouse cluster")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagwerk", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the collector")
    _common(serve)
    serve.add_argument("--host", help="default 127.0.0.1")
    serve.add_argument("--port", type=int, help="default 8000")
    serve.add_argument("--sql-host", help="ClickHouse HTTP interface of the embedded store "
                       "(default 127.0.0.1)")
    serve.add_argument("--sql-port", type=int, help="default 8123; 0 turns it off")
    serve.add_argument("--sql-users-file", type=Path,
                       help='JSON: {"name": {"password": "...", "readonly": true, '
                       '"tables": ["events"], "sites": ["shop-a"]}} (SECURITY.md)')
    serve.add_argument("--memory-limit", help="the collector's memory, e.g. 4G, or a fraction "
                       "of the machine (env TAGWERK_MEMORY_LIMIT; default 0.5)")
    serve.add_argument("--geoip-db", type=Path, help="a MaxMind GeoLite2-City .mmdb file")
    serve.add_argument("--trusted-proxies", help="networks whose X-Forwarded-For is believed, "
                       "comma-separated")
    serve.add_argument("--no-demo", dest="demo_site", action="store_false", default=None,
                       help="do not create the demo site")
    serve.add_argument("--no-demo-shoppers", dest="demo_shoppers", action="store_false",
                       default=None, help="create the demo site without its sample shoppers")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    migrate = commands.add_parser("migrate", help="apply ClickHouse migrations")
    _common(migrate)
    migrate.add_argument("--print", dest="print_only", action="store_true",
                         help="print the DDL instead of running it")

    sql = commands.add_parser("sql", help="run a query and print its result")
    _common(sql)
    sql.add_argument("query")
    sql.add_argument("--format", help="ClickHouse output format (default: PrettyCompact on a "
                     "terminal, TabSeparatedWithNames otherwise)")

    site = commands.add_parser("site", help="manage sites")
    site_commands = site.add_subparsers(dest="site_command", required=True)
    create = site_commands.add_parser("create", help="create a site and print its keys")
    _common(create)
    create.add_argument("name", help="the site id: a-z, 0-9, '_' and '-'")
    create.add_argument("--origin", action="append", default=[],
                        help="an origin allowed to send hits, e.g. https://shop.example "
                        "(repeatable; https://*.shop.example for subdomains)")
    create.add_argument("--retention-days", type=int, default=0,
                        help="delete events older than this (default 0: keep)")
    create.add_argument("--drop-bots", action="store_true", help="drop hits from bots")
    create.add_argument("--drop-without-consent", action="store_true",
                        help="drop web hits without analytics consent (instead of storing "
                        "them without identifiers)")
    create.add_argument("--identifier-kinds", default="",
                        help="the site's own identifier kinds beyond device, user, email, "
                        "loyalty, pos and anon, comma-separated (e.g. membership,crm)")
    create.add_argument("--identity-max-persons", type=int, default=20,
                        help="an identifier linked to more persons stops linking and is "
                        "reported (default 20)")
    _container_parser(commands)
    _export_parser(commands)
    return parser


def _export_parser(commands) -> None:
    export = commands.add_parser("export", help="write a site's rows after a cursor; the next "
                                 "cursor goes to stderr")
    _common(export)
    export.add_argument("--site", required=True)
    export.add_argument("--since", help="a cursor from an earlier export (default: from the "
                        "first row)")
    export.add_argument("--format", dest="export_format", default="ndjson",
                        choices=["ndjson", "csv", "parquet"])
    export.add_argument("--events", default="", help="event names, comma-separated")
    export.add_argument("--channel", default="")
    export.add_argument("--limit", type=int, default=10_000_000, help="at most this many rows "
                        "(an answer reads the whole table: fewer, larger ones are faster)")
    export.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")


def _container_parser(commands) -> None:
    container = commands.add_parser("container", help="edit, publish and roll back a site's "
                                    "container (tags, triggers, variables, consent)")
    actions = container.add_subparsers(dest="container_command", required=True)
    push = actions.add_parser("push", help="validate a container file and save it as the draft")
    push.add_argument("file", type=Path, help="the container, JSON (js_snippet/DESIGN.md)")
    publish = actions.add_parser("publish", help="freeze the draft into a new version and make "
                                 "it live")
    publish.add_argument("--note", default="", help="what changed")
    for action in (push, publish):
        action.add_argument("--if-match", metavar="ETAG",
                            help="only if the draft is still this one (its ETag, as push, "
                            "show or the API print it); else exit 3 and change nothing")
    rollback = actions.add_parser("rollback", help="make an earlier version live again")
    rollback.add_argument("version", type=int)
    actions.add_parser("versions", help="list the published versions and which one is live")
    show = actions.add_parser("show", help="print the draft (or a version) as JSON")
    show.add_argument("--version", type=int, help="a published version instead of the draft")
    preview = actions.add_parser("preview", help="print a link that shows the draft on the "
                                 "site to whoever opens it (with the debug overlay)")
    preview.add_argument("--url", required=True, help="the page of the site to open")
    preview.add_argument("--minutes", type=int, default=60, help="how long the link works")
    preview.add_argument("--collector", help="the collector's public URL (default: "
                         "http://HOST:PORT of this configuration)")
    for action in (push, publish, rollback, show, preview, actions.choices["versions"]):
        _common(action)
        action.add_argument("--site", required=True, help="the site id")


def _settings(args: argparse.Namespace) -> Settings:
    names = ("host", "port", "data_dir", "clickhouse_url", "cluster", "sql_host", "sql_port",
             "sql_users_file", "memory_limit", "geoip_db", "trusted_proxies", "demo_site",
             "demo_shoppers", "log_level")
    return load_settings(**{n: getattr(args, n) for n in names if hasattr(args, n)})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        if args.command == "serve":
            return serve(settings)
        if args.command == "migrate":
            return migrate_command(settings, args.print_only)
        if args.command == "sql":
            return sql_command(settings, args.query, args.format)
        if args.command == "site":
            return site_create(settings, args)
        if args.command == "container":
            return container_command(settings, args)
        if args.command == "export":
            return export_command(settings, args)
    except (ValueError, StorageError) as exc:
        print(f"tagwerk: {exc}", file=sys.stderr)
        return 2
    return 1


# -- serve ------------------------------------------------------------------------------------


def serve(settings: Settings) -> int:
    import uvicorn

    from collector.app import create_app, protocol_for
    from collector.service import Collector
    from collector.web import openfiles

    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    openfiles.raise_limit()  # before the engine starts, and the ports' shares are set
    _leave_working_directory(settings)
    collector = Collector(settings)
    sql = _start_sql_interface(collector) if not settings.clickhouse_url else None
    collector.write_runtime_info({
        "host": settings.host, "port": settings.port,
        "sql_host": settings.sql_host, "sql_port": settings.sql_port,
        "sql_user": "tagwerk", "sql_password": collector.sql_password,
    })
    print(f"tagwerk: collecting on http://{settings.host}:{settings.port}  "
          f"(demo: http://{settings.host}:{settings.port}/demo/)", flush=True)
    config = uvicorn.Config(
        create_app(collector), host=settings.host, port=settings.port,
        log_level=settings.log_level, access_log=False, backlog=4096,
        # GET /p.gif without the ASGI layer; header limits and timeouts (collector/web/limits.py)
        http=protocol_for(collector),
        # X-Forwarded-For is believed only from the configured trusted proxies (clientip.py).
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    tune_gc()
    try:
        uvicorn.Server(config).run()
    finally:
        if sql is not None:
            sql_server, thread = sql
            sql_server.should_exit = True
            thread.join(10)
        # After a failed start too (the app never ran its shutdown): chDB's threads must be
        # stopped before the interpreter exits, which otherwise crashes in their teardown.
        collector.store.close()
        (settings.data_dir / "serve.json").unlink(missing_ok=True)
    return 0


def _leave_working_directory(settings: Settings) -> None:
    """Run from an empty directory of the collector's own: chDB's default database reads a
    file of the working directory by a table's bare name (`` SELECT * FROM `users.json` ``)
    for a SQL user who may write. Relative paths are taken from where it was started."""
    for name in ("data_dir", "tag_dir", "sql_users_file", "geoip_db"):
        value = getattr(settings, name)
        if value is not None:
            setattr(settings, name, Path(value).absolute())
    empty = settings.data_dir / "cwd"
    empty.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chdir(empty)


def _start_sql_interface(collector):
    """ClickHouse's HTTP protocol over the embedded store, in a thread of its own: the
    server and its thread."""
    settings = collector.settings
    if not settings.sql_port:
        return None
    import uvicorn

    from collector.sqlhttp import QueryLimits, SqlUser, build_sql_app, load_users
    from collector.storage.engine_config import parse_size

    loopback = ipaddress.ip_address(settings.sql_host).is_loopback
    users = {"tagwerk": SqlUser("tagwerk", collector.new_sql_password(), readonly=False)}
    if loopback:
        # As on a fresh ClickHouse server: `default` without a password, here read-only and
        # limited to the data tables.
        users["default"] = SqlUser("default", "", readonly=True)
    if settings.sql_users_file:
        users.update(load_users(Path(settings.sql_users_file).read_text()))
    limits = QueryLimits.within(collector.store.memory_limit,
                                parse_size(settings.sql_query_memory), settings.sql_query_seconds)
    app = build_sql_app(collector.store, users, loopback_only=loopback, limits=limits)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.sql_host, port=settings.sql_port,
                                           log_level="warning", access_log=False,
                                           # header limits and timeouts, as on the collector's
                                           http="collector.sqlhttp.protocol:SqlProtocol"))
    thread = threading.Thread(target=server.run, name="sql-interface", daemon=True)
    thread.start()
    return server, thread


# -- commands that use the store ----------------------------------------------------------------


def _store(settings: Settings) -> Store:
    """The store a command should use. The embedded engine can only be open in one process:
    while ``tagwerk serve`` runs, go through its ClickHouse HTTP interface instead."""
    if settings.clickhouse_url:
        return open_store(settings.clickhouse_url, "")
    info_path = settings.data_dir / "serve.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if _alive(info.get("pid", 0)) and info.get("sql_port"):
            from collector.storage.server import ServerStore

            url = (f"http://{info['sql_user']}:{info['sql_password']}@"
                   f"{info['sql_host']}:{info['sql_port']}/tagwerk")
            return ServerStore(url)
    return open_store(None, str(settings.chdb_dir))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError, OverflowError):
        return False
    return pid > 0


def migrate_command(settings: Settings, print_only: bool) -> int:
    from collector.migrations import load_migrations, migrate, render

    if print_only:
        for migration in load_migrations():
            print(f"-- {migration.version:04d}_{migration.name}")
            for stmt in render(migration, settings.cluster):
                print(stmt + ";\n")
        return 0
    store = _store(settings)
    try:
        applied = migrate(store, settings.cluster)
    finally:
        store.close()
    for migration in applied:
        print(f"applied {migration.version:04d}_{migration.name}")
    if not applied:
        print("up to date")
    return 0


def sql_command(settings: Settings, query: str, fmt: str | None) -> int:
    from collector.migrations import migrate

    fmt = fmt or ("PrettyCompact" if sys.stdout.isatty() else "TabSeparatedWithNames")
    store = _store(settings)
    try:
        if store.kind == "embedded":
            migrate(store)  # a fresh data dir still has the tables a query expects
        sys.stdout.buffer.write(store.query(query, fmt=fmt))
    finally:
        store.close()
    return 0


def site_create(settings: Settings, args: argparse.Namespace) -> int:
    from collector.migrations import migrate
    from collector.sites import Sites

    store = _store(settings)
    try:
        if store.kind == "embedded":
            migrate(store)
        site, keys = Sites(store).create(args.name, args.origin,
                                         retention_days=args.retention_days,
                                         drop_bots=args.drop_bots,
                                         drop_without_consent=args.drop_without_consent,
                                         identifier_kinds=[k for k in
                                                           args.identifier_kinds.split(",") if k],
                                         identity_max_persons=args.identity_max_persons)
    finally:
        store.close()
    print(f"site:      {site.site_id}")
    print(f"origins:   {', '.join(site.origins) or '(none: only server-side and pixel hits)'}")
    for kind in ("write", "read", "admin"):
        print(f"{kind + ' key:':<10} {keys[kind]}")
    print("Keys are stored hashed and cannot be shown again.")
    return 0


def container_command(settings: Settings, args: argparse.Namespace) -> int:
    import orjson

    from collector.containers import (
        ContainerError,
        Containers,
        NotFound,
        PreconditionFailed,
        Previews,
        parse_if_match,
    )
    from collector.migrations import migrate
    from collector.privacy import key as privacy_key
    from collector.routes import taken
    from collector.sites import Sites

    document, if_match = None, None
    if getattr(args, "if_match", None) is not None:
        # Checked in this process only: Containers.put_draft says what window is left.
        tag = args.if_match.strip()
        if not tag:  # an unset shell variable must not turn into an unconditional write
            raise ValueError("--if-match is empty")
        # A shell drops the quotes of "3f2a...": a bare tag means the quoted one.
        quoted = tag if tag == "*" or tag.startswith(('"', "W/")) else f'"{tag}"'
        if_match = parse_if_match(quoted)  # ValueError: exit 2
    if args.container_command == "push":
        try:
            document = orjson.loads(args.file.read_bytes())
        except OSError as exc:
            raise ValueError(f"cannot read {args.file}: {exc.strerror}") from None
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{args.file} is not valid JSON: {exc}") from None
    store = _store(settings)
    try:
        if store.kind == "embedded":
            migrate(store)
        sites = Sites(store)
        sites.load()
        site = sites.get(args.site)
        if site is None:
            raise ValueError(f"unknown site {args.site!r}")
        containers = Containers(store, taken=taken)
        action = args.container_command
        if action == "push":
            draft = containers.put_draft(site.site_id, document, site.origins,
                                         if_match=if_match)
            print(f"saved the draft of {site.site_id} (policy {draft.policy}); "
                  "publish it to make it live")
            print(f"etag: {draft.etag}")
        elif action == "publish":
            version = containers.publish(site.site_id, args.note, site.origins,
                                         if_match=if_match)
            print(f"published version {version.version} of {site.site_id}; it is live")
        elif action == "rollback":
            version = containers.rollback(site.site_id, args.version)
            print(f"version {version.version} of {site.site_id} is live again")
        elif action == "versions":
            _print_versions(containers.versions(site.site_id))
        elif action == "preview":
            if not site.has_page(args.url):
                raise ValueError(f"--url must be a page on one of the site's origins "
                                 f"({', '.join(site.origins) or 'none'})")
            # The collectors' key: they check the token's MAC with it.
            key = privacy_key.load(settings.privacy_key, settings.data_dir)
            token, expires = Previews(store, key).create(site.site_id, args.minutes)
            base = (args.collector or f"http://{settings.host}:{settings.port}").rstrip("/")
            print(f"{base}/t/preview?{urlencode({'token': token, 'to': args.url})}")
            print(f"valid until {expires.isoformat(timespec='seconds')}; "
                  f"end it with {base}/t/preview?end=1", file=sys.stderr)
        elif args.version is not None:
            found = containers.version(site.site_id, args.version)
            if found is None:
                raise NotFound(f"site {site.site_id!r} has no version {args.version}")
            sys.stdout.buffer.write(orjson.dumps(found.document, option=orjson.OPT_INDENT_2))
            print()
        else:
            draft = containers.draft(site.site_id)
            sys.stdout.buffer.write(orjson.dumps(draft.document, option=orjson.OPT_INDENT_2))
            print()
            print(f"etag: {draft.etag}", file=sys.stderr)  # for publish --if-match
    except ContainerError as exc:
        print(f"tagwerk: the container has {len(exc.errors)} problem(s):", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return 2
    except NotFound as exc:
        print(f"tagwerk: {exc}", file=sys.stderr)
        return 2
    except PreconditionFailed as exc:
        print(f"tagwerk: {exc}", file=sys.stderr)
        return 3
    finally:
        store.close()
    return 0


def _print_versions(versions) -> None:
    if not versions:
        print("no version published yet: the draft is served")
        return
    print(f"{'version':>7}  live  {'policy':<16}  {'created':<24}  note")
    for v in versions:
        print(f"{v.version:>7}  {'*' if v.live else ' ':<4}  {v.policy:<16}  "
              f"{v.created_at:<24}  {v.note}")


if __name__ == "__main__":
    sys.exit(main())


def export_command(settings: Settings, args: argparse.Namespace) -> int:
    """As GET /api/v1/sites/{site}/export, on the store a command uses (through a running
    collector's SQL port when there is one)."""
    from collector.api import cursor, cursor_range, export
    from collector.api.access import ApiError

    store = _store(settings)
    try:
        try:
            given = {"events": args.events, "channel": args.channel}
            rows = export.row_filter({k: v for k, v in given.items() if v}, args.site)
            if not 1 <= args.limit <= export.MAX_LIMIT:
                raise ApiError(400, f"--limit must be from 1 to {export.MAX_LIMIT}")
            table = cursor_range.table_tag(store)
            start = cursor.decode(args.since, table, args.site, "--since") if args.since \
                else None
            end, more = cursor_range.plan(store, rows, start, args.limit)
        except ApiError as exc:
            raise ValueError(exc.message) from None
        fmt = export.FORMATS[args.export_format][0]
        sql, bound = cursor_range.select_rows(rows, start, end)
        out = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115
        try:
            for piece in store.stream(sql, bound, fmt, export.SETTINGS):
                out.write(piece)
        finally:
            if args.output:
                out.close()
            else:
                out.flush()
    finally:
        store.close()
    print(f"cursor: {cursor.encode(table, args.site, end)}", file=sys.stderr)
    if more:
        print("more: rows remain; run again with --since", file=sys.stderr)
    return 0
