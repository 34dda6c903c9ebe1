"""POST /consent, tagwerk.consent_log, and consent rows through the spool and the flusher."""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import time
import uuid

import orjson
import pytest
from starlette.testclient import TestClient

from collector.containers import default_container
from collector.metrics import Metrics
from collector.spool.disk import Checkpoint, Pos, Spool
from collector.spool.flusher import Flusher
from collector.spool.record import CONSENT_LOG, encode_record
from collector.storage import StorageUnavailable
from consent.log import COLUMNS, DecisionError, decision_row
from tests.helpers import IPHONE, drained, make_client, wait_for
from tests.mmdb_writer import write_city_db
from tests.test_flusher import count, record
from tests.test_spool import append_all

ORIGIN = "https://shop.example"
SITE = "consentlog-test"
CID = "8f3a0c1d2e3f405162738495a6b7c8e1"
POLICY = "3c1d0e7a9b2f4c11"


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("consentlog")
    db = tmp / "city.mmdb"
    write_city_db(db, {"81.2.69.0/24": {"country": {"iso_code": "GB"},
                                         "subdivisions": [{"iso_code": "ENG"}],
                                         "city": {"names": {"en": "London"}}}})
    client, collector = make_client(store, tmp / "var", geoip_db=db,
                                    trusted_proxies="10.0.0.0/8")
    with client:
        collector.sites.create(SITE, [ORIGIN])
        yield client, collector


def decision(**fields):
    return {"site": SITE, "consent_id": uuid.uuid4().hex, "granted": ["necessary", "analytics"],
            "denied": ["marketing", "personalization"], "policy": POLICY, "how": "banner",
            "url": "https://shop.example/shoes?gclid=abc&x=1", **fields}


def post(client, body, content_type="text/plain", **headers):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    client.cookies.clear()
    return client.post("/consent", content=data, headers={"Content-Type": content_type,
                                                          **headers})


def logged(collector, consent_id: str | None = None) -> list[dict]:
    wait_for(lambda: drained(collector))
    where = "consent_id = {c:String}" if consent_id else "1"
    return collector.store.rows(
        f"SELECT * FROM tagwerk.consent_log WHERE site_id = {{s:String}} AND {where} "
        "ORDER BY ts", {"s": SITE, "c": consent_id or ""})


# -- the endpoint -----------------------------------------------------------------------------


def test_a_decision_is_logged(env):
    client, collector = env
    body = decision()
    proxied = TestClient(client.app, client=("10.1.2.3", 5000))
    response = proxied.post("/consent", content=orjson.dumps(body), headers={
        "Content-Type": "text/plain", "Origin": ORIGIN, "User-Agent": IPHONE,
        "X-Forwarded-For": "81.2.69.160"})
    assert response.status_code == 202 and response.json() == {"accepted": 1}
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-allow-credentials"] == "true"
    [row] = wait_for(lambda: logged(collector, body["consent_id"]))
    assert row["granted"] == ["analytics", "necessary"]
    assert row["denied"] == ["marketing", "personalization"]
    assert (row["policy"], row["how"], row["site_id"]) == (POLICY, "banner", SITE)
    assert row["device_class"] == "mobile" and row["country"] == "GB"
    assert row["url"] == "https://shop.example/shoes?x=1"  # marketing denied: no click id
    assert row["ts"] == row["received_at"]
    assert set(row) == set(COLUMNS)
    text = orjson.dumps(row).decode()
    assert "81.2.69" not in text and "10.1.2.3" not in text  # no IP, not even in part
    assert collector.metrics.hits_accepted.values[("consent",)] >= 1


def test_json_and_gzip_and_no_url(env):
    client, collector = env
    body = decision(granted=["necessary", "analytics", "marketing"], denied=[], how="api")
    body["url"] = "https://shop.example/?gclid=keep"
    assert post(client, body, "application/json").status_code == 202
    without_url = decision()
    del without_url["url"]
    assert post(client, gzip.compress(orjson.dumps(without_url))).status_code == 202
    [row] = wait_for(lambda: logged(collector, body["consent_id"]))
    assert row["url"] == "https://shop.example/?gclid=keep"  # marketing granted
    [row] = wait_for(lambda: logged(collector, without_url["consent_id"]))
    assert row["url"] == ""


