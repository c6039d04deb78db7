"""Exactly-once Parquet output: one writer at a time, staged files, an atomic commit marker per batch, and
roll-forward recovery.

Layout under the output root::

    _lease.json                               the driver that writes this output now (see :class:`Lease`)
    _output.json                              the output's format and the fingerprint of its config and models
    audio-feature/part-<batch>.parquet        visible feature files (only committed batches)
    sine-audio-feature/part-<batch>.parquet
    errors/part-<batch>.parquet
    _staging/<batch>/<set>.parquet            files being written; never read as output
    _commits/<batch>.json                     the commit point of a batch: its rows' keys and files
    _commits/quarantine/<batch>.json          damaged markers, set aside with a warning

A batch is committed when its marker exists. Its files are written and checked (each file's Parquet footer is read
back and its row count compared; on local disks the files are fsynced), then the marker is written to a temporary
name, fsynced and renamed into place (atomic on POSIX filesystems; on object stores a single PUT is atomic). After
the marker, staged files are moved into the visible sets. ``recover()`` (run at every start, under the lease)
finishes the moves of committed batches and deletes staging left by batches that never committed, so a crash at any
point leaves either the whole batch or none of it. A batch's name is a hash of its rows' keys, source versions and
outcomes: committing the same rows again rewrites the same marker and files instead of adding a copy.

Readers see the output through the markers (``hummingml.output``): the newest commit of a key wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hummingml.config import ConfigError
from hummingml.output import (
    COMMITS,
    QUARANTINE,
    CurrentView,
    Marker,
    SourceState,
    current_view,
    join,
    open_root,
    read_markers,
)
from schemas.features import SCHEMA_VERSION, SCHEMAS

STAGING = "_staging"
LEASE = "_lease.json"
OUTPUT_RECORD = "_output.json"
FORMAT = 2  # 2: source ids from canonical URIs, source versions in markers, a lease and an output record
ROW_GROUP_ROWS = 64  # feature rows are large (codes of 30 s x ~10 streams); ~64 keeps row groups tens of MB

CommitRow = tuple[str, int, int, bool, str]  # (source_id, segment_index, n_segments, ok, source_version)


def batch_id(rows: Iterable[CommitRow]) -> str:
    """A batch's name: a hash of its rows' keys, source versions and outcomes (the same rows, the same name)."""
    text = "\n".join(f"{s}:{i}:{v}:{int(ok)}" for s, i, _, ok, v in sorted(rows, key=lambda r: (r[0], r[1])))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class LeaseHeld(ConfigError):
    """Another driver holds the output's lease."""


class LeaseLost(RuntimeError):
    """This driver's lease was taken over (it stopped renewing it for longer than the timeout)."""


