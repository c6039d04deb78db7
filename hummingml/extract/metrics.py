"""The extraction's metrics: their names, kinds, tags and buckets, and the reporter the steps and the driver call.

The steps report through a :class:`StepMetrics`, which reports nowhere (a run in one process); the Ray adapter's
``RayMetrics`` reports the same calls as Ray metrics, which each node's metrics agent exports to Prometheus as
``ray_<name>`` (a counter as ``ray_<name>_total``, a histogram as ``ray_<name>_bucket``, ``_sum`` and ``_count``).
docs/monitoring.md lists them with the PromQL that answers the common questions.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from hummingml.extract.record import Summary

STAGES = ("decode", "separate", "pitch", "codec", "commit")  # the values of the ``stage`` tag of the stage metrics
# s: upper bounds of the latency buckets, from a commit of a few rows (10 ms) to the codec of a 30 s segment with
# stereo stems and variants on a busy CPU (several minutes: 15 DAC streams at a real-time factor near 1)
LATENCY_BUCKETS_S = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 2400.0,
)


@dataclass(frozen=True)
class Metric:
    """One metric: its kind, what it counts, its tag keys and, for a histogram, its bucket upper bounds."""

    kind: Literal["counter", "gauge", "histogram"]
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()


METRICS: dict[str, Metric] = {
    "hummingml_batch_seconds": Metric(
        "histogram", "seconds a stage spent on one batch (decode: on one output block)", ("stage",), LATENCY_BUCKETS_S
    ),
    "hummingml_segment_seconds": Metric(
        "histogram",
        "seconds per segment: a batch's seconds divided by the segments it worked on, observed once per segment",
        ("stage",),
        LATENCY_BUCKETS_S,
    ),
    "hummingml_in_flight_rows": Metric(
        "gauge", "rows inside a stage now (decode: the sources of its input batches; others: segment rows)", ("stage",)
    ),
    "hummingml_in_flight_batches": Metric("gauge", "batches inside a stage now", ("stage",)),
    "hummingml_inputs_planned": Metric("gauge", "inputs this run processes (set by the driver)"),
    "hummingml_inputs_done": Metric("gauge", "inputs of this run done: committed, failed or deferred (the driver)"),
    "hummingml_read_bytes": Metric("counter", "bytes of the input audio files opened for decoding (mixes and stems)"),
    "hummingml_written_bytes": Metric("counter", "bytes of the Parquet files committed"),
    "hummingml_segments": Metric(
        "counter", "segments committed by status: ok, error, deferred (unreadable now)", ("status",)
    ),
    "hummingml_audio_seconds": Metric("counter", "seconds of audio committed as features"),
    "hummingml_errors": Metric("counter", "error rows committed, by the stage that failed", ("stage",)),
}


@dataclass
class StageBatch:
    """A batch inside a stage (:meth:`StepMetrics.timed`): the step sets ``segments`` to the segments it worked on."""

    stage: str
    rows: int
    segments: int


class StepMetrics:
    """The reporter the steps call: stage latencies and in-flight counts, bytes, commit summaries, the run's progress.

    This base class keeps the in-flight counts of its process and reports nowhere; a subclass reports by
    overriding :meth:`inc`, :meth:`set` and :meth:`observe` (the Ray adapter's ``RayMetrics``).
    """

    def __init__(self) -> None:
        self.in_flight_rows = dict.fromkeys(STAGES, 0)
        self.in_flight_batches = dict.fromkeys(STAGES, 0)

    def inc(self, metric: str, value: float, tags: dict[str, str] | None = None) -> None:
        """Add ``value`` to the counter ``metric`` (a key of :data:`METRICS`) under ``tags``."""

    def set(self, metric: str, value: float, tags: dict[str, str] | None = None) -> None:
        """Set the gauge ``metric`` to ``value`` under ``tags``."""

    def observe(self, metric: str, value: float, tags: dict[str, str] | None = None) -> None:
        """Add one observation ``value`` to the histogram ``metric`` under ``tags``."""

    def enter(self, stage: str, rows: int, batches: int = 1) -> None:
        """``rows`` in ``batches`` entered ``stage`` in this process (negative: left it); sets the in-flight gauges."""
        self.in_flight_rows[stage] += rows
        self.in_flight_batches[stage] += batches
        self.set("hummingml_in_flight_rows", self.in_flight_rows[stage], {"stage": stage})
        self.set("hummingml_in_flight_batches", self.in_flight_batches[stage], {"stage": stage})

    def batch_done(self, stage: str, seconds: float, segments: int) -> None:
        """One batch of ``stage`` took ``seconds`` for ``segments`` segments: one batch observation and, when it
        worked on segments, ``segments`` observations of ``seconds / segments``."""
        tags = {"stage": stage}
        self.observe("hummingml_batch_seconds", seconds, tags)
        for _ in range(segments):
            self.observe("hummingml_segment_seconds", seconds / segments, tags)

    @contextlib.contextmanager
    def timed(self, stage: str, rows: int) -> Iterator[StageBatch]:
        """A batch of ``rows`` rows inside ``stage``: in flight while the block runs, timed when it ends (also by an
        exception). The segments it worked on default to ``rows``; the block may set ``segments`` of the yielded
        :class:`StageBatch`."""
        batch = StageBatch(stage, rows, rows)
        self.enter(stage, rows)
        start = time.perf_counter()
        try:
            yield batch
        finally:
            self.enter(stage, -rows, -1)
            self.batch_done(stage, time.perf_counter() - start, batch.segments)

    def record(self, summary: Summary) -> None:
        """Count a commit's summary rows: ok segments and their audio, deferred inputs, error rows by stage."""
        ok = int(summary["ok"].sum())
        if ok:
            self.inc("hummingml_segments", ok, {"status": "ok"})
            self.inc("hummingml_audio_seconds", float(summary["audio_s"].sum()))
        for stage, deferred in zip(summary["stage"], summary["deferred"], strict=True):
            if deferred:
                self.inc("hummingml_segments", 1, {"status": "deferred"})
            elif stage:
                self.inc("hummingml_segments", 1, {"status": "error"})
                self.inc("hummingml_errors", 1, {"stage": str(stage)})

    def progress(self, planned: int, done: int) -> None:
        """The driver's count of the run's inputs: ``planned`` to process, ``done`` of them."""
        self.set("hummingml_inputs_planned", planned)
        self.set("hummingml_inputs_done", done)
