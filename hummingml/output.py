"""An extraction output as readers see it: its commit log, which rows are current, and the current rows of a set.

The output root holds one commit marker per batch (``_commits/<batch>.json``, see ``hummingml.extract.store``). A
marker lists the batch's visible files and one entry per row: ``(source_id, segment_index, n_segments, ok,
source_version)``. The lease holder rolls markers up now and then into Parquet files under ``_commits/log/``
(``schemas/commit_log.py``, one row per marker) and deletes the JSON markers each holds; the log is the union of
both, a batch found in both counted once. Readers trust the markers, not the folders: a file that no readable marker
names is not part of the output (a batch whose marker was damaged counts as uncommitted and is processed again).

The newest commit of a key wins. Markers are ordered by their commit time (older markers without one by the
marker file's modification time), then by name. For each source, its *current version* is the ``source_version``
of its newest row; rows of any other version are superseded (the input changed and was processed again). Among the
current version's rows, the newest row of each ``segment_index`` wins, and a whole-source error row (segment -1) is
superseded by any newer row of the source. Superseded rows stay in their files until they are rewritten; readers
drop them with :func:`read_set` (or the ``superseded`` map of :class:`CurrentView`).

This module imports only pyarrow and the schemas, so every part (extraction, training, evaluation) reads outputs the
same way.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TextIO

import pyarrow as pa
import pyarrow.fs as pafs

COMMITS = "_commits"
QUARANTINE = "quarantine"  # under _commits: damaged markers, kept for inspection
LOG = "log"  # under _commits: rolled-up markers, one Parquet file per roll-up
READ_THREADS = 32  # markers read at once (an object store answers each read in tens of milliseconds)
LOG_READ_CHUNK = 1024  # markers of the rolled-up log turned into Python objects at a time

Key = tuple[str, int]  # (source_id, segment_index)


class DamagedMarker(ValueError):
    """A commit marker that is empty, not JSON, or lacks its fields."""


class Row(NamedTuple):
    """One row a commit marker accounts for (a tuple: a log holds millions)."""

    source_id: str
    segment_index: int
    n_segments: int  # the source's segment count (-1: unknown, the source failed as a whole)
    ok: bool  # a feature row (in both feature sets) or an error row (in ``errors``)
    version: str  # the source's size and modification time when it was listed ("" in outputs before format 2)


@dataclass(frozen=True)
class Marker:
    """A parsed commit marker."""

    path: str
    batch: str
    time_ns: int  # when the batch committed (ordering: the newest commit of a key wins)
    files: dict[str, str]  # staged path -> visible path, both relative to the root
    rows: tuple[Row, ...]
    lease: str = ""  # the token of the lease its writer held ("" before format 2)
    writer: str = ""  # host:pid of the process that committed it


def parse_marker(path: str, data: bytes, mtime_ns: int = 0) -> Marker:
    """A marker from its bytes; raises :class:`DamagedMarker` for an empty or malformed one."""
    try:
        raw = json.loads(data)
        rows = tuple(
            Row(str(r[0]), int(r[1]), int(r[2]), bool(r[3]), str(r[4]) if len(r) > 4 else "") for r in raw["rows"]
        )
        return Marker(
            path=path,
            batch=str(raw["batch"]),
            time_ns=int(raw.get("committed_unix_ns", mtime_ns)),
            files={str(k): str(v) for k, v in raw["files"].items()},
            rows=rows,
            lease=str(raw.get("lease", "")),
            writer=str(raw.get("writer", "")),
        )
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise DamagedMarker(f"{path}: {type(exc).__name__}: {exc}" if data else f"{path}: empty") from exc


def open_root(root: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path in it) of an output root given as a local path, ``file://`` or any pyarrow URI."""
    if "://" in root and not root.startswith("file://"):
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), os.path.abspath(root.removeprefix("file://"))


def join(root: str, *parts: str) -> str:
    """``root/part/...`` in a filesystem's path syntax."""
    return "/".join([root.rstrip("/"), *parts])


