"""Training examples from the extraction's Parquet sets.

One example is one melodic part (a stem such as ``lead``) of one segment:

- ``target``: the part's DAC codes over a window of ``frames`` frames, ``(n_codebooks, frames)``;
- ``sine`` and ``mono``: the frame-aligned conditioning over the same window, each ``(cond_codebooks, frames)``:
  the codes of the part's sine rendering (its notes) and of the mono reference;
- ``timbre``: a 1-5 s clip of the same part from a different, non-overlapping time of the segment,
  ``(n_codebooks, timbre_frames)``;
- ``source_id``, ``segment_index``, ``part`` and ``target_start`` (the window's first frame in the segment): where
  the example comes from, so that evaluation can find the part's audio again.

Augmentation: with probability ``mono_variant_prob`` the mono reference is one of its audio-augmented variants
(gain, noise, EQ; encoded at extraction, ``hummingml.stages.augment``); then, on tokens, random replacement of
mono-reference tokens (noise), a random shift of the sine stream by up to ``jitter_frames`` (note timing jitter),
random timbre length and position. Parts whose instrument (the manifest's ``instruments`` metadata) is in
``holdout_instruments`` form the unseen-instrument split.

Reading: the extraction commits both feature sets in the same batches, so the rows are joined one commit batch at a
time (:func:`commit_batches` reads the plan from the commit markers, :func:`join_batch` joins a batch's two files,
:class:`JoinedRows` streams them); :func:`shard` cuts a dp rank's contiguous share of the rows. There is no other
join: ``hummingml.train.ray.read_joined`` runs the same one on Ray Data.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hummingml.output import join, open_root, present_files, view


@dataclass(frozen=True)
class DataConfig:
    """Where the shards are and how examples are cut from them."""

    features: str = "demo-out/features"  # extraction output root (holds audio-feature/ and sine-audio-feature/)
    parts: tuple[str, ...] = ("vocals", "lead")  # melodic stems used as target parts
    frames: int = 64  # target window in DAC frames (86.13 frames/s)
    timbre_min_frames: int = 86  # shortest timbre clip in frames (86 = 1 s); a segment must hold it beside the window
    timbre_max_frames: int = 431  # longest timbre clip in frames (431 = 5 s); capped by what the segment leaves
    augment: bool = True  # token-level augmentation (noise, jitter, timbre length/position); off for evaluation
    mono_noise: float = 0.1  # fraction of mono-reference tokens replaced by random tokens
    mono_variant_prob: float = 0.5  # chance to condition on an audio-augmented mono variant (gain/noise/EQ) instead
    jitter_frames: int = 1  # the sine stream shifts by up to this many frames
    holdout_instruments: tuple[str, ...] = ()  # instruments (metadata 'instruments'[part]) kept out of training
    seed: int = 0  # example randomness: crop positions, timbre clips, augmentation, the shuffle
    shuffle: bool = True  # each epoch reads the rank's commit batches, and the rows within each, in a new order drawn
    # from (seed, epoch); the same on the tp ranks of a dp group and after a resume
    prefetch_batches: int = 2  # batches cut and collated ahead by a background thread while a step runs (0: none)


def _rng(cfg: DataConfig, *key: Any) -> np.random.Generator:
    digest = hashlib.sha256(repr((cfg.seed, *key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def manifest_metadata(metadata: str | None) -> dict[str, Any]:
    """A row's ``metadata`` (the manifest's extra columns as JSON) as a dict; {} where it is empty or not an object."""
    try:
        value = json.loads(metadata or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def instrument_of(metadata: str, part: str) -> str | None:
    """The instrument playing ``part`` according to the row's manifest metadata, if it says."""
    instruments = manifest_metadata(metadata).get("instruments")
    return instruments.get(part) if isinstance(instruments, dict) else None


def split_of(metadata: str, part: str, cfg: DataConfig) -> Literal["train", "unseen"]:
    """``unseen`` when the part's instrument is held out, else ``train``."""
    return "unseen" if instrument_of(metadata, part) in cfg.holdout_instruments else "train"


