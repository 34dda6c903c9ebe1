"""collector/enrich/client_hash.py: the days' salts the collectors share, and forget."""

from __future__ import annotations

import datetime as dt

from collector.enrich import client_hash
from collector.enrich.client_hash import ClientSalts
from collector.storage import StorageUnavailable

ADDRESS = "198.51.100.40"


def salts_of(store, day: dt.date) -> list[dict]:
    return store.rows("SELECT salt, toString(made) AS made FROM tagwerk.client_salts "
                      "WHERE day = {d:Date} ORDER BY made", {"d": day.isoformat()})


def test_collectors_share_todays_and_tomorrows_salt(store):
    first, second = ClientSalts(store), ClientSalts(store)
    first.look(every=0)
    second.look(every=0)
    today = client_hash.today()
    for day in (today, today + dt.timedelta(days=1)):
        assert len(salts_of(store, day)) == 1
        assert first.salt_of(day) == second.salt_of(day)
        assert len(first.salt_of(day)) == client_hash.SALT_BYTES
    assert first.hash("s", ADDRESS) == second.hash("s", ADDRESS) != 0


def test_of_two_salts_made_at_once_every_collector_takes_the_first_made(store):
    day = client_hash.today() + dt.timedelta(days=1)
    store.execute("ALTER TABLE tagwerk.client_salts DELETE WHERE day = {d:Date} "
                  "SETTINGS mutations_sync = 1", {"d": day.isoformat()})
    store.execute(
        "INSERT INTO tagwerk.client_salts (day, salt, made) VALUES "
        "({d:Date}, {late:String}, now64(6)), "
        "({d:Date}, {early:String}, now64(6) - INTERVAL 1 SECOND)",
        {"d": day.isoformat(), "late": "bb" * 32, "early": "aa" * 32})
    one = ClientSalts(store)
    one.look(every=0)
    assert one.salt_of(day) == bytes.fromhex("aa" * 32)


def test_a_past_days_salt_is_deleted(store):
    yesterday = client_hash.today() - dt.timedelta(days=1)
    store.execute("INSERT INTO tagwerk.client_salts (day, salt) VALUES ({d:Date}, 'cc')",
                  {"d": yesterday.isoformat()})
    ClientSalts(store).look(every=0)
    [row] = store.rows("SELECT count() AS n FROM tagwerk.client_salts "
                       "WHERE day < {d:Date}", {"d": client_hash.today().isoformat()})
    assert row["n"] == 0


def test_looks_are_spaced_and_survive_an_unreachable_store(store):
    class Away:
        def rows(self, *args, **kwargs):
            raise StorageUnavailable("ClickHouse is away")

    salts = ClientSalts(Away())  # type: ignore[arg-type]
    salts.look()  # logged, not raised
    own = salts.hash("s", ADDRESS)
    assert own != 0 and own == salts.hash("s", ADDRESS)  # a salt of the process's own
    salts.store = store
    salts.look()  # too soon: the next look is a minute later
    assert salts.hash("s", ADDRESS) == own
    salts.look(every=0)  # the shared salt from then on
    other = ClientSalts(store)
    other.look(every=0)
    assert salts.hash("s", ADDRESS) == other.hash("s", ADDRESS) != own