def test_successive_decisions_are_all_kept(env):
    client, collector = env
    first = decision(granted=["necessary", "analytics", "marketing"], denied=[])
    second = {**first, "granted": ["necessary"], "denied": ["analytics", "marketing"]}
    assert post(client, first).status_code == 202
    assert post(client, second).status_code == 202
    got = wait_for(lambda: len(logged(collector, first["consent_id"])) == 2
                   and logged(collector, first["consent_id"]))
    assert sorted(r["granted"] for r in got) == [["analytics", "marketing", "necessary"],
                                               ["necessary"]]


def test_a_denial_clears_the_device_cookie(env):
    client, _ = env
    response = post(client, decision(granted=["necessary"], denied=["analytics"]),
                    Cookie="tw_id=AbCdEfGhIjKlMnOpQrSt-_.20000")
    assert response.status_code == 202
    assert response.headers["set-cookie"].startswith("tw_id=; Path=/; Max-Age=0")
    granted = post(client, decision(), Cookie="tw_id=AbCdEfGhIjKlMnOpQrSt-_.20000")
    assert "set-cookie" not in granted.headers
    nothing = post(client, decision(granted=["necessary"], denied=["analytics"]))
    assert "set-cookie" not in nothing.headers


def consent_cookie(cid: str, policy: str, granted: str, at: float, how: str = "banner") -> str:
    return f"v1.{cid}.{policy}.{granted}.{int(at)}.{how}"


def renewed(response) -> list[str]:
    return [c for c in response.headers.get_list("set-cookie") if c.startswith("tw_consent=")]


def test_the_tags_consent_cookie_is_set_again_by_the_collector(env):
    """Safari keeps cookies written by script 7 days at most: the collector sets the tag's
    tw_consent again (same value, Path, Domain; readable by script) for the rest of the
    decision's lifetime, when the request carries that cookie."""
    client, collector = env
    policy = collector.containers.live(SITE).policy
    now = time.time()
    d = decision(policy=policy)
    value = consent_cookie(d["consent_id"], policy, "necessary,analytics", now)
    response = post(client, d, Cookie=f"other=1; tw_consent={value}")
    assert response.status_code == 202
    [cookie] = renewed(response)
    name_value, *attributes = cookie.split("; ")
    assert name_value == f"tw_consent={value}"
    assert attributes[0] == "Path=/" and attributes[2] == "SameSite=Lax"
    assert 365 * 86400 - 5 <= int(attributes[1].removeprefix("Max-Age=")) <= 365 * 86400
    assert "HttpOnly" not in cookie and "Secure" not in cookie and "Domain" not in cookie

    # A rejection keeps the shorter lifetime; an older decision only what is left of it; the
    # tag's encodeURIComponent form (%2C) is set again as it came.
    r = decision(policy=policy, granted=["necessary"], denied=["analytics", "marketing"])
    value = consent_cookie(r["consent_id"], policy, "necessary", now)
    [cookie] = renewed(post(client, r, Cookie=f"tw_consent={value}"))
    assert 182 * 86400 - 5 <= int(cookie.split("Max-Age=")[1].split(";")[0]) <= 182 * 86400
    value = consent_cookie(d["consent_id"], policy, "necessary%2Canalytics", now - 300 * 86400)
    [cookie] = renewed(post(client, d, Cookie=f"tw_consent={value}"))
    assert cookie.startswith(f"tw_consent={value}; Path=/; Max-Age=")
    assert 65 * 86400 - 5 <= int(cookie.split("Max-Age=")[1].split(";")[0]) <= 65 * 86400

    # https: Secure, as the tag writes it there
    value = consent_cookie(d["consent_id"], policy, "necessary,analytics", now)
    secure = client.post("https://testserver/consent", content=orjson.dumps(d),
                         headers={"Content-Type": "text/plain", "Cookie": f"tw_consent={value}"})
    assert renewed(secure)[0].endswith("; Secure")


