"""Where the audio comes from: a directory or glob, an object-store URI, a manifest, or a SQL query.

Every input is named by its identity, ``Source.canonical``: a local file as its absolute path with symlinks resolved,
an object as ``scheme://bucket/key``. Any spelling of one file (relative, ``file://``, through a linked folder) is
one source with one ``source_id``.

A manifest row may also give some of the input's stems (``{"uri": "mix/a.wav", "stems": {"vocals": "stems/a/vocals.wav",
...}}``, see docs/stems.md): they are described like the input, and their versions are part of the input's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import glob
import hashlib
import json
import os
import re
import sqlite3
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pyarrow as pa

from hummingml.audio import STEMS, DecodeError, open_local, read_local_bytes
from hummingml.config import ConfigError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff")
MANIFEST_EXTENSIONS = (".parquet", ".csv", ".jsonl", ".json")
ROW_GROUP_SPLIT = 4  # a manifest row group of more than this many chunks is read by the driver, a chunk at a time
LISTING_CHUNK = 2048  # inputs per listing chunk: one task stats (or asks the object store about) that many
STEMS_COLUMN = "stems"  # the manifest column that gives an input's stems: an object stem -> URI
T = TypeVar("T")


@dataclass(frozen=True)
class Source:
    """One input: what to open, its identity and the id derived from it, the manifest's extra columns as JSON."""

    uri: str  # what to open: a local absolute real path, or a pyarrow URI with its ?options
    source_id: str  # source_id(canonical)
    metadata: str = "{}"
    canonical: str = ""  # the identity: a local real path, or scheme://bucket/key (no ?query)
    version: str = ""  # "<size>:<mtime_ns>" as listed, and ";stems=<hash>" of the given stems' versions (see
    # stems_version); "" when the input could not be stat'ed (missing, broken link)
    stems: tuple[tuple[str, str], ...] = ()  # (stem, what to open) of the stems the manifest gives, in STEMS order


@dataclass(frozen=True)
class Chunk:
    """A part of an input's listing that one task turns into sources (:func:`describe`); exactly one of ``rows``,
    ``row_groups``, ``paths``, ``prefix`` and ``sources`` is set."""

    rows: pa.Table | None = None  # manifest or query rows
    manifest: str = ""  # with ``row_groups``: the Parquet manifest the task reads them from
    row_groups: tuple[int, ...] = ()  # row groups of ``manifest``, read by the task itself
    first_row: int = 1  # the number of rows[0] in the manifest or query result, for messages
    base_dir: str | None = None  # the folder relative local URIs in ``rows`` are relative to
    where: str = ""  # how messages name the input
    fix: str = ""  # what messages tell the user to do
    uri_column: str = "uri"
    paths: tuple[str, ...] = ()  # local paths found by a walk or a glob
    prefix: str = ""  # an object-store folder (URI with its ?options), listed recursively by the task
    extensions: tuple[str, ...] = ()  # with ``prefix``: the file name endings picked
    sources: tuple[Source, ...] = ()  # sources already described where the listing ran


def describe(chunk: Chunk) -> list[Source]:
    """The sources of one listing chunk, in its order: URIs made canonical, files stat'ed for their version.

    Raises:
        ConfigError: a manifest or query row has no URI.
    """
    if chunk.row_groups:
        import pyarrow.parquet as pq

        with _open_input(chunk.manifest) as f:
            rows = pq.ParquetFile(f).read_row_groups(list(chunk.row_groups))
        return _from_table(rows, chunk.uri_column, chunk.base_dir, chunk.where, chunk.fix, chunk.first_row)
    if chunk.rows is not None:
        return _from_table(chunk.rows, chunk.uri_column, chunk.base_dir, chunk.where, chunk.fix, chunk.first_row)
    if chunk.paths:
        return _make_sources(list(chunk.paths), None, ["{}"] * len(chunk.paths))
    if chunk.prefix:
        return _list_remote(chunk.prefix, chunk.extensions)
    return list(chunk.sources)


