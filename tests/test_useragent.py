"""collector.enrich.useragent on public corpora of real User-Agents
(tests/useragent_corpus/README.md), and the request path's cheap answers: cache hits, guesses,
the flusher's resolution.

Run with ``pytest -s`` to see the percentages."""

from __future__ import annotations

import gzip
import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from importlib.resources import files
from pathlib import Path

import orjson
import pytest
import yaml_rs

from collector.enrich import useragent
from collector.enrich.useragent import (
    MAX_UA_LENGTH,
    Resolver,
    guess,
    on_endpoint,
    parse_agent,
    request_agent,
)
from tests import background

CORPUS = Path(__file__).parent / "useragent_corpus"
GOAL = 95.0
# Bots flagged as sent to a browser endpoint (/collect, /p.gif, the consent log: Matomo's
# rules, and an agent in which they recognise nothing is a program) and relayed in a batch
# (Matomo's rules alone: the merchant's own systems name only themselves). "untuned": only
# the rows that are not among Matomo's own fixtures. Measured (useragent_corpus/README.md):
# monperrus 97.5% (97.0% untuned) at a browser endpoint, 92.4% (90.6%) in a batch;
# CrawlerDetect, on which no rule here was designed, 94.3% (93.7%) and 85.8% (84.3%).
# These floors guard what holds.
BOT_FLOORS = {
    "bot monperrus, browser endpoint": 97.0, "bot monperrus, browser endpoint, untuned": 96.5,
    "bot crawlerdetect, browser endpoint": 94.0,
    "bot crawlerdetect, browser endpoint, untuned": 93.5,
    "bot monperrus, batch": 92.0, "bot monperrus, batch, untuned": 90.0,
    "bot crawlerdetect, batch": 85.0, "bot crawlerdetect, batch, untuned": 83.5,
}
# intoli's deviceCategory -> our device_class
EXPECTED = {"desktop": "desktop", "mobile": "mobile", "tablet": "tablet"}


def devices() -> list[tuple[str, str]]:
    """(User-Agent, expected device class) of intoli's corpus."""
    with gzip.open(CORPUS / "intoli-user-agents.jsonl.gz") as f:
        rows = [orjson.loads(line) for line in f]
    return [(row["userAgent"], EXPECTED[row["deviceCategory"]]) for row in rows]


def crawlers(name: str = "monperrus-crawler-user-agents") -> list[str]:
    """A corpus of crawler, monitoring, SEO and ad agents: monperrus's instances (default)
    or CrawlerDetect's test agents ("crawlerdetect-crawlers")."""
    with gzip.open(CORPUS / f"{name}.jsonl.gz") as f:
        return [orjson.loads(line)["userAgent"] for line in f]


def matomo_fixtures() -> set[str]:
    """The agents Matomo's bot rules were written from (its test fixtures, shipped with the
    port): a corpus row among them measures nothing about the rules."""
    path = files("device_detector") / "tests/fixtures/upstream/bots.yml"
    return {row["user_agent"] for row in yaml_rs.loads(path.read_text(encoding="utf-8"))}


def isbot_browsers() -> list[tuple[str, str]]:
    """(User-Agent, group) of isbot's browser fixtures (useragent_corpus/README.md)."""
    with gzip.open(CORPUS / "isbot-browsers.jsonl.gz") as f:
        return [(row["userAgent"], row["group"]) for row in map(orjson.loads, f)]


def accuracy(classify=parse_agent) -> dict[str, tuple[int, int]]:
    """Per class: (right, total); the "bot" classes count crawlers flagged. ``classify``
    takes the UA and whether it was sent to a browser endpoint (devices: yes)."""
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for ua, expected in devices():
        total[expected] += 1
        right[expected] += classify(ua, True).device_class == expected
    tuned = matomo_fixtures()
    for corpus, short in (("monperrus-crawler-user-agents", "monperrus"),
                          ("crawlerdetect-crawlers", "crawlerdetect")):
        for ua in crawlers(corpus):
            for where, browser_endpoint in (("browser endpoint", True), ("batch", False)):
                name = f"bot {short}, {where}"
                for counted in (name,) if ua in tuned else (name, f"{name}, untuned"):
                    total[counted] += 1
                    right[counted] += classify(ua, browser_endpoint).is_bot
    return {name: (right[name], total[name]) for name in (*EXPECTED.values(), *BOT_FLOORS)
            if total[name]}


def guess_anywhere(ua: str, browser_endpoint: bool) -> useragent.Agent:
    """The guess, which answers alike on every endpoint."""
    return guess(ua)


def report(results: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{name} {100 * ok / n:.1f}% ({ok}/{n})"
                     for name, (ok, n) in results.items())