@pytest.mark.parametrize("cookie", [
    None,  # a collector on another site does not see the page's cookie: it sets none
    "tw_consent=v1.{other}.{policy}.necessary,analytics.{now}.banner",  # another person's
    "tw_consent=v1.{cid}.{policy}.necessary.{now}.banner",  # not this decision's purposes
    "tw_consent=v1.{cid}.{policy}.necessary,analytics.{now}.api",  # not this decision's how
    "tw_consent=v1.{cid}.ffffffffffffffff.necessary,analytics.{now}.banner",  # old policy
    "tw_consent=v1.{cid}.{policy}.necessary,analytics.{expired}.banner",  # expired
    "tw_consent=v1.{cid}.{policy}.necessary,analytics.{now}.banner.x",  # malformed
    b"tw_consent=v1.{cid}.\xff",  # not UTF-8
])
def test_no_consent_cookie_is_set_for_another_decision(env, cookie):
    client, collector = env
    policy = collector.containers.live(SITE).policy
    d = decision(policy=policy)
    headers = {}
    if isinstance(cookie, bytes):  # not UTF-8
        headers["Cookie"] = cookie.replace(b"{cid}", d["consent_id"].encode())
    elif cookie:
        headers["Cookie"] = cookie.format(cid=d["consent_id"], other=uuid.uuid4().hex,
                                          policy=policy, now=int(time.time()),
                                          expired=int(time.time()) - 366 * 86400)
    response = post(client, d, **headers)
    assert response.status_code == 202
    assert renewed(response) == []


def test_the_consent_cookie_follows_the_containers_cookie_domain(store, tmp_path):
    client, collector = make_client(store, tmp_path / "var")
    with client:
        site = "consentlog-domain"
        collector.sites.create(site, [ORIGIN])
        doc = default_container()
        doc["settings"]["cookie_domain"] = ".shop.example"
        collector.containers.put_draft(site, doc, [ORIGIN])
        live = collector.containers.publish(site, "cookie domain", [ORIGIN])
        d = decision(site=site, policy=live.policy, granted=["necessary"],
                     denied=["analytics"])
        value = consent_cookie(d["consent_id"], live.policy, "necessary", time.time())
        response = post(client, d, Cookie=f"tw_consent={value}; tw_id=AbCdEfGhIjKlMnOpQrSt-_.20000")
        assert response.status_code == 202
        cookies = response.headers.get_list("set-cookie")
        # both: the decision's cookie set again, and the device cookie cleared (no analytics)
        assert [c.split("=")[0] for c in cookies] == ["tw_consent", "tw_id"]
        assert cookies[0].endswith("; SameSite=Lax; Domain=.shop.example")
        assert "Max-Age=0" in cookies[1]


def test_preflight(env):
    client, _ = env
    ok = client.options("/consent", headers={"Origin": ORIGIN,
                                             "Access-Control-Request-Method": "POST"})
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert ok.headers["access-control-allow-credentials"] == "true"
    assert client.options("/consent", headers={"Origin": "https://evil.example"}
                          ).status_code == 403
    assert client.get("/consent").status_code == 405


