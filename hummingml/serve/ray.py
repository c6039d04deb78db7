"""The batch remix on Ray Data (``python -m ray_jobs.remix``): uploads under a prefix -> remixes, exactly once.

The driver takes the output's lease (a second driver on the same output is refused), finishes what a killed run
left (``OutputStore.recover``), checks the output's recorded config, lists the uploads and skips every one whose
current row (remix or error) has the version listed now. The rest go through a pool of :class:`BatchRemixer`
actors; the driver commits their rows ``commit_rows`` at a time (``OutputStore.commit``: staged files, an atomic
marker, batches named by their rows, so a retried commit is not written twice). A changed upload (new size or
modification time) is remixed again and its older row superseded. ``summary.json`` accounts for every upload.

The driver holds the listing of the uploads (one small record each): fine for upload prefixes of up to a few
million files; the extraction (``hummingml.extract.ray``) streams its listing instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, TextIO

import pyarrow as pa
import ray

from hummingml import __version__
from hummingml.cluster import connect
from hummingml.config import ConfigError
from hummingml.extract.sources import list_sources
from hummingml.extract.store import Lease, OutputStore
from hummingml.serve.batch import BatchRemixer
from hummingml.serve.config import RemixBatchConfig
from schemas.remix import REMIX_SCHEMA, REMIX_SCHEMA_VERSION, REMIX_SETS

ERROR_FIELDS = [f.name for f in REMIX_SETS["errors"]]


def fingerprint(cfg: RemixBatchConfig) -> dict[str, Any]:
    """What makes a remix what it is: another value here would mix two kinds of rows in one output."""
    models = {k: v for k, v in dataclasses.asdict(cfg.models).items() if k in ("kind", "seed", "demucs_name")}
    return {"instrument": cfg.instrument, "checkpoint": cfg.checkpoint, "mix": dataclasses.asdict(cfg.mix),
            "models": models}  # fmt: skip


def tables_of(rows: pa.Table) -> tuple[dict[str, pa.Table], list[tuple[str, int, int, bool, str]]]:
    """Split actor output rows into the ``remix`` and ``errors`` tables and the commit keys."""
    ok = rows.column("ok").to_pylist()
    remixes = rows.filter(pa.array(ok)).append_column("segment_index", pa.array([0] * sum(ok), pa.int32()))
    failed = rows.filter(pa.array([not x for x in ok]))
    failed = failed.append_column("segment_index", pa.array([-1] * failed.num_rows, pa.int32()))
    tables = {"remix": remixes.select([f.name for f in REMIX_SCHEMA]).cast(REMIX_SCHEMA),
              "errors": failed.select(ERROR_FIELDS).cast(REMIX_SETS["errors"])}  # fmt: skip
    keys = [(sid, 0 if good else -1, 1 if good else -1, bool(good), version)
            for sid, good, version in zip(rows.column("source_id").to_pylist(), ok,
                                          rows.column("source_version").to_pylist(), strict=True)]  # fmt: skip
    return tables, keys


def run_batch(cfg: RemixBatchConfig, log: TextIO = sys.stdout) -> dict[str, Any]:
    """Remix every pending upload of ``cfg.input`` into ``cfg.output``; returns the summary (also written there).

    Raises:
        ConfigError: bad flags, a missing input, an output held by another driver or made with another config.
    """
    if problems := cfg.problems():
        raise ConfigError("\n".join(problems))
    start = time.monotonic()
    Lease.refuse_if_held(cfg.output, cfg.lease_timeout_s)
    sources = list_sources(cfg.input)  # raises ConfigError for a missing input
    if "://" not in cfg.output:
        cfg = dataclasses.replace(cfg, output=os.path.abspath(cfg.output))
    store = OutputStore(cfg.output, log=log, schemas=REMIX_SETS, schema_version=REMIX_SCHEMA_VERSION)
    lease = Lease.acquire(store, cfg.lease_timeout_s, os.environ.get("RAY_JOB_SUBMISSION_ID", ""))
    lease.start_renewing()
    try:
        store.recover()
        store.check_record(fingerprint(cfg), cfg.allow_config_change)
        connect()
        return _run_holding(cfg, store, lease, sources, start, log)
    finally:
        lease.release()


def _run_holding(cfg: RemixBatchConfig, store: OutputStore, lease: Lease, sources: list[Any], start: float,
                 log: TextIO) -> dict[str, Any]:  # fmt: skip
    done = {(sid, state.version) for sid, state in store.progress().items() if state.complete}
    todo = [s for s in sources if (s.source_id, s.version) not in done]
    pending = todo[: cfg.limit] if cfg.limit else todo
    print(f"[remix] {len(sources)} uploads listed, {len(sources) - len(pending)} already remixed, "
          f"{len(pending)} to do", file=log, flush=True)  # fmt: skip
    metadata = {"hummingml_version": __version__, "config": dataclasses.asdict(cfg), "fingerprint": fingerprint(cfg)}
    remixed = failed = 0
    if pending:
        ray.data.DataContext.get_current().enable_progress_bars = False  # the driver prints its own progress lines
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        actors = cfg.actors or max(1, int(cpus // cfg.cpus_per_actor) - 1)  # leave a CPU for reads and the driver
        items = [{"uri": s.uri, "source_id": s.source_id, "canonical": s.canonical, "version": s.version}
                 for s in pending]  # fmt: skip
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            BatchRemixer,
            fn_constructor_kwargs={"cfg": dataclasses.asdict(cfg)},
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=min(actors, len(items))),
            num_cpus=cfg.cpus_per_actor,
        )
        for batch in ds.iter_batches(batch_size=cfg.commit_rows, batch_format="pyarrow"):
            tables, keys = tables_of(batch)
            store.commit(tables, keys, metadata, lease=lease.token)
            remixed += tables["remix"].num_rows
            failed += tables["errors"].num_rows
            print(f"[remix] {remixed + failed}/{len(pending)} done ({failed} failed), "
                  f"{time.monotonic() - start:.0f} s", file=log, flush=True)  # fmt: skip
    states = store.progress()
    unaccounted = [s.canonical for s in sources
                   if not (s.source_id in states and states[s.source_id].version == s.version
                           and states[s.source_id].complete)]  # fmt: skip
    summary = {
        "inputs": len(sources),
        "skipped": len(sources) - len(todo),  # remixed (or failed) before, with the version listed now
        "left_by_limit": len(todo) - len(pending),
        "remixed": remixed,
        "failed": failed,
        "unaccounted": len(unaccounted),
        "unaccounted_examples": unaccounted[:10],
        "accounted": not unaccounted,
        "seconds": round(time.monotonic() - start, 1),
        "output": store.uri,
    }
    store.write_summary(summary)
    print(f"[remix] summary: {json.dumps(summary)}", file=log, flush=True)
    return summary