def _parse_all(agents: list[str]) -> list[useragent.Agent]:
    return [parse_agent(ua) for ua in agents]


def parse_corpora() -> dict[str, tuple[str, str, str, bool, bool]]:
    """parse_agent of every corpus (8,326 agents), in a process per core (spawned, not
    forked: this runs wherever it is called from, a test process with the engine's threads
    included): the agent's fields by User-Agent. Most of the cost is
    Matomo's rules, whose regexes each process compiles lazily: a first pass cost 3.6 ms an
    agent, a warm one 1.1 ms, a browser's ~25 ms (a minute of a core in all). Run in the
    background from the session's start (tests/background.py)."""
    agents = sorted({*(ua for ua, _ in devices()), *(ua for ua, _ in isbot_browsers()),
                     *crawlers(), *crawlers("crawlerdetect-crawlers")})
    chunks = [agents[i:i + 250] for i in range(0, len(agents), 250)]
    with ProcessPoolExecutor(os.cpu_count() or 2,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        parsed = (a for part in pool.map(_parse_all, chunks) for a in part)
        return {ua: (a.device_class, a.browser, a.os, a.is_bot, a.unnamed)
                for ua, a in zip(agents, parsed, strict=True)}


@pytest.fixture(scope="module")
def corpora_parsed():
    """The corpora's agents as ``classify`` for accuracy()."""
    parsed = {ua: useragent.Agent(*fields)
              for ua, fields in background.result("useragent corpora").items()}
    return lambda ua, browser_endpoint=False: on_endpoint(parsed[ua], browser_endpoint)


@pytest.fixture(scope="module")
def corpus_results(corpora_parsed) -> dict[str, tuple[int, int]]:
    results = accuracy(corpora_parsed)
    print(f"\nuseragent corpus, parse_agent: {report(results)}")
    return results


@pytest.mark.parametrize("name", [*EXPECTED.values(), *BOT_FLOORS])
def test_corpus_accuracy(corpus_results: dict[str, tuple[int, int]], name: str) -> None:
    ok, n = corpus_results[name]
    assert n >= 100, "the corpus lost its rows"
    goal = BOT_FLOORS.get(name, GOAL)
    assert 100 * ok / n >= goal, f"{name}: {100 * ok / n:.1f}% < {goal}%"


@pytest.mark.parametrize("ua", ["tagwerk-pos/1.0", "SAP Commerce/2205", "ShopTill/3.1.4",
                                "CallCenterDesk/7.2 (build 118)"])
def test_the_merchants_own_systems_are_not_bots(ua: str) -> None:
    # Relayed in a batch; only a browser endpoint takes them for programs.
    assert not parse_agent(ua).is_bot
    assert parse_agent(ua, browser_endpoint=True).is_bot


@pytest.mark.parametrize(("browser_endpoint", "most"), [(False, 2), (True, 3)])
def test_no_visitor_is_a_bot(corpora_parsed, browser_endpoint: bool, most: int) -> None:
    # The flip side of the bot goal: real browsers pass as visitors. Two intoli flags are
    # crawlers in its corpus (pageburst, SiteScoreBot); at a browser endpoint a third,
    # "Relay by /u/DBrady v12.0.57", a Reddit client's own request naming no platform.
    flagged = [ua for ua, _ in devices() if corpora_parsed(ua, browser_endpoint).is_bot]
    assert len(flagged) <= most, flagged[:10]


def test_isbot_browsers_at_a_browser_endpoint(corpora_parsed) -> None:
    # isbot's browser fixtures: Matomo's rules flag 23 of 555 anywhere (Lynx, Mosaic,
    # Firefox's MozacFetch...; most in the groups isbot itself calls glitches and
    # insignificant bots); the browser endpoints add only agents of those groups (an SQL
    # injection, Lucidworks-Anda, "MyLib/1.11 (vert.x...)").
    agents = isbot_browsers()
    anywhere = {ua for ua, _ in agents if corpora_parsed(ua).is_bot}
    added = {(group, ua) for ua, group in agents
             if corpora_parsed(ua, browser_endpoint=True).is_bot and ua not in anywhere}
    print(f"\nisbot browsers flagged: {len(anywhere)} anywhere, +{len(added)} at a browser "
          f"endpoint, of {len(agents)}")
    assert len(anywhere) <= 23
    assert all(group.startswith("ZZZ") for group, _ in added), sorted(added)


@pytest.mark.parametrize("ua", [
    # Apps' own HTTP clients name their platform (Dalvik, CFNetwork/Darwin).
    "Dalvik/2.1.0 (Linux; U; Android 11; SM-G991B Build/RP1A.200720.012)",
    "MyShop/4.2 CFNetwork/1410.0.3 Darwin/22.6.0",
    # In-app browsers: Instagram, Facebook, WeChat, Line.
    "Instagram 123.0.0.21.114 (iPhone11,8; iOS 13_3; en_US; en-US; scale=2.00; 828x1792; "
    "190542906)",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/390.0.0.29.105;FBDV/iPhone13,2;FBSN/iOS;FBSV/16.0]",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 13_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 MicroMessenger/7.0.10(0x17000a21) NetType/WIFI Language/zh_CN",
    "Mozilla/5.0 (Linux; Android 12; SM-G991B Build/SP1A; wv) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Version/4.0 Chrome/108.0.5359.128 Mobile Safari/537.36 Line/13.1.0",
    # E-mail clients loading a pixel, some naming no platform (The Bat!).
    "The Bat! 4.0.0.22",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.13127; Pro)",
    "Airmail 1.3.3 rv:237 (Macintosh; Mac OS X 10.9.3; sk_SK)",
    # A smart TV, a console, an e-reader.
    "Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/4.0 Chrome/76.0.3809.146 TV Safari/537.36",
    "Mozilla/5.0 (PlayStation; PlayStation 5/2.26) AppleWebKit/605.1.15 (KHTML, like Gecko)",
    "Mozilla/5.0 (X11; U; Linux armv7l like Android; en-us) AppleWebKit/531.2+ (KHTML, like "
    "Gecko) Version/5.0 Safari/533.2+ Kindle/3.0+",
])
def test_people_pass_at_a_browser_endpoint(ua: str) -> None:
    assert not parse_agent(ua, browser_endpoint=True).is_bot


