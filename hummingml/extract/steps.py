"""The extraction steps as batch callables, independent of any executor.

Each step takes a batch of segment records (an Arrow table of :data:`hummingml.extract.record.BATCH_SCHEMA`), works
on its rows as :class:`~hummingml.extract.record.Segment` instances and returns a batch of the same schema: decode (one
row per source in, one per segment out), separate, pitch, codec; commit writes its rows exactly once through
:mod:`hummingml.extract.store` and returns a summary of them. ``hummingml.extract.ray`` runs them on Ray Data;
``hummingml.extract.local`` runs them in one process (tests, baselines).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import numpy as np

from hummingml.alloc import cap_arenas, release_free_memory
from hummingml.audio import (
    F32,
    FEATURE_SAMPLE_RATE,
    STEMS,
    AudioReader,
    DecodeError,
    n_frames,
    n_segments,
    resampled_pieces,
    segment_length,
    to_mono,
)
from hummingml.extract.config import ExtractConfig
from hummingml.extract.metrics import StepMetrics
from hummingml.extract.record import (
    Batch,
    CodedVariant,
    MelodyStream,
    Segment,
    Summary,
    fail_row,
    feature_tables,
    from_table,
    required,
    to_table,
)
from hummingml.extract.sources import OpenSource, SourceUnavailable, open_source, printable
from hummingml.extract.store import OutputStore
from hummingml.quiet import quiet_libraries
from hummingml.stages import augment
from hummingml.stages.codec import Codec
from hummingml.stages.null import NullCodec, NullDetector, NullSeparator
from hummingml.stages.pitch import PitchDetector, notes_to_midi
from hummingml.stages.separate import Separator
from hummingml.stages.synth import render_sine

GIVEN = "given"  # the stem origin of a stem the manifest gives (Segment.stem_origins, audio-feature.stem_origins)
STEM_DURATION_TOLERANCE_S = 0.05  # s: a given stem may last this much more or less than the mix (encoder padding)


class StemMismatchError(ValueError):
    """A stem the manifest gives does not fit its mix (another duration); the input becomes an error row."""


class _GivenStem:
    """A stem the manifest gives, opened and checked, read in the mix's segments (float32 ``(2, samples)``)."""

    def __init__(self, stem: str, uri: str, source: OpenSource, cfg: ExtractConfig) -> None:
        self.stem, self.uri = stem, uri
        try:
            self.reader = AudioReader(source.file, source.size, to_stereo=True)
        except DecodeError as exc:
            raise DecodeError(exc.kind, f"stem {stem!r} ({printable(uri)}): {exc.reason}") from exc
        self.duration_s = self.reader.frames / self.reader.sample_rate
        self.pieces = resampled_pieces(self.reader, FEATURE_SAMPLE_RATE, segment_length(cfg.segment_s))

    def next_piece(self, n: int) -> F32:
        """The stem's next segment, trimmed or zero-padded to the mix's ``n`` samples, stereo."""
        piece = next(self.pieces, np.zeros((self.reader.channels, 0), np.float32))
        piece = piece[:, :n] if piece.shape[1] >= n else np.pad(piece, ((0, 0), (0, n - piece.shape[1])))
        return np.repeat(piece, 2, axis=0) if piece.shape[0] == 1 else piece


