"""The extraction job: list inputs, skip what is committed, run the pipeline on Ray Data, account for every input."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import asdict, replace
from typing import Any, TextIO

from hummingml.cluster import connect
from hummingml.config import ConfigError
from hummingml.extract.config import ExtractConfig, run_metadata
from hummingml.extract.ray import build_dataset, read_sql
from hummingml.extract.sources import Source, list_sources
from hummingml.extract.store import Lease, LeaseLost, OutputStore
from hummingml.output import SourceState
from hummingml.stages.codec import frame_rate
from hummingml.weights.load import load_dac, prepare
from schemas.features import SCHEMAS

PROGRESS_EVERY_S = 10.0  # seconds between progress lines in the driver log


def summarize(
    cfg: ExtractConfig,
    store: OutputStore,
    source_ids: list[str],
    wall_s: float,
    run_audio_s: float,
    metadata: dict[str, Any],
    listed: set[str],
    changed: list[str],
) -> dict[str, Any]:
    """Accounting over this run's inputs and over the whole output, rebuilt from the commit log.

    The top-level counts are over this run's inputs (after ``--limit``); ``output`` describes every source the
    output holds: complete, failed, incomplete, superseded rows, and sources that ``listed`` (the whole listing of
    this run's input) no longer names.
    """
    current = store.current()
    progress = current.sources
    ok = failed = missing = 0
    segments = error_rows = 0
    for sid in source_ids:
        p = progress.get(sid)
        if p is None or not p.complete:
            missing += 1
            continue
        segments += len(p.ok_segments)
        error_rows += len(p.error_segments)
        if p.failed:
            failed += 1
        else:
            ok += 1
    return {
        "inputs": len(source_ids),
        "ok": ok,
        "failed": failed,
        "unaccounted": missing,
        "accounted": ok + failed == len(source_ids),
        "feature_rows": segments,
        "error_rows": error_rows,
        "changed_inputs": len(changed),  # inputs whose size or modification time changed: processed again
        "changed_examples": changed[:20],
        "output": current.describe(listed),
        "audio_hours_this_run": run_audio_s / 3600.0,
        "wall_s": wall_s,
        "audio_s_per_wall_s": run_audio_s / wall_s if wall_s > 0 else 0.0,
        "models": metadata["models"],
        "random_weights": metadata["random_weights"],
        "versions": metadata["versions"],
        "config": metadata["config"],
        "outputs": {name: store.dataset_path(name) for name in SCHEMAS},
    }


# fields that change how a run goes, not what its features are: a rerun may change them freely
OPERATIONAL_FIELDS = (
    "input", "output", "query", "uri_column", "extensions", "limit", "retry_errors", "read_retries", "read_backoff_s",
    "commit_rows", "writers", "actor_threads", "plan_cpus", "wait_for_cpus_s", "lease_timeout_s", "allow_config_change",
    "fail_after_commits", "models",
)
# sub-config fields that change where or how fast a model runs, not its output
OPERATIONAL_SUBFIELDS = ("separate.device", "separate.batch_size", "codec.device", "codec.batch_size",
                         "pitch.windows_per_call")


def fingerprint(cfg: ExtractConfig, identities: list[dict[str, Any]]) -> dict[str, Any]:
    """What an output's features depend on: the config fields that shape them (flattened) and the models' sha256."""
    flat: dict[str, Any] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k != "models":  # the sub-configs' models are the run's, recorded by identity below
                    add(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = list(value) if isinstance(value, tuple | list) else value

    add("", {k: v for k, v in asdict(cfg).items() if k not in OPERATIONAL_FIELDS})
    for name in OPERATIONAL_SUBFIELDS:
        flat.pop(name, None)
    for ident in identities:
        flat[f"model.{ident['name']}"] = f"{ident['kind']} sha256={ident['sha256']}"
    return flat


def models_for_run(cfg: ExtractConfig) -> tuple[dict[str, Any], float]:
    """Make the run's models available; return the run metadata (with their identities) and the DAC frame rate."""
    identities = [i.to_dict() for i in prepare(cfg.models)]
    return run_metadata(cfg, identities), frame_rate(load_dac(cfg.models)[0])


def plan(
    sources: list[Source], progress: dict[str, SourceState], retry_errors: bool
) -> tuple[list[Source], dict[str, list[int]], list[str]]:
    """(inputs to process, segments to skip per input, inputs that changed since their rows were committed).

    An input whose listed version (size and modification time) differs from its committed rows' is processed
    whole; its new rows supersede the old ones. A listing that could not stat an input (version "") says nothing
    about a change. A complete input of the same version is skipped (unless it failed and ``retry_errors``); a
    partial one is resumed, skipping its committed segments.
    """
    pending, skip, changed = [], {}, []
    for s in sources:
        p = progress.get(s.source_id)
        if p is not None and s.version and p.version != s.version:
            changed.append(s.uri)
            pending.append(s)
            continue
        if p is not None and p.complete and not (retry_errors and p.failed):
            continue
        pending.append(s)
        if p is not None:
            skip[s.source_id] = sorted(p.ok_segments if retry_errors else p.ok_segments | p.error_segments)
    return pending, skip, changed


class Progress:
    """What the driver knows of a run as commit summaries arrive: inputs done of the total, rows, audio, rate, ETA.

    An input is done when every segment it had left has a committed row, when it failed as a whole, or when it was
    deferred (its read failed for a transient reason).
    """

    def __init__(self, pending: list[Source], skip: dict[str, list[int]], start: float) -> None:
        self.total = len(pending)
        self.skipped = {sid: len(segments) for sid, segments in skip.items()}
        self.start = start
        self.committed: dict[str, int] = {}  # source -> rows committed this run
        self.done = self.rows = self.errors = 0
        self.audio_s = 0.0
        self.deferred: dict[str, str] = {}  # source_id -> why its read failed for a transient reason
        self.lock = threading.Lock()

    def add(self, summary: dict[str, Any]) -> None:
        """Count one commit summary (``hummingml.extract.steps.CommitStep``'s return value)."""
        with self.lock:
            columns = ("source_id", "segment_index", "n_segments", "ok", "deferred", "audio_s")
            for sid, segment, n, ok, deferred, audio_s in zip(*(summary[c] for c in columns), strict=True):
                if deferred:
                    self.deferred[str(sid)] = str(deferred)
                    self.done += 1
                    continue
                self.rows += 1
                self.errors += not ok
                self.audio_s += float(audio_s)
                count = self.committed[sid] = self.committed.get(sid, 0) + 1
                if segment == -1 or n < 0 or count + self.skipped.get(sid, 0) == n:
                    self.done += 1

    def line(self, now: float) -> str:
        """One progress line: ``3/10 inputs done, 14 rows committed (1 errors, 0 deferred), ..., ETA 2m05s``."""
        with self.lock:
            elapsed = max(now - self.start, 1e-9)
            eta = "unknown" if not self.done else _duration(elapsed / self.done * (self.total - self.done))
            return (
                f"{self.done}/{self.total} inputs done, {self.rows} rows committed ({self.errors} errors, "
                f"{len(self.deferred)} deferred), {self.audio_s / 3600:.3f} audio-hours, "
                f"{self.audio_s / elapsed:.2f} audio-s/s, ETA {eta}"
            )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _say(log: TextIO, text: str) -> None:
    print(f"[extract] {text}", file=log, flush=True)


def run(cfg: ExtractConfig, log: TextIO = sys.stdout) -> dict[str, Any]:
    """Run one extraction (resuming a previous one on the same output) and return the summary.

    Checks the config and lists the inputs (nothing is written before both succeed; a problem raises
    :class:`~hummingml.config.ConfigError`), takes the output's lease (another driver
    writing it is refused with :class:`~hummingml.extract.store.LeaseHeld`), checks the output's recorded config
    fingerprint, recovers, then runs the pipeline on the Ray cluster from ``RAY_ADDRESS`` or a local one.
    """
    if problems := cfg.problems():
        raise ConfigError("\n".join(problems))
    start = time.monotonic()
    Lease.refuse_if_held(cfg.output, cfg.lease_timeout_s)  # at once, not after listing a large corpus
    listing = list_sources(cfg.input, cfg.query, cfg.uri_column, cfg.extensions, read_sql)
    sources = listing[: cfg.limit] if cfg.limit else listing
    if "://" not in cfg.output:  # the writer actors open the same root whatever their working directory
        cfg = replace(cfg, output=os.path.abspath(cfg.output))
    store = OutputStore(cfg.output, log=log)
    lease = Lease.acquire(store, cfg.lease_timeout_s, os.environ.get("RAY_JOB_SUBMISSION_ID", ""))
    lease.start_renewing()
    _say(log, f"config:\n{json.dumps(asdict(cfg), indent=2, default=str)}")
    try:
        return _run_holding(cfg, store, lease, listing, sources, start, log)
    finally:
        lease.release()


def _run_holding(
    cfg: ExtractConfig,
    store: OutputStore,
    lease: Lease,
    listing: list[Source],
    sources: list[Source],
    start: float,
    log: TextIO,
) -> dict[str, Any]:
    metadata, codec_frame_rate = models_for_run(cfg)
    differences = store.check_record(fingerprint(cfg, metadata["models"]), cfg.allow_config_change)
    if differences:
        _say(log, f"warning: the output's config changed (--allow-config-change): {'; '.join(differences)}")
    # staging of a holder whose lease expired may still be written to: only older staging is dropped
    dropped = store.recover(staging_min_age_s=cfg.lease_timeout_s if lease.took_over_live else 0.0)
    if dropped:
        _say(log, f"dropped {dropped} uncommitted batch(es) left by an interrupted run")
    pending, skip, changed = plan(sources, store.progress(), cfg.retry_errors)
    _say(
        log,
        f"{len(sources)} inputs, {len(sources) - len(pending)} already complete, {len(pending)} to process"
        + (f" ({len(changed)} changed since they were committed)" if changed else ""),
    )
    for ident in metadata["models"]:
        label = "RANDOM WEIGHTS (features are not meaningful)" if ident.get("random_weights") else "pretrained"
        _say(log, f"model {ident['name']} ({ident['kind']}, {label}) sha256={ident['sha256'][:12]}")
    progress = Progress(pending, skip, start)
    deferred = progress.deferred

    def summary_now(completed: bool) -> dict[str, Any]:
        summary = summarize(
            cfg, store, [s.source_id for s in sources], time.monotonic() - start, progress.audio_s, metadata,
            {s.source_id for s in listing}, changed,
        )
        summary.update(completed=completed, deferred=len(deferred), deferred_examples=sorted(deferred.values())[:20])
        store.write_summary(summary)
        return summary

    if pending:
        connect()
        ds = build_dataset(cfg, pending, skip, metadata, codec_frame_rate, log, lease=lease.token)
        stop = threading.Event()

        def report() -> None:
            while not stop.wait(PROGRESS_EVERY_S):
                _say(log, progress.line(time.monotonic()))

        threading.Thread(target=report, name="hummingml-progress", daemon=True).start()
        try:
            for summary in ds.iter_batches(batch_size=None):
                if lease.lost:
                    raise LeaseLost(lease.lost)
                progress.add(summary)
        except Exception as exc:
            _say(
                log,
                f"the run stopped: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1]}\n"
                "[extract] every committed batch is kept; fix the cause and rerun the same command to resume",
            )
            with contextlib.suppress(Exception):  # the summary of what is committed, if the output can take it
                summary_now(completed=False)
            raise
        finally:
            stop.set()
        _say(log, progress.line(time.monotonic()))
    summary = summary_now(completed=True)
    if deferred:
        _say(
            log,
            f"{len(deferred)} inputs could not be read for a transient reason (store outage, throttling) "
            f"and were not committed; rerun the same command to process them. First: {next(iter(deferred.values()))}",
        )
    out = summary["output"]
    if out["not_in_input"]:
        _say(
            log,
            f"{out['not_in_input']} committed source(s) are not in this run's input (removed, or listed by another "
            "input); their rows stay. See not_in_input_examples in summary.json",
        )
    _say(
        log,
        f"{summary['inputs']} inputs: {summary['ok']} ok, {summary['failed']} failed, "
        f"{summary['unaccounted']} unaccounted; {summary['feature_rows']} feature rows, "
        f"{summary['error_rows']} error rows; {summary['wall_s']:.1f} s",
    )
    return summary
