"""Where the engine reads a time zone or a type name from a function's argument.

The engine loads a time zone it does not know from a file: a zone named ``file:<path>`` is
any file (the time zone library's own loader, which chDB falls back to), and a pipe's path
hangs the engine's time zone lock, and with it every query and the storing of hits. A
literal or a query parameter is checked for ``file:`` (``values.check_value``); a name the
query computes when it runs (``concat``, ``base64Decode``, a ``WITH`` alias, a scalar
subquery) is not seen by any check, and even the engine's analysis of the query loads the
zone. So where a function's argument is read as a zone or as a type name (a type may name a
zone: ``DateTime('Europe/Berlin')``), only a literal may stand (a bound query parameter is
a literal in the engine's tree): ``policy.check`` refuses anything else.

:data:`TABLE` is the installed engine's, found by asking it (:func:`probe`): every function
it lists is called with a zone nobody has (``Nowhere/Zone``), and with a type naming it,
at each position among arguments of common types; where the engine answers that it cannot
load that zone (or names it in an error, where the same call with a zone it has succeeds),
the position is one. Aliases (``toTimeZone``, ``DATE_DIFF``) and the
lower-cased names of case-insensitive functions are listed as their functions.
``python3 -c "from collector.sqlhttp.zones import main; main()"`` probes the engine (about
2 minutes) and prints the table to put here; ``tests/test_sql_zones.py`` checks it against
the engine.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

THREADS = 4  # the probe's
LAST = -1  # the last argument, whatever their number (JSONExtract's type)
# Function name (lower-cased) -> {number of arguments: positions read as a zone or type}
# or LAST. A call with a number of arguments the probe did not see has every position the
# function has in any (:func:`positions`).
# (printed by this module's main(); the engine's aliases included)
TABLE: dict[str, dict[int, tuple[int, ...]] | int] = {
    '__toyearcalendaronly': {2: (1,)},
    '_cast': {2: (1,)},
    'accuratecast': {2: (1,)},
    'accuratecastordefault': {2: (1,), 3: (1,)},
    'accuratecastornull': {2: (1,)},
    'adddays': {3: (2,)},
    'addhours': {3: (2,)},
    'addmicroseconds': {3: (2,)},
    'addmilliseconds': {3: (2,)},
    'addminutes': {3: (2,)},
    'addmonths': {3: (2,)},
    'addnanoseconds': {3: (2,)},
    'addquarters': {3: (2,)},
    'addseconds': {3: (2,)},
    'addweeks': {3: (2,)},
    'addyears': {3: (2,)},
    'age': {4: (3,)},
    'cast': {2: (1,)},
    'current_timestamp': {1: (0,)},
    'date': {2: (1,)},
    'date_bin': {3: (2,), 4: (3,)},
    'date_diff': {4: (3,)},
    'date_format': {3: (2,)},
    'date_trunc': {3: (2,)},
    'datediff': {4: (3,)},
    'datename': {3: (2,)},
    'datetrunc': {3: (2,)},
    'day': {2: (1,)},
    'dayofmonth': {2: (1,)},
    'dayofweek': {3: (2,)},
    'dayofyear': {2: (1,)},
    'defaultvalueoftypename': {1: (0,)},
    'dynamicelement': {2: (1,)},
    'formatdatetime': {3: (2,)},
    'formatdatetimeinjodasyntax': {3: (2,)},
    'from_unixtime': {3: (2,)},
    'from_utc_timestamp': {2: (1,)},
    'fromunixtimestamp': {3: (2,)},
    'fromunixtimestamp64micro': {2: (1,)},
    'fromunixtimestamp64milli': {2: (1,)},
    'fromunixtimestamp64nano': {2: (1,)},
    'fromunixtimestamp64second': {2: (1,)},
    'fromunixtimestampinjodasyntax': {3: (2,)},
    'fromutctimestamp': {2: (1,)},
    'getsubcolumn': {2: (1,)},
    'gettypeserializationstreams': {1: (0,)},
    'hop': {4: (3,)},
    'hopend': {4: (3,)},
    'hopstart': {4: (3,)},
    'hour': {2: (1,)},
    'jsonextract': LAST,
    'jsonextractcaseinsensitive': LAST,
    'jsonextractkeysandvalues': LAST,
    'jsonextractkeysandvaluescaseinsensitive': LAST,
    'last_day': {2: (1,)},
    'localtimestamp': {1: (0,)},
    'makedatetime': {7: (6,)},
    'makedatetime64': {9: (8,)},
    'microsecond': {2: (1,)},
    'millisecond': {2: (1,)},
    'minute': {2: (1,)},
    'month': {2: (1,)},
    'nanosecond': {2: (1,)},
    'now': {1: (0,)},
    'now64': {2: (1,)},
    'nowinblock': {1: (0,)},
    'nowinblock64': {2: (1,)},
    'parsedatetime': {3: (2,)},
    'parsedatetime32besteffort': {2: (1,)},
    'parsedatetime32besteffortornull': {2: (1,)},
    'parsedatetime32besteffortorzero': {2: (1,)},
    'parsedatetime64': {3: (2,)},
    'parsedatetime64besteffort': {3: (2,)},
    'parsedatetime64besteffortornull': {3: (2,)},
    'parsedatetime64besteffortorzero': {3: (2,)},
    'parsedatetime64besteffortus': {3: (2,)},
    'parsedatetime64besteffortusornull': {3: (2,)},
    'parsedatetime64besteffortusorzero': {3: (2,)},
    'parsedatetime64injodasyntax': {3: (2,)},
    'parsedatetime64injodasyntaxornull': {3: (2,)},
    'parsedatetime64injodasyntaxorzero': {3: (2,)},
    'parsedatetime64ornull': {3: (2,)},
    'parsedatetime64orzero': {3: (2,)},
    'parsedatetimebesteffort': {2: (1,), 3: (2,)},
    'parsedatetimebesteffortornull': {2: (1,), 3: (2,)},
    'parsedatetimebesteffortorzero': {2: (1,), 3: (2,)},
    'parsedatetimebesteffortus': {2: (1,)},
    'parsedatetimebesteffortusornull': {2: (1,)},
    'parsedatetimebesteffortusorzero': {2: (1,)},
    'parsedatetimeinjodasyntax': {3: (2,)},
    'parsedatetimeinjodasyntaxornull': {3: (2,)},
    'parsedatetimeinjodasyntaxorzero': {3: (2,)},
    'parsedatetimeornull': {3: (2,)},
    'parsedatetimeorzero': {3: (2,)},
    'quarter': {2: (1,)},
    'reinterpret': {2: (1,)},
    'second': {2: (1,)},
    'snowflakeidtodatetime': {3: (2,)},
    'snowflakeidtodatetime64': {3: (2,)},
    'str_to_date': {3: (2,)},
    'subtractdays': {3: (2,)},
    'subtracthours': {3: (2,)},
    'subtractmicroseconds': {3: (2,)},
    'subtractmilliseconds': {3: (2,)},
    'subtractminutes': {3: (2,)},
    'subtractmonths': {3: (2,)},
    'subtractnanoseconds': {3: (2,)},
    'subtractquarters': {3: (2,)},
    'subtractseconds': {3: (2,)},
    'subtractweeks': {3: (2,)},
    'subtractyears': {3: (2,)},
    'time_bucket': {3: (2,), 4: (3,)},
    'timeslot': {2: (1,)},
    'timestamp_diff': {4: (3,)},
    'timestampdiff': {4: (3,)},
    'timezoneoffset': {2: (1,)},
    'to_days': {2: (1,)},
    'to_unixtime': {3: (2,)},
    'to_utc_timestamp': {2: (1,)},
    'todate': {2: (1,)},
    'todate32': {2: (1,)},
    'todatetime': {2: (1,), 3: (2,)},
    'todatetime32': {2: (1,)},
    'todatetime64': {3: (2,)},
    'todatetime64ordefault': {3: (2,), 4: (2,)},
    'todatetime64ornull': {3: (2,)},
    'todatetime64orzero': {3: (2,)},
    'todatetimeordefault': {2: (1,), 3: (1,)},
    'todatetimeornull': {2: (1,)},
    'todatetimeorzero': {2: (1,)},
    'todayofmonth': {2: (1,)},
    'todayofweek': {3: (2,)},
    'todayofyear': {2: (1,)},
    'todaysinmonth': {2: (1,)},
    'todayssinceyearzero': {2: (1,)},
    'tohour': {2: (1,)},
    'toisoweek': {2: (1,)},
    'toisoyear': {2: (1,)},
    'tolastdayofmonth': {2: (1,)},
    'tolastdayofweek': {3: (2,)},
    'tomicrosecond': {2: (1,)},
    'tomillisecond': {2: (1,)},
    'tominute': {2: (1,)},
    'tomonday': {2: (1,)},
    'tomonth': {2: (1,)},
    'tomonthnumsinceepoch': {2: (1,)},
    'tonanosecond': {2: (1,)},
    'toquarter': {2: (1,)},
    'torelativedaynum': {2: (1,)},
    'torelativehournum': {2: (1,)},
    'torelativeminutenum': {2: (1,)},
    'torelativemonthnum': {2: (1,)},
    'torelativequarternum': {2: (1,)},
    'torelativesecondnum': {2: (1,)},
    'torelativeweeknum': {2: (1,)},
    'torelativeyearnum': {2: (1,)},
    'tosecond': {2: (1,)},
    'tostartofday': {2: (1,)},
    'tostartoffifteenminutes': {2: (1,)},
    'tostartoffiveminute': {2: (1,)},
    'tostartoffiveminutes': {2: (1,)},
    'tostartofhour': {2: (1,)},
    'tostartofinterval': {3: (2,), 4: (3,)},
    'tostartofisoyear': {2: (1,)},
    'tostartofmicrosecond': {2: (1,)},
    'tostartofmillisecond': {2: (1,)},
    'tostartofminute': {2: (1,)},
    'tostartofmonth': {2: (1,)},
    'tostartofnanosecond': {2: (1,)},
    'tostartofquarter': {2: (1,)},
    'tostartofsecond': {2: (1,)},
    'tostartoftenminutes': {2: (1,)},
    'tostartofweek': {3: (2,)},
    'tostartofyear': {2: (1,)},
    'tostring': {2: (1,)},
    'totimewithfixeddate': {2: (1,)},
    'totimezone': {2: (1,)},
    'tounixtimestamp': {2: (1,)},
    'toutctimestamp': {2: (1,)},
    'toweek': {3: (2,)},
    'toyear': {2: (1,)},
    'toyearnumsinceepoch': {2: (1,)},
    'toyearweek': {3: (2,)},
    'toyyyymm': {2: (1,)},
    'toyyyymmdd': {2: (1,)},
    'toyyyymmddhhmmss': {2: (1,)},
    'tumble': {3: (2,)},
    'tumbleend': {3: (2,)},
    'tumblestart': {3: (2,)},
    'uuidv7todatetime': {2: (1,)},
    'week': {3: (2,)},
    'year': {2: (1,)},
    'yearweek': {3: (2,)},
    'yyyymmddhhmmsstodatetime': {2: (1,)},
    'yyyymmddhhmmsstodatetime64': {3: (2,)},
}

_ZONE = "'Nowhere/Zone'"
_TYPE = "'DateTime(\\'Nowhere/Zone\\')'"
_VALID = {_ZONE: "'UTC'", _TYPE: "'DateTime(\\'UTC\\')'"}  # the same call, loading a zone
# The engine checks the number of arguments before their types: a number it refuses once
# is refused whatever the arguments (this cut the probe from 137,000 calls to 50,000 for the
# test's functions, and the table it prints stayed the same).
_ARITY = re.compile(r"Code: (42|34|35)\.")  # NUMBER_OF_ARGUMENTS_DOESNT_MATCH, TOO_MANY/FEW
_FOUND = re.compile(r"Cannot load time zone (Nowhere/Zone|DateTime\('Nowhere/Zone'\))")
# Arguments of common types, each tried before the probe; the first nine also second.
_FILLERS = ("now()", "0", "3", "'day'", "'%Y'", "'2020-01-01'", "'{}'", "toIntervalHour(1)",
            "'a'", "[1]", "tuple(1)", "toUInt64(0)", "toUUID('018f8d2a-0000-7000-8000-0000000000"
            "00')", "now()::Dynamic", "toDateTime64(0, 3)")
_SHAPES = (("'day'", "now()", "now()"), ("now()", "toIntervalHour(1)", "now()"),
           ("now()", "toIntervalHour(1)", "toIntervalHour(2)"), ("'{}'", "'a'", "'b'"),
           ("now()", "0", "3"), ("'x'", "'%Y'", "0"), ("'{}'", "'a'", "'b'", "'c'"),
           ("'{}'", "'a'", "'b'", "'c'", "'d'"), ("2020", "1", "1", "0", "0", "0"),
           ("2020", "1", "1", "0", "0", "0", "0", "3"))
# Functions not called while probing: they reach files, hosts or dictionaries, or wait.
_NOT_CALLED = re.compile(r"(file|url|s3|hdfs|azure|remote|executable|mysql|postgresql|"
                         r"dictget|joinget|getmacro|ai|sleep|throwif)", re.I)


def reads(name: str) -> bool:
    """Whether some call of ``name`` reads an argument as a time zone or a type name."""
    return name.lower() in TABLE


def positions(name: str, arity: int) -> Iterable[int]:
    """The positions of a call of ``name`` with ``arity`` arguments that the engine reads as
    a time zone or a type name."""
    entry = TABLE.get(name.lower())
    if entry is None:
        return ()
    if entry == LAST:
        return (arity - 1,) if arity else ()
    assert isinstance(entry, dict)
    found = entry.get(arity)
    if found is None:
        found = tuple(sorted({p for ps in entry.values() for p in ps}))
    return tuple(p for p in found if p < arity)


def calls() -> list[list[str]]:
    """The argument lists the probe tries: a probe value at each position among fillers."""
    tried: list[list[str]] = []
    for probe in (_ZONE, _TYPE):
        tried.append([probe])
        for filler in _FILLERS:
            tried += [[filler, probe], [probe, filler]]
            tried += [[filler, other, probe] for other in _FILLERS[:9]]
        tried += [[*shape, probe] for shape in _SHAPES]
        tried += [["now()", "3", probe, "now()"], ["now()", probe, "now()"]]
    return tried


def probe(query: Callable[[str], str], names: Iterable[str] | None = None
          ) -> dict[str, dict[int, tuple[int, ...]] | int]:
    """The table for the engine ``query`` runs statements on (it returns TSV, raising on an
    error), for the functions ``names`` (default: every function the engine lists)."""
    rows = [line.split("\t") for line in query(
        "SELECT name, is_aggregate, case_insensitive, alias_to FROM system.functions "
        "ORDER BY name").splitlines()]
    aliases: dict[str, list[str]] = {}
    for name, _, _, alias_to in rows:
        if alias_to:
            aliases.setdefault(alias_to, []).append(name)
    wanted = None if names is None else set(names)
    probed = [(name, aggregate == "1") for name, aggregate, _, alias_to in rows
              if not alias_to and not _NOT_CALLED.match(name)
              and (wanted is None or name in wanted)]
    with ThreadPoolExecutor(THREADS) as pool:  # the engine answers threads at once
        found = dict(zip((name for name, _ in probed),
                         pool.map(lambda item: _probe_one(query, *item), probed), strict=True))
    table: dict[str, dict[int, tuple[int, ...]] | int] = {}
    for name, by_arity in found.items():
        if not by_arity:
            continue
        last = all(ps == {n - 1} for n, ps in by_arity.items()) and len(by_arity) >= 3
        entry: dict[int, tuple[int, ...]] | int = (
            LAST if last else {n: tuple(sorted(ps)) for n, ps in sorted(by_arity.items())})
        for alias in (name, *aliases.get(name, ())):
            table[alias.lower()] = entry
    return dict(sorted(table.items()))


def query_on(store: Any) -> Callable[[str], str]:
    """A probe's ``query`` on an embedded store: each thread on its own connection."""
    return lambda sql: store.connection().query(sql, "TSV").bytes().decode()


