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

from hummingml.audio import FRAME_RATE
from hummingml.cluster import connect
from hummingml.config import ConfigError
from hummingml.extract.config import ExtractConfig, run_metadata
from hummingml.extract.ray import (
    Listing,
    RayMetrics,
    account_run,
    build_dataset,
    finish_output,
    list_input,
    plan_run,
    tidy_output,
)
from hummingml.extract.sources import listing
from hummingml.extract.store import Lease, LeaseLost, OutputStore
from hummingml.stages.codec import frame_rate
from hummingml.stages.null import null_identities
from hummingml.weights.load import load_dac, prepare
from schemas.features import SCHEMAS

PROGRESS_EVERY_S = 10.0  # seconds between progress lines in the driver log


def summarize(
    store: OutputStore,
    accounted: dict[str, Any],
    output: dict[str, Any],
    planned: dict[str, Any],
    wall_s: float,
    run_audio_s: float,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """The run's summary: what became of this run's inputs (after ``--limit``; ``accounted``, from
    ``hummingml.extract.ray.account_run``), the whole output (``output``: complete, failed, incomplete, superseded
    rows, and the committed sources this run's listing no longer names) and the plan's counts (``planned``)."""
    return {
        "inputs": accounted["inputs"],
        "ok": accounted["ok"],
        "failed": accounted["failed"],
        "unaccounted": accounted["unaccounted"],
        "accounted": accounted["unaccounted"] == 0,
        "feature_rows": accounted["feature_rows"],
        "error_rows": accounted["error_rows"],
        "listed": planned["listed"],
        "repeated_listings": planned["repeated"],  # further spellings of inputs already listed: not processed twice
        "changed_inputs": planned["changed"],  # inputs whose size or modification time changed: processed again
        "changed_examples": planned["changed_examples"],
        "output": {
            **output,
            "not_in_input": accounted["not_in_input"],
            "not_in_input_examples": accounted["not_in_input_examples"],
        },
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
    "commit_rows", "writers", "actor_threads", "placement", "cpu_reservation",
    "plan_cpus", "wait_for_cpus_s", "lease_timeout_s",
    "allow_config_change", "fail_after_commits", "ray_progress", "max_failed_fraction", "models",
)
# sub-config fields that change where or how fast a model runs, not its output
OPERATIONAL_SUBFIELDS = ("separate.device", "separate.batch_size", "codec.device", "codec.batch_size",
                         "codec.backend", "pitch.windows_per_call")


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
    """Make the run's models available; return the run metadata (with their identities) and the DAC frame rate.

    With ``cfg.stages == "null"`` no model is loaded: the identities are the null stages'.
    """
    if cfg.stages == "null":
        return run_metadata(cfg, null_identities()), FRAME_RATE
    identities = [i.to_dict() for i in prepare(cfg.models)]
    return run_metadata(cfg, identities), frame_rate(load_dac(cfg.models)[0])


class Progress:
    """What the driver knows of a run as commit summaries arrive: inputs done of the total, rows, audio, rate, ETA.

    An input is done when every segment it had left has a committed row (each summary row says how many of its
    source's segments an earlier run committed), when it failed as a whole, or when it was deferred (its read failed
    for a transient reason). Memory holds the inputs in flight only.
    """

    def __init__(self, total: int, start: float) -> None:
        self.total = total
        self.start = start
        self.committed: dict[str, int] = {}  # source in flight -> rows committed this run (dropped when done)
        self.done = self.rows = self.errors = 0
        self.audio_s = 0.0
        self.deferred: dict[str, str] = {}  # source_id -> why its read failed for a transient reason
        self.lock = threading.Lock()

    def add(self, summary: dict[str, Any]) -> None:
        """Count one commit summary (``hummingml.extract.steps.CommitStep``'s return value)."""
        with self.lock:
            columns = ("source_id", "segment_index", "n_segments", "n_skipped", "ok", "deferred", "audio_s")
            for sid, segment, n, skipped, ok, deferred, audio_s in zip(*(summary[c] for c in columns), strict=True):
                if deferred:
                    self.deferred[str(sid)] = str(deferred)
                    self.done += 1
                    continue
                self.rows += 1
                self.errors += not ok
                self.audio_s += float(audio_s)
                count = self.committed.pop(sid, 0) + 1
                if segment == -1 or n < 0 or count + skipped == n:
                    self.done += 1
                else:
                    self.committed[sid] = count

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


def too_many_failed(summary: dict[str, Any], max_failed_fraction: float, output: str) -> str | None:
    """Why a run counts as failed because of its failed inputs (more than ``max_failed_fraction`` of them), or None."""
    inputs, failed = summary["inputs"], summary["failed"]
    if not inputs or failed <= max_failed_fraction * inputs:
        return None
    return (
        f"{failed} of {inputs} inputs failed ({failed / inputs:.0%}, more than --max-failed-fraction "
        f"{max_failed_fraction:g}); every row is written, and the errors set says why each failed: "
        f"hummingml inspect {output}"
    )


def exit_code(summary: dict[str, Any], cfg: ExtractConfig, prog: str, err: TextIO | None = None) -> int:
    """A finished run's exit code: 1 when an input is unaccounted for, or when too many failed
    (:func:`too_many_failed`, said in one ``PROG: error:`` line on ``err``, default stderr); else 0."""
    if why := too_many_failed(summary, cfg.max_failed_fraction, cfg.output):
        print(f"{prog}: error: {why}", file=err or sys.stderr)
        return 1
    return 0 if summary["accounted"] else 1


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _say(log: TextIO, text: str) -> None:
    print(f"[extract] {text}", file=log, flush=True)


def run(cfg: ExtractConfig, log: TextIO = sys.stdout) -> dict[str, Any]:
    """Run one extraction (resuming a previous one on the same output) and return the summary.

    Checks the config and the input (nothing is written before both succeed; a problem raises
    :class:`~hummingml.config.ConfigError`), takes the output's lease (another driver writing it is refused with
    :class:`~hummingml.extract.store.LeaseHeld`), connects to the Ray cluster from ``RAY_ADDRESS`` (or starts a local
    one) and lists the input there (a manifest row without a URI raises ``ConfigError`` then), checks the output's
    recorded config fingerprint, recovers, plans (the listing joined with what is committed, in tasks) and runs the
    pipeline. The driver holds counts and object
    refs, never the listing.
    """
    if problems := cfg.problems():
        raise ConfigError("\n".join(problems))
    start = time.monotonic()
    Lease.refuse_if_held(cfg.output, cfg.lease_timeout_s)  # at once, not after listing a large corpus
    chunks = listing(cfg.input, cfg.query, cfg.uri_column, cfg.extensions)  # checks the input
    if "://" not in cfg.output:  # the writer actors open the same root whatever their working directory
        cfg = replace(cfg, output=os.path.abspath(cfg.output))
    # the lease before Ray starts and the listing runs: of two drivers started together, one is refused at once
    store = OutputStore(cfg.output, log=log)
    lease = Lease.acquire(store, cfg.lease_timeout_s, os.environ.get("RAY_JOB_SUBMISSION_ID", ""))
    lease.start_renewing()
    try:
        connect()
        listed = list_input(chunks)
        _say(log, f"config:\n{json.dumps(asdict(cfg), indent=2, default=str)}")
        return _run_holding(cfg, store, lease, listed, start, log)
    finally:
        lease.release()


def _run_holding(
    cfg: ExtractConfig, store: OutputStore, lease: Lease, listed: Listing, start: float, log: TextIO
) -> dict[str, Any]:
    metadata, codec_frame_rate = models_for_run(cfg)
    differences = store.check_record(fingerprint(cfg, metadata["models"]), cfg.allow_config_change)
    if differences:
        _say(log, f"warning: the output's config changed (--allow-config-change): {'; '.join(differences)}")
    # staging of a holder whose lease expired may still be written to: only older staging is dropped
    dropped, rolled, warnings = tidy_output(cfg.output, cfg.lease_timeout_s if lease.took_over_live else 0.0)
    print(warnings, end="", file=log, flush=True)
    if dropped:
        _say(log, f"dropped {dropped} uncommitted batch(es) left by an interrupted run")
    if rolled:
        _say(log, f"rolled {rolled} commit marker(s) of earlier runs up into the commit log")
    blocks, planned, committed = plan_run(cfg, listed)
    as_planned = None if blocks else committed  # nothing to process: the committed state stays as planned against
    in_run, pending = planned["in_run"], planned["pending"]
    _say(
        log,
        f"{in_run} inputs, {in_run - pending} already complete, {pending} to process"
        + (f" ({planned['changed']} changed since they were committed)" if planned["changed"] else "")
        + (f"; {planned['repeated']} repeated listing(s) of the same files skipped" if planned["repeated"] else ""),
    )
    for ident in metadata["models"]:
        label = "RANDOM WEIGHTS (features are not meaningful)" if ident.get("random_weights") else "pretrained"
        if ident["kind"] == "null":
            label = "NULL STAGE (no model; features carry no information)"
        _say(log, f"model {ident['name']} ({ident['kind']}, {label}) sha256={ident['sha256'][:12]}")
    progress = Progress(pending, start)
    deferred = progress.deferred

    def summary_now(completed: bool) -> dict[str, Any]:
        accounted, output = account_run(cfg, listed, as_planned)
        summary = summarize(store, accounted, output, planned, time.monotonic() - start, progress.audio_s, metadata)
        summary.update(completed=completed, deferred=len(deferred), deferred_examples=sorted(deferred.values())[:20])
        if lease.lost:  # the new holder tidies the log
            store.write_summary(summary)
        else:
            finish_output(cfg.output, summary)
        return summary

    if blocks:
        ds = build_dataset(cfg, blocks, metadata, codec_frame_rate, log, lease=lease.token)
        del blocks  # the dataset holds them now
        stop = threading.Event()
        metrics = RayMetrics()  # the driver's gauges, inputs planned and done: exported while the pipeline runs
        metrics.progress(progress.total, progress.done)

        def report() -> None:
            while not stop.wait(PROGRESS_EVERY_S):
                _say(log, progress.line(time.monotonic()))

        threading.Thread(target=report, name="hummingml-progress", daemon=True).start()
        try:
            for summary in ds.iter_batches(batch_size=None):
                if lease.lost:
                    raise LeaseLost(lease.lost)
                progress.add(summary)
                metrics.progress(progress.total, progress.done)
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
            metrics.close()
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
