"""What a user's statement may do, decided on the engine's own syntax tree (``syntax.py``).

chDB runs every connection as one all-powerful user and its embedded mode lets the engine
write and read any file (``INTO OUTFILE``, the scalar ``file()``), so the interface enforces
the rest itself, on the tree ClickHouse parsed; the engine enforces what it can:
``readonly = 1`` (no writes, no setting changes, no table functions that reach files or the
network), per-query limits, ``additional_table_filters`` for a user's sites and queries
(``calls.py``), and settings that name files fixed for everyone (``storage/engine_config.py``).

For every user: no ``INTO OUTFILE``, no ``FROM INFILE``, no function, table engine or
dictionary source that reads or writes the host's files, runs programs, calls other hosts
or reads the process's memory. For read-only users on top: only reading statements, only
granted tables, only table functions that generate data, no function that reads another
table by name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files

from collector.sqlhttp import zones
from collector.sqlhttp.errors import SqlError, denied
from collector.sqlhttp.statements import plain, tokens
from collector.sqlhttp.syntax import Node
from collector.sqlhttp.values import check_value
from collector.storage.engine_config import FILE_SETTINGS

# Functions, table functions, table engines and dictionary sources that reach the host's
# files (url() takes file:// too), run programs, call other hosts (an SSRF from the
# collector's network position) or read this process's Python objects (chDB's Python());
# compared without case, as engines and sources are written in capitals.
HOST_ROUTES = frozenset(name.lower() for name in (
    "file", "fileCluster", "executable", "executablePool", "python", "sqlite", "url",
    "urlCluster", "s3", "s3Cluster", "gcs", "cosn", "oss", "azureBlobStorage",
    "azureBlobStorageCluster", "hdfs", "hdfsCluster", "remote", "remoteSecure", "cluster",
    "clusterAllReplicas", "mysql", "postgresql", "mongodb", "redis", "jdbc", "odbc",
    "iceberg", "icebergLocal", "icebergS3", "deltaLake", "deltaLakeLocal", "hudi", "http",
    "clickhouse", "kafka", "nats", "rabbitmq", "disk", "backup", "filesystem", "eval",
    "embeddedRocksDB", "paimon", "paimonLocal", "paimonS3", "paimonAzure", "paimonHDFS",
    "icebergAzure", "icebergHDFS", "icebergS3Cluster", "icebergAzureCluster",
    "icebergHDFSCluster", "deltaLakeS3", "deltaLakeAzure", "deltaLakeCluster", "hudiCluster",
    "bigquery", "ytsaurus", "arrowflight", "arrowstream", "prometheusQuery",
    "prometheusQueryRange", "timeSeriesData", "mysqlCluster", "postgresqlCluster",
    "icebergCluster", "icebergLocalCluster", "paimonCluster", "paimonS3Cluster",
    "paimonAzureCluster", "paimonHDFSCluster", "deltaLakeS3Cluster", "deltaLakeAzureCluster",
    "s3Queue", "azureQueue", "fileLog", "cassandra", "yamlRegExpTree", "hive",
    # The AI functions call a model's host.
    "aiGenerate", "aiClassify", "aiExtract", "aiFilter", "aiEmbed", "aiRedact",
    "aiSimilarity", "aiTranslate",
))

# Table functions a read-only user may call: they generate data and read nothing.
GENERATORS = frozenset((
    "numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generateRandom",
    "generate_series", "generateSeries", "null", "view", "viewIfPermitted",
))
# Where the statement names a table engine, a database engine or a table function, every
# user gets an allow-list (HOST_ROUTES alone missed engines such as Filesystem and
# EmbeddedRocksDB): engines that keep data in the engine's own storage, and table functions
# that read nothing outside the engine.
_MERGE_TREES = ("", "Replacing", "Summing", "Aggregating", "Collapsing", "VersionedCollapsing",
                "Graphite", "Coalescing")
ENGINES = frozenset((
    *(f"{kind}MergeTree" for kind in _MERGE_TREES),
    *(f"Replicated{kind}MergeTree" for kind in _MERGE_TREES),
    "Distributed", "Memory", "Null", "Log", "TinyLog", "StripeLog", "Buffer", "Dictionary",
    "Join", "Set", "Merge", "GenerateRandom", "KeeperMap",
    "Atomic", "Replicated", "Lazy",  # databases
))
TABLE_FUNCTIONS = GENERATORS | frozenset((
    "merge", "input", "format", "mergeTreeIndex", "mergeTreeProjection", "loop", "dictionary",
))
# Functions that read another table or dictionary by a name given as a string, past the
# check of granted tables.
TABLE_READERS_PREFIX = ("dict",)
TABLE_READERS = frozenset(("joinGet", "joinGetOrNull", "catboostEvaluate", "modelEvaluate",
                           "naiveBayesClassifier", "getServerSetting", "hasColumnInTable"))
# Functions whose one call can run for seconds to minutes on input a reader can build
# (quadratic in strings or arrays of 65,536 and more, or a lambda per array element): the
# engine checks the time limit and a cancel between blocks only, so a block of them ran for
# hours past max_execution_time, a KILL and the client's leaving (a thirteenth probe).
# Refused for readers; an operator's read-write user may call them.
COSTLY_PER_ROW = frozenset(name.lower() for name in (
    "editDistance", "editDistanceUTF8", "levenshteinDistance", "levenshteinDistanceUTF8",
    "damerauLevenshteinDistance", "arrayLevenshteinDistance",
    "arrayLevenshteinDistanceWeighted", "arraySimilarity", "arrayFold",
    # each element against each other (a fourteenth probe: two arrays of 200,000, 11 s)
    "hasAny", "hasAll"))

# Statements a read-only user may run (the root of its tree). Not EXPLAIN for a site-scoped
# user: EXPLAIN ESTIMATE counts every site's rows.
READING = frozenset((
    "SelectWithUnionQuery", "SelectIntersectExceptQuery", "Explain", "DescribeQuery",
    "ShowTables", "ShowCreateTableQuery", "ExistsTableQuery", "ShowProcesslistQuery",
    "KillQueryQuery", "ShowColumns",
))
# Statements that may carry INTO OUTFILE: a Literal directly below them is its file name
# (KILL's first child is its WHERE, which may be a literal). Every SHOW, CHECK, DESCRIBE,
# EXISTS and EXPLAIN form may carry one.
_WITH_OUTPUT = frozenset(("SelectWithUnionQuery", "SelectIntersectExceptQuery", "KillQueryQuery"))
_OUTPUT_PREFIXES = ("Show", "Check", "Describe", "Exists", "Explain")
# PARALLEL WITH puts statements below its root, where the checks of a root's kind (a SHOW's
# WHERE, a CHECK's PARTITION, INTO OUTFILE's place) would not see them.
_REFUSED_FOR_ALL = frozenset(("BackupQuery", "SYSTEM", "ParallelWithQuery"))
# Dictionary sources: none reads only the engine's own tables (CLICKHOUSE takes a host).
DICTIONARY_SOURCES = frozenset(("null",))
# Table functions that may take their columns as a string, which the engine parses when the
# query runs, ALIAS and DEFAULT expressions included, while its tree shows one Literal: each
# string given to them is parsed as a column list too (STRUCTURE, ``check_structure``).
STRUCTURED = frozenset(("values", "generaterandom", "null", "format", "input",
                        "structuretoprotobufschema", "structuretocapnprotoschema"))
STRUCTURE = "CREATE TABLE _structure (\n{}\n) ENGINE = Null"  # line breaks: see check
MAX_STRUCTURE = 64 << 10  # a longer string could fail the check's parse by its size alone
_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'", re.S)
# Settings whose values are SQL, a table or a host the engine uses when the query runs:
# select, filter, order and sort wrap every statement (the interface's own too) in SQL.
# The two input_format_values_ ones would have VALUES data interpreted as SQL, which no
# check sees (calls.LITERAL_VALUES keeps them off).
SQL_SETTINGS = frozenset((
    "additional_table_filters", "additional_result_filter", "parallel_replicas_custom_key",
    "select", "filter", "order", "sort", "implicit_table_at_top_level",
    "schema_inference_hints", "url_base", "s3_base", "default_view_definer",
    "polyglot_dialect", "promql_table", "http_response_headers",
    "input_format_values_interpret_expressions",
    "input_format_values_deduce_templates_of_expressions",
))
# The input formats an INSERT or format() may read, lower-cased: text formats whose data
# names no types, and Parquet and ORC (whose zones the engine ignores). Not those whose data
# names its columns' types, which the engine parses (escapes undone) and so opens the time
# zones they name, files included (...WithNamesAndTypes, JSON's and JSONCompact's metadata,
# Native's and Arrow's schemas, every RowBinary form's Dynamic values with their type
# codes); nor the engine's other binary parsers (a damaged DWARF file aborted the engine),
# nor a format the next engine version adds, until someone has read what it parses.
INPUT_FORMATS = frozenset(name.lower() for name in (
    "TabSeparated", "TSV", "TabSeparatedRaw", "TSVRaw", "Raw", "TabSeparatedWithNames",
    "TSVWithNames", "TabSeparatedRawWithNames", "TSVRawWithNames", "RawWithNames", "CSV",
    "CSVWithNames", "CustomSeparated", "CustomSeparatedWithNames",
    "CustomSeparatedIgnoreSpaces", "CustomSeparatedIgnoreSpacesWithNames", "Values",
    "JSONEachRow", "JSONLines", "NDJSON", "JSONStringsEachRow", "JSONCompactEachRow",
    "JSONCompactEachRowWithNames", "JSONCompactStringsEachRow",
    "JSONCompactStringsEachRowWithNames", "JSONObjectEachRow", "JSONColumns",
    "JSONCompactColumns", "JSONAsString", "JSONAsObject", "LineAsString", "RawBLOB", "TSKV",
    "Regexp", "Form", "Parquet", "ORC",
))
SQL_SETTING_PREFIXES = ("ai_",)  # the AI functions' hosts and credentials
# A writer's settings whose values are text (String, Map or URI in system.settings: what
# can hold SQL, a table, a path or a host) come from this allow-list, so that a setting
# the next engine version adds is refused until it is read; numbers, flags and the
# engine's own enumerations are free. The settings that name files are fixed by the
# engine's configuration (FILE_SETTINGS), which refuses them itself.
WRITER_TEXT_SETTINGS = frozenset((
    "log_comment", "insert_deduplication_token", "query_cache_tag", "workload", "database",
    "default_format", "format", "input_format", "output_format", "errors_output_format",
    "framing_output_format", "compression", "network_compression_method", "compatibility",
    "count_distinct_implementation", "function_implementation", "bool_true_representation",
    "bool_false_representation", "format_csv_null_representation",
    "format_tsv_null_representation", "format_custom_field_delimiter",
    "format_custom_result_after_delimiter", "format_custom_result_before_delimiter",
    "format_custom_row_after_delimiter", "format_custom_row_before_delimiter",
    "format_custom_row_between_delimiter", "format_template_rows_between_delimiter",
    "format_hive_text_rows_delimiter", "input_format_hive_text_collection_items_delimiter",
    "input_format_hive_text_fields_delimiter", "input_format_hive_text_map_keys_delimiter",
    "format_regexp", "format_schema_message_name",
    "format_json_object_each_row_column_for_object_name", "input_format_mysql_dump_table_name",
    "output_format_avro_codec", "output_format_avro_string_column_pattern",
    "output_format_pretty_grid_charset", "output_format_sql_insert_table_name",
    "output_format_image_terminal_mode", "column_names_for_schema_inference",
    "force_data_skipping_indices", "ignore_data_skipping_indices",
    "preferred_optimize_projection_name", "force_optimize_projection_name",
    "exclude_materialize_skip_indexes_on_insert", "local_filesystem_read_method",
    "remote_filesystem_read_method", "temporary_files_codec", "trace_profile_events_list",
    "metrics_perf_events_list", "send_logs_source_regexp", "s3_upload_checksum_algorithm",
    "iceberg_metadata_compression_method", "chdb_client_name",
    "stream_like_engine_insert_queue",
    *FILE_SETTINGS,
))
# The parents of a function that names storage: a table's or database's engine (a "Storage
# definition" node: kind "Storage", name "definition"), a table function in FROM, INSERT
# INTO FUNCTION, CREATE TABLE ... AS f(...).
_NAMES_FUNCTION = frozenset(("TableExpression", "InsertQuery", "CreateQuery"))


@dataclass(frozen=True)
class Scope:
    """What a read-only user may read: granted tables, and every existing table."""

    granted: frozenset[tuple[str, str]]  # (database, table); table "*" for a whole database
    existing: frozenset[tuple[str, str]]
    database: str  # the current database, for unqualified names
    explain: bool = True  # EXPLAIN, which estimates rows of every site
    # Virtual columns refused (a site-scoped user's: _part_offset, _block_number... tell
    # where its rows are among every site's, and how many came before them).
    virtual: frozenset[str] = frozenset()

    def allows(self, db: str, table: str) -> bool:
        return (db, table) in self.granted or (db, "*") in self.granted

    def check(self, name: str) -> None:
        """A name as the tree prints it, which may name a table: ``db.table`` or ``table``
        in FROM, or an identifier (``x IN tagwerk.sites``, or a column)."""
        parts = name.split(".")
        for key in ((parts[0], parts[1]) if len(parts) > 1 else None, (self.database, parts[0])):
            if key and key in self.existing and not self.allows(*key):
                raise denied(f"the table {key[0]}.{key[1]} is not granted to this user")


def check(tree: Node, sql: str, readonly: bool, scope: Scope | None,
          text_settings: frozenset[str] = frozenset(),
          unreviewed: frozenset[str] = frozenset()) -> None:
    """Raise SqlError unless the statement ``tree`` (whose canonical text is ``sql``) may
    run.

    ``readonly``: the request cannot write (engine-enforced; here the scalar ``file()``,
    which the engine allows even then). ``scope``: a read-only user's grants.
    ``text_settings``: the engine's settings whose values are text (``check_setting``).
    ``unreviewed``: the engine's functions nobody has reviewed (``unreviewed``).
    """
    _unseen(tree, sql, readonly, scope is not None, text_settings, unreviewed)
    _host_routes(tree, readonly)
    zone_literals(tree)
    _zones_from_text(tree)
    check_types(tree)  # a column's type in CREATE or ALTER
    if scope is not None:
        _reading_only(tree, scope)


def _unseen(tree: Node, sql: str, readonly: bool, reader: bool,
            text_settings: frozenset[str], unreviewed: frozenset[str]) -> None:
    """Refuse what the engine's tree leaves out, found among the words of its canonical
    text (strings are not words), for every user, even where a word only names something:
    what the policy cannot see does not run. The tree shows neither a SHOW's WHERE and
    LIMIT nor a CHECK's PARTITION (any expression may stand there: file(), a scalar
    subquery of file() or url(), a table not granted), nor a TTL's GROUP BY and SET, nor
    the function an APPLY transformer calls on every column (``* APPLY file``), nor a
    setting's value (a bare "Set"); INTO OUTFILE follows DDL statements too. A call of a
    function the policy refuses is refused wherever the text has it."""
    found = list(tokens(sql.encode(), comments=True))
    if not all(map(plain, found)):
        # A comment (formatQuery keeps one in a parameter's type: {p:String #! ...}), a
        # heredoc or an unclosed string: the lexer would not read the words as the engine.
        raise denied("the statement's text could not be verified: no comments or $$ "
                     "strings in query parameters' names and types")
    for token in found:
        if token.kind in ("string", "quoted"):  # a quoted name may be a type (d.`DateTime(...)`)
            check_value(token.text.decode("utf-8", "replace"))
    words = [(t.name.decode("utf-8", "replace") if t.kind in ("word", "quoted") else "",
              t.kind == "word", t.text) for t in found]
    after_ttl = False
    for (name, keyword, _), (following, _, text) in zip(
            words, [*words[1:], ("", False, b"")], strict=True):
        word = name.lower() if keyword else ""
        if word in ("where", "limit") and tree.kind.startswith("Show"):
            raise denied("WHERE and LIMIT in SHOW statements are not allowed over HTTP: "
                         "SELECT from the tables instead")
        if word == "partition" and tree.kind == "CheckQuery":
            raise denied("CHECK TABLE ... PARTITION is not allowed over HTTP")
        if after_ttl and word in ("group", "set"):
            raise denied("a TTL with GROUP BY or SET is not allowed over HTTP")
        after_ttl = after_ttl or word == "ttl"
        if word == "apply":
            raise _apply_refused()
        if word == "into" and following.lower() == "outfile":
            raise SqlError.of(358, "INTO OUTFILE is not allowed")
        if not readonly and text.startswith(b"="):  # a setting (readonly = 1: the engine
            check_setting(name, text_settings)       # refuses any change of one)
        if text == b"(" and name:
            _callable(name, readonly, reader, unreviewed)


def check_structure_text(text: str) -> None:
    """A column list given as a string is parsed inside STRUCTURE: a comment in it would end
    the wrapper (which then fails, and the string passes for data), so none is allowed."""
    if len(text) > MAX_STRUCTURE:
        raise denied(f"a string given where a column list may stand is at most "
                     f"{MAX_STRUCTURE} bytes")
    if not all(map(plain, tokens(text.encode(), comments=True))):
        raise denied("a column list in a string may not hold comments or $$ strings")


def structure_literals(tree: Node) -> list[str]:
    """The strings given to STRUCTURED functions where a column list stands (the first
    argument; format()'s second, after its format's name), as the tree prints them
    (quoted); the others are data, and ``values()`` may have thousands (each one read back
    from the engine made a reader's request run for half a minute: a ninth probe). Each of
    their arguments must be a literal (format()'s first may be a name): a column list the
    engine works out when the query runs (concat(), a WITH alias, a subquery) could not be
    checked."""
    found = []
    for node, _ in tree.walk():
        if node.kind == "Function" and _normal(node.ident) in STRUCTURED and node.children:
            where = 1 if _normal(node.ident) == "format" else 0
            for i, arg in enumerate(node.children[0].children):
                if arg.kind == "Literal":
                    if i == where and is_string(arg):
                        found.append(arg.ident)
                elif not (i == 0 and arg.kind == "Identifier" and _normal(node.ident) == "format"):
                    raise denied(f"the arguments of {node.ident}() must be literals: a column "
                                 "list it works out from an expression cannot be checked")
    return found


def check_structure(tree: Node, readonly: bool) -> None:
    """Raise SqlError unless ``tree``, the engine's parse of STRUCTURE around a string, is a
    column list of names and types only."""
    parts = [f"{child.kind} {child.name}" for child in tree.children]
    columns = tree.children[1].children if len(tree.children) == 3 else []
    if (tree.kind != "CreateQuery"
            or parts != ["Identifier _structure", "Columns definition", "Storage definition"]
            or [c.kind for c in columns] != ["ExpressionList"]
            or any(column.kind != "ColumnDeclaration"
                   or [c.kind for c in column.children] != ["DataType"]
                   for column in columns[0].children)):
        raise denied("a column list in a string may name columns and their types only")
    _host_routes(tree, readonly)


def check_input_format(name: str) -> None:
    """Refuse data in a format not among ``INPUT_FORMATS``."""
    if name.lower() not in INPUT_FORMATS:
        raise denied(f"the input format {name} is not read over HTTP: only text formats "
                     "whose data names no types (JSONEachRow, TSV, CSV...), Parquet and ORC "
                     "(data that names types would have the engine open the time zones they "
                     "name, files too; the columns' types are the table's)")


def input_format_literals(tree: Node) -> list[str]:
    """The format() calls' formats given as strings, as the tree prints them (quoted; the
    caller reads their values from the engine); a format given as a name is checked here."""
    found = []
    for node, _ in tree.walk():
        if node.kind == "Function" and _normal(node.ident) == "format" and node.children:
            args = node.children[0].children
            if args and args[0].kind == "Identifier":
                check_input_format(args[0].ident)
            elif args and is_string(args[0]):
                found.append(args[0].ident)
    return found


def check_setting(name: str, text_settings: frozenset[str] = frozenset()) -> None:
    """Refuse a writer's setting whose value is SQL, a table or a host no check sees: a
    text setting outside WRITER_TEXT_SETTINGS among ``text_settings``."""
    lowered = name.lower()
    if (lowered in SQL_SETTINGS or lowered.startswith(SQL_SETTING_PREFIXES)
            or (name in text_settings and name not in WRITER_TEXT_SETTINGS)):
        raise denied(f"the setting {name} is not allowed over HTTP: its value can hold "
                     "SQL, a table or a host that no check sees")


def _callable(name: str, readonly: bool, reader: bool, unreviewed: frozenset[str]) -> None:
    """Refuse a call of a function no user may call, or a read-only user may not."""
    if _normal(name) in HOST_ROUTES:
        raise _route(name, readonly)
    if _normal(name) in unreviewed:
        raise denied(f"{name}() is new in this engine and not reviewed yet for what it "
                     "reaches (collector/sqlhttp/reviewed_functions.txt)")
    if reader and _reads_a_table(name):
        raise denied(f"{name}() is not allowed for this user")
    if reader and _normal(name) in COSTLY_PER_ROW:
        raise denied(f"{name}() is not allowed for this user: one call can run for minutes, "
                     "past the time limit, which the engine checks between blocks only")


def _apply_refused() -> SqlError:
    return denied("APPLY column transformers are not allowed over HTTP: name the columns "
                  "and call the function on each")


def _reads_a_table(name: str) -> bool:
    """Whether a function reads a table or dictionary by a name given as a string."""
    return name in TABLE_READERS or name.startswith(TABLE_READERS_PREFIX)


def unreviewed(functions: Iterable[str]) -> frozenset[str]:
    """Of the engine's built-in functions and table functions, those missing from
    ``reviewed_functions.txt`` (a newer engine's), compared as HOST_ROUTES: HOST_ROUTES is a
    list of what to refuse, so a function it was not written against passes it, and this
    refuses it instead, until someone has read what it does."""
    return frozenset(_normal(name) for name in functions) - _REVIEWED


def _normal(name: str) -> str:
    # As the engine takes some names (EXECUTABLE_POOL for executablePool).
    return name.lower().replace("_", "")


_REVIEWED = frozenset(
    _normal(name)
    for name in (files("collector.sqlhttp") / "reviewed_functions.txt").read_text().split("\n")
    if name and not name.startswith("#"))


def _host_routes(tree: Node, readonly: bool) -> None:
    if tree.kind in _REFUSED_FOR_ALL or tree.kind.startswith("Restore"):
        raise denied(f"{tree.kind} is not allowed over HTTP")
    if tree.kind == "InsertQuery" and _literals(tree.children):
        raise SqlError.of(78, "Query has infile and was send directly to server")
    for node, parent in tree.walk():
        # chDB's default database reads a file when a table's name is its path.
        if node.kind in ("TableIdentifier", "Identifier") and "/" in node.ident:
            raise denied(f"{node.ident} names a file, not a table")
        if node.kind in _WITH_OUTPUT or node.kind.startswith(_OUTPUT_PREFIXES):
            below = node.children[1:] if node.kind == "KillQueryQuery" else node.children
            if _literals(below):
                raise SqlError.of(358, "INTO OUTFILE is not allowed")
        if node.kind == "ColumnsApplyTransformer":  # its function is not in the tree
            raise _apply_refused()
        is_call = node.kind in ("Function", "FunctionWithKeyValueArguments")
        if not is_call:
            continue
        # A storage definition's engine comes first (then PARTITION BY, ORDER BY... calls).
        allowed = (None if parent is None
                   else ENGINES if _is(parent, "Storage definition") and parent.children[0] is node
                   else TABLE_FUNCTIONS if parent.kind in _NAMES_FUNCTION else None)
        if allowed is not None and node.ident not in allowed:
            raise _route(node.ident, readonly)
        if (parent is not None and _is(parent, "Dictionary definition")
                and _normal(node.ident) not in DICTIONARY_SOURCES):
            raise _route(node.ident, readonly)
        if _normal(node.ident) in HOST_ROUTES:
            raise _route(node.ident, readonly)


MAX_ZONE_LITERALS = 64  # each is read back from the engine: ~2 ms apiece when new
# Types whose values carry their own types, zones included, in their binary form: an
# aggregate state of them, cast from a string, names any zone (an eighth probe).
_SELF_TYPED = frozenset(("dynamic", "json", "object"))
_STATES = frozenset(("aggregatefunction", "simpleaggregatefunction"))


def check_types(columns: Node) -> None:
    """Refuse, in a column list or type the engine parsed, an aggregate state holding values
    that carry their own types: casting a string to it reads a zone's name from the bytes."""
    for node, _ in columns.walk():
        if node.kind == "DataType" and node.ident.lower() in _STATES:
            for inner, _ in node.walk():
                if inner.kind == "DataType" and inner.ident.lower() in _SELF_TYPED:
                    raise denied(f"{node.ident} of {inner.ident} is not allowed over HTTP: "
                                 "its bytes name time zones the engine opens as files")


# Parsers that read a time zone's name from the text they parse, where the format has a
# Joda ``z``: the name comes from the data (a ninth probe: concat() of 'file:...').
_ZONE_FROM_TEXT = frozenset(_normal(f"parseDateTime{bits}InJodaSyntax{variant}")
                            for bits in ("", "64") for variant in ("", "OrNull", "OrZero"))


def _zones_from_text(tree: Node) -> None:
    """A Joda parser's format must be a literal without ``z`` (a zone's name in the text)."""
    for node, _ in tree.walk():
        if node.kind != "Function" or _normal(node.ident) not in _ZONE_FROM_TEXT:
            continue
        args = node.children[0].children if node.children else []
        form = args[1] if len(args) > 1 else None
        if form is not None and not (is_string(form) and "z" not in form.ident
                                     and "\\" not in form.ident):
            raise denied(f"the format of {node.ident}() must be a literal without z: the "
                         "engine opens a time zone named in the parsed text as a file")


# Arguments that the engine turns into several when the query runs, where the tree shows
# one: the positions counted in the tree would not be the engine's (a thirteenth probe:
# toDateTime(untuple(tuple(0, concat('fi', 'le:...')))) loaded the file as a zone; untuple()
# is refused in the whole statement, as an alias of it spreads too).
_SPREADING = frozenset(("Asterisk", "QualifiedAsterisk", "ColumnsRegexpMatcher",
                        "ColumnsListMatcher", "QualifiedColumnsRegexpMatcher",
                        "QualifiedColumnsListMatcher"))


def zone_literals(tree: Node) -> list[str]:
    """The literals where the engine reads a time zone or a type name (``zones.py``), as the
    tree prints them. Only a literal may stand there: a name the query computes would be
    opened as a file unchecked. Each is checked by the interface as the engine reads it
    (``check_value``; a type name is parsed by the engine first, as ``x'...'`` and ``$$``
    strings in it name a zone too). A call of such a function names its arguments one by
    one, so that their positions are the engine's."""
    found = []
    functions = [node for node, _ in tree.walk() if node.kind == "Function"]
    reading = [node for node in functions if node.children and (
        zones.reads(node.ident) or _normal(node.ident) in _ZONE_FROM_TEXT)]
    if reading and any(_normal(node.ident) == "untuple" for node in functions):
        # untuple() spreads where it stands, and where an alias of it is used (a fourteenth
        # probe: WITH untuple(...) AS u SELECT toDateTime(u)), which the tree does not show.
        raise denied(f"untuple() is not allowed beside {reading[0].ident}(), which reads a "
                     "time zone or a type name from its arguments")
    for node in reading:
        args = node.children[0].children
        if any(arg.kind in _SPREADING for arg in args):
            raise denied(f"{node.ident}() reads a time zone or a type name from one of its "
                         "arguments: name them one by one, without untuple(), * or COLUMNS()")
        for position in zones.positions(node.ident, len(args)):
            if args[position].kind != "Literal":
                raise denied(f"argument {position + 1} of {node.ident}() is read as a time "
                             "zone or a type name, and may only be a literal or a query "
                             "parameter: the engine opens a zone it does not know as a file")
            if is_string(args[position]):  # (a number is no zone)
                found.append(args[position].ident)
    if len(set(found)) > MAX_ZONE_LITERALS:
        raise denied(f"at most {MAX_ZONE_LITERALS} different time zones and type names in "
                     "one statement")
    return found


def _is(node: Node, label: str) -> bool:
    """Whether a node is the one the dump prints as ``label`` ("Storage definition": kind
    and name, as the dump's line is split)."""
    return f"{node.kind} {node.name}".strip() == label


def _route(name: str, readonly: bool) -> SqlError:
    if readonly:  # as the engine refuses most of these under readonly
        return SqlError.of(164, f"Cannot execute query in readonly mode: {name}() is not allowed")
    return denied(f"{name}() reaches the host's files, programs or network, or storage "
                  "outside the engine, and is not allowed over HTTP")


def _reading_only(tree: Node, scope: Scope) -> None:
    if tree.kind not in READING or (tree.kind == "Explain" and not scope.explain):
        raise SqlError.of(164, f"Cannot execute query in readonly mode: {tree.kind}")
    if tree.kind in ("ShowCreateTableQuery", "ExistsTableQuery"):
        scope.check(".".join(tree.name.split()[:2]))
    elif tree.kind == "ShowProcesslistQuery":  # the tree names no table: it reads this one
        scope.check("system.processes")
    for node, parent in tree.walk():
        if node.kind in ("TableIdentifier", "Identifier"):
            scope.check(node.ident)
            if node.kind == "Identifier" and node.ident.rsplit(".", 1)[-1] in scope.virtual:
                raise denied(f"the virtual column {node.ident} tells of other sites' rows and "
                             "is not for a site-scoped user")
        elif node.kind == "Function":
            name = node.ident
            if parent is not None and parent.kind == "TableExpression":
                if name not in GENERATORS:  # as the engine refuses most under readonly
                    raise SqlError.of(
                        164, f"Cannot execute query in readonly mode: the table function "
                        f"{name}() is not allowed"
                    )
            elif _reads_a_table(name):
                raise denied(f"{name}() is not allowed for this user")


def is_string(node: Node) -> bool:
    """Whether a node is a string literal (the tree prints a number as UInt64_3)."""
    return node.kind == "Literal" and _STRING_LITERAL.fullmatch(node.ident) is not None


def _literals(nodes: Iterable[Node]) -> bool:
    return any(node.kind == "Literal" for node in nodes)