def read_markers(
    fs: pafs.FileSystem, root: str, log: TextIO | None = sys.stderr, rolled: bool = True
) -> tuple[list[Marker], list[str]]:
    """Every readable marker, oldest first, and the paths of damaged JSON markers (each reported on ``log``).

    The JSON markers are listed and read first, then (with ``rolled``) the rolled-up log. In that order a concurrent
    roll-up cannot hide a batch: a JSON marker that vanished before it was read was deleted after the rolled file
    holding it was written, so the later listing of the log finds it.
    """
    markers, damaged = read_json_markers(fs, marker_files(fs, root), log)
    if rolled:
        logged = read_log(fs, root)
        seen = {m.batch for m in logged}  # a marker both in the log and as JSON: a roll-up stopped before its deletes
        markers = logged + [m for m in markers if m.batch not in seen]
    markers.sort(key=lambda m: (m.time_ns, m.batch))
    return markers, damaged


def marker_files(fs: pafs.FileSystem, root: str) -> list[pafs.FileInfo]:
    """The JSON commit markers under ``root`` (not the rolled-up log)."""
    infos = fs.get_file_info(pafs.FileSelector(join(root, COMMITS), allow_not_found=True))
    return [i for i in infos if i.type == pafs.FileType.File and i.path.endswith(".json") and ".tmp-" not in i.path]


def read_json_markers(
    fs: pafs.FileSystem, files: list[pafs.FileInfo], log: TextIO | None = sys.stderr
) -> tuple[list[Marker], list[str]]:
    """The markers in ``files`` (in their order; a file gone meanwhile was rolled up and is skipped) and the paths of
    damaged ones (each reported on ``log``). Read ``READ_THREADS`` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def read(info: pafs.FileInfo) -> bytes | None:
        try:
            with fs.open_input_stream(info.path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    with ThreadPoolExecutor(READ_THREADS) as pool:
        contents = list(pool.map(read, files))
    markers, damaged = [], []
    for info, data in zip(files, contents, strict=True):
        if data is None:
            continue
        try:
            markers.append(parse_marker(info.path, data, info.mtime_ns or 0))
        except DamagedMarker as exc:
            damaged.append(info.path)
            if log is not None:
                print(f"[output] warning: damaged commit marker, its batch counts as uncommitted: {exc}", file=log)
    return markers, damaged


def log_files(fs: pafs.FileSystem, root: str) -> list[str]:
    """The rolled-up log's Parquet files, by name."""
    infos = fs.get_file_info(pafs.FileSelector(join(root, COMMITS, LOG), allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))


def read_log(fs: pafs.FileSystem, root: str, attempts: int = 3) -> list[Marker]:
    """The markers of the rolled-up log (unsorted, each batch once). A file merged away by a concurrent roll-up
    while it was being read makes the listing start again (the merged file exists before its parts are deleted)."""
    import pyarrow.parquet as pq

    for attempt in range(attempts):
        markers: dict[str, Marker] = {}
        try:
            for path in log_files(fs, root):
                with fs.open_input_file(path) as f:
                    for chunk in pq.ParquetFile(f).iter_batches(batch_size=LOG_READ_CHUNK):
                        for marker in markers_of(chunk, path):
                            markers.setdefault(marker.batch, marker)
            return list(markers.values())
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def markers_of(table: pa.Table | pa.RecordBatch, path: str) -> list[Marker]:
    """The markers held by rows of a rolled-up log (``schemas.commit_log.COMMIT_LOG_SCHEMA``), read column by
    column."""
    out: list[Marker] = []
    for chunk in table.to_batches() if isinstance(table, pa.Table) else [table]:
        rows, files = chunk.column("rows"), chunk.column("files")
        flat_rows = rows.flatten()
        entries = [Row(*t) for t in zip(*(flat_rows.field(i).to_pylist() for i in range(5)), strict=True)]
        flat_files = files.flatten()
        pairs = list(zip(flat_files.field(0).to_pylist(), flat_files.field(1).to_pylist(), strict=True))
        row_at, file_at = rows.offsets.to_pylist(), files.offsets.to_pylist()
        columns = (chunk.column(c).to_pylist() for c in ("batch", "committed_unix_ns", "lease", "writer"))
        for i, (batch, time_ns, lease, writer) in enumerate(zip(*columns, strict=True)):
            out.append(Marker(path, batch, time_ns, dict(pairs[file_at[i] : file_at[i + 1]]),
                              tuple(entries[row_at[i] : row_at[i + 1]]), lease, writer))  # fmt: skip
    return out


