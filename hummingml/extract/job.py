"""The extraction job: list inputs, skip what is committed, run the pipeline on Ray Data, account for every input."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from typing import Any, TextIO

from hummingml.cluster import connect
from hummingml.extract.config import ExtractConfig, run_metadata
from hummingml.extract.ray import build_dataset, read_sql
from hummingml.extract.sources import list_sources
from hummingml.extract.store import OutputStore
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
) -> dict[str, Any]:
    """Accounting over every input of this run, from the committed batches (they include earlier runs)."""
    progress = store.progress()
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
        "audio_hours_this_run": run_audio_s / 3600.0,
        "wall_s": wall_s,
        "audio_s_per_wall_s": run_audio_s / wall_s if wall_s > 0 else 0.0,
        "models": metadata["models"],
        "random_weights": metadata["random_weights"],
        "versions": metadata["versions"],
        "config": metadata["config"],
        "outputs": {name: store.dataset_path(name) for name in SCHEMAS},
    }


def models_for_run(cfg: ExtractConfig) -> tuple[dict[str, Any], float]:
    """Make the run's models available; return the run metadata (with their identities) and the DAC frame rate."""
    identities = [i.to_dict() for i in prepare(cfg.models)]
    return run_metadata(cfg, identities), frame_rate(load_dac(cfg.models)[0])


def run(cfg: ExtractConfig, log: TextIO = sys.stdout) -> dict[str, Any]:
    """Run one extraction (resuming a previous one on the same output) and return the summary.

    Connects to the Ray cluster from ``RAY_ADDRESS`` or starts a local one.
    """
    start = time.monotonic()
    print(f"[extract] config:\n{json.dumps(asdict(cfg), indent=2, default=str)}", file=log, flush=True)
    store = OutputStore(cfg.output)
    dropped = store.recover()
    if dropped:
        print(f"[extract] dropped {dropped} uncommitted batch(es) left by an interrupted run", file=log, flush=True)
    sources = list_sources(cfg.input, cfg.query, cfg.uri_column, cfg.extensions, read_sql)
    if cfg.limit:
        sources = sources[: cfg.limit]
    progress = store.progress()
    pending, skip = [], {}
    for s in sources:
        p = progress.get(s.source_id)
        if p is not None and p.complete and not (cfg.retry_errors and p.failed):
            continue
        pending.append(s)
        if p is not None:
            skip[s.source_id] = sorted(p.ok_segments if cfg.retry_errors else p.ok_segments | p.error_segments)
    print(
        f"[extract] {len(sources)} inputs, {len(sources) - len(pending)} already complete, {len(pending)} to process",
        file=log,
        flush=True,
    )

    metadata, codec_frame_rate = models_for_run(cfg)
    for ident in metadata["models"]:
        label = "RANDOM WEIGHTS (features are not meaningful)" if ident.get("random_weights") else "pretrained"
        print(
            f"[extract] model {ident['name']} ({ident['kind']}, {label}) sha256={ident['sha256'][:12]}",
            file=log,
            flush=True,
        )
    run_audio_s = 0.0
    deferred: dict[str, str] = {}  # source_id -> why its read failed for a transient reason
    if pending:
        connect()
        ds = build_dataset(cfg, pending, skip, metadata, codec_frame_rate, log)
        done = errors = 0
        last = time.monotonic()
        try:
            for summary in ds.iter_batches(batch_size=None):
                unavailable = summary["deferred"].astype(bool)
                reasons = zip(summary["source_id"][unavailable], summary["deferred"][unavailable], strict=True)
                deferred.update((str(sid), str(reason)) for sid, reason in reasons)
                done += int((~unavailable).sum())
                errors += int((~summary["ok"] & ~unavailable).sum())
                run_audio_s += float(summary["audio_s"].sum())
                if time.monotonic() - last >= PROGRESS_EVERY_S:
                    last = time.monotonic()
                    elapsed = last - start
                    print(
                        f"[extract] {done} rows committed ({errors} errors, {len(deferred)} inputs deferred), "
                        f"{run_audio_s:.1f} s of audio, {run_audio_s / elapsed:.2f} audio-s/s",
                        file=log,
                        flush=True,
                    )
        except Exception as exc:
            print(
                f"[extract] the run stopped: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1]}\n"
                "[extract] every committed batch is kept; fix the cause and rerun the same command to resume",
                file=log,
                flush=True,
            )
            raise
    summary = summarize(cfg, store, [s.source_id for s in sources], time.monotonic() - start, run_audio_s, metadata)
    summary["deferred"] = len(deferred)
    summary["deferred_examples"] = sorted(deferred.values())[:20]
    store.write_summary(summary)
    if deferred:
        print(
            f"[extract] {len(deferred)} inputs could not be read for a transient reason (store outage, throttling) "
            f"and were not committed; rerun the same command to process them. First: {next(iter(deferred.values()))}",
            file=log,
            flush=True,
        )
    print(
        f"[extract] {summary['inputs']} inputs: {summary['ok']} ok, {summary['failed']} failed, "
        f"{summary['unaccounted']} unaccounted; {summary['feature_rows']} feature rows, "
        f"{summary['error_rows']} error rows; {summary['wall_s']:.1f} s",
        file=log,
        flush=True,
    )
    return summary