def source_id(canonical: str) -> str:
    """Stable id of an input: the first 32 hex digits of sha256 of its canonical URI (see :func:`canonical_uri`)."""
    return hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def printable(text: str) -> str:
    """``text`` as valid UTF-8: bytes of a non-UTF-8 file name (held as surrogates) become ``\\xNN`` escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_REMOTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_FILE_URI = re.compile(r"file:/", re.IGNORECASE)


def _is_remote(uri: str) -> bool:
    return bool(_REMOTE.match(uri)) and not _FILE_URI.match(uri)


def _unquote(text: str) -> str:
    """Percent-decoded ``text``; bytes that are not UTF-8 become surrogates, as in ``os.fsdecode``."""
    return os.fsdecode(urllib.parse.unquote_to_bytes(text.encode("utf-8", "surrogateescape")))


def _local(uri: str) -> str:
    """The local path a ``file:`` URI names (percent-decoded), or ``uri`` itself when it is a path."""
    if not _FILE_URI.match(uri):
        return uri
    parts = urllib.parse.urlsplit(uri, allow_fragments=False)
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(f"{printable(uri)}: a file:// URI on host {parts.netloc!r}; only this machine's files")
    return _unquote(parts.path + (f"?{parts.query}" if parts.query else ""))


def canonical_uri(uri: str, base_dir: str | None = None) -> str:
    """The identity of an input, the same for every spelling of it.

    Args:
        uri: a local path (absolute or relative), a ``file://`` URI, or an object-store URI.
        base_dir: the folder a relative local path is relative to; None: the current directory.

    Returns:
        A local file's absolute path with ``..`` and symlinks resolved (as far as they exist), or an object's
        ``scheme://bucket/key``: the scheme lower-cased, the path percent-decoded, the ``?options`` dropped.

    Raises:
        ConfigError: a ``file://`` URI names another host.
    """
    if _is_remote(uri):
        scheme, rest = uri.split("://", 1)
        return f"{scheme.lower()}://{_unquote(rest.split('?', 1)[0])}"
    return os.path.realpath(os.path.join(base_dir or os.getcwd(), _local(uri)))


def _local_version(path: str) -> str:
    try:
        stat = os.stat(path)
    except OSError:
        return ""
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _remote_version(info: Any) -> str:
    import pyarrow.fs as pafs

    if info.type != pafs.FileType.File:
        return ""
    return f"{info.size}:{'' if info.mtime_ns is None else info.mtime_ns}"


def _remote_versions(uris: list[str]) -> list[str]:
    """The version of each object-store URI: one ``get_file_info`` call per filesystem, "" where it fails."""
    import pyarrow.fs as pafs

    filesystems: dict[str, tuple[Any, str]] = {}  # scheme://host?options -> (filesystem, path prefix of its keys)
    batches: dict[int, tuple[Any, list[tuple[int, str]]]] = {}
    versions = [""] * len(uris)
    for i, uri in enumerate(uris):
        parts = urllib.parse.urlsplit(uri)
        key = f"{parts.scheme.lower()}://{parts.netloc}?{parts.query}"
        tail = _unquote(parts.path).lstrip("/")
        try:
            if key in filesystems:
                fs, prefix = filesystems[key]
                path = prefix + tail
            else:
                fs, path = pafs.FileSystem.from_uri(uri)
                if tail and path.endswith(tail):  # S3 and GCS paths start with the bucket, HDFS paths do not
                    filesystems[key] = (fs, path[: len(path) - len(tail)])
        except (OSError, ValueError):
            continue
        batches.setdefault(id(fs), (fs, []))[1].append((i, path))
    for fs, items in batches.values():
        try:
            infos = fs.get_file_info([path for _, path in items])
        except (OSError, ValueError):
            continue
        for (i, _), info in zip(items, infos, strict=True):
            versions[i] = _remote_version(info)
    return versions


def make_source(uri: str, base_dir: str | None = None, metadata: str = "{}") -> Source:
    """The ``Source`` of one input, every field filled (the file is stat'ed for its version).

    A local input is opened by its canonical path, so the file read is the file identified; an object-store URI
    keeps its ``?options`` so that it can be opened alone. ``base_dir`` as in :func:`canonical_uri`.
    """
    return _make_sources([uri], base_dir, [metadata])[0]


def _make_sources(uris: list[str], base_dir: str | None, metadata: list[str]) -> list[Source]:
    remote = [i for i, uri in enumerate(uris) if _is_remote(uri)]
    remote_versions = dict(zip(remote, _remote_versions([uris[i] for i in remote]), strict=True))
    sources = []
    for i, uri in enumerate(uris):
        canonical = canonical_uri(uri, base_dir)
        if i in remote_versions:
            sources.append(Source(uri, source_id(canonical), metadata[i], canonical, remote_versions[i]))
        else:
            sources.append(Source(canonical, source_id(canonical), metadata[i], canonical, _local_version(canonical)))
    return sources


def _unique(sources: Iterable[Source]) -> list[Source]:
    """``sources`` without repeated identities; the first of each wins, the order is kept."""
    unique: dict[str, Source] = {}
    for s in sources:
        unique.setdefault(s.canonical or s.uri, s)
    return list(unique.values())


def stems_version(version: str, stems: list[tuple[str, str, str]]) -> str:
    """The version of an input with given stems: its own ``version`` and ``;stems=`` the first 16 hex digits of
    sha256 over each stem's name, canonical URI and version (``stems``: (stem, canonical, version) in STEMS order).

    A changed, added, removed or moved stem file changes it, so extraction processes the input again. Without stems,
    or when the input itself could not be stat'ed (``version`` ""), ``version`` is returned as it is.
    """
    if not stems or not version:
        return version
    text = "\n".join(f"{stem}={canonical}={v}" for stem, canonical, v in stems)
    return f"{version};stems={hashlib.sha256(text.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}"


def _stem_uris(value: Any, where: str, n: int, fix: str) -> dict[str, str]:
    """A manifest row's ``stems`` value as stem -> URI in STEMS order: a JSON-lines or Parquet object (struct), a
    Parquet map, or a JSON object in a string (CSV, SQL); null entries are stems not given.

    Raises:
        ConfigError: the value is not such an object, names something that is not a stem, or gives an empty URI.
    """
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError as exc:
            raise ConfigError(f"{where}: row {n}: {STEMS_COLUMN!r} is not a JSON object ({exc}); {fix}") from exc
    if isinstance(value, list) and all(isinstance(p, tuple | list) and len(p) == 2 for p in value):
        value = dict(value)  # a Parquet map column
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: row {n}: {STEMS_COLUMN!r} must map stem names to URIs, got {value!r}; {fix}")
    given = {str(k): v for k, v in value.items() if v is not None}
    unknown = sorted(set(given) - set(STEMS))
    if unknown:
        raise ConfigError(f"{where}: row {n}: {STEMS_COLUMN!r} names {unknown}, which are not stems (stems are "
                          f"{', '.join(STEMS)}); {fix}")
    uris = {}
    for stem in STEMS:
        if stem in given:
            uri = os.fsdecode(given[stem]) if isinstance(given[stem], bytes) else str(given[stem])
            if not uri.strip():
                raise ConfigError(f"{where}: row {n}: stem {stem!r} has an empty URI; {fix}")
            uris[stem] = uri
    return uris


def _from_table(
    table: pa.Table, uri_column: str, base_dir: str | None, where: str, fix: str, first_row: int = 1
) -> list[Source]:
    if uri_column not in table.column_names:
        raise ConfigError(f"{where}: no {uri_column!r} column (columns: {table.column_names}); {fix}")
    uris, rows, stems = [], [], []
    for n, row in enumerate(table.to_pylist(), start=first_row):
        value = row.pop(uri_column)
        uri = os.fsdecode(value) if isinstance(value, bytes) else "" if value is None else str(value)
        if not uri.strip():
            raise ConfigError(f"{where}: row {n} has no {uri_column!r} (null or empty); {fix}")
        uris.append(uri)
        stems.append(_stem_uris(row.pop(STEMS_COLUMN, None), where, n, fix))
        rows.append(row)
    # every row's stems described at once: an object store is asked once per filesystem, as for the inputs
    flat = [(i, stem, uri) for i, given in enumerate(stems) for stem, uri in given.items()]
    described = _make_sources([uri for _, _, uri in flat], base_dir, ["{}"] * len(flat))
    by_row: list[list[tuple[str, Source]]] = [[] for _ in uris]
    for (i, stem, _), s in zip(flat, described, strict=True):
        by_row[i].append((stem, s))
    for row, given in zip(rows, by_row, strict=True):
        if given:  # the stems as the identities that were read, like source_uri
            row[STEMS_COLUMN] = {stem: printable(s.canonical) for stem, s in given}
    sources = _make_sources(uris, base_dir, [json.dumps(row, sort_keys=True, default=str) for row in rows])
    return [
        dataclasses.replace(
            source,
            version=stems_version(source.version, [(stem, s.canonical, s.version) for stem, s in given]),
            stems=tuple((stem, s.uri) for stem, s in given),
        )
        if given else source
        for source, given in zip(sources, by_row, strict=True)
    ]


def read_manifest(path: str, uri_column: str = "uri") -> list[Source]:
    """Sources from a Parquet, CSV or JSON-lines manifest, one per row, in its order.

    Relative local URIs are relative to the manifest's folder; ``file://`` URIs are understood. A row's
    :data:`STEMS_COLUMN` (stem -> URI, relative like the input's) becomes ``Source.stems``, its canonical URIs the
    metadata's ``stems``, and their versions part of ``Source.version`` (:func:`stems_version`).

    Raises:
        ConfigError: the manifest has no ``uri_column``, a row's value is null or empty, or a row's stems are not
            an object of stem names to URIs.
    """
    return [s for chunk in _manifest_chunks(path, uri_column, LISTING_CHUNK) for s in describe(chunk)]


def _open_input(path: str) -> BinaryIO:
    """A local path, ``file://`` or object-store URI opened for reading (a seekable file)."""
    import pyarrow.fs as pafs

    if _is_remote(path):
        fs, key = pafs.FileSystem.from_uri(path)
        return fs.open_input_file(key)
    return open(_local(path), "rb")


def _manifest_chunks(path: str, uri_column: str, size: int) -> Iterator[Chunk]:
    """The manifest's rows, ``size`` at a time, read as a stream (memory holds one chunk).

    Raises (on the first ``next``):
        ConfigError: the manifest cannot be opened, or it has no ``uri_column``.
    """
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet as pq

    lower = path.lower()
    base_dir = None if _is_remote(path) else os.path.dirname(os.path.abspath(_local(path)))
    where, fix = printable(path), "fix the manifest"
    try:
        f = _open_input(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"manifest {where} cannot be read: {exc}") from exc
    with f:
        if lower.endswith(".parquet"):
            where_tasks_open_it = path if _is_remote(path) else os.path.abspath(_local(path))  # any working dir
            like = Chunk(base_dir=base_dir, where=where, fix=fix, uri_column=uri_column)
            yield from _parquet_chunks(pq.ParquetFile(f), where_tasks_open_it, like, size)
            return
        if lower.endswith(".csv"):
            # the column types come from the whole file, as a reader of it expects: read it at once
            batches = pyarrow.csv.read_csv(f).to_batches(max_chunksize=size)
            batches = (pa.Table.from_batches([b]) for b in batches)
        else:
            batches = _json_line_chunks(f, size)
        first_row = 1
        for table in batches:
            if uri_column not in table.column_names:
                raise ConfigError(f"{where}: no {uri_column!r} column (columns: {table.column_names}); {fix}")
            yield Chunk(rows=table, first_row=first_row, base_dir=base_dir, where=where, fix=fix,
                        uri_column=uri_column)
            first_row += table.num_rows


def _parquet_chunks(manifest: Any, path: str, like: Chunk, size: int) -> Iterator[Chunk]:
    """A Parquet manifest's chunks: runs of whole row groups of about ``size`` rows, each read by the task that
    describes it (so the manifest is read in parallel, and not by the driver); a row group of more than
    ``ROW_GROUP_SPLIT`` times ``size`` rows is read here, ``size`` rows at a time, and its rows sent with the chunk.

    ``manifest`` is an open ``pyarrow.parquet.ParquetFile``; ``like`` gives the chunks' other fields.
    """
    if like.uri_column not in manifest.schema_arrow.names:
        raise ConfigError(f"{like.where}: no {like.uri_column!r} column (columns: {manifest.schema_arrow.names}); "
                          f"{like.fix}")  # fmt: skip
    meta = manifest.metadata
    runs: list[list[int]] = []  # consecutive row groups of about ``size`` rows; [-1 - g] marks a large group g
    run_rows = 0
    for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        if rows > ROW_GROUP_SPLIT * size:
            runs.append([-1 - group])
        elif runs and runs[-1][0] >= 0 and run_rows + rows <= size:
            runs[-1].append(group)
            run_rows += rows
        else:
            runs.append([group])
            run_rows = rows
    first_row = 1  # the number of the next chunk's first row, for messages
    for run in runs:
        if run[0] < 0:
            for batch in manifest.iter_batches(batch_size=size, row_groups=[-1 - run[0]]):
                yield dataclasses.replace(like, rows=pa.Table.from_batches([batch]), first_row=first_row)
                first_row += batch.num_rows
        else:
            yield dataclasses.replace(like, manifest=path, row_groups=tuple(run), first_row=first_row)
            first_row += sum(meta.row_group(g).num_rows for g in run)


def _json_line_chunks(f: BinaryIO, size: int) -> Iterator[pa.Table]:
    """A JSON-lines file as tables of ``size`` lines each (blank lines skipped)."""
    import pyarrow.json

    lines: list[bytes] = []
    for line in iter(f.readline, b""):
        if line.strip():
            lines.append(line if line.endswith(b"\n") else line + b"\n")
        if len(lines) == size:
            yield pyarrow.json.read_json(pa.BufferReader(b"".join(lines)))
            lines = []
    if lines:
        yield pyarrow.json.read_json(pa.BufferReader(b"".join(lines)))


SqlReader = Callable[[str, Callable[[], Any]], list[dict[str, Any]]]  # (query, connect) -> rows

_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_TOKEN = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]|--[^\n]*|/\*.*?(?:\*/|\Z)|"""
    r"""[A-Za-z_][A-Za-z0-9_$]*|\s+|.""",
    re.DOTALL,
)


def _allow_reads(action: int, *args: object) -> int:
    """A sqlite3 authorizer: reading is allowed, every other action (writes, DDL, PRAGMA, ATTACH) is denied."""
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


def connect_read_only(db_path: str) -> sqlite3.Connection:
    """A connection to an existing SQLite file that can only read it (``mode=ro``, ``query_only``, an authorizer)."""
    quoted = urllib.parse.quote(os.fsencode(os.path.abspath(db_path)))
    connection = sqlite3.connect(f"file:{quoted}?mode=ro", uri=True)
    connection.execute("PRAGMA query_only = ON")
    connection.set_authorizer(_allow_reads)
    return connection


def _depth0(tokens: list[str]) -> list[str] | None:
    """``tokens`` with every parenthesised group as one ``()`` token; None when the parentheses do not balance."""
    out, depth = [], 0
    for t in tokens:
        if t == "(":
            if depth == 0:
                out.append("()")
            depth += 1
        elif t == ")":
            depth -= 1
            if depth < 0:
                return None
        elif depth == 0:
            out.append(t)
    return out if depth == 0 else None


def _cte_verb(tokens: list[str]) -> str:
    """The statement verb after ``WITH [RECURSIVE] name [(columns)] AS [[NOT] MATERIALIZED] (...), ...``."""
    i = 2 if len(tokens) > 1 and tokens[1].upper() == "RECURSIVE" else 1
    while i < len(tokens):
        i += 1  # the table name
        if tokens[i : i + 1] == ["()"]:
            i += 1
        if tokens[i : i + 1] == [] or tokens[i].upper() != "AS":
            return ""
        i += 1
        while i < len(tokens) and tokens[i].upper() in ("NOT", "MATERIALIZED"):
            i += 1
        if tokens[i : i + 1] != ["()"]:
            return ""
        i += 1
        if tokens[i : i + 1] != [","]:
            return tokens[i].upper() if i < len(tokens) else ""
        i += 1
    return ""


def read_only_query(query: str) -> str:
    """``query`` checked to be one SELECT (or ``WITH ... SELECT``), without its comments and final semicolon.

    Raises:
        ConfigError: anything else: several statements, a data change, DDL, PRAGMA, ATTACH, an unfinished statement.
    """
    refused = ConfigError(f"--query must be a single SELECT; got: {printable(' '.join(query.split()))}")
    pieces = [" " if t.startswith(("--", "/*")) else t for t in _TOKEN.findall(query)]
    cleaned = "".join(pieces).strip()
    tokens = [t for t in pieces if not t.isspace()]
    while tokens and tokens[-1] == ";":
        tokens.pop()
        cleaned = cleaned[: cleaned.rindex(";")].rstrip()
    if not tokens or ";" in tokens or not sqlite3.complete_statement(cleaned + ";"):
        raise refused
    top = _depth0(tokens)
    verb = tokens[0].upper()
    if top is None or verb not in ("SELECT", "WITH") or (verb == "WITH" and _cte_verb(top) != "SELECT"):
        raise refused
    return cleaned


def _database(url: str, query: str) -> tuple[str, str]:
    """(absolute database path, checked query) of a database input.

    Raises:
        ConfigError: not a sqlite:/// URL, no database there, no query, or not a single read-only SELECT.
    """
    if not url.startswith("sqlite:///"):
        raise ConfigError(f"only sqlite:///PATH databases are built in, got {url!r}; use a manifest for others")
    db_path = url[len("sqlite:///") :]  # sqlite:///rel.db or sqlite:////abs.db
    if not Path(db_path).is_file():
        raise ConfigError(f"no sqlite database at {db_path}")
    if not query:
        raise ConfigError('a database input needs --query, e.g. "SELECT uri FROM tracks"')
    return os.path.abspath(db_path), read_only_query(query)


def read_query(url: str, query: str, uri_column: str = "uri", read_sql: SqlReader | None = None) -> list[Source]:
    """Sources from a read-only SQL query; ``url`` is ``sqlite:///path/to.db``.

    ``read_sql(query, connect)`` runs the query (for example Ray Data's reader, ``hummingml.extract.ray.read_sql``);
    None reads in this process. ``connect`` is a picklable callable that opens the database read-only
    (:func:`connect_read_only`). Relative local URIs are relative to the database's folder.

    Raises:
        ConfigError: the query is not a single SELECT (see :func:`read_only_query`), or a row has no URI.
    """
    if read_sql is None:
        return [s for chunk in _query_chunks(url, query, uri_column, LISTING_CHUNK) for s in describe(chunk)]
    db_path, checked = _database(url, query)
    rows = read_sql(checked, functools.partial(connect_read_only, db_path))
    base_dir = os.path.dirname(db_path)
    return _from_table(pa.Table.from_pylist(rows), uri_column, base_dir, f"{url} --query", "fix the query or the table")


def _query_chunks(url: str, query: str, uri_column: str, size: int) -> Iterator[Chunk]:
    """The query's rows, fetched ``size`` at a time from a read-only connection (memory holds one chunk).

    Raises:
        ConfigError: as :func:`read_query`, at once.
    """
    db_path, checked = _database(url, query)
    where, fix = f"{url} --query", "fix the query or the table"

    def chunks() -> Iterator[Chunk]:
        with contextlib.closing(connect_read_only(db_path)) as connection:
            cursor = connection.execute(checked)
            names = [d[0] for d in cursor.description]
            first_row = 1
            while rows := cursor.fetchmany(size):
                table = pa.Table.from_pylist([dict(zip(names, row, strict=True)) for row in rows])
                yield Chunk(rows=table, first_row=first_row, base_dir=os.path.dirname(db_path), where=where,
                            fix=fix, uri_column=uri_column)
                first_row += len(rows)

    return chunks()


def _glob_local(pattern: str) -> Iterable[Path]:
    """Paths matching ``pattern``; ``**`` descends into real directories only, so links cannot loop."""
    parts = pattern.split("/")
    first = next(i for i, p in enumerate(parts) if glob.has_magic(p))
    base = "/".join(parts[:first]) or ("/" if pattern.startswith("/") else ".")
    if not os.path.isdir(base):
        return []
    try:
        return list(Path(os.path.realpath(base)).glob("/".join(parts[first:])))
    except ValueError as exc:
        raise ConfigError(f"input {printable(pattern)!r}: {exc}") from exc


def _walk(folder: str, exts: tuple[str, ...]) -> Iterator[str]:
    """Entries under ``folder`` whose names end with ``exts`` (any type: a directory or a broken link named like
    audio is kept, to become an error row), depth first, each folder's entries sorted; symlinked folders are not
    entered, so a link loop lists nothing twice."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.lower().endswith(exts):
            yield entry.path
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path, exts)


def _batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _file_chunks(uri: str, extensions: tuple[str, ...], size: int) -> Iterator[Chunk]:
    """Chunks of the audio files under a directory, matching a glob, or a single file (see :func:`list_files`).

    Raises:
        ConfigError: the input does not exist (at once, not on the first ``next``).
    """
    exts = tuple(e.lower() for e in extensions)
    if _is_remote(uri):
        return _remote_chunks(uri, exts, size)
    path = _local(uri)
    if glob.has_magic(path):
        found: Iterable[str] = sorted(str(p) for p in _glob_local(path) if p.name.lower().endswith(exts))
    elif os.path.isdir(path):
        found = _walk(os.path.realpath(path), exts)
    elif os.path.lexists(path):
        found = [path]
    else:
        raise ConfigError(f"--input {printable(uri)} does not exist")
    return (Chunk(paths=tuple(paths)) for paths in _batched(found, size))


def _remote_chunks(uri: str, exts: tuple[str, ...], size: int) -> Iterator[Chunk]:
    """An object-store file, or a folder: its own files described here, each subfolder one chunk listed by a task."""
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(uri)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File:
        canonical = canonical_uri(uri)
        return iter([Chunk(sources=(Source(uri, source_id(canonical), "{}", canonical, _remote_version(info)),))])
    if info.type != pafs.FileType.Directory:
        raise ConfigError(f"--input {printable(uri)} does not exist")
    top = sorted(fs.get_file_info(pafs.FileSelector(base, recursive=False)), key=lambda i: i.path)
    files = [i for i in top if i.type != pafs.FileType.Directory and i.path.lower().endswith(exts)]
    folders = [_remote_uri(uri, i.path) for i in top if i.type == pafs.FileType.Directory]

    def chunks() -> Iterator[Chunk]:
        for batch in _batched(files, size):
            yield Chunk(sources=tuple(_remote_source(uri, i) for i in batch))
        for folder in folders:
            yield Chunk(prefix=folder, extensions=exts)

    return chunks()


def _remote_uri(input_uri: str, path: str) -> str:
    """The URI of ``path`` on ``input_uri``'s filesystem, with its ``?options``; keys with spaces or % open as
    themselves."""
    scheme = input_uri.split("://", 1)[0].lower()
    query = "?" + input_uri.split("?", 1)[1] if "?" in input_uri else ""
    return f"{scheme}://{urllib.parse.quote(path)}{query}"


def _remote_source(input_uri: str, info: Any) -> Source:
    canonical = f"{input_uri.split('://', 1)[0].lower()}://{info.path}"
    return Source(_remote_uri(input_uri, info.path), source_id(canonical), "{}", canonical, _remote_version(info))


def _list_remote(uri: str, exts: tuple[str, ...]) -> list[Source]:
    """Every file under the object-store folder ``uri`` whose name ends with ``exts``, sorted by key."""
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(uri)
    infos = sorted(fs.get_file_info(pafs.FileSelector(base, recursive=True)), key=lambda i: i.path)
    return [
        _remote_source(uri, i) for i in infos if i.type != pafs.FileType.Directory and i.path.lower().endswith(exts)
    ]


def list_files(uri: str, extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[Source]:
    """Audio files under a directory, matching a glob, or a single file; local or any pyarrow filesystem URI.

    Local directories are walked without following symlinked directories (a link loop lists nothing twice); a
    symlinked file is listed as its target. Directories named like audio files and broken links are kept: they
    become error rows, never vanish. Sorted by URI, one source per identity.
    """
    sources = [s for chunk in _file_chunks(uri, extensions, LISTING_CHUNK) for s in describe(chunk)]
    return sorted(_unique(sources), key=lambda s: s.uri)


def listing(
    input_uri: str, query: str = "", uri_column: str = "uri", extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
    size: int = LISTING_CHUNK,
) -> Iterator[Chunk]:
    """The listing of ``input_uri`` as a stream of chunks of about ``size`` inputs, for tasks to :func:`describe`.

    The input is checked now; the chunks are read as they are asked for, so memory holds one chunk whatever the
    input's size. A Parquet manifest is cut into runs of whole row groups that the describing tasks read themselves
    (only a row group over ``ROW_GROUP_SPLIT`` chunks is read here, a chunk at a time); a JSON-lines one is streamed
    line by line and a CSV one read whole (so that its column types are the whole file's); a query's rows are
    fetched ``size`` at a time; a local directory is walked in order, each folder's entries sorted; an object-store
    folder yields its own files and one chunk per subfolder, listed by a task; a glob is matched whole.

    Raises:
        ConfigError: the input does not exist, a database query is not a read-only SELECT, or a manifest has no
            ``uri_column``.
    """
    if input_uri.startswith("sqlite://"):
        return _query_chunks(input_uri, query, uri_column, size)
    if input_uri.lower().endswith(MANIFEST_EXTENSIONS):
        if not _is_remote(input_uri) and not os.path.isfile(_local(input_uri)):
            raise ConfigError(f"--input {printable(input_uri)} does not exist")
        chunks = _manifest_chunks(input_uri, uri_column, size)
        first = next(chunks, None)  # checks the manifest's columns now
        return iter([]) if first is None else _prepend(first, chunks)
    return _file_chunks(input_uri, extensions, size)


def _prepend(first: T, rest: Iterator[T]) -> Iterator[T]:
    yield first
    yield from rest


def list_sources(
    input_uri: str,
    query: str = "",
    uri_column: str = "uri",
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
    read_sql: SqlReader | None = None,
) -> list[Source]:
    """All inputs named by ``input_uri`` (see ``ExtractConfig.input``), one per identity (``Source.canonical``).

    The first occurrence of an identity wins; the order is the listing's (sorted for files, the rows' for a manifest
    or query). ``read_sql`` runs the query of a database input (see :func:`read_query`). This holds the whole
    listing; the extraction job streams it instead (:func:`listing`).
    """
    if input_uri.startswith("sqlite://"):
        sources = read_query(input_uri, query, uri_column, read_sql)
    elif input_uri.lower().endswith(MANIFEST_EXTENSIONS):
        sources = [s for chunk in listing(input_uri, query, uri_column, extensions) for s in describe(chunk)]
    else:
        sources = list_files(input_uri, extensions)
    return _unique(sources)


class SourceUnavailable(OSError):
    """A read failed for a reason that is not the input's fault (network, throttling, a 5xx), even after retries.

    Extraction commits nothing for such an input: it stays pending, the run ends unaccounted, and a rerun reads it
    again. An error row would be wrong, since the input itself may be fine.
    """


# pyarrow's S3/GCS errors name their cause in the message; these are the ones a later attempt can cure
_TRANSIENT = re.compile(
    r"NETWORK_CONNECTION|curlCode|SLOW_DOWN|THROTTL|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|REQUEST_TIMEOUT|"
    r"HTTP status 5\d\d|timed? ?out|Connection (refused|reset)|Couldn't connect|temporarily",
    re.IGNORECASE,
)
_TRANSIENT_ERRNOS = {errno.EIO, errno.ETIMEDOUT, errno.ESTALE, errno.EAGAIN, errno.ENOTCONN, errno.ECONNRESET}


def is_transient(exc: OSError) -> bool:
    """Whether a failed read may succeed when tried again (an outage), as opposed to a fact about the input."""
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return False
    return exc.errno in _TRANSIENT_ERRNOS or bool(_TRANSIENT.search(str(exc)))


def _read_once(uri: str) -> bytes:
    if not _is_remote(uri):
        return read_local_bytes(_local(uri))
    import pyarrow.fs as pafs

    try:
        fs, path_in_fs = pafs.FileSystem.from_uri(uri)
        with fs.open_input_stream(path_in_fs) as f:
            return f.read()
    except FileNotFoundError as exc:
        raise DecodeError("not_found", f"{uri} does not exist") from exc
    except OSError as exc:
        raise DecodeError("unreadable", f"{uri}: {exc}") from exc


def _with_retries(uri: str, attempt_once: Callable[[], T], retries: int, backoff_s: float) -> T:
    """``attempt_once()``, tried again after a transient failure (see :func:`read_bytes` for the errors)."""
    for attempt in range(retries + 1):
        try:
            return attempt_once()
        except DecodeError as exc:
            cause = exc.__cause__
            if exc.kind != "unreadable" or not isinstance(cause, OSError) or not is_transient(cause):
                raise
            if attempt == retries:
                raise SourceUnavailable(f"{uri}: {cause} (after {retries} retries)") from cause
            wait = backoff_s * 2**attempt
            print(f"[read] {printable(uri)}: {cause}; retry {attempt + 1}/{retries} in {wait:g} s", file=sys.stderr)
            time.sleep(wait)
    raise AssertionError("unreachable")


def read_bytes(uri: str, retries: int = 0, backoff_s: float = 0.5) -> bytes:
    """The bytes of a local path or any pyarrow filesystem URI (S3, GCS, HDFS; FSx mounts are local paths).

    Args:
        uri: the input.
        retries: attempts after the first when a read fails for a transient reason (see :func:`is_transient`).
        backoff_s: the wait before the first retry; it doubles with every retry.

    Raises:
        DecodeError: ``not_found`` or ``unreadable`` (with the reason): a fact about the input, for an error row.
        SourceUnavailable: the read still failed for a transient reason after ``retries`` retries.
    """
    return _with_retries(uri, lambda: _read_once(uri), retries, backoff_s)


SPOOL_BYTES = 64 << 20  # a remote input up to this size is held in memory while it is decoded, a larger one on disk
CHUNK_BYTES = 8 << 20  # bytes per read when hashing or downloading


@dataclass
class OpenSource:
    """An input opened for decoding: a seekable binary file, its size and the sha256 of its bytes."""

    file: BinaryIO
    size: int
    sha256: str

    def close(self) -> None:
        """Close the file (a spooled download is deleted)."""
        self.file.close()

    def __enter__(self) -> OpenSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hash_copy(src: BinaryIO, dst: BinaryIO | None = None) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    while chunk := src.read(CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
        if dst is not None:
            dst.write(chunk)
    return size, digest.hexdigest()


def _open_once(uri: str) -> OpenSource:
    if not _is_remote(uri):
        f = open_local(_local(uri))
        try:
            size, sha256 = _hash_copy(f)
            f.seek(0)
        except OSError as exc:
            f.close()
            raise DecodeError("unreadable", f"{uri}: {exc.strerror or exc}") from exc
        return OpenSource(f, size, sha256)
    import pyarrow.fs as pafs

    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - returned open, closed by OpenSource
    try:
        fs, path_in_fs = pafs.FileSystem.from_uri(uri)
        with fs.open_input_stream(path_in_fs) as f:
            size, sha256 = _hash_copy(f, spool)  # type: ignore[arg-type]
        spool.seek(0)
    except FileNotFoundError as exc:
        spool.close()
        raise DecodeError("not_found", f"{uri} does not exist") from exc
    except OSError as exc:
        spool.close()
        raise DecodeError("unreadable", f"{uri}: {exc}") from exc
    return OpenSource(spool, size, sha256)  # type: ignore[arg-type]


def open_source(uri: str, retries: int = 0, backoff_s: float = 0.5) -> OpenSource:
    """Open a local path or pyarrow URI for decoding, in fixed memory, and hash its bytes on the way.

    A local file (FSx mounts included) is read twice: once for the hash, then by the decoder. A remote object is
    downloaded once, hashing as it arrives, into memory up to ``SPOOL_BYTES`` and into a temporary file beyond.
    Retries and errors as :func:`read_bytes`.
    """
    return _with_retries(uri, lambda: _open_once(uri), retries, backoff_s)