class DecodeStep:
    """Read, hash, decode, resample to 22.05 kHz and cut into segments; one row per source in, one per segment out.

    The source is streamed (:func:`hummingml.extract.sources.open_source`, :class:`hummingml.audio.AudioReader`): memory
    holds one segment and a few decoded blocks whatever the file's length. :meth:`batches` yields one batch per
    segment (the Ray job's decode tasks do this); calling the step returns them all in one batch.

    The stems the manifest gives (``Segment.stem_uris``) are read alongside, in the same segments, into
    ``Segment.stems`` (stereo; a mono stem is duplicated). A stem that cannot be read makes the input an error row of
    stage read or decode naming the stem; one whose duration differs from the mix's by more than
    :data:`STEM_DURATION_TOLERANCE_S` an error row of stage decode (:class:`StemMismatchError`); within it, a
    stem's segments are trimmed or zero-padded to the mix's.

    ``metrics`` makes the step's reporter (:class:`~hummingml.extract.metrics.StepMetrics`): :meth:`batches` reports
    each output batch's time as stage decode, and each opened file's bytes.
    """

    def __init__(self, cfg: ExtractConfig, metrics: Callable[[], StepMetrics] = StepMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics()

    def __call__(self, batch: Batch) -> Batch:
        return to_table(out for row in from_table(batch) for out in self._segments(row))

    def batches(self, batch: Batch, block_bytes: int = 0) -> Iterator[Batch]:
        """The output rows in batches, as they are decoded: each batch holds rows until their arrays reach
        ``block_bytes`` (0: one row per batch), so memory holds about one batch whatever the sources' lengths.

        The input's sources are in flight at stage decode until the last batch is taken; each batch's time (from
        the previous one taken to this one made) is reported for the segments it holds.
        """
        rows: list[Segment] = []
        size = 0
        sources = from_table(batch)
        self.metrics.enter("decode", len(sources))
        try:
            start = time.perf_counter()
            for row in sources:
                for out in self._segments(row):
                    rows.append(out)
                    size += out.nbytes
                    if size >= block_bytes:
                        yield self._block_done(rows, start)
                        start = time.perf_counter()
                        rows, size = [], 0
            if rows:
                yield self._block_done(rows, start)
        finally:
            self.metrics.enter("decode", -len(sources), -1)

    def _block_done(self, rows: list[Segment], start: float) -> Batch:
        table = to_table(rows)
        segments = sum(1 for r in rows if not (r.error or r.deferred))
        self.metrics.batch_done("decode", time.perf_counter() - start, segments)
        return table

    def _segments(self, row: Segment) -> Iterator[Segment]:
        stage = "read"
        with contextlib.ExitStack() as opened:
            try:
                source = opened.enter_context(
                    open_source(row.open_uri or row.source_uri, self.cfg.read_retries, self.cfg.read_backoff_s)
                )
                row.content_sha256 = source.sha256
                self.metrics.inc("hummingml_read_bytes", source.size)
                stage = "decode"
                # more than two channels are mixed down to stereo by the file's layout (hummingml.audio.downmix_matrix)
                reader = AudioReader(source.file, source.size, to_stereo=True)
                given = []
                for stem, uri in (row.stem_uris or {}).items():
                    stage = "read"
                    try:
                        stem_source = opened.enter_context(
                            open_source(uri, self.cfg.read_retries, self.cfg.read_backoff_s)
                        )
                    except DecodeError as exc:
                        raise DecodeError(exc.kind, f"stem {stem!r}: {exc.reason}") from exc
                    self.metrics.inc("hummingml_read_bytes", stem_source.size)
                    stage = "decode"
                    given.append(_GivenStem(stem, uri, stem_source, self.cfg))
                self._check_durations(reader, given)
            except SourceUnavailable as exc:
                row.deferred = printable(str(exc))  # not committed: the source stays pending for a rerun
                yield row
                return
            except Exception as exc:
                fail_row(row, stage, exc)
                yield row
                return
            yield from self._cut(row, reader, given)

    @staticmethod
    def _check_durations(reader: AudioReader, given: list[_GivenStem]) -> None:
        mix_s = reader.frames / reader.sample_rate
        for stem in given:
            if abs(stem.duration_s - mix_s) > STEM_DURATION_TOLERANCE_S:
                raise StemMismatchError(
                    f"stem {stem.stem!r} ({printable(stem.uri)}) lasts {stem.duration_s:.3f} s but the mix "
                    f"{mix_s:.3f} s; a given stem must match the mix's duration within "
                    f"{STEM_DURATION_TOLERANCE_S:g} s"
                )

    def _cut(self, row: Segment, reader: AudioReader, given: list[_GivenStem]) -> Iterator[Segment]:
        seg_len = segment_length(self.cfg.segment_s)
        segments = n_segments(reader.frames, reader.sample_rate, self.cfg.segment_s)
        common = {
            **{k: getattr(row, k) for k in ("source_id", "source_uri", "source_version", "metadata", "content_sha256")},
            "source_sample_rate": reader.sample_rate,
            "source_channels": reader.source_channels,
            "downmix": reader.downmix,  # "" or the rule that made the stereo of a multichannel source
            "source_duration_s": reader.frames / reader.sample_rate,
            "n_segments": segments,
            "n_skipped": len(row.skip_segments or []),  # segments an earlier run committed: progress counts them
        }
        skip = set(row.skip_segments or [])
        done = 0  # segments handled so far
        try:
            for i, piece in enumerate(resampled_pieces(reader, FEATURE_SAMPLE_RATE, seg_len)):
                done = i
                stems = {g.stem: g.next_piece(piece.shape[1]) for g in given}  # read in step, skipped or not
                if i in skip:
                    continue
                yield Segment(
                    **common,
                    segment_index=i,
                    segment_start_s=i * seg_len / FEATURE_SAMPLE_RATE,
                    segment_duration_s=piece.shape[1] / FEATURE_SAMPLE_RATE,
                    segment_samples=piece.shape[1],
                    audio=piece,
                    mono=to_mono(piece),
                    stems=stems or None,
                )
                done = i + 1
        except Exception as exc:  # the stream failed on the second reading (changed, or an I/O error)
            for j in range(done, segments):
                if j not in skip:
                    failed = Segment(**common, segment_index=j)
                    fail_row(failed, "decode", exc)
                    yield failed


class _ModelStep:
    """Shared batch loop of the model-backed steps: run ``process`` on every good row, capture failures.

    A step built with ``threads > 0`` sets torch's intra-op threads of its process to that many (Ray's default for an
    actor that reserves under one CPU is one); 0 leaves torch's default. Building one also installs the filters of
    the libraries' known warnings in its process (:func:`hummingml.quiet.quiet_libraries`) and caps its malloc
    arenas; after each batch the free pages go back to the system (:mod:`hummingml.alloc`), so an actor's memory
    does not grow with the segments it has seen. ``metrics`` makes its
    reporter (:class:`~hummingml.extract.metrics.StepMetrics`), which times each batch for the good rows it
    processes.
    """

    stage = ""

    def _setup(self, threads: int, metrics: Callable[[], StepMetrics]) -> None:
        quiet_libraries()
        cap_arenas()
        self.metrics = metrics()
        if threads > 0:
            import torch

            torch.set_num_threads(threads)

    def __call__(self, batch: Batch) -> Batch:
        out = to_table(self.run(from_table(batch)))
        release_free_memory()
        return out

    def run(self, rows: list[Segment]) -> list[Segment]:
        """``process`` every row that has neither failed nor been deferred; a row that raises becomes an error row."""
        with self.metrics.timed(self.stage, len(rows)) as timed:
            todo = [row for row in rows if not (row.error or row.deferred)]
            timed.segments = len(todo)
            for row in todo:
                try:
                    self.process(row)
                except Exception as exc:
                    fail_row(row, self.stage, exc)
        return rows

    def process(self, row: Segment) -> None:
        """Set this step's fields of ``row`` in place."""
        raise NotImplementedError


class SeparateStep(_ModelStep):
    """Six stems per segment; sets ``stems`` (name -> float32 (2, samples) at 22.05 kHz) and ``stem_origins``.

    The stems the decode step read from the manifest's files are kept as they are (origin :data:`GIVEN`); Demucs
    separates the mix only when some stem is missing, and only its outputs for the missing stems are used (origin
    :attr:`model_id`). When all six are given, no separation runs.
    """

    stage = "separate"

    def __init__(
        self, cfg: ExtractConfig, model: Any = None, threads: int = 0, metrics: Callable[[], StepMetrics] = StepMetrics
    ) -> None:
        self._setup(threads, metrics)
        if cfg.stages == "null":
            self.separator: Separator | NullSeparator = NullSeparator()
            self.model_id = "null-separate"  # as null_identities names it
        else:
            self.separator = Separator(cfg.separate_config(), model=model)
            identity = self.separator.identity
            self.model_id = identity.name if identity is not None else "demucs"  # an injected model has no identity

    def process(self, row: Segment) -> None:
        given = row.stems or {}
        separated = {}
        if len(given) < len(STEMS):
            separated = self.separator.separate(required(row, row.audio, "audio"), FEATURE_SAMPLE_RATE).as_dict()
        row.stems = {s: given[s] if s in given else separated[s] for s in STEMS}
        row.stem_origins = [GIVEN if s in given else self.model_id for s in STEMS]


class PitchStep(_ModelStep):
    """Basic Pitch notes and their sine rendering for the mono reference and each melodic stem."""

    stage = "pitch"

    def __init__(
        self, cfg: ExtractConfig, model: Any = None, threads: int = 0, metrics: Callable[[], StepMetrics] = StepMetrics
    ) -> None:
        self._setup(threads, metrics)
        self.cfg = cfg
        self.detector = NullDetector() if cfg.stages == "null" else PitchDetector(cfg.pitch, model=model)

    def process(self, row: Segment) -> None:
        stems = required(row, row.stems, "stems")
        streams = {"mono": required(row, row.mono, "mono")}
        streams.update({s: to_mono(stems[s]) for s in self.cfg.melodic_stems})
        row.melody = []
        for name, audio in streams.items():
            notes = list(self.detector.detect(audio, FEATURE_SAMPLE_RATE))
            sine = render_sine(notes, audio.shape[1], FEATURE_SAMPLE_RATE)
            row.melody.append(MelodyStream(stream=name, notes=notes, midi=notes_to_midi(notes), sine=sine))


class CodecStep(_ModelStep):
    """DAC codes for the channels, the stems, the mono reference and every sine rendering; drops the audio."""

    stage = "codec"

    def __init__(
        self, cfg: ExtractConfig, model: Any = None, threads: int = 0, metrics: Callable[[], StepMetrics] = StepMetrics
    ) -> None:
        self._setup(threads, metrics)
        self.cfg = cfg
        self.codec = (
            NullCodec(cfg.codec.n_codebooks) if cfg.stages == "null" else Codec(cfg.codec_config(), model=model)
        )

    def process(self, row: Segment) -> None:
        audio, stems = required(row, row.audio, "audio"), required(row, row.stems, "stems")
        mono = required(row, row.mono, "mono")
        melody = required(row, row.melody, "melody")
        variants = [augment.draw(augment.AugmentConfig(), row.source_id, int(row.segment_index), copy)
                    for copy in range(self.cfg.mono_variants)]
        signals = [  # every stream of the segment, encoded in one call: windows are batched where that pays (GPU)
            audio,
            *(to_mono(stems[s]) if self.cfg.stem_channels == "mono" else stems[s] for s in STEMS),
            mono,
            *(augment.apply(mono, FEATURE_SAMPLE_RATE, v) for v in variants),
            *(required(row, stream.sine, f"sine of {stream.stream}") for stream in melody),
        ]
        row.audio = row.stems = row.mono = None
        codes = iter(tokens.codes for tokens in self.codec.encode_batch(signals, FEATURE_SAMPLE_RATE))
        row.channel_codes = next(codes)
        row.stem_names = list(STEMS)
        row.stem_codes = [next(codes) for _ in STEMS]
        row.mono_codes = next(codes)
        row.mono_variants = [CodedVariant(**asdict(v), codes=next(codes)) for v in variants]
        for stream in melody:
            stream.sine_codes = next(codes)
            stream.sine = None
        row.n_frames = int(row.channel_codes.shape[-1])
        expected = n_frames(required(row, row.segment_samples, "segment_samples"))
        if row.n_frames != expected:
            raise RuntimeError(f"codec returned {row.n_frames} frames, expected {expected}")


class PipelineStep:
    """Separation, pitch and codec in one process: each batch (one segment in the Ray job) goes through all three.

    One of these per core is a process pool's shape (each core runs every stage, no segment crosses processes
    between the model steps) with Ray's restarts and accounting. Each stage is timed and reported as its own.
    """

    def __init__(
        self, cfg: ExtractConfig, threads: int = 0, metrics: Callable[[], StepMetrics] = StepMetrics
    ) -> None:
        reporter = metrics()  # one reporter for the process, shared by the three steps
        self.steps: list[_ModelStep] = [
            step(cfg, threads=threads, metrics=lambda: reporter) for step in (SeparateStep, PitchStep, CodecStep)
        ]

    def __call__(self, batch: Batch) -> Batch:
        rows = from_table(batch)
        for step in self.steps:
            rows = step.run(rows)
        out = to_table(rows)
        release_free_memory()
        return out


class CommitStep:
    """Write a batch of finished rows exactly once (``hummingml.extract.store``); returns a summary row per key.

    A row whose key, source version and outcome the output already holds is dropped, not written again: Ray Data
    runs a commit again when the process that ran it dies (its result is lost with the node), and the rows of that
    commit may already be in the output. The step finishes committed batches and reads the keys this run committed
    (the lease's; every key in the output without a lease) when it starts (also after a restart), and adds each
    batch's, so its memory grows with the run, not with the output. With a ``lease`` token, a batch is committed
    only while the output's lease names it. ``cfg.fail_after_commits`` ends the writer's process right after that
    many commit markers, once per output (a fault-injection hook for tests). ``metrics`` makes the step's reporter
    (:class:`~hummingml.extract.metrics.StepMetrics`): each batch's time as stage commit, the bytes of the Parquet
    files it committed, and its summary (:meth:`~hummingml.extract.metrics.StepMetrics.record`).
    """

    def __init__(
        self,
        cfg: ExtractConfig,
        run_metadata: dict[str, Any],
        frame_rate: float,
        metrics: Callable[[], StepMetrics] = StepMetrics,
        lease: str = "",
    ) -> None:
        self.store = OutputStore(cfg.output)
        self.metadata = run_metadata
        self.frame_rate = frame_rate
        self.lease = lease
        self.fail_after = cfg.fail_after_commits
        self.commits = 0
        self.metrics = metrics()  # made here: an executor's metric objects live in the process that commits
        # a writer that died between a marker and its moves left them to do; the markers read once serve both. A
        # retried batch can only repeat rows of this run (the lease's): the run's plan skipped every earlier one
        markers = self.store.finish_committed()
        self.committed = self.store.committed_keys([m for m in markers if not lease or m.lease == lease])

    def _fault(self) -> Callable[[], None] | None:
        """The injected fault for this commit, if it is the one (the first time the output reaches it)."""
        flag = f"{self.store.root}/_fault-after-commit-{self.fail_after}"
        if not self.fail_after or self.commits != self.fail_after or self.store.read_bytes(flag) is not None:
            return None

        def crash() -> None:
            self.store.write_atomic(flag, b"")  # the fault fired: a restarted writer does not fire it again
            os._exit(17)

        return crash

    def __call__(self, batch: Batch) -> Summary:
        with self.metrics.timed("commit", batch.num_rows) as timed:
            summary, timed.segments = self._commit(batch)
        self.metrics.record(summary)
        return summary

    def _commit(self, batch: Batch) -> tuple[Summary, int]:
        """The batch's summary and the rows written."""
        def key(r: Segment) -> tuple[str, str, int, bool]:
            return r.source_id, r.source_version, int(r.segment_index), r.error is None

        def n_segments(r: Segment) -> int:
            return -1 if r.n_segments is None else int(r.n_segments)

        rows = [r for r in from_table(batch) if r.deferred or key(r) not in self.committed]
        done = [r for r in rows if not r.deferred]
        keys = [(r.source_id, int(r.segment_index), n_segments(r), r.error is None, r.source_version) for r in done]
        if done:
            self.commits += 1
            written = self.store.written_bytes
            self.store.commit(feature_tables(done, self.frame_rate), keys, self.metadata, self.lease, self._fault())
            self.metrics.inc("hummingml_written_bytes", self.store.written_bytes - written)
            self.committed.update(key(r) for r in done)
        failed = [bool(r.error or r.deferred) for r in rows]
        summary = {
            "source_id": np.array([r.source_id for r in rows], dtype=object),
            "segment_index": np.array([r.segment_index for r in rows], dtype=np.int64),
            "n_segments": np.array([n_segments(r) for r in rows], dtype=np.int64),
            "n_skipped": np.array([r.n_skipped or 0 for r in rows], dtype=np.int64),
            "ok": ~np.array(failed, dtype=bool),
            "deferred": np.array([r.deferred or "" for r in rows], dtype=object),
            "stage": np.array([r.error.stage if r.error else "" for r in rows], dtype=object),
            "audio_s": np.array([0.0 if f else r.segment_duration_s for r, f in zip(rows, failed, strict=True)]),
        }
        return summary, len(done)