BAD = [
    ("malformed JSON", b'{"site": "consentlog-test", ', {}, 400, "malformed", None),
    ("invalid UTF-8", b'{"site": "consentlog-test", "how": "\xff"}', {}, 400, "UTF-8", None),
    ("not an object", b"[1]", {}, 400, "JSON object", None),
    ("empty body", b"", {}, 400, "empty", None),
    ("oversized", decision(url="https://shop.example/" + "x" * 9000), {}, 413, "larger", None),
    ("form content type", decision(), {"Content-Type": "application/x-www-form-urlencoded"},
     415, "text/plain", None),
    ("unknown site", decision(site="no-such-site"), {}, 404, "unknown site", "site"),
    ("site missing", {k: v for k, v in decision().items() if k != "site"}, {}, 400, "'site'",
     "site"),
    ("disallowed origin", decision(), {"Origin": "https://evil.example"}, 403, "not allowed",
     None),
    ("unknown field", decision(ip="1.2.3.4"), {}, 400, "unknown field", "ip"),
    ("consent_id missing", {k: v for k, v in decision().items() if k != "consent_id"}, {}, 400,
     "required", "consent_id"),
    ("consent_id short", decision(consent_id="a" * 31), {}, 400, "32 hex", "consent_id"),
    ("consent_id not hex", decision(consent_id="z" * 32), {}, 400, "32 hex", "consent_id"),
    ("consent_id a uuid", decision(consent_id=str(uuid.uuid4())), {}, 400, "32 hex",
     "consent_id"),
    ("consent_id a number", decision(consent_id=12345), {}, 400, "32 hex", "consent_id"),
    ("policy short", decision(policy="abc"), {}, 400, "16 hex", "policy"),
    ("policy a list", decision(policy=[POLICY]), {}, 400, "16 hex", "policy"),
    ("policy and a newline", decision(policy=POLICY + "\n"), {}, 400, "16 hex", "policy"),
    ("how unknown", decision(how="popup"), {}, 400, "'how'", "how"),
    ("how missing", {k: v for k, v in decision().items() if k != "how"}, {}, 400, "required",
     "how"),
    ("granted a string", decision(granted="analytics"), {}, 400, "'granted'", "granted"),
    ("granted holds a number", decision(granted=[1]), {}, 400, "'granted'", "granted"),
    ("granted holds a bad id", decision(granted=["Ads!"]), {}, 400, "'granted'", "granted"),
    ("granted twice", decision(granted=["analytics", "analytics"]), {}, 400, "twice",
     "granted"),
    ("denied null", decision(denied=None), {}, 400, "'denied'", "denied"),
    ("both granted and denied", decision(denied=["analytics"]), {}, 400, "both", "denied"),
    ("too many purposes", decision(granted=[f"p{i}" for i in range(17)]), {}, 400,
     "more than", "granted"),
    ("url relative", decision(url="/shoes"), {}, 400, "'url'", "url"),
    ("url not a string", decision(url=5), {}, 400, "'url'", "url"),
    ("url javascript", decision(url="javascript:alert(1)"), {}, 400, "'url'", "url"),
]