@dataclass
class SourceState:
    """What the current rows of one source hold."""

    version: str = ""
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


@dataclass
class CurrentView:
    """The current rows of an output, from its markers.

    ``sources`` holds each source's current state; ``superseded`` maps a batch to the keys of its rows that a newer
    commit replaced (usually empty); ``superseded_sources`` holds the sources that have superseded rows.
    """

    markers: list[Marker]
    sources: dict[str, SourceState]
    superseded: dict[str, set[Key]]
    superseded_sources: set[str]

    def files(self, name: str) -> list[tuple[str, str]]:
        """``(visible, staged)`` paths (relative to the root) of the set ``name``'s files, oldest commit first."""
        prefix = f"{name}/"
        return [(final, staged) for m in self.markers for staged, final in m.files.items() if final.startswith(prefix)]

    def current_keys(self, marker: Marker, ok: bool = True) -> set[Key]:
        """The keys of ``marker``'s feature rows (``ok``) or error rows (not ``ok``) that no newer commit replaced."""
        rows = {(r.source_id, r.segment_index) for r in marker.rows if r.ok == ok}
        return rows - self.superseded.get(marker.batch, set())

    @property
    def superseded_rows(self) -> int:
        """Rows that a newer commit replaced."""
        return sum(len(keys) for keys in self.superseded.values())

    def describe(self, listed: set[str] | None = None) -> dict[str, Any]:
        """The whole output in numbers; with ``listed`` (the source ids an input lists), the sources it lacks."""
        states = self.sources.values()
        out: dict[str, Any] = {
            "sources": len(self.sources),
            "complete_ok": sum(p.complete and not p.failed for p in states),
            "complete_failed": sum(p.complete and p.failed for p in states),
            "incomplete": sum(not p.complete for p in states),
            "feature_rows": sum(len(p.ok_segments) for p in states),
            "error_rows": sum(len(p.error_segments) for p in states),
            "superseded_rows": self.superseded_rows,
            "sources_with_superseded_rows": len(self.superseded_sources),
            "batches": len(self.markers),
        }
        if listed is not None:  # committed sources the input no longer lists (removed files)
            not_listed = sorted(set(self.sources) - listed)
            out.update(not_in_input=len(not_listed), not_in_input_examples=not_listed[:20])
        return out


def current_view(markers: Iterable[Marker]) -> CurrentView:
    """Which rows of ``markers`` (oldest first) are current; see the module docstring for the rule."""
    markers = list(markers)
    version: dict[str, str] = {}
    for m in markers:
        for r in m.rows:
            version[r.source_id] = r.version  # the newest row's version is the current one
    winner: dict[Key, str] = {}  # key -> batch of its newest row
    newest_of_source: dict[str, int] = {}  # source -> position of the newest marker that holds a current row
    rows_at: dict[Key, Row] = {}
    for pos, m in enumerate(markers):
        for r in m.rows:
            if r.version == version[r.source_id]:
                key = (r.source_id, r.segment_index)
                winner[key] = m.batch
                rows_at[key] = r
                newest_of_source[r.source_id] = pos
    positions = {m.batch: pos for pos, m in enumerate(markers)}
    for key in [k for k in winner if k[1] == -1]:  # a whole-source error that a newer row of the source replaced
        if newest_of_source[key[0]] > positions[winner[key]]:
            del winner[key]
    superseded: dict[str, set[Key]] = {}
    for m in markers:
        for r in m.rows:
            key = (r.source_id, r.segment_index)
            if winner.get(key) != m.batch:
                superseded.setdefault(m.batch, set()).add(key)
    sources: dict[str, SourceState] = {}
    for key in winner:
        r = rows_at[key]
        s = sources.get(r.source_id)
        if s is None:
            s = sources[r.source_id] = SourceState(version=r.version)
        s.n_segments = max(s.n_segments, r.n_segments)
        (s.ok_segments if r.ok else s.error_segments).add(r.segment_index)
    return CurrentView(markers, sources, superseded, {s for keys in superseded.values() for s, _ in keys})


def batch_of(path: str) -> str:
    """The batch id of a set's file: ``<set>/part-<batch>.parquet``, or ``_staging/<batch>.<attempt>/<set>.parquet``
    (``_staging/<batch>/<set>.parquet`` in outputs written before attempts had their own folders)."""
    parent, name = path.rsplit("/", 2)[-2:]
    return name.removeprefix("part-").removesuffix(".parquet") if name.startswith("part-") else parent.split(".")[0]