def examples_from_row(
    row: dict[str, Any],
    cfg: DataConfig,
    cond_codebooks: int,
    codebook_size: int,
    epoch: int = 0,
    split: Literal["train", "unseen", "all"] = "train",
) -> Iterator[dict[str, Any]]:
    """The examples of one joined row (audio-feature columns plus sine-audio-feature's ``mono_codes``, ``melody``).

    Parts with no notes, parts of the other split, and segments too short for a target window plus the shortest
    timbre clip yield nothing. The timbre clip's length is drawn uniformly from ``timbre_min_frames`` up to
    ``timbre_max_frames`` or what the segment leaves beside the window, whichever is less (that bound without
    augmentation).
    """
    names = list(row["stem_names"])
    streams = {m["stream"]: m for m in row["melody"]}
    mono = np.asarray(row["mono_codes"], dtype=np.int64)[0]  # (K, F)
    for part in cfg.parts:
        if part not in names or part not in streams or not streams[part]["notes"]:
            continue
        if split != "all" and split_of(row.get("metadata", "{}"), part, cfg) != split:
            continue
        target_all = np.asarray(row["stem_codes"][names.index(part)], dtype=np.int64)[0]  # channel 0: (K, F)
        sine = np.asarray(streams[part]["sine_codes"], dtype=np.int64)[0]
        n = target_all.shape[1]
        if n < cfg.frames + cfg.timbre_min_frames:
            continue
        rng = _rng(cfg, row["source_id"], int(row["segment_index"]), part, epoch)
        longest = min(cfg.timbre_max_frames, n - cfg.frames)  # what the segment leaves beside the window
        p = int(rng.integers(cfg.timbre_min_frames, longest + 1)) if cfg.augment else longest
        # target window and timbre clip never overlap: the clip goes before or after the window
        start = int(rng.integers(0, n - cfg.frames - p + 1))
        if rng.random() < 0.5:
            t_start, y_start = start, start + p
        else:
            y_start, t_start = start, start + cfg.frames
        window = slice(y_start, y_start + cfg.frames)
        sine_w = sine[:cond_codebooks, window]
        variants = row.get("mono_variants") or []
        if cfg.augment and variants and rng.random() < cfg.mono_variant_prob:
            chosen = variants[int(rng.integers(0, len(variants)))]["codes"]
            mono_w = np.asarray(chosen, dtype=np.int64)[0][:cond_codebooks, window].copy()
        else:
            mono_w = mono[:cond_codebooks, window].copy()
        if cfg.augment:
            shift = int(rng.integers(-cfg.jitter_frames, cfg.jitter_frames + 1))
            lo, hi = y_start - shift, y_start - shift + cfg.frames
            if lo >= 0 and hi <= n:
                sine_w = sine[:cond_codebooks, lo:hi]
            noisy = rng.random(mono_w.shape) < cfg.mono_noise
            mono_w[noisy] = rng.integers(0, codebook_size, int(noisy.sum()))
        yield {
            "source_id": row["source_id"],
            "segment_index": int(row["segment_index"]),
            "part": part,
            "timbre": target_all[:, t_start : t_start + p],
            "sine": sine_w,
            "mono": mono_w,
            "target": target_all[:, window],
            "target_start": y_start,  # first frame of the target window in the segment
        }


AUDIO_COLUMNS = ("source_id", "segment_index", "metadata", "stem_names", "stem_codes")  # what training reads
SINE_COLUMNS = ("source_id", "segment_index", "mono_codes", "melody", "mono_variants")  # mono_variants: schema >= 1.1
SETS = ("audio-feature", "sine-audio-feature")

Key = tuple[str, int]  # (source_id, segment_index)


@dataclass(frozen=True)
class CommitBatch:
    """One commit batch's current feature rows: where its two files are and which of their rows to read.

    The extraction commits both feature sets in the same batches, one file per set per batch, holding the same keys
    (``hummingml.output``), so the join of two sets is the join of each batch's two files.
    """

    batch: str
    audio: str  # its audio-feature file, a path in the output root's filesystem
    sine: str  # its sine-audio-feature file
    keys: tuple[Key, ...]  # the batch's current feature rows (superseded ones left out), sorted: the join's order