class OutputStore:
    """The output root of one extraction, on a local path or any pyarrow filesystem URI."""

    def __init__(self, root: str, log: TextIO | None = sys.stderr) -> None:
        self.fs, self.root = open_root(root)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.uri = root
        self.log = log
        self.fs.create_dir(self.root, recursive=True)

    def _path(self, *parts: str) -> str:
        return join(self.root, *parts)

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _fsync(self, path: str) -> None:
        """Flush a local file (or directory) to the disk; object stores persist a PUT before it returns."""
        if self.local:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def read_bytes(self, path: str) -> bytes | None:
        """The bytes of a file under the root, or None if it does not exist."""
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write_atomic(self, path: str, data: bytes) -> None:
        """Write ``data`` to a temporary name, flush it, and rename it to ``path``."""
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self._fsync(tmp)
        self.fs.move(tmp, path)
        self._fsync(os.path.dirname(path))

    def _finish(self, marker: Marker) -> None:
        """Move a committed batch's staged files into place (idempotent)."""
        for staged, final in marker.files.items():
            staged_path, final_path = self._path(staged), self._path(final)
            if self._exists(staged_path):
                self.fs.create_dir(os.path.dirname(final_path), recursive=True)
                self.fs.move(staged_path, final_path)
        if self._exists(self._path(STAGING, marker.batch)):
            self.fs.delete_dir(self._path(STAGING, marker.batch))

    def markers(self) -> list[Marker]:
        """Every readable commit marker, oldest first (damaged ones are reported and skipped)."""
        return read_markers(self.fs, self.root, self.log)[0]

    def finish_committed(self) -> list[Marker]:
        """Finish the moves of every committed batch (never deletes anything a live writer stages); the markers."""
        markers = self.markers()
        for marker in markers:
            self._finish(marker)
        return markers

    def recover(self) -> int:
        """Quarantine damaged markers, finish committed batches, drop uncommitted staging and stray temporary markers.

        Run only by the lease holder: staging that no marker names belongs to a writer that is gone. Returns the
        number of uncommitted batches dropped.
        """
        markers, damaged = read_markers(self.fs, self.root, self.log)
        for path in damaged:
            self.fs.create_dir(self._path(COMMITS, QUARANTINE), recursive=True)
            self.fs.move(path, self._path(COMMITS, QUARANTINE, os.path.basename(path)))
        committed = {m.batch for m in markers}
        for marker in markers:
            self._finish(marker)
        dropped = 0
        for info in self.fs.get_file_info(pafs.FileSelector(self._path(STAGING), allow_not_found=True)):
            if os.path.basename(info.path) not in committed:
                self.fs.delete_dir(info.path)
                dropped += 1
        for info in self.fs.get_file_info(pafs.FileSelector(self._path(COMMITS), allow_not_found=True)):
            if ".tmp-" in os.path.basename(info.path):
                self.fs.delete_file(info.path)
        return dropped

    def current(self) -> CurrentView:
        """The output's current rows (see ``hummingml.output``)."""
        return current_view(self.markers())

    def progress(self) -> dict[str, SourceState]:
        """Per source, what its current rows hold."""
        return self.current().sources

    def committed_keys(self) -> set[tuple[str, str, int, bool]]:
        """``(source_id, source_version, segment_index, ok)`` of every current row (ok: a feature row)."""
        return {
            (source, p.version, segment, ok)
            for source, p in self.progress().items()
            for ok, segments in ((True, p.ok_segments), (False, p.error_segments))
            for segment in segments
        }

    def check_lease(self, token: str) -> None:
        """Raise :class:`LeaseLost` unless the lease at the root still names ``token``."""
        data = self.read_bytes(self._path(LEASE))
        holder = _parse_lease(data)
        if holder.get("token") != token:
            raise LeaseLost(
                f"the lease on {self.uri} was taken over by {describe_holder(holder)}; this writer stops without "
                "committing (its rows are processed again by the holder's run)"
            )

    def commit(
        self,
        tables: dict[str, pa.Table],
        rows: list[CommitRow],
        metadata: dict,
        lease: str = "",
        crash_after_marker: bool = False,
    ) -> str:
        """Write one batch exactly once.

        Args:
            tables: set name (``audio-feature``, ``sine-audio-feature``, ``errors``) -> rows of that set, with the
                set's schema from ``schemas.features``. Empty tables are not written.
            rows: one ``(source_id, segment_index, n_segments, ok, source_version)`` per key the batch accounts for.
            metadata: JSON-able run information stored in every file's metadata under ``hummingml.run``.
            lease: the writer's lease token; when given, the marker is written only while the lease names it.
            crash_after_marker: fault injection: end this process right after the marker is written.

        Returns:
            The batch id.
        """
        batch = batch_id(rows)
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
            self._fsync(self._path(staged))
            with self.fs.open_input_file(self._path(staged)) as f:
                written = pq.read_metadata(f).num_rows
            if written != table.num_rows:
                raise OSError(f"{staged} holds {written} rows after writing {table.num_rows}; not committed")
            files[staged] = f"{name}/part-{batch}.parquet"
        marker = {
            "format": FORMAT,
            "batch": batch,
            "committed_unix_ns": time.time_ns(),
            "lease": lease,
            "files": files,
            "rows": [list(r) for r in rows],
        }
        self.fs.create_dir(self._path(COMMITS), recursive=True)
        if lease:
            self.check_lease(lease)
        self.write_atomic(self._path(COMMITS, f"{batch}.json"), json.dumps(marker).encode())
        if crash_after_marker:
            os._exit(17)
        self._finish(Marker("", batch, 0, files, ()))
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
        self.write_atomic(path, json.dumps(summary, indent=2, sort_keys=True, default=str).encode())
        return path

    def check_record(self, fingerprint: dict[str, Any], allow_change: bool) -> list[str]:
        """Compare ``fingerprint`` with the one the output records; record it when new or ``allow_change``.

        Returns the differences (``field: recorded -> now``). Raises :class:`ConfigError` when they exist and
        ``allow_change`` is False, or when the output was written before format 2 and ``allow_change`` is False.
        """
        path = self._path(OUTPUT_RECORD)
        data = self.read_bytes(path)
        record = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "fingerprint": fingerprint}
        if data is None:
            if self.markers() and not allow_change:
                raise ConfigError(
                    f"{self.uri} was written by an older version (source ids from paths as typed); extract into a "
                    "new output, or pass --allow-config-change to add to it (inputs named differently then are "
                    "not recognised as the same)"
                )
            self.write_atomic(path, json.dumps(record, indent=2, sort_keys=True).encode())
            return []
        recorded = json.loads(data).get("fingerprint", {})
        differences = [
            f"{k}: {recorded.get(k)!r} -> {fingerprint.get(k)!r}"
            for k in sorted(recorded.keys() | fingerprint.keys())
            if recorded.get(k) != fingerprint.get(k)
        ]
        if differences and not allow_change:
            raise ConfigError(
                f"{self.uri} was made with another extraction config or models; "
                f"differences: {'; '.join(differences)}. Use a new --output, or pass --allow-config-change"
            )
        if differences:
            self.write_atomic(path, json.dumps(record, indent=2, sort_keys=True).encode())
        return differences


def _parse_lease(data: bytes | None) -> dict[str, Any]:
    try:
        return json.loads(data) if data else {}
    except ValueError:
        return {}


