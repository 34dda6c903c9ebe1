"""Hit enrichment: User-Agent classification, GeoIP, client address and anonymisation."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import maxminddb
import pytest

from collector.enrich.geo import UNKNOWN, GeoIP, Location
from collector.enrich.useragent import BOT_MARKERS, MAX_UA_LENGTH, Agent, parse_agent
from collector.web.clientip import anonymize_ip, client_ip, parse_networks
from tests.mmdb_writer import write_city_db

# --- User-Agent -------------------------------------------------------------------

IPHONE_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
ANDROID_CHROME = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36"
)
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1"
)
ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
WINDOWS_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
MAC_SAFARI = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Safari/605.1.15"
)
LINUX_FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
SAMSUNG_TV = (
    "Mozilla/5.0 (SMART-TV; LINUX; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) "
    "76.0.3809.146/6.0 TV Safari/537.36"
)
LG_TV = (
    "Mozilla/5.0 (Web0S; Linux/SmartTV) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/79.0.3945.79 Safari/537.36 WebAppManager"
)
FIRE_TV = (
    "Mozilla/5.0 (Linux; Android 9; AFTMM Build/PS7233; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/70.0.3538.110 Mobile Safari/537.36"
)
SONY_ANDROID_TV = (
    "Mozilla/5.0 (Linux; Android 12; BRAVIA 4K VH2 Build/STT1.211025.001.Z4; wv) "
    "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/114.0.5735.196 "
    "Mobile Safari/537.36"
)
ROKU = "Roku/DVP-9.10 (519.10E04111A)"
APPLE_TV = "AppleCoreMedia/1.0.0.20K71 (Apple TV; U; CPU OS 16_1 like Mac OS X; en_us)"
PS5 = (
    "Mozilla/5.0 (PlayStation; PlayStation 5/2.26) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/13.0 Safari/605.1.15"
)
XBOX = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; Xbox; Xbox Series X) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/48.0.2564.82 Safari/537.36 Edge/20.02"
)
SWITCH = (
    "Mozilla/5.0 (Nintendo Switch; WifiWebAuthApplet) AppleWebKit/606.4 "
    "(KHTML, like Gecko) NF/6.0.1.15.4 NintendoBrowser/5.1.0.20393"
)
APPLE_WATCH = (
    "Mozilla/5.0 (Watch; CPU Watch OS 10_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/21R355"
)
WEAR_OS = (
    "Mozilla/5.0 (Linux; Android 11; Wear OS; SM-R860) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/103.0.5060.71 Mobile Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
HEADLESS_CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/124.0.6367.91 Safari/537.36"
)
LIGHTHOUSE = (
    "Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/114.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse"
)


@pytest.mark.parametrize(
    ("ua", "expected"),
    [
        (IPHONE_SAFARI, Agent("mobile", "Mobile Safari", "iOS", False)),
        (ANDROID_CHROME, Agent("mobile", "Chrome Mobile", "Android", False)),
        (IPAD, Agent("tablet", "Mobile Safari", "iOS", False)),
        (ANDROID_TABLET, Agent("tablet", "Chrome", "Android", False)),
        (WINDOWS_CHROME, Agent("desktop", "Chrome", "Windows", False)),
        (MAC_SAFARI, Agent("desktop", "Safari", "Mac OS X", False)),
        (LINUX_FIREFOX, Agent("desktop", "Firefox", "Linux", False)),
        (SAMSUNG_TV, Agent("tv", "Safari", "Tizen", False)),
        (ROKU, Agent("tv", "Roku", "Roku", False)),
        (PS5, Agent("console", "Safari", "", False)),
        (XBOX, Agent("console", "Edge", "Windows", False)),
        (GOOGLEBOT, Agent("bot", "Googlebot", "", True)),
        (HEADLESS_CHROME, Agent("bot", "HeadlessChrome", "Linux", True)),
        ("curl/8.5.0", Agent("bot", "curl", "", True)),
        ("", Agent("bot", "", "", True)),
        ("   ", Agent("bot", "", "", True)),
        ("asdf qwerty", Agent("other", "", "", False)),
    ],
)
def test_parse_agent(ua: str, expected: Agent) -> None:
    assert parse_agent(ua) == expected


@pytest.mark.parametrize(
    ("ua", "device_class"),
    [
        # ua-parser calls these mobile (Android "Mobile Safari" WebViews) or PC
        # ("Windows NT"); the TV/console/wearable markers must win.
        (LG_TV, "tv"),
        (FIRE_TV, "tv"),
        (SONY_ANDROID_TV, "tv"),
        (APPLE_TV, "tv"),
        ("Mozilla/5.0 (Linux armv7l) AppleWebKit/537.36 HbbTV/1.4.1 (+DRM; Sony; KD-55)", "tv"),
        ("Mozilla/5.0 (Linux; Android 12; Chromecast HD) Mobile Safari/537.36 GoogleTV", "tv"),
        ("Mozilla/5.0 (Linux; Android 10; Android TV; Box) Chrome/100.0 Safari/537.36", "tv"),
        (SWITCH, "console"),
        ("Mozilla/5.0 (PlayStation 4 3.11) AppleWebKit/537.73 (KHTML, like Gecko)", "console"),
        (APPLE_WATCH, "wearable"),
        (WEAR_OS, "wearable"),
    ],
)
def test_parse_agent_device_class(ua: str, device_class: str) -> None:
    agent = parse_agent(ua)
    assert agent.device_class == device_class
    assert not agent.is_bot


def test_fire_tv_marker_needs_a_model_token() -> None:
    # "AFT" inside an ordinary word must not turn a phone into a TV.
    assert parse_agent(ANDROID_CHROME + " AFTERGLOW/1.0").device_class == "mobile"


@pytest.mark.parametrize(
    "ua",
    [
        "python-requests/2.31.0",
        "Wget/1.21.4",
        "Go-http-client/2.0",
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "Mozilla/5.0 (compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
        "Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)",
        LIGHTHOUSE,
    ],
)
def test_parse_agent_bots(ua: str) -> None:
    agent = parse_agent(ua)
    assert agent.is_bot
    assert agent.device_class == "bot"


@pytest.mark.parametrize("marker", BOT_MARKERS)
def test_every_bot_marker_is_case_insensitive(marker: str) -> None:
    assert parse_agent(f"Mozilla/5.0 (X11; Linux x86_64) {marker.upper()}1.0").is_bot


def test_parse_agent_is_cached() -> None:
    parse_agent.cache_clear()
    first = parse_agent(WINDOWS_CHROME)
    second = parse_agent(WINDOWS_CHROME)
    info = parse_agent.cache_info()
    assert (info.hits, info.misses, info.maxsize) == (1, 1, 8192)
    assert second is first


def test_parse_agent_truncates_before_caching() -> None:
    parse_agent.cache_clear()
    padded = WINDOWS_CHROME + " " + "x" * 10_000
    assert parse_agent(padded) == parse_agent(padded[:MAX_UA_LENGTH])
    assert parse_agent(padded + "different tail") is parse_agent(padded)
    assert parse_agent.cache_info().currsize == 1


# --- GeoIP ------------------------------------------------------------------------

LONDON = {
    "city": {"geoname_id": 2643743, "names": {"en": "London", "de": "London"}},
    "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
    "location": {"latitude": 51.5142, "longitude": -0.0931, "accuracy_radius": 20},
    "subdivisions": [{"iso_code": "ENG"}],
}
BERLIN = {
    "city": {"names": {"en": "Berlin"}},
    "country": {"iso_code": "DE"},
    "subdivisions": [{"iso_code": "BE"}, {"iso_code": "XX"}],
}
NETWORKS = {
    "81.2.0.0/16": {"country": {"iso_code": "GB"}},
    "81.2.69.0/24": LONDON,
    "2001:db8::/32": BERLIN,
    "2001:db8:1::/48": {"country": {"iso_code": "FR"}, "city": {"names": {"fr": "Lyon"}}},
}


@pytest.fixture(scope="module")
def geo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("geo") / "city.mmdb"
    write_city_db(path, NETWORKS)
    return path


@pytest.fixture
def geo(geo_db: Path) -> Iterator[GeoIP]:
    geo = GeoIP(geo_db)
    yield geo
    geo.close()


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("81.2.69.160", Location("GB", "ENG", "London")),
        ("81.2.70.1", Location("GB", "", "")),  # the enclosing /16: country only
        ("2001:db8::1", Location("DE", "BE", "Berlin")),  # first subdivision wins
        ("2001:db8:1::9", Location("FR", "", "")),  # no English city name
        ("8.8.8.8", UNKNOWN),
        ("2001:db9::1", UNKNOWN),
        ("not an ip", UNKNOWN),
        ("81.2.69.999", UNKNOWN),
        ("", UNKNOWN),
    ],
)
def test_geoip_lookup(geo: GeoIP, ip: str, expected: Location) -> None:
    assert geo.lookup(ip) == expected


def test_geoip_lookup_is_cached(geo: GeoIP) -> None:
    assert geo.lookup("81.2.69.1") is geo.lookup("81.2.69.1")
    info = geo.cache_info()
    assert (info.hits, info.misses, info.maxsize) == (1, 1, 65536)


def test_geoip_without_database() -> None:
    geo = GeoIP(None)
    assert geo.lookup("81.2.69.160") is UNKNOWN
    geo.close()


def test_geoip_after_close(geo_db: Path) -> None:
    geo = GeoIP(str(geo_db))
    assert geo.lookup("81.2.69.160").city == "London"
    geo.close()
    geo.close()
    assert geo.lookup("81.2.69.160") == UNKNOWN


@pytest.mark.parametrize("content", [None, b"", b"not a maxmind db\n" * 100])
def test_geoip_bad_file_fails_at_start(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "city.mmdb"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="city.mmdb"):
        GeoIP(path)


def test_geoip_directory_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        GeoIP(tmp_path)


# The writer itself, against every reader implementation: the C extension
# (libmaxminddb, which checks metadata types strictly) and the pure-Python ones.
READER_MODES = [maxminddb.MODE_MMAP, maxminddb.MODE_FILE, maxminddb.MODE_MEMORY]
if importlib.util.find_spec("maxminddb.extension") is not None:
    READER_MODES.append(maxminddb.MODE_MMAP_EXT)


@pytest.mark.parametrize("mode", READER_MODES)
@pytest.mark.parametrize("record_size", [24, 28, 32])
def test_mmdb_writer_round_trip(tmp_path: Path, record_size: int, mode: int) -> None:
    all_types = {
        # Sizes of 29+, 285+ and 65821+ bytes take one, two and three extra size bytes.
        "short": "ü" * 100,
        "medium": "x" * 300,
        "long": "x" * 70_000,
        "flag": True,
        "off": False,
        "double": -0.5,
        "negative": -7,
        "zero": 0,
        "uint32": 2643743,
        "uint64": 2**40,
        "uint128": 2**100,
        "raw": b"\x00\xff",
        "list": list(range(40)),
    }
    path = tmp_path / "test.mmdb"
    write_city_db(path, {**NETWORKS, "192.0.2.0/24": all_types}, record_size=record_size)
    with maxminddb.open_database(path, mode) as reader:
        metadata = reader.metadata()
        assert metadata.database_type == "GeoLite2-City"
        assert (metadata.ip_version, metadata.record_size) == (6, record_size)
        assert (metadata.binary_format_major_version, metadata.binary_format_minor_version) == (
            2,
            0,
        )
        assert metadata.languages == ["en"]
        assert metadata.description["en"]
        assert metadata.build_epoch > 0
        assert reader.get("81.2.69.160") == LONDON
        assert reader.get("::81.2.69.160") == LONDON  # IPv4 lives under ::/96
        assert reader.get("81.2.1.1") == NETWORKS["81.2.0.0/16"]
        assert reader.get("2001:db8:ffff::1") == BERLIN
        assert reader.get("192.0.2.1") == all_types
        assert reader.get("8.8.8.8") is None
        assert reader.get("2001:db9::1") is None
        assert reader.get_with_prefix_len("81.2.69.160") == (LONDON, 24)


# --- Client address ---------------------------------------------------------------

TRUSTED = parse_networks("10.0.0.0/8, 192.168.1.1 fd00::/8")


def test_parse_networks() -> None:
    assert [str(n) for n in TRUSTED] == ["10.0.0.0/8", "192.168.1.1/32", "fd00::/8"]
    assert parse_networks(["127.0.0.1", " ::1 "]) == parse_networks("127.0.0.1,::1")
    assert parse_networks("") == ()
    assert parse_networks(" , ") == ()


@pytest.mark.parametrize("entry", ["10.0.0.300", "example.com", "10.0.0.1/8", "10.0.0.0/33"])
def test_parse_networks_names_the_bad_entry(entry: str) -> None:
    with pytest.raises(ValueError, match=entry.replace(".", r"\.")):
        parse_networks(f"127.0.0.1, {entry}")


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        # No proxy in front: the peer is the visitor.
        ("203.0.113.7", None, "203.0.113.7"),
        ("203.0.113.7", "", "203.0.113.7"),
        ("2001:DB8:0::1", None, "2001:db8::1"),
        # Only a trusted peer may speak for somebody else.
        ("203.0.113.7", "198.51.100.9", "203.0.113.7"),
        ("10.0.0.2", "198.51.100.9", "198.51.100.9"),
        ("10.0.0.2", None, "10.0.0.2"),
        # A chain of our proxies is walked past, from the right.
        ("10.0.0.2", "198.51.100.9, 10.0.0.1, 192.168.1.1", "198.51.100.9"),
        ("fd00::2", "2001:db8::9, fd00::1", "2001:db8::9"),
        # Whatever the visitor put in front is ignored.
        ("10.0.0.2", "6.6.6.6, 7.7.7.7, 198.51.100.9", "198.51.100.9"),
        ("10.0.0.2", "10.0.0.9, 198.51.100.9", "198.51.100.9"),
        # Only proxies: the leftmost is the closest to the visitor.
        ("10.0.0.2", "10.0.0.5, 10.0.0.1", "10.0.0.5"),
        # Ports, brackets, IPv4-mapped IPv6, zone IDs.
        ("10.0.0.2", "198.51.100.9:5678", "198.51.100.9"),
        ("10.0.0.2", "[2001:db8::1]:443", "2001:db8::1"),
        ("10.0.0.2", "[2001:db8::1]", "2001:db8::1"),
        ("10.0.0.2", "::ffff:198.51.100.9", "198.51.100.9"),
        ("::ffff:10.0.0.2", "198.51.100.9", "198.51.100.9"),
        ("::ffff:203.0.113.7", None, "203.0.113.7"),
        ("fe80::1%eth0", None, "fe80::1"),
        # Garbage from a trusted proxy's chain: the peer, never the garbage.
        ("10.0.0.2", "garbage", "10.0.0.2"),
        ("10.0.0.2", "unknown", "10.0.0.2"),
        ("10.0.0.2", "198.51.100.9, <script>", "10.0.0.2"),
        ("10.0.0.2", "198.51.100.9,", "10.0.0.2"),
        ("10.0.0.2", " , ", "10.0.0.2"),
        ("10.0.0.2", "198.51.100.9:99999", "10.0.0.2"),
        ("10.0.0.2", "198.51.100.9:http", "10.0.0.2"),
        ("10.0.0.2", "[2001:db8::1", "10.0.0.2"),
        ("10.0.0.2", "[2001:db8::1]x", "10.0.0.2"),
        ("10.0.0.2", "01.2.3.4", "10.0.0.2"),
        # Garbage left of the visitor is never looked at.
        ("10.0.0.2", "garbage, 198.51.100.9", "198.51.100.9"),
        # No usable peer.
        (None, "198.51.100.9", ""),
        ("", None, ""),
        ("testclient", "198.51.100.9", ""),
    ],
)
def test_client_ip(peer: str | None, forwarded_for: str | None, expected: str) -> None:
    assert client_ip(peer, forwarded_for, TRUSTED) == expected


def test_client_ip_trusts_nobody_by_default() -> None:
    assert client_ip("10.0.0.2", "198.51.100.9", ()) == "10.0.0.2"


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("203.0.113.0", "203.0.113.0"),
        ("255.255.255.255", "255.255.255.0"),
        ("2001:db8:abcd:1234:5678::1", "2001:db8:abcd::"),
        ("2001:db8::1", "2001:db8::"),
        ("::ffff:203.0.113.77", "203.0.113.0"),
        ("::1", "::"),
        ("not an ip", ""),
        ("203.0.113.256", ""),
        ("", ""),
    ],
)
def test_anonymize_ip(ip: str, expected: str) -> None:
    assert anonymize_ip(ip) == expected


def test_enrichment_pipeline(geo: GeoIP) -> None:
    # How the collector chains them: only the anonymised address reaches GeoIP.
    visitor = client_ip("10.0.0.2", "6.6.6.6, 81.2.69.160", TRUSTED)
    assert visitor == "81.2.69.160"
    assert geo.lookup(anonymize_ip(visitor)) == Location("GB", "ENG", "London")
