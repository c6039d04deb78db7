"""Arrow schema of a rolled-up commit log (``_commits/log/<id>.parquet``): one row per commit marker.

An output's commit log is one JSON marker per batch (``_commits/<batch>.json``, ``hummingml.extract.store``). The
lease holder rolls the markers up now and then into one Parquet file of this schema and then deletes the JSON
markers it holds, so a large output's log is read as a few files instead of one per batch.
"""

from __future__ import annotations

import pyarrow as pa

from schemas.features import ID_DOC, VERSION_DOC, _f

COMMIT_LOG_VERSION = "1"

COMMIT_ROW = pa.struct(
    [
        _f("source_id", pa.string(), ID_DOC),
        _f("segment_index", pa.int32(), "the row's segment (-1: the source failed as a whole)"),
        _f("n_segments", pa.int32(), "the source's segment count (-1: unknown, the source failed as a whole)"),
        _f("ok", pa.bool_(), "true: a feature row (in both feature sets); false: an error row (in errors)"),
        _f("source_version", pa.string(), VERSION_DOC),
    ]
)
COMMIT_FILE = pa.struct(
    [
        _f("staged", pa.string(), "where the writer staged the file, relative to the root (_staging/...)"),
        _f("visible", pa.string(), "the file's place in its set, relative to the root (<set>/part-<batch>.parquet)"),
    ]
)

COMMIT_LOG_SCHEMA = pa.schema(
    [
        _f("batch", pa.string(), "the batch id: a hash of its rows' keys, source versions and outcomes"),
        _f("committed_unix_ns", pa.int64(), "when the batch committed; the newest commit of a key wins", "ns"),
        _f("lease", pa.string(), "the token of the lease its writer held"),
        _f("writer", pa.string(), "host:pid of the process that committed it"),
        _f("files", pa.list_(COMMIT_FILE), "the batch's files, one per set it has rows in"),
        _f("rows", pa.list_(COMMIT_ROW), "one entry per row the batch accounts for"),
    ]
)