@pytest.mark.parametrize("ua", [
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
])
def test_mail_image_proxies_are_flagged(ua: str) -> None:
    # Matomo's rules call them bots (Gmail's "Crawler", Yahoo's "Service Agent"), as Matomo
    # and Plausible count them; an e-mail channel that counts opens must count these proxies'
    # fetches itself (useragent_corpus/README.md).
    assert parse_agent(ua).is_bot and parse_agent(ua, browser_endpoint=True).is_bot


@pytest.mark.parametrize("ua", [
    "Mozilla/5.0 (Linux; Android 8.0.0; CUBOT_P20) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/70.0.3538.110 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 6.0; CUBOT MAX Build/MRA58K) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Chrome/51.0.2704.81 Mobile Safari/537.36",
])
def test_a_cubot_phone_is_a_visitor(ua: str) -> None:
    # The phone brand holds "bot": only the guess may take it for one.
    assert (parse_agent(ua).device_class, parse_agent(ua).is_bot) == ("mobile", False)


def test_guess_accuracy_is_reported() -> None:
    # What a row keeps when the flusher could not classify it (budget spent, restart).
    print(f"\nuseragent corpus, guess: {report(accuracy(guess_anywhere))}")


# --- the request's path ---------------------------------------------------------------

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.0.0 Safari/537.36")


def test_request_agent_answers_a_miss_with_a_guess_and_a_hit_exactly() -> None:
    parse_agent.cache_clear()
    ua = CHROME + " fresh-1"
    first = request_agent(ua)
    assert first.pending and (first.device_class, first.browser, first.is_bot) == (
        "desktop", "", False)
    assert request_agent(ua) is first  # one pending entry per UA
    assert parse_agent.cache_info().misses == 0  # the request never parsed
    resolver = Resolver()
    resolver.start_batch()
    exact = resolver.agent(first.pending)
    assert exact == parse_agent(ua) and exact.browser == "Chrome" and not exact.pending
    assert request_agent(ua) is exact  # cached now
    assert resolver.agent(first.pending) is exact  # other rows with the same key


def test_resolver_keeps_the_guess_when_its_budget_is_spent() -> None:
    resolver = Resolver(budget=0.0, minimum=1)
    resolver.start_batch()
    first, second = (request_agent(CHROME + f" fresh-{i}") for i in (2, 3))
    assert resolver.agent(first.pending) is not None  # the minimum
    assert resolver.agent(second.pending) is None  # then the budget


def test_keys_of_another_process_do_not_resolve() -> None:
    resolver = Resolver()
    resolver.start_batch()
    assert resolver.agent("0badc0de:1") is None


def test_pending_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # A client sending a million distinct UAs: the table keeps the newest, each cut short.
    table = useragent._Pending(maxsize=100)
    monkeypatch.setattr(useragent, "_pending", table)
    agents = [request_agent(f"{CHROME} {i} " + "x" * 10_000) for i in range(1_000)]
    assert len(table) == 100
    assert all(len((table.entry(a.pending) or ("",))[0]) == MAX_UA_LENGTH
               for a in agents[-100:])
    assert table.entry(agents[0].pending) is None


