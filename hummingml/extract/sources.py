"""Where the audio comes from: a directory or glob, an object-store URI, a manifest, or a SQL query."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pyarrow as pa

from hummingml.audio import DecodeError, open_local, read_local_bytes

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff")
MANIFEST_EXTENSIONS = (".parquet", ".csv", ".jsonl", ".json")
T = TypeVar("T")


@dataclass(frozen=True)
class Source:
    """One input: its URI, a stable id derived from the URI, and the manifest's extra columns as JSON."""

    uri: str
    source_id: str
    metadata: str = "{}"


def source_id(uri: str) -> str:
    """Stable id of an input: the first 32 hex digits of sha256(uri)."""
    return hashlib.sha256(uri.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def printable(text: str) -> str:
    """``text`` as valid UTF-8: bytes of a non-UTF-8 file name (held as surrogates) become ``\\xNN`` escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _local(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def _from_table(table: pa.Table, uri_column: str, base_dir: str | None) -> list[Source]:
    if uri_column not in table.column_names:
        raise ValueError(f"the manifest has no {uri_column!r} column (columns: {table.column_names})")
    sources = []
    for row in table.to_pylist():
        uri = str(row.pop(uri_column))
        if base_dir and not _is_remote(uri) and not os.path.isabs(uri):
            uri = os.path.join(base_dir, uri)
        sources.append(Source(uri, source_id(uri), json.dumps(row, sort_keys=True, default=str)))
    return sources


def read_manifest(path: str, uri_column: str = "uri") -> list[Source]:
    """Sources from a Parquet, CSV or JSON-lines manifest; relative local URIs are relative to the manifest."""
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet as pq

    lower = path.lower()
    if lower.endswith(".parquet"):
        table = pq.read_table(path)
    elif lower.endswith(".csv"):
        table = pyarrow.csv.read_csv(path)
    else:
        table = pyarrow.json.read_json(path)
    base_dir = None if _is_remote(path) else os.path.dirname(os.path.abspath(_local(path)))
    return _from_table(table, uri_column, base_dir)


SqlReader = Callable[[str, Callable[[], Any]], list[dict[str, Any]]]  # (query, connect) -> rows


def _read_sql_here(query: str, connect: Callable[[], Any]) -> list[dict[str, Any]]:
    """The rows of ``query`` as dicts, read in this process (``connect`` opens a sqlite3 connection)."""
    with contextlib.closing(connect()) as connection:
        cursor = connection.execute(query)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def read_query(url: str, query: str, uri_column: str = "uri", read_sql: SqlReader | None = None) -> list[Source]:
    """Sources from a SQL query; ``url`` is ``sqlite:///path/to.db``.

    ``read_sql(query, connect)`` runs the query: the extraction job passes Ray Data's reader
    (``hummingml.extract.ray.read_sql``); None reads in this process.
    """
    import sqlite3

    if not url.startswith("sqlite:///"):
        raise ValueError(f"only sqlite:///PATH databases are built in, got {url!r}; use a manifest for others")
    db_path = url[len("sqlite:///") - 1 :] if url.startswith("sqlite:////") else url[len("sqlite:///") :]
    if not Path(db_path).is_file():
        raise FileNotFoundError(f"no sqlite database at {db_path}")
    if not query:
        raise ValueError('a database input needs --query, e.g. "SELECT uri FROM tracks"')
    rows = (read_sql or _read_sql_here)(query, lambda: sqlite3.connect(db_path))
    return _from_table(pa.Table.from_pylist(rows), uri_column, os.path.dirname(os.path.abspath(db_path)))


def list_files(uri: str, extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[Source]:
    """Audio files under a directory, matching a glob, or a single file; local or any pyarrow filesystem URI."""
    exts = tuple(e.lower() for e in extensions)
    if not _is_remote(uri):
        path = _local(uri)
        if any(c in path for c in "*?["):
            found = glob.glob(path, recursive=True)
        elif os.path.isdir(path):
            found = [str(p) for p in Path(path).rglob("*")]
        elif os.path.lexists(path):
            return [Source(path, source_id(path))]
        else:
            raise FileNotFoundError(f"input {uri!r} does not exist")
        # directories named like audio files and broken links are kept: they become error rows, never vanish
        paths = sorted(p for p in found if p.lower().endswith(exts) and (os.path.lexists(p)))
        return [Source(p, source_id(p)) for p in paths]
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(uri)
    scheme = uri.split("://", 1)[0]
    # options such as ?endpoint_override=...&region=... stay on every listed URI, so each can be opened alone
    query = "?" + uri.split("?", 1)[1] if "?" in uri else ""
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File:
        return [Source(uri, source_id(uri))]
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"input {uri!r} does not exist")
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    uris = sorted(f"{scheme}://{i.path}{query}" for i in infos if i.path.lower().endswith(exts))
    return [Source(u, source_id(u)) for u in uris]


def list_sources(
    input_uri: str,
    query: str = "",
    uri_column: str = "uri",
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
    read_sql: SqlReader | None = None,
) -> list[Source]:
    """All inputs named by ``input_uri`` (see ``ExtractConfig.input``), deduplicated by URI, in a stable order.

    ``read_sql`` runs the query of a database input (see :func:`read_query`).
    """
    if input_uri.startswith("sqlite://"):
        sources = read_query(input_uri, query, uri_column, read_sql)
    elif input_uri.lower().endswith(MANIFEST_EXTENSIONS):
        sources = read_manifest(input_uri, uri_column)
    else:
        sources = list_files(input_uri, extensions)
    unique = {s.uri: s for s in sources}
    return list(unique.values())


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
