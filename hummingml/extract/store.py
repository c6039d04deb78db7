"""Exactly-once Parquet output: one writer at a time, staged files, an atomic commit marker per batch, and
roll-forward recovery.

Layout under the output root::

    _lease.json                               the driver that writes this output now (see :class:`Lease`)
    _output.json                              the output's format and the fingerprint of its config and models
    audio-feature/part-<batch>.parquet        visible feature files (only committed batches)
    sine-audio-feature/part-<batch>.parquet
    errors/part-<batch>.parquet
    _staging/<batch>.<attempt>/<set>.parquet  files being written, one folder per attempt; never read as output
    _commits/<batch>.json                     the commit point of a batch: its rows' keys and files
    _commits/log/<id>.parquet                 markers rolled up by the lease holder (``roll_up``), one row each
    _commits/quarantine/<batch>.json          damaged markers, set aside with a warning
    summary.json, README.md                   the last run's summary and the dataset card (``write_summary``)

A batch is committed when its marker exists. Its files are written and checked (each file's Parquet footer is read
back and its row count compared; on local disks the files and their folder are fsynced), then the marker is written
to a temporary name, fsynced and renamed into place (atomic on POSIX filesystems; on object stores the marker
appears whole, as a copy of a complete object). After the marker, staged files are moved into the visible sets.
``recover()`` (run at every start, under the lease) finishes the moves of committed batches and deletes staging left
by batches that never committed, so a crash at any point leaves either the whole batch or none of it. A batch's name
is a hash of its rows' keys, source versions and outcomes: the same rows committed again are not written twice.
Each attempt stages into its own folder, so two writers given the same batch at once (a task retried elsewhere while
the first still runs) never touch each other's files; both markers name the same visible files, with the same rows.

Readers see the output through the markers (``hummingml.output``): the newest commit of a key wins.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hummingml.config import ConfigError
from hummingml.extract.card import CARD, SUMMARY, render_card
from hummingml.output import (
    COMMITS,
    LOG,
    QUARANTINE,
    CurrentView,
    Marker,
    SourceState,
    current_view,
    join,
    log_files,
    marker_files,
    open_root,
    parse_marker,
    read_json_markers,
    read_markers,
)
from schemas.commit_log import COMMIT_LOG_SCHEMA, COMMIT_LOG_VERSION
from schemas.features import SCHEMA_VERSION, SCHEMAS

STAGING = "_staging"
LEASE = "_lease.json"
OUTPUT_RECORD = "_output.json"
FORMAT = 2  # 2: source ids from canonical URIs, source versions in markers, a lease and an output record
ROW_GROUP_ROWS = 64  # feature rows are large (codes of 30 s x ~10 streams); ~64 keeps row groups tens of MB
ROLL_UP_MIN = 64  # JSON markers worth a roll-up (fewer are read as fast as one more Parquet file)
LOG_FILES_MAX = 16  # rolled-up files before a roll-up merges them all into one
LOG_CHUNK = 4096  # markers per row group of a rolled-up file (each is read and written a chunk at a time)

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
    """The output root of one extraction, on a local path or any pyarrow filesystem URI.

    ``schemas`` are the sets it holds (the feature sets by default; the batch remix passes its own) and
    ``schema_version`` their version, written into every file and the output record.
    """

    def __init__(
        self,
        root: str,
        log: TextIO | None = sys.stderr,
        create: bool = True,
        schemas: Mapping[str, pa.Schema] = SCHEMAS,
        schema_version: str = SCHEMA_VERSION,
    ) -> None:
        self.schemas, self.schema_version = schemas, schema_version  # the sets this output holds
        self.fs, self.root = open_root(root)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.uri = root
        self.log = log
        self.newest_ns = 0  # the newest commit time this store has seen or written (commit times only grow)
        self.written_bytes = 0  # bytes of the Parquet files this object's commit() committed
        if create:
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

    def _finish(self, marker: Marker) -> bool:
        """Move a committed batch's staged files into place (idempotent); False if a file exists nowhere."""
        whole = True
        for staged, final in marker.files.items():
            staged_path, final_path = self._path(staged), self._path(final)
            if self._exists(staged_path):
                self.fs.create_dir(os.path.dirname(final_path), recursive=True)
                self.fs.move(staged_path, final_path)
                self._fsync(os.path.dirname(final_path))
            elif not self._exists(final_path):
                whole = False
        for folder in {staged.rsplit("/", 1)[0] for staged in marker.files} if whole else ():
            if self._exists(self._path(folder)):
                self.fs.delete_dir(self._path(folder))
        return whole

    def markers(self) -> list[Marker]:
        """Every readable commit marker, oldest first (damaged ones are reported and skipped)."""
        markers = read_markers(self.fs, self.root, self.log)[0]
        self.newest_ns = max([self.newest_ns, *(m.time_ns for m in markers)])
        return markers

    def _quarantine(self, path: str, why: str) -> None:
        if self.log is not None:
            print(f"[output] warning: {why}; its batch counts as uncommitted: {path}", file=self.log)
        self.fs.create_dir(self._path(COMMITS, QUARANTINE), recursive=True)
        self.fs.move(path, self._path(COMMITS, QUARANTINE, os.path.basename(path)))

    def finish_committed(self) -> list[Marker]:
        """Finish the moves of every committed batch (a writer that died between its marker and its moves); returns
        the markers. Deletes only the staging folders of batches whose files are all in place."""
        markers = self.markers()
        for marker in markers:
            self._finish(marker)
        return markers

    def recover(self, staging_min_age_s: float = 0.0) -> int:
        """Quarantine damaged markers and markers whose files exist nowhere, finish committed batches, and drop
        uncommitted staging (older than ``staging_min_age_s``) and stray temporary files.

        Run only by the lease holder: staging that no marker names belongs to a writer that is gone. Returns the
        number of uncommitted batches dropped. Only JSON markers are checked: a rolled-up one was finished before it
        was rolled up.
        """
        markers, damaged = read_markers(self.fs, self.root, None, rolled=False)
        for path in damaged:
            self._quarantine(path, "damaged commit marker (empty or not JSON)")
        for marker in markers:
            if not self._finish(marker):
                self._quarantine(marker.path, "commit marker names files that exist nowhere")
        dropped = 0
        now = time.time()
        for info in self.fs.get_file_info(pafs.FileSelector(self._path(STAGING), allow_not_found=True)):
            young = info.mtime is not None and now - info.mtime.timestamp() < staging_min_age_s
            if not young:  # every committed batch's staging is gone once its files are in place
                self.fs.delete_dir(info.path)
                dropped += 1
        for folder in (self._path(COMMITS), self._path(COMMITS, LOG), self.root):
            for info in self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
                if ".tmp-" in os.path.basename(info.path) or ".stale-" in os.path.basename(info.path):
                    self.fs.delete_file(info.path)
        return dropped

    def roll_up(self, min_markers: int = ROLL_UP_MIN, max_files: int = LOG_FILES_MAX) -> int:
        """Roll the JSON markers up into one Parquet file under ``_commits/log/`` and delete them; returns how many.

        Run only by the lease holder, after :meth:`recover` (a marker whose moves are not finished is left as it is).
        Nothing happens with fewer than ``min_markers`` markers. When the log would hold more than ``max_files``
        files, the new file holds the old ones' markers too and they are deleted after it. The file is written under a
        temporary name, checked and renamed before anything is deleted, so a roll-up stopped at any point leaves every
        batch in the log (readers count a batch found twice once). Markers are read and written :data:`LOG_CHUNK` at
        a time, so memory does not grow with the log.
        """
        import pyarrow.parquet as pq

        files = marker_files(self.fs, self.root)
        if len(files) < min_markers:
            return 0
        old = log_files(self.fs, self.root)
        merged = old if len(old) + 1 > max_files else []
        rolled = set()  # batches the log holds already: a roll-up that stopped before deleting its JSON markers
        for path in old:
            with self.fs.open_input_file(path) as f:
                rolled.update(pq.read_table(f, columns=["batch"]).column("batch").to_pylist())
        final = self._path(COMMITS, LOG, f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet")
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        self.fs.create_dir(self._path(COMMITS, LOG), recursive=True)
        schema = COMMIT_LOG_SCHEMA.with_metadata({"hummingml.commit_log_version": COMMIT_LOG_VERSION})
        written, done = 0, []  # done: the JSON markers the new file holds (or the log held already)
        with self.fs.open_output_stream(tmp) as sink, pq.ParquetWriter(sink, schema, compression="zstd") as out:
            for path in merged:
                with self.fs.open_input_file(path) as f:
                    for group in pq.ParquetFile(f).iter_batches(batch_size=LOG_CHUNK):
                        out.write_batch(group.cast(schema))
                        written += group.num_rows
            staged = self._staged_files()  # one listing: a marker with a file still here is not finished
            for start in range(0, len(files), LOG_CHUNK):
                markers = [m for m in read_json_markers(self.fs, files[start : start + LOG_CHUNK], None)[0]
                           if not any(self._path(path) in staged for path in m.files)]  # fmt: skip
                fresh = [m for m in markers if m.batch not in rolled]
                if fresh:
                    out.write_table(_log_table(fresh, schema))
                written += len(fresh)
                done += [m.path for m in markers]
        self._fsync(tmp)
        with self.fs.open_input_file(tmp) as f:
            if pq.read_metadata(f).num_rows != written:
                raise OSError(f"{tmp} does not hold the {written} markers written to it; nothing was deleted")
        if written:
            self.fs.move(tmp, final)
            self._fsync(os.path.dirname(final))
        else:  # every marker was in the log already
            self.fs.delete_file(tmp)
        for path in [*merged, *done]:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(path)
        return len(done)

    def _staged_files(self) -> set[str]:
        """The paths of every file in staging."""
        selector = pafs.FileSelector(self._path(STAGING), allow_not_found=True, recursive=True)
        return {i.path for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File}

    def current(self) -> CurrentView:
        """The output's current rows (see ``hummingml.output``)."""
        return current_view(self.markers())

    def progress(self) -> dict[str, SourceState]:
        """Per source, what its current rows hold."""
        return self.current().sources

    def committed_keys(self, markers: list[Marker] | None = None) -> set[tuple[str, str, int, bool]]:
        """``(source_id, source_version, segment_index, ok)`` of every current row (ok: a feature row), from
        ``markers`` when the caller has just read them, else from the output's."""
        states = current_view(markers).sources if markers is not None else self.progress()
        return {
            (source, p.version, segment, ok)
            for source, p in states.items()
            for ok, segments in ((True, p.ok_segments), (False, p.error_segments))
            for segment in segments
        }

    def check_lease(self, token: str) -> None:
        """Raise :class:`LeaseLost` unless the lease at the root still names ``token``."""
        holder = _parse_lease(self.read_bytes(self._path(LEASE)))
        if holder.get("token") != token:
            who = f"host {holder.get('host')} pid {holder.get('pid')}" if holder else "nobody (the record is gone)"
            raise LeaseLost(
                f"the lease on {self.uri} is now held by {who}; this writer stops without committing (the holder's "
                "run processes its rows)"
            )

    def commit(
        self,
        tables: dict[str, pa.Table],
        rows: list[CommitRow],
        metadata: dict,
        lease: str = "",
        after_marker: Callable[[], None] | None = None,
    ) -> str:
        """Write one batch exactly once.

        Args:
            tables: set name (a key of the store's ``schemas``: ``audio-feature``, ``sine-audio-feature``, ``errors``
                by default) -> rows of that set, with that schema. Empty tables are not written.
            rows: one ``(source_id, segment_index, n_segments, ok, source_version)`` per key the batch accounts for.
            metadata: JSON-able run information stored in every file's metadata under ``hummingml.run``.
            lease: the writer's lease token; when given, the marker is written only while the lease names it.
            after_marker: called right after the marker is written, before the moves (fault injection).

        Returns:
            The batch id. A batch whose marker exists already (the same rows, committed before) is not written again.
        """
        batch = batch_id(rows)
        marker_path = self._path(COMMITS, f"{batch}.json")
        if self._exists(marker_path):
            self._finish(parse_marker(marker_path, self.read_bytes(marker_path) or b""))
            return batch
        files = {}
        size = 0  # bytes of the staged files
        attempt = f"{STAGING}/{batch}.{uuid.uuid4().hex[:12]}"  # this writer's own staging folder
        for name, table in tables.items():
            if table.num_rows == 0:
                continue
            schema = self.schemas[name].with_metadata(
                {
                    "hummingml.schema": name,
                    "hummingml.schema_version": self.schema_version,
                    "hummingml.run": json.dumps(metadata, sort_keys=True, default=str),
                }
            )
            staged = f"{attempt}/{name}.parquet"
            self.fs.create_dir(self._path(attempt), recursive=True)
            with self.fs.open_output_stream(self._path(staged)) as sink:
                pq.write_table(
                    table.cast(schema), sink, compression="zstd", row_group_size=ROW_GROUP_ROWS, write_statistics=True
                )
                size += sink.tell()
            self._fsync(self._path(staged))
            with self.fs.open_input_file(self._path(staged)) as f:
                written = pq.read_metadata(f).num_rows
            if written != table.num_rows:
                raise OSError(f"{staged} holds {written} rows after writing {table.num_rows}; not committed")
            files[staged] = f"{name}/part-{batch}.parquet"
        if files:
            self._fsync(self._path(attempt))
        self.newest_ns = max(time.time_ns(), self.newest_ns + 1)  # after every commit this store knows of
        marker = {
            "format": FORMAT,
            "batch": batch,
            "committed_unix_ns": self.newest_ns,
            "lease": lease,
            "writer": f"{socket.gethostname()}:{os.getpid()}",
            "files": files,
            "rows": [list(r) for r in rows],
        }
        self.fs.create_dir(self._path(COMMITS), recursive=True)
        if lease:
            self.check_lease(lease)
        self.write_atomic(marker_path, json.dumps(marker).encode())
        self.written_bytes += size
        if after_marker is not None:
            after_marker()
        self._finish(Marker(marker_path, batch, 0, files, ()))
        return batch

    def dataset_path(self, name: str) -> str:
        """Path (or URI) of a visible set's folder. Read a set with ``hummingml.output.read_set``: the folder also
        holds superseded rows."""
        if self.uri.startswith(("/", "file://")) or "://" not in self.uri:
            return self._path(name)
        base, _, query = self.uri.partition("?")
        return f"{base.rstrip('/')}/{name}" + (f"?{query}" if query else "")

    def write_summary(self, summary: dict) -> str:
        """Write ``summary.json`` and then the dataset card ``README.md`` (``hummingml.extract.card``, from the
        commit markers) at the output root, each atomically; returns the summary's path."""
        path = self._path(SUMMARY)
        self.write_atomic(path, json.dumps(summary, indent=2, sort_keys=True, default=str).encode())
        card = render_card(self.uri, summary, self.schemas, self.schema_version)
        self.write_atomic(self._path(CARD), card.encode())
        return path

    def check_record(self, fingerprint: dict[str, Any], allow_change: bool) -> list[str]:
        """Compare ``fingerprint`` with the one the output records; record it when new or ``allow_change``.

        Returns the differences (``field: recorded -> now``). Raises :class:`ConfigError` when they exist and
        ``allow_change`` is False, or when the output was written before format 2 and ``allow_change`` is False.
        """
        path = self._path(OUTPUT_RECORD)
        data = self.read_bytes(path)
        record = {"format": FORMAT, "schema_version": self.schema_version, "fingerprint": fingerprint}
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
                f"{self.uri} was made with another config or other models; "
                f"differences: {'; '.join(differences)}. Use a new --output, or pass --allow-config-change"
            )
        if differences:
            self.write_atomic(path, json.dumps(record, indent=2, sort_keys=True).encode())
        return differences