def test_the_endpoint_decides_for_an_unnamed_program() -> None:
    ua = "Monit/5.25.2 fresh-4"
    first, relayed = request_agent(ua, browser_endpoint=True), request_agent(ua)
    assert first.pending != relayed.pending  # one pending entry per UA and endpoint
    resolver = Resolver()
    resolver.start_batch()
    assert resolver.agent(first.pending).is_bot
    assert not resolver.agent(relayed.pending).is_bot
    # Cache hits answer alike.
    assert request_agent(ua, browser_endpoint=True).is_bot and not request_agent(ua).is_bot


@pytest.mark.parametrize(
    ("ua", "device_class", "is_bot"),
    [
        ("", "bot", True),
        ("Googlebot/2.1 (+http://www.google.com/bot.html)", "bot", True),
        ("Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) Mobile/15E148", "tablet", False),
        ("Mozilla/5.0 (Linux; Android 10; K) Chrome/124.0.0.0 Safari/537.36", "tablet", False),
        ("Mozilla/5.0 (Linux; Android 10; K) Chrome/124.0.0.0 Mobile Safari/537.36",
         "mobile", False),
        (CHROME, "desktop", False),
        ("server", "other", False),
    ],
)
def test_guess(ua: str, device_class: str, is_bot: bool) -> None:
    assert (guess(ua).device_class, guess(ua).is_bot) == (device_class, is_bot)


# --- through the collector: the flusher writes the accurate answer ----------------------

MONITOR = "Blackbox Exporter/0.20.0"  # the guess sees a visitor; Matomo's rules a monitor


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    from tests.helpers import make_client

    client, collector = make_client(store, tmp_path_factory.mktemp("ua") / "var")
    with client:
        _, keys = collector.sites.create("ua-test")
        collector.sites.create("ua-nobots", drop_bots=True)
        yield client, collector, keys["write"]


def _hit(client, site: str, marker: str, ua: str):
    body = {"site": site, "event": "page_view", "consent": ["analytics"],
            "props": {"marker": marker}}
    return client.post("/collect", content=orjson.dumps(body),
                       headers={"Content-Type": "text/plain", "User-Agent": ua})


def _stored(collector, site: str, marker: str):
    from tests.helpers import drained, rows

    if not drained(collector):
        return []
    return rows(collector.store, site, "props['marker'] = {m:String}", m=marker)


def test_flusher_stores_the_accurate_answer_for_a_guessed_agent(env) -> None:
    import uuid

    from tests.helpers import wait_for

    client, collector, _ = env
    ua = f"{MONITOR} {uuid.uuid4().hex}"
    assert not guess(ua).is_bot
    marker = uuid.uuid4().hex
    assert _hit(client, "ua-test", marker, ua).json() == {"accepted": 1}
    [row] = wait_for(lambda: _stored(collector, "ua-test", marker))
    assert (row["device_class"], row["is_bot"]) == ("bot", True)

    # A site that drops bots: the guess let it in, the flusher drops it.
    ua = f"{MONITOR} {uuid.uuid4().hex}"
    before = collector.metrics.bots_dropped.values.get((), 0)
    marker = uuid.uuid4().hex
    assert _hit(client, "ua-nobots", marker, ua).json() == {"accepted": 1}
    person = uuid.uuid4().hex
    _hit(client, "ua-nobots", person, CHROME + " " + person)  # a visitor, stored
    [row] = wait_for(lambda: _stored(collector, "ua-nobots", person))
    assert (row["device_class"], row["browser"], row["is_bot"]) == ("desktop", "Chrome", False)
    assert _stored(collector, "ua-nobots", marker) == []
    assert collector.metrics.bots_dropped.values[()] == before + 1


def test_an_unnamed_program_is_a_bot_on_collect_and_not_in_a_batch(env) -> None:
    import uuid

    from tests.helpers import send_batch, wait_for

    client, collector, write_key = env
    ua = f"Monit/5.25.2 {uuid.uuid4().hex}"  # Matomo's rules recognise nothing in it
    marker = uuid.uuid4().hex
    assert _hit(client, "ua-test", marker, ua).json() == {"accepted": 1}
    [row] = wait_for(lambda: _stored(collector, "ua-test", marker))
    assert (row["device_class"], row["is_bot"]) == ("bot", True)
    # The same agent relayed by the merchant's server is not judged by its name.
    relayed = uuid.uuid4().hex
    send_batch(client, collector, write_key,
               [{"event": "purchase", "user_agent": ua, "props": {"marker": relayed}}])
    [row] = wait_for(lambda: _stored(collector, "ua-test", relayed))
    assert (row["device_class"], row["is_bot"]) == ("other", False)