def _probe_one(query: Callable[[str], str], name: str, aggregate: bool
               ) -> dict[int, set[int]]:
    """Number of arguments -> the positions where ``name`` read the probe as a zone."""
    found: dict[int, set[int]] = {}
    refused: set[int] = set()  # numbers of arguments the function does not take
    for args in calls():
        where = next(i for i, a in enumerate(args) if a in _VALID)
        # A number of arguments refused, or a position already found for it: the call can
        # add nothing (this cut the test's probe by a third; the table stayed the same).
        if len(args) in refused or where in found.get(len(args), ()):
            continue
        sql = f"SELECT {name}({', '.join(args)})" + (" FROM numbers(1)" if aggregate else "")
        try:
            query(sql)
        except Exception as exc:  # noqa: BLE001 (any error; only these count)
            if _ARITY.search(str(exc)):
                refused.add(len(args))
                continue
            if _loads_a_zone(query, sql, str(exc), args[where]):
                found.setdefault(len(args), set()).add(where)
    return found


def _loads_a_zone(query: Callable[[str], str], sql: str, error: str, probed: str) -> bool:
    """Whether a call failed on its zone: the engine says it cannot load it, or its message
    names the zone (some wrap the loader's error: "must be a valid type name") and the same
    call with a zone it has succeeds."""
    message = error.split("In scope")[0].split("While processing")[0]
    if _FOUND.search(message):
        return True
    if "Nowhere/Zone" not in message:
        return False
    try:
        query(sql.replace(probed, _VALID[probed]))
    except Exception:  # noqa: BLE001
        return False
    return True


def main() -> None:
    import tempfile

    from collector.storage.embedded import EmbeddedStore  # on a scratch path

    with tempfile.TemporaryDirectory(prefix="zones-") as tmp:
        store = EmbeddedStore(tmp)
        began = time.monotonic()
        table = probe(query_on(store))
        store.close()
    print(f"# probed in {time.monotonic() - began:.0f} s", file=sys.stderr)
    print("TABLE: dict[str, dict[int, tuple[int, ...]] | int] = {")
    for name, entry in table.items():
        print(f"    {name!r}: {'LAST' if entry == LAST else entry},")
    print("}")
