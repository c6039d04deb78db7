"""Where the audio comes from: a directory or glob, an object-store URI, a manifest, or a SQL query.

Every input is named by its identity, ``Source.canonical``: a local file as its absolute path with symlinks resolved,
an object as ``scheme://bucket/key``. Any spelling of one file (relative, ``file://``, through a linked folder) is
one source with one ``source_id``.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pyarrow as pa

from hummingml.audio import DecodeError, open_local, read_local_bytes
from hummingml.config import ConfigError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff")
MANIFEST_EXTENSIONS = (".parquet", ".csv", ".jsonl", ".json")
T = TypeVar("T")


@dataclass(frozen=True)
class Source:
    """One input: what to open, its identity and the id derived from it, the manifest's extra columns as JSON."""

    uri: str  # what to open: a local absolute real path, or a pyarrow URI with its ?options
    source_id: str  # source_id(canonical)
    metadata: str = "{}"
    canonical: str = ""  # the identity: a local real path, or scheme://bucket/key (no ?query)
    version: str = ""  # "<size>:<mtime_ns>" as listed; "" when it could not be stat'ed (missing, broken link)


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


def _from_table(table: pa.Table, uri_column: str, base_dir: str | None, where: str, fix: str) -> list[Source]:
    if uri_column not in table.column_names:
        raise ConfigError(f"{where}: no {uri_column!r} column (columns: {table.column_names}); {fix}")
    uris, metadata = [], []
    for n, row in enumerate(table.to_pylist(), start=1):
        value = row.pop(uri_column)
        uri = os.fsdecode(value) if isinstance(value, bytes) else "" if value is None else str(value)
        if not uri.strip():
            raise ConfigError(f"{where}: row {n} has no {uri_column!r} (null or empty); {fix}")
        uris.append(uri)
        metadata.append(json.dumps(row, sort_keys=True, default=str))
    return _make_sources(uris, base_dir, metadata)


def read_manifest(path: str, uri_column: str = "uri") -> list[Source]:
    """Sources from a Parquet, CSV or JSON-lines manifest, one per row, in its order.

    Relative local URIs are relative to the manifest's folder; ``file://`` URIs are understood.

    Raises:
        ConfigError: the manifest has no ``uri_column``, or a row's value is null or empty.
    """
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet as pq

    lower = path.lower()
    local = _local(path)
    if lower.endswith(".parquet"):
        table = pq.read_table(local)
    elif lower.endswith(".csv"):
        table = pyarrow.csv.read_csv(local)
    else:
        table = pyarrow.json.read_json(local)
    base_dir = None if _is_remote(path) else os.path.dirname(os.path.abspath(local))
    return _from_table(table, uri_column, base_dir, printable(path), "fix the manifest")


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


def _read_sql_here(query: str, connect: Callable[[], Any]) -> list[dict[str, Any]]:
    """The rows of ``query`` as dicts, read in this process (``connect`` opens a sqlite3 connection)."""
    with contextlib.closing(connect()) as connection:
        cursor = connection.execute(query)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def read_query(url: str, query: str, uri_column: str = "uri", read_sql: SqlReader | None = None) -> list[Source]:
    """Sources from a read-only SQL query; ``url`` is ``sqlite:///path/to.db``.

    ``read_sql(query, connect)`` runs the query: the extraction job passes Ray Data's reader
    (``hummingml.extract.ray.read_sql``); None reads in this process. ``connect`` is a picklable callable that opens
    the database read-only (:func:`connect_read_only`). Relative local URIs are relative to the database's folder.

    Raises:
        ConfigError: the query is not a single SELECT (see :func:`read_only_query`), or a row has no URI.
    """
    if not url.startswith("sqlite:///"):
        raise ConfigError(f"only sqlite:///PATH databases are built in, got {url!r}; use a manifest for others")
    db_path = url[len("sqlite:///") :]  # sqlite:///rel.db or sqlite:////abs.db
    if not Path(db_path).is_file():
        raise ConfigError(f"no sqlite database at {db_path}")
    if not query:
        raise ConfigError('a database input needs --query, e.g. "SELECT uri FROM tracks"')
    checked = read_only_query(query)
    rows = (read_sql or _read_sql_here)(checked, functools.partial(connect_read_only, os.path.abspath(db_path)))
    base_dir = os.path.dirname(os.path.abspath(db_path))
    return _from_table(pa.Table.from_pylist(rows), uri_column, base_dir, f"{url} --query", "fix the query or the table")


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


def list_files(uri: str, extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[Source]:
    """Audio files under a directory, matching a glob, or a single file; local or any pyarrow filesystem URI.

    Local directories are walked without following symlinked directories (a link loop lists nothing twice); a
    symlinked file is listed as its target. Directories named like audio files and broken links are kept: they
    become error rows, never vanish. Sorted by URI, one source per identity.
    """
    exts = tuple(e.lower() for e in extensions)
    if not _is_remote(uri):
        path = _local(uri)
        if glob.has_magic(path):
            found: Iterable[Path] = _glob_local(path)
        elif os.path.isdir(path):
            found = Path(os.path.realpath(path)).rglob("*")
        elif os.path.lexists(path):
            return [make_source(path)]
        else:
            raise ConfigError(f"--input {printable(uri)} does not exist")
        paths = sorted(str(p) for p in found if p.name.lower().endswith(exts))
        return sorted(_unique(_make_sources(paths, None, ["{}"] * len(paths))), key=lambda s: s.uri)
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(uri)
    scheme = uri.split("://", 1)[0].lower()
    # options such as ?endpoint_override=...&region=... stay on every listed URI, so each can be opened alone
    query = "?" + uri.split("?", 1)[1] if "?" in uri else ""
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File:
        canonical = canonical_uri(uri)
        return [Source(uri, source_id(canonical), "{}", canonical, _remote_version(info))]
    if info.type != pafs.FileType.Directory:
        raise ConfigError(f"--input {printable(uri)} does not exist")
    infos = sorted(fs.get_file_info(pafs.FileSelector(base, recursive=True)), key=lambda i: i.path)
    sources = []
    for i in infos:
        if i.path.lower().endswith(exts):
            canonical = f"{scheme}://{i.path}"
            listed = f"{scheme}://{urllib.parse.quote(i.path)}{query}"  # keys with spaces or % open as themselves
            sources.append(Source(listed, source_id(canonical), "{}", canonical, _remote_version(i)))
    return sources


def list_sources(
    input_uri: str,
    query: str = "",
    uri_column: str = "uri",
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
    read_sql: SqlReader | None = None,
) -> list[Source]:
    """All inputs named by ``input_uri`` (see ``ExtractConfig.input``), one per identity (``Source.canonical``).

    The first occurrence of an identity wins; the order is the listing's (sorted for files, the rows' for a manifest
    or query). ``read_sql`` runs the query of a database input (see :func:`read_query`).
    """
    if input_uri.startswith("sqlite://"):
        sources = read_query(input_uri, query, uri_column, read_sql)
    elif input_uri.lower().endswith(MANIFEST_EXTENSIONS):
        sources = read_manifest(input_uri, uri_column)
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