def commit_batches(features: str, log: TextIO | None = sys.stderr) -> list[CommitBatch]:
    """The commit batches of an extraction output that hold current feature rows, oldest commit first.

    Read from the commit markers alone (no Parquet file is opened): a batch's keys are its rows with ``ok`` that no
    newer commit superseded. Its files are found as every reader finds them (``hummingml.output.present_files``,
    all looked up at once); a batch with a file missing is reported on ``log`` and left out.

    Raises:
        FileNotFoundError: ``features`` has no commit log (not an extraction output).
    """
    current = view(features, log)
    if current is None:
        raise FileNotFoundError(f"{features} has no commit log (_commits/): not an extraction output")
    fs, root = open_root(features)
    listed = []  # (batch, keys, the (visible, staged) paths of each set's file)
    for marker in current.markers:
        keys = sorted(current.current_keys(marker))
        if not keys:
            continue
        files = {
            final.split("/", 1)[0]: (join(root, final), join(root, staged)) for staged, final in marker.files.items()
        }
        missing = [name for name in SETS if name not in files]
        if missing:
            if log is not None:
                print(f"[train] warning: batch {marker.batch} names no {missing[0]} file; its rows are left out",
                      file=log)  # fmt: skip
            continue
        listed.append((marker.batch, keys, [files[name] for name in SETS]))
    found = iter(present_files(fs, [pair for _, _, pairs in listed for pair in pairs], log))
    out = []
    for batch, keys, _ in listed:
        audio, sine = next(found), next(found)
        if audio is not None and sine is not None:
            out.append(CommitBatch(batch, audio, sine, tuple(keys)))
    return out


def shard(batches: list[CommitBatch], index: int, count: int) -> list[CommitBatch]:
    """Shard ``index`` of ``count``: a contiguous run of the rows of ``batches`` (in order), ``1/count`` of them.

    The cut falls between rows, so shard sizes differ by at most one row whatever the batch sizes, and a batch on a
    boundary is read by both shards (each keeps its own keys). The same batches always give the same shards.
    """
    total = sum(len(b.keys) for b in batches)
    lo, hi = total * index // count, total * (index + 1) // count
    out, seen = [], 0
    for b in batches:
        first, last = max(lo - seen, 0), min(hi - seen, len(b.keys))
        if first < last:
            out.append(b if (first, last) == (0, len(b.keys)) else replace(b, keys=b.keys[first:last]))
        seen += len(b.keys)
    return out


def _is_int_lists(t: pa.DataType) -> bool:
    """Lists of lists ... of integers (DAC codes)."""
    while pa.types.is_list(t) or pa.types.is_large_list(t):
        t = t.value_type
    return pa.types.is_integer(t)


def _ndarray(value: pa.Array) -> Any:
    """The single value of a one-element array of nested integer lists as a numpy array, (d0, d1, ...).

    The Arrow buffers are reshaped, not walked in Python; a ragged value (one stem stereo, another mono) comes back
    as nested Python lists.
    """
    dims: list[int] = []
    while pa.types.is_list(value.type) or pa.types.is_large_list(value.type):
        lengths = pc.list_value_length(value)
        low, high = pc.min_max(lengths).values()
        if low.as_py() != high.as_py() or lengths.null_count:
            return value.to_pylist()[0]
        dims.append(high.as_py() if dims else len(value.flatten()))
        value = value.flatten()
    return value.to_numpy(zero_copy_only=False).reshape(dims)


def _python(array: pa.Array) -> list[Any]:
    """One Python value per element of ``array``, with integer lists (codes) as numpy arrays (:func:`_ndarray`)."""
    t = array.type
    if _is_int_lists(t) and not pa.types.is_integer(t):
        return [_ndarray(array[i : i + 1]) for i in range(len(array))]
    if pa.types.is_struct(t) and not array.null_count:
        fields = {f.name: _python(column) for f, column in zip(t, array.flatten(), strict=True)}
        return [dict(zip(fields, values, strict=True)) for values in zip(*fields.values(), strict=True)]
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_struct(t.value_type) and not array.null_count:
        flat = _python(array.flatten())
        ends = np.cumsum(pc.list_value_length(array).to_numpy(zero_copy_only=False))
        return [flat[a:b] for a, b in zip(np.concatenate([[0], ends[:-1]]), ends, strict=True)]
    return array.to_pylist()