def view(root: str, log: TextIO | None = sys.stderr) -> CurrentView | None:
    """The current view of the output at ``root``, or None when it has no commit log (not an extraction output)."""
    fs, path = open_root(root)
    if fs.get_file_info(join(path, COMMITS)).type != pafs.FileType.Directory:
        return None
    return current_view(read_markers(fs, path, log)[0])


def set_files(root: str, name: str, log: TextIO | None = sys.stderr) -> tuple[pafs.FileSystem, list[str], dict]:
    """(filesystem, paths, superseded) of the set ``name``: the files its markers name.

    A committed file not yet moved into its set (its writer stopped between the marker and the moves) is read from
    staging; one that exists in neither place is reported on ``log``. A folder without a commit log (Parquet written
    by other tools) gives every ``.parquet`` file under it and no superseded rows.
    """
    fs, path = open_root(root)
    current = view(root, log)
    if current is None:
        infos = fs.get_file_info(pafs.FileSelector(join(path, name), allow_not_found=True, recursive=True))
        return fs, sorted(i.path for i in infos if i.path.endswith(".parquet")), {}
    pairs = [(join(path, final), join(path, staged)) for final, staged in current.files(name)]
    present = [p for p in present_files(fs, pairs, log) if p is not None]
    return fs, present, current.superseded


def present_files(fs: pafs.FileSystem, pairs: list[tuple[str, str]], log: TextIO | None) -> list[str | None]:
    """For each committed file's ``(visible, staged)`` paths, the one that exists, or None (reported on ``log``).

    A committed file not yet moved into its set (its writer stopped between the marker and the moves) is read from
    staging. The visible paths are looked up in one call; staging only for those not found.
    """
    infos = fs.get_file_info([final for final, _ in pairs])
    out: list[str | None] = []
    for (final, staged), info in zip(pairs, infos, strict=True):
        if info.type == pafs.FileType.File:
            out.append(final)
        elif fs.get_file_info(staged).type == pafs.FileType.File:
            out.append(staged)
        else:
            out.append(None)
            if log is not None:
                print(f"[output] warning: a committed file is missing; rerun the extraction to redo it: {final}",
                      file=log)  # fmt: skip
    return out


def read_set(
    root: str,
    name: str,
    columns: list[str] | None = None,
    filter: Any = None,
    log: TextIO | None = sys.stderr,
) -> pa.Table | None:
    """The current rows of one set (``audio-feature``, ``sine-audio-feature``, ``errors``), or None if it has none.

    Args:
        root: the output root (local path or pyarrow URI).
        name: the set.
        columns: the columns to read (all when None).
        filter: a ``pyarrow.compute`` expression applied while reading.
        log: where a damaged marker is reported.
    """
    import pyarrow.dataset as pads

    from schemas.features import SCHEMAS

    fs, files, superseded = set_files(root, name, log)
    if not files:
        return None
    # the set's schema, not the first file's: an output extended across schema versions reads as the newest
    dataset = pads.dataset(files, filesystem=fs, format="parquet", schema=SCHEMAS.get(name))
    wanted = columns if columns is not None else dataset.schema.names
    read = list(dict.fromkeys([*wanted, "source_id", "segment_index"]))
    tables = []
    for fragment in dataset.get_fragments():
        table = fragment.to_table(columns=read, filter=filter, schema=dataset.schema)
        drop = superseded.get(batch_of(fragment.path))
        if drop:
            keys = zip(table["source_id"].to_pylist(), table["segment_index"].to_pylist(), strict=True)
            table = table.filter(pa.array([(s, int(i)) not in drop for s, i in keys]))
        tables.append(table.select(wanted))
    return pa.concat_tables(tables)


def superseded_filter(superseded: dict[str, set[Key]]) -> Any:
    """A row predicate ``(path, source_id, segment_index) -> keep`` for readers that see rows with their file path."""

    def keep(path: str, source_id: str, segment_index: int) -> bool:
        drop = superseded.get(batch_of(path))
        return not drop or (source_id, int(segment_index)) not in drop

    return keep
