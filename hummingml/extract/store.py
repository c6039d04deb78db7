"""Exactly-once Parquet output: staged files, an atomic commit marker per batch, and roll-forward recovery.

Layout under the output root::

    audio-feature/part-<batch>.parquet        visible feature files (only committed batches)
    sine-audio-feature/part-<batch>.parquet
    errors/part-<batch>.parquet
    _staging/<batch>/<set>.parquet            files being written; never read as output
    _commits/<batch>.json                     the commit point of a batch: its rows' keys and files

A batch is committed when its marker exists. The marker is written last, to a temporary name, and renamed into
place (atomic on POSIX filesystems; on object stores a single PUT is atomic). After the marker, staged files are
moved into the visible sets. ``recover()`` (run at every start) finishes the moves of committed batches and deletes
staging left by batches that never committed, so a crash at any point leaves either the whole batch or none of it.
The set of committed ``(source_id, segment_index)`` keys is what a rerun skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.features import SCHEMA_VERSION, SCHEMAS

COMMITS = "_commits"
STAGING = "_staging"
ROW_GROUP_ROWS = 64  # feature rows are large (codes of 30 s x ~10 streams); ~64 keeps row groups tens of MB


@dataclass
class SourceProgress:
    """What the committed batches hold for one source."""

    n_segments: int = -1  # -1 until a row says how many segments the source has
    ok_segments: set[int] = field(default_factory=set)
    error_segments: set[int] = field(default_factory=set)  # -1 = the whole source failed

    @property
    def complete(self) -> bool:
        """Every segment is accounted for, or the source failed as a whole."""
        if -1 in self.error_segments:
            return True
        return self.n_segments >= 0 and len(self.ok_segments | self.error_segments) >= self.n_segments

    @property
    def failed(self) -> bool:
        """Some part of the source ended as an error row."""
        return bool(self.error_segments)


def batch_id(keys: Iterable[tuple[str, int]]) -> str:
    """A batch's name: a hash of its row keys plus a random suffix (a retried batch never reuses a name)."""
    digest = hashlib.sha256("\n".join(f"{s}:{i}" for s, i in sorted(keys)).encode()).hexdigest()[:16]
    return f"{digest}-{uuid.uuid4().hex[:8]}"


class OutputStore:
    """The output root of one extraction, on a local path or any pyarrow filesystem URI."""

    def __init__(self, root: str) -> None:
        if "://" in root and not root.startswith("file://"):
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root.removeprefix("file://"))
        self.uri = root
        self.fs.create_dir(self.root, recursive=True)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _markers(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self._path(COMMITS), allow_not_found=True))
        return sorted(i.path for i in infos if i.path.endswith(".json"))

    def _read_marker(self, path: str) -> dict:
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read())

    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, path)

    def _finish(self, marker: dict) -> None:
        """Move a committed batch's staged files into place (idempotent)."""
        for staged, final in marker["files"].items():
            staged_path, final_path = self._path(staged), self._path(final)
            if self._exists(staged_path):
                self.fs.create_dir(os.path.dirname(final_path), recursive=True)
                self.fs.move(staged_path, final_path)
        self.fs.delete_dir_contents(self._path(STAGING, marker["batch"]), missing_dir_ok=True)
        if self._exists(self._path(STAGING, marker["batch"])):
            self.fs.delete_dir(self._path(STAGING, marker["batch"]))

    def recover(self) -> int:
        """Finish committed batches, drop uncommitted staging and stray temporary markers; returns batches dropped."""
        committed = set()
        for path in self._markers():
            marker = self._read_marker(path)
            committed.add(marker["batch"])
            self._finish(marker)
        dropped = 0
        staging = self.fs.get_file_info(pafs.FileSelector(self._path(STAGING), allow_not_found=True))
        for info in staging:
            if os.path.basename(info.path) not in committed:
                self.fs.delete_dir(info.path)
                dropped += 1
        commit_dir = self.fs.get_file_info(pafs.FileSelector(self._path(COMMITS), allow_not_found=True))
        for info in commit_dir:
            if ".tmp-" in os.path.basename(info.path):
                self.fs.delete_file(info.path)
        return dropped

    def progress(self) -> dict[str, SourceProgress]:
        """Per source, the segments that committed batches hold."""
        out: dict[str, SourceProgress] = {}
        for path in self._markers():
            for source, segment, n_segments, ok in self._read_marker(path)["rows"]:
                p = out.setdefault(source, SourceProgress())
                p.n_segments = max(p.n_segments, n_segments)
                (p.ok_segments if ok else p.error_segments).add(segment)
        return out

    def committed_keys(self) -> set[tuple[str, int, bool]]:
        """``(source_id, segment_index, ok)`` of every row the committed batches hold (ok: a feature row)."""
        return {
            (source, segment, ok)
            for source, p in self.progress().items()
            for ok, segments in ((True, p.ok_segments), (False, p.error_segments))
            for segment in segments
        }

    def commit(self, tables: dict[str, pa.Table], rows: list[tuple[str, int, int, bool]], metadata: dict) -> str:
        """Write one batch exactly once.

        Args:
            tables: set name (``audio-feature``, ``sine-audio-feature``, ``errors``) -> rows of that set, with the
                set's schema from ``schemas.features``. Empty tables are not written.
            rows: one ``(source_id, segment_index, n_segments, ok)`` per key the batch accounts for.
            metadata: JSON-able run information stored in every file's metadata under ``hummingml.run``.

        Returns:
            The batch id.
        """
        batch = batch_id((s, i) for s, i, _, _ in rows)
        files = {}
        for name, table in tables.items():
            if table.num_rows == 0:
                continue
            schema = SCHEMAS[name].with_metadata(
                {
                    "hummingml.schema": name,
                    "hummingml.schema_version": SCHEMA_VERSION,
                    "hummingml.run": json.dumps(metadata, sort_keys=True, default=str),
                }
            )
            staged = f"{STAGING}/{batch}/{name}.parquet"
            self.fs.create_dir(self._path(STAGING, batch), recursive=True)
            with self.fs.open_output_stream(self._path(staged)) as sink:
                pq.write_table(
                    table.cast(schema), sink, compression="zstd", row_group_size=ROW_GROUP_ROWS, write_statistics=True
                )
            files[staged] = f"{name}/part-{batch}.parquet"
        marker = {"batch": batch, "files": files, "rows": [list(r) for r in rows]}
        self.fs.create_dir(self._path(COMMITS), recursive=True)
        self._write_atomic(self._path(COMMITS, f"{batch}.json"), json.dumps(marker).encode())
        self._finish(marker)
        return batch

    def dataset_path(self, name: str) -> str:
        """Path (or URI) of a visible set, for ``pyarrow.dataset``/``ray.data.read_parquet``/pandas."""
        if self.uri.startswith(("/", "file://")) or "://" not in self.uri:
            return self._path(name)
        base, _, query = self.uri.partition("?")
        return f"{base.rstrip('/')}/{name}" + (f"?{query}" if query else "")

    def write_summary(self, summary: dict) -> str:
        """Write ``summary.json`` at the output root atomically; returns its path."""
        path = self._path("summary.json")
        self._write_atomic(path, json.dumps(summary, indent=2, sort_keys=True, default=str).encode())
        return path