def _log_table(markers: list[Marker], schema: pa.Schema) -> pa.Table:
    """Markers as rows of the rolled-up log."""
    return pa.Table.from_pylist(
        [
            {
                "batch": m.batch,
                "committed_unix_ns": m.time_ns,
                "lease": m.lease,
                "writer": m.writer,
                "files": [{"staged": k, "visible": v} for k, v in m.files.items()],
                "rows": [dict(zip(("source_id", "segment_index", "n_segments", "ok", "source_version"), r,
                                  strict=True)) for r in m.rows],
            }
            for m in markers
        ],
        schema=schema,
    )


def _parse_lease(data: bytes | None) -> dict[str, Any]:
    try:
        return json.loads(data) if data else {}
    except ValueError:
        return {}


def process_identity() -> str:
    """This process's host, boot and pid namespace: two processes with equal identities share a pid space."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(Path(path).read_text().strip() if "boot_id" in path else str(os.stat(path).st_ino))
        except OSError:
            parts.append("?")
    return "/".join(parts)


def _holder_died_here(holder: dict[str, Any]) -> bool:
    """Whether the holder ran in this host's pid space (same boot, same namespace) and its process is gone."""
    if holder.get("process_space") != process_identity() or "?" in str(holder.get("process_space")):
        return False
    if not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def describe_holder(holder: dict[str, Any], age_s: float) -> str:
    """``host H pid P (Ray job J), renewed N s ago`` for a lease record."""
    if not holder:
        return f"a lease record being written (or unreadable), {age_s:.0f} s old"
    job = f" (Ray job {holder['ray_job']})" if holder.get("ray_job") else ""
    return f"host {holder.get('host')} pid {holder.get('pid')}{job}, renewed {age_s:.0f} s ago"