def _holder_died_here(holder: dict[str, Any]) -> bool:
    """Whether the holder ran on this host and its process is gone (its lease needs no timeout to expire)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _mtime_s(store: OutputStore, path: str) -> float:
    """A file's modification time (an unreadable lease record ages from its last write)."""
    mtime = store.fs.get_file_info(path).mtime
    return mtime.timestamp() if mtime is not None else 0.0


def describe_holder(holder: dict[str, Any]) -> str:
    """``host H pid P (Ray job J), renewed N s ago`` for a lease record."""
    if not holder:
        return "an unreadable lease record"
    age = time.time() - float(holder.get("renewed_unix_s", 0))
    job = f" (Ray job {holder['ray_job']})" if holder.get("ray_job") else ""
    return f"host {holder.get('host')} pid {holder.get('pid')}{job}, renewed {age:.0f} s ago"


@dataclass
class Lease:
    """The one-writer lease of an output root: ``_lease.json`` naming its holder, renewed while the holder runs.

    Taking it: on a local filesystem the record is created exclusively (``O_CREAT | O_EXCL``); on an object store,
    which has no exclusive create, it is written and read back after ``SETTLE_S``, and the writer whose token is
    there holds it. A lease not renewed for ``timeout_s`` belongs to a dead holder and may be taken over, as may one
    whose holder ran on this host and whose process is gone; a holder that finds another token at its next renewal
    or commit stops (:class:`LeaseLost`).
    """

    store: OutputStore
    token: str
    timeout_s: float
    ray_job: str = ""
    lost: str = ""  # why the lease was lost, set by the renewal thread
    _stop: threading.Event | None = None

    SETTLE_S = 1.0  # object stores: wait between writing the record and reading it back

    @classmethod
    def acquire(cls, store: OutputStore, timeout_s: float, ray_job: str = "") -> Lease:
        """Take the lease or raise :class:`LeaseHeld` naming the holder and how to take over."""
        path = store._path(LEASE)
        lease = cls(store, uuid.uuid4().hex, timeout_s)
        holder = _parse_lease(store.read_bytes(path))
        if holder or store._exists(path):
            renewed = float(holder.get("renewed_unix_s", 0)) if holder else _mtime_s(store, path)
            if time.time() - renewed < timeout_s and not _holder_died_here(holder):
                raise LeaseHeld(
                    f"{store.uri} is being written by another driver: {describe_holder(holder)}. Wait for it to "
                    f"finish or stop it; if it is dead, rerun {timeout_s:.0f} s after its last renewal to take over "
                    f"(--lease-timeout-s), or delete {path} if you are sure no driver is writing"
                )
            stale = f"{path}.stale-{lease.token}"
            try:
                store.fs.move(path, stale)  # one of several drivers taking over at once wins this rename
            except OSError as exc:
                raise LeaseHeld(f"{store.uri}: another driver took over the expired lease at the same time") from exc
            store.fs.delete_file(stale)
        record = lease._record(ray_job)
        if store.local:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError as exc:
                holder = _parse_lease(store.read_bytes(path))
                raise LeaseHeld(f"{store.uri} is being written by another driver: {describe_holder(holder)}") from exc
            with os.fdopen(fd, "wb") as f:
                f.write(record)
                f.flush()
                os.fsync(f.fileno())
        else:
            with store.fs.open_output_stream(path) as f:
                f.write(record)
            time.sleep(cls.SETTLE_S)
            holder = _parse_lease(store.read_bytes(path))
            if holder.get("token") != lease.token:
                raise LeaseHeld(f"{store.uri} is being written by another driver: {describe_holder(holder)}")
        lease.ray_job = ray_job
        return lease

    def _record(self, ray_job: str) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "ray_job": ray_job,
                "renewed_unix_s": now,
                "timeout_s": self.timeout_s,
            }
        ).encode()

    def renew(self) -> None:
        """Write a new renewal time, if the lease is still ours; else record why it was lost."""
        try:
            self.store.check_lease(self.token)
        except LeaseLost as exc:
            self.lost = str(exc)
            return
        self.store.write_atomic(self.store._path(LEASE), self._record(self.ray_job))

    def start_renewing(self) -> None:
        """Renew every quarter of the timeout in a daemon thread until :meth:`release`."""
        self._stop = threading.Event()

        def loop() -> None:
            assert self._stop is not None
            while not self._stop.wait(self.timeout_s / 4) and not self.lost:
                try:
                    self.renew()
                except OSError as exc:  # a store hiccup: the next renewal tries again
                    print(f"[extract] warning: lease renewal failed: {exc}", file=sys.stderr)

        threading.Thread(target=loop, name="hummingml-lease", daemon=True).start()

    def release(self) -> None:
        """Stop renewing and delete the record if it is still ours."""
        if self._stop is not None:
            self._stop.set()
        try:
            self.store.check_lease(self.token)
        except LeaseLost:
            return
        self.store.fs.delete_file(self.store._path(LEASE))