def rows_of(table: pa.Table) -> list[dict[str, Any]]:
    """A table's rows as dicts, codes as numpy arrays (what :func:`examples_from_row` takes)."""
    columns = {name: _python(table.column(name).combine_chunks()) for name in table.column_names}
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def _read(fs: pafs.FileSystem, path: str, columns: tuple[str, ...]) -> tuple[pa.Table, dict[Key, int]]:
    """One file's ``columns`` (those it has), and the row number of each key."""
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        table = parquet.read(columns=[c for c in columns if c in parquet.schema_arrow.names])
    keys = zip(table["source_id"].to_pylist(), table["segment_index"].to_pylist(), strict=True)
    return table, {(s, int(i)): n for n, (s, i) in enumerate(keys)}


def join_batch(fs: pafs.FileSystem, batch: CommitBatch) -> pa.Table:
    """The batch's rows of both sets joined on the key, in ``batch.keys`` order: the audio-feature columns
    (:data:`AUDIO_COLUMNS`) then the sine-audio-feature ones (:data:`SINE_COLUMNS`; ``mono_variants`` where the file
    has it). Only the batch's two files are read; a key missing from either is left out (an inner join)."""
    audio, audio_at = _read(fs, batch.audio, AUDIO_COLUMNS)
    sine, sine_at = _read(fs, batch.sine, SINE_COLUMNS)
    keys = [k for k in batch.keys if k in audio_at and k in sine_at]
    joined = audio.take(pa.array([audio_at[k] for k in keys], pa.int64()))
    sine = sine.take(pa.array([sine_at[k] for k in keys], pa.int64()))
    for name in sine.column_names:
        if name not in ("source_id", "segment_index"):
            joined = joined.append_column(sine.field(name), sine.column(name))
    return joined


class JoinedRows:
    """The two feature sets' current rows joined on (source_id, segment_index), one commit batch at a time.

    Rows come in commit order (oldest batch first), and in key order within a batch: the same rows in the same order
    on every call and in every process given the same ``batches``. Training asks for a shuffled order per epoch
    (``order``: a seed), which is as reproducible. Holds one batch's rows at a time. Training runs
    read their dp rank's :meth:`shard`; evaluation and tests read all rows (``hummingml.train.ray.read_joined`` is the
    same join on Ray Data).
    """

    def __init__(self, features: str, batches: list[CommitBatch] | None = None) -> None:
        """``batches`` default to :func:`commit_batches` of ``features`` (read from its commit markers now)."""
        self.features = features
        self.batches = commit_batches(features) if batches is None else batches

    def shard(self, index: int, count: int) -> JoinedRows:
        """The rows of dp rank ``index`` of ``count`` (:func:`shard`)."""
        return JoinedRows(self.features, shard(self.batches, index, count))

    def iter_tables(self, order: int | None = None) -> Iterator[pa.Table]:
        """Each batch's joined rows as one table (:func:`join_batch`), in commit order; with ``order``, the batches
        and the rows of each in an order drawn from that seed (one batch in memory either way)."""
        fs, _ = open_root(self.features)
        rng = None if order is None else np.random.default_rng(order)
        indices = range(len(self.batches)) if rng is None else rng.permutation(len(self.batches))
        for i in indices:
            table = join_batch(fs, self.batches[int(i)])
            yield table if rng is None else table.take(pa.array(rng.permutation(table.num_rows)))

    def iter_rows(self, order: int | None = None) -> Iterator[dict[str, Any]]:
        """Every joined row (codes as numpy arrays, :func:`rows_of`): in commit order and key order within a batch,
        or, with ``order``, shuffled by that seed (:meth:`iter_tables`)."""
        for table in self.iter_tables(order):
            yield from rows_of(table)