@pytest.mark.parametrize(("body", "headers", "status", "message", "field"),
                         [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused(env, body, headers, status, message, field):
    client, collector = env
    before = len(logged(collector))
    response = post(client, body, **{"Content-Type": "text/plain", **headers})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    if field:
        assert response.json()["field"] == field
    assert "set-cookie" not in response.headers
    assert len(logged(collector)) == before  # nothing stored...
    assert post(client, decision()).status_code == 202  # ...and it keeps serving


def test_errors_keep_cors_for_an_allowed_origin(env):
    client, _ = env
    response = post(client, decision(how="nope"), Origin=ORIGIN)
    assert response.status_code == 400
    assert response.headers["access-control-allow-origin"] == ORIGIN


def test_decision_row_unit():
    row = decision_row({"consent_id": CID.upper(), "granted": [], "denied": ["analytics"],
                        "policy": POLICY.upper(), "how": "gpc"}, "s", "2026-01-02 03:04:05.678",
                       "desktop", "DE")
    assert list(row) == list(COLUMNS)
    assert (row["consent_id"], row["policy"], row["url"]) == (CID, POLICY, "")
    with pytest.raises(DecisionError) as info:
        decision_row({}, "s", "t", "", "")
    assert info.value.field == "consent_id"


# -- through the spool and the flusher --------------------------------------------------------


def consent_record(site: str, n: int) -> tuple[bytes, list[str]]:
    ids, lines = [], []
    for _ in range(n):
        cid = uuid.uuid4().hex
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.000")
        row = decision_row({"consent_id": cid, "granted": ["necessary"], "denied": [],
                            "policy": POLICY, "how": "banner"}, site, now, "desktop", "")
        lines.append(orjson.dumps(list(row.values())))
        ids.append(cid)
    return encode_record(lines, site, [], table=CONSENT_LOG), ids


def logged_count(store, site: str) -> int:
    return store.rows("SELECT count() AS n FROM tagwerk.consent_log WHERE site_id = {s:String}",
                      {"s": site})[0]["n"]


def test_record_format():
    payload, _ = consent_record("s", 2)
    meta, *rows_ = payload.splitlines()
    assert meta == b'{"t":"consent_log"}' and len(rows_) == 2
    assert encode_record([b"[]"], "s", []).startswith(b"{}\n")  # events: unchanged
    with pytest.raises(ValueError):
        encode_record([b"[]"], "s", [], table="users")
    with pytest.raises(ValueError):
        encode_record([b"[]"], "s", [("id", "ts")], table=CONSENT_LOG)


class Recorder:
    """A store that records inserts, failing the first ``fail`` for a table if asked."""

    def __init__(self, real, fail_table: str = "", fail: int = 0) -> None:
        self.real, self.fail_table, self.fail = real, fail_table, fail
        self.inserts: list[tuple[str, str]] = []

    def insert(self, table, data, fmt="JSONEachRow", settings=None):
        if self.fail and table.startswith(f"tagwerk.{self.fail_table} "):
            self.fail -= 1
            raise StorageUnavailable("ClickHouse went away")
        self.inserts.append((table.split(" ")[0], settings["insert_deduplication_token"]))
        self.real.insert(table, data, fmt, settings)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_one_insert_per_table_each_with_its_token(store, tmp_path):
    site = "clog-" + uuid.uuid4().hex[:8]
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    append_all(spool, [record(site, 3)[0], consent_record(site, 2)[0], record(site, 1, True)[0],
                       consent_record(site, 4)[0]])
    recorder = Recorder(store)
    metrics = Metrics()
    Flusher(spool, recorder, metrics)._flush(Pos(1, 0), spool.durable)
    spool.close()
    base = f"{spool.id}:1:0-{spool.checkpoint.flushed.segment}:{spool.checkpoint.flushed.offset}"
    assert recorder.inserts == [("tagwerk.events", base),
                                ("tagwerk.consent_log", f"{base}:consent_log")]
    assert count(store, site) == 4 and logged_count(store, site) == 6
    assert metrics.rows_inserted.values[()] == 10


@pytest.mark.parametrize("crash_after", ["nothing", "events", "both"])
def test_pending_consent_rows_survive_a_restart_exactly_once(backend, store, tmp_path,
                                                             crash_after):
    """Acknowledged (fsynced) and then the process died: before the insert, between the two
    tables' inserts, or after both but before the checkpoint moved."""
    site = "clogcrash-" + uuid.uuid4().hex[:8]
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    append_all(spool, [consent_record(site, 3)[0], record(site, 2)[0], consent_record(site, 1)[0]])
    end = spool.durable
    spool.write_checkpoint(Checkpoint(Pos(1, 0), pending=end))
    if crash_after != "nothing":
        fail = 1 if crash_after == "events" else 0
        flaky = Recorder(backend, fail_table=CONSENT_LOG, fail=fail)
        with pytest.raises(StorageUnavailable) if fail else contextlib.nullcontext():
            Flusher(spool, flaky, Metrics())._flush(Pos(1, 0), end)
        spool.write_checkpoint(Checkpoint(Pos(1, 0), pending=end))  # as if we died here
    spool.close()

    reopened = Spool(tmp_path, 1 << 20, 1 << 30)
    assert reopened.checkpoint.pending == end
    flusher = Flusher(reopened, backend, Metrics(), interval=0.02)
    flusher.start()
    wait_for(lambda: flusher.caught_up)
    flusher.stop()
    reopened.close()
    assert logged_count(store, site) == 4
    assert count(store, site) == 2


def test_a_failed_consent_insert_is_retried_without_doubling_events(store, tmp_path):
    site = "clogretry-" + uuid.uuid4().hex[:8]
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    flaky = Recorder(store, fail_table=CONSENT_LOG, fail=2)
    flusher = Flusher(spool, flaky, Metrics(), interval=0.02)
    flusher.start()
    append_all(spool, [record(site, 5)[0], consent_record(site, 2)[0]])
    wait_for(lambda: flusher.caught_up and logged_count(store, site) == 2)
    flusher.stop()
    spool.close()
    assert count(store, site) == 5
    tokens = {t for table, t in flaky.inserts if table == "tagwerk.events"}
    assert len(tokens) == 1  # the retries re-sent the same events block, deduplicated


def test_a_record_for_an_unknown_table_is_skipped(store, tmp_path):
    site = "clogunknown-" + uuid.uuid4().hex[:8]
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    append_all(spool, [b'{"t":"from_the_future"}\n[1]\n', record(site, 2)[0]])
    Flusher(spool, store, Metrics())._flush(Pos(1, 0), spool.durable)
    spool.close()
    assert count(store, site) == 2