@dataclass
class Lease:
    """The one-writer lease of an output root: ``_lease.json`` naming its holder, renewed while the holder runs.

    On a local (or shared POSIX) filesystem the record is created exclusively (``O_CREAT | O_EXCL``) and never
    rewritten: the holder renews it by touching the file it opened and found its token in (its modification time is
    the renewal time), so a late renewal can only touch a record that was already taken away. A takeover renames
    the expired record aside and checks that it moved the record it judged expired (else it puts it back). On an
    object store, which has no exclusive create, the record is written and read back after ``SETTLE_S`` and the
    writer whose token is there holds it; renewals rewrite it after checking the token.

    A lease not renewed for ``timeout_s`` belongs to a dead holder and may be taken over, as may one whose holder
    ran in this host's pid space (same boot, same pid namespace) and whose process is gone. A holder that finds
    another token at its next renewal or commit stops (:class:`LeaseLost`).
    """

    store: OutputStore
    token: str
    timeout_s: float
    ray_job: str = ""
    lost: str = ""  # why the lease was lost, set by the renewal thread
    took_over_live: bool = False  # taken over from a holder that may still be running (its lease expired)
    _stop: threading.Event | None = None

    SETTLE_S = 1.0  # object stores: wait between writing the record and reading it back

    @classmethod
    def refuse_if_held(cls, root: str, timeout_s: float) -> None:
        """Raise :class:`LeaseHeld` if a live driver holds the lease of ``root``; creates nothing (a first check,
        before a long listing: :meth:`acquire` decides)."""
        lease = cls(OutputStore(root, log=None, create=False), "", timeout_s)
        holder, age = lease._holder()
        if holder is not None and age < timeout_s and not _holder_died_here(holder):
            raise lease._held(holder, age)

    @classmethod
    def acquire(cls, store: OutputStore, timeout_s: float, ray_job: str = "") -> Lease:
        """Take the lease or raise :class:`LeaseHeld` naming the holder and how to take over."""
        lease = cls(store, uuid.uuid4().hex, timeout_s, ray_job)
        holder, age = lease._holder()
        if holder is not None:
            died_here = _holder_died_here(holder)
            if age < timeout_s and not died_here:
                raise lease._held(holder, age)
            lease._take_over(holder)
            lease.took_over_live = not died_here
        record = lease._record()
        if store.local:
            try:
                fd = os.open(lease.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError as exc:
                time.sleep(0.2)  # the winner may be writing its record
                raise lease._held(*lease._holder()) from exc
            with os.fdopen(fd, "wb") as f:
                f.write(record)
                f.flush()
                os.fsync(f.fileno())
            store._fsync(store.root)
        else:
            with store.fs.open_output_stream(lease.path) as f:
                f.write(record)
            time.sleep(cls.SETTLE_S)
            holder, age = lease._holder()
            if (holder or {}).get("token") != lease.token:
                raise lease._held(holder, age)
        return lease

    @property
    def path(self) -> str:
        """The lease record's path."""
        return self.store._path(LEASE)

    def _holder(self) -> tuple[dict[str, Any] | None, float]:
        """(the record, or None when there is none; seconds since its holder renewed it)."""
        info = self.store.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return None, 0.0
        holder = _parse_lease(self.store.read_bytes(self.path))
        if self.store.local or not holder:
            renewed = info.mtime.timestamp() if info.mtime is not None else 0.0
        else:
            renewed = float(holder.get("renewed_unix_s", 0))
        return holder, time.time() - renewed

    def _held(self, holder: dict[str, Any] | None, age_s: float) -> LeaseHeld:
        return LeaseHeld(
            f"{self.store.uri} is being written by another driver: {describe_holder(holder or {}, age_s)}. Wait for "
            f"it to finish or stop it; a dead holder's lease is taken over {self.timeout_s:.0f} s after its last "
            f"renewal (--lease-timeout-s), or delete {self.path} if you are sure no driver is writing"
        )

    def _take_over(self, expired: dict[str, Any]) -> None:
        """Move the expired record aside; raise :class:`LeaseHeld` if another driver renewed or replaced it first."""
        stale = f"{self.path}.stale-{self.token}"
        try:
            self.store.fs.move(self.path, stale)
        except OSError as exc:  # another driver moved it first
            raise self._held(*self._holder()) from exc
        moved = _parse_lease(self.store.read_bytes(stale))
        if moved.get("token") != expired.get("token"):  # a newer holder's record: put it back unless replaced
            if self.store.local:
                with contextlib.suppress(FileExistsError):
                    os.link(stale, self.path)
            self.store.fs.delete_file(stale)
            raise self._held(moved, 0.0)
        self.store.fs.delete_file(stale)

    def _record(self) -> bytes:
        return json.dumps(
            {
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "process_space": process_identity(),
                "ray_job": self.ray_job,
                "renewed_unix_s": time.time(),
                "timeout_s": self.timeout_s,
            }
        ).encode()

    def renew(self) -> None:
        """Renew the lease if it is still ours; else record why it was lost."""
        if self.store.local:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                self.lost = f"the lease record {self.path} is gone"
                return
            try:
                with os.fdopen(fd, "rb", closefd=False) as f:
                    token = _parse_lease(f.read()).get("token")
                if token == self.token:
                    os.utime(fd)  # the file this fd opened: a record renamed away meanwhile is not ours any more
                    return
            finally:
                os.close(fd)
            holder, age = self._holder()
            self.lost = f"the lease on {self.store.uri} was taken over by {describe_holder(holder or {}, age)}"
            return
        try:
            self.store.check_lease(self.token)
        except LeaseLost as exc:
            self.lost = str(exc)
            return
        self.store.write_atomic(self.path, self._record())

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
        self.store.fs.delete_file(self.path)
