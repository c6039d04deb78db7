"""The training data path: the per-commit-batch join against prepared joined shards, training throughput on the
real features against random codes of the same shapes, and the peak memory of a dp=2 run as the features grow.

    python -m benchmarks.train_data --out benchmarks/results/train_data.json

The features come from a small extraction with the tiny models (four 8 s songs in 4 s segments, two segments per
commit batch, made once under ``--work``); the 10x set replicates every committed batch nine times under new source
ids, committed through the real store (``hummingml.extract.store.OutputStore``).

- ``join``: rows/s of reading every current row as training reads it, two ways, on the 10x set (two rows per
  commit batch), and again on the same rows committed 32 per batch (``--commit-rows``' default). ``per_batch``:
  :class:`hummingml.train.data.JoinedRows` (each commit batch's two files, joined within the batch). ``prepared``: a
  one-time step writes the joined rows into Parquet shards of ``--prepared-rows`` rows (zstd, as the store writes),
  timed on its own; training then reads those. Each reader's rate is the median of ``--repeats`` passes.
- ``throughput``: the debug preset and the default data config (64-frame windows, 1-5 s timbre prompts), one process,
  one torch thread, ``--steps`` optimizer steps (AR + NAR). ``real``: batches cut from the features by the loop's own
  path (``Batches`` over ``JoinedRows``, ``prefetch``), timed end to end; ``real_no_prefetch``: the same with the
  batches made between steps; ``random``: batches made beforehand from random codes of the same shapes (timbre lengths
  drawn over the same range), only the steps timed. Tokens = AR target tokens (batch size x window frames per step).
  The three run in turn, ``--repeats`` times; the JSON keeps every rate, the medians and the best, and the same per
  second of the process's CPU time (all its threads), which other load on a shared machine disturbs less.
- ``memory``: ``hummingml.train.ray.fit`` with dp=2 (two Ray Train workers, real Ray started by the case's own process)
  for ``--memory-steps`` steps on the 1x and on the 10x set (each in a fresh process); the peak of the summed RSS and
  PSS of that process and all its children (Ray's processes, the two workers), sampled every 0.5 s, and each process's
  PSS at the peak. Then the one-process reader alone (``JoinedRows``, as each worker reads) over the sets of
  ``--reader-scales``, each in a fresh process: its peak RSS streaming the rows, and holding them all (what a
  materialised dataset costs), for contrast.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine


def base_features(work: Path) -> Path:
    """Four 8 s songs in 4 s segments, two per commit batch (reused when present)."""
    from hummingml.extract.config import ExtractConfig
    from hummingml.extract.job import run
    from hummingml.testing.corpus import write_corpus
    from hummingml.weights.config import ModelsConfig

    out = work / "features"
    if not (out / "summary.json").exists():
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        write_corpus(work / "corpus", n_songs=4, seed=5, seconds=8.0)
        cfg = ExtractConfig(input=str(work / "corpus" / "manifest.jsonl"), output=str(out), segment_s=4.0,
                            commit_rows=2, models=ModelsConfig(kind="tiny", cache_dir=str(work / "models")))
        run(cfg, log=io.StringIO())
        ray.shutdown()
    return out


def replicated(base: Path, work: Path, times: int) -> Path:
    """``base`` with every committed batch committed ``times - 1`` more times under new source ids (reused)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from hummingml.extract.store import OutputStore
    from hummingml.output import open_root, read_markers

    out = work / f"features-{times}x"
    if (out / "_replicated").exists():
        return out
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out)
    store = OutputStore(str(out), log=None)
    fs, root = open_root(str(base))
    markers, _ = read_markers(fs, root, log=None)
    for copy in range(1, times):
        for marker in markers:
            tables = {}
            for final in marker.files.values():
                name = final.split("/", 1)[0]
                table = pq.read_table(str(base / final))
                ids = pa.array([f"{s}~copy{copy}" for s in table["source_id"].to_pylist()], pa.string())
                tables[name] = table.set_column(table.schema.get_field_index("source_id"), "source_id", ids)
            rows = [(f"{r.source_id}~copy{copy}", r.segment_index, r.n_segments, r.ok, r.version) for r in marker.rows]
            store.commit(tables, rows, {"benchmark": "train_data replica", "copy": copy})
    (out / "_replicated").write_text("done\n")
    return out


def rebatched(base: Path, work: Path, times: int, rows_per_commit: int) -> Path:
    """The rows of ``replicated(base, work, times)`` (every base row ``times`` times under new source ids) committed
    ``rows_per_commit`` rows at a time, through the store (reused)."""
    import pyarrow as pa

    from hummingml.extract.store import OutputStore
    from hummingml.output import open_root, read_markers, read_set

    out = work / f"features-{times}x-{rows_per_commit}-per-commit"
    if (out / "_replicated").exists():
        return out
    store = OutputStore(str(out), log=None)
    markers, _ = read_markers(*open_root(str(base)), log=None)
    rows = [(f"{r.source_id}~copy{c}", r.segment_index, r.n_segments, r.ok, r.version)
            for c in range(times) for m in markers for r in m.rows]
    tables = {}
    for name in ("audio-feature", "sine-audio-feature"):
        table = read_set(str(base), name, log=None)
        assert table is not None, f"{base} has no {name} rows"
        copies = []
        for c in range(times):
            ids = pa.array([f"{s}~copy{c}" for s in table["source_id"].to_pylist()], pa.string())
            copies.append(table.set_column(table.schema.get_field_index("source_id"), "source_id", ids))
        tables[name] = pa.concat_tables(copies)
    for start in range(0, len(rows), rows_per_commit):
        chunk = rows[start : start + rows_per_commit]
        keys = {(s, i) for s, i, *_ in chunk}
        part = {}
        for name, table in tables.items():
            mask = [(s, i) in keys for s, i in zip(table["source_id"].to_pylist(), table["segment_index"].to_pylist(),
                                                   strict=True)]
            part[name] = table.filter(pa.array(mask))
        store.commit(part, chunk, {"benchmark": "train_data rebatched"})
    (out / "_replicated").write_text("done\n")
    return out


def bench_join(features: Path, work: Path, repeats: int, prepared_rows: int) -> dict[str, Any]:
    """Rows/s of the per-commit-batch join and of prepared joined shards, and the prepare step's cost."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from hummingml.train.data import JoinedRows, rows_of

    joined = JoinedRows(str(features))
    n_rows = sum(len(b.keys) for b in joined.batches)
    prepared = work / "prepared"
    if prepared.exists():
        shutil.rmtree(prepared)
    prepared.mkdir(parents=True)
    started = time.perf_counter()
    pending: list[pa.Table] = []
    files = 0

    def flush() -> None:
        nonlocal files, pending
        pq.write_table(pa.concat_tables(pending), prepared / f"part-{files:05d}.parquet", compression="zstd")
        files, pending = files + 1, []

    for table in JoinedRows(str(features)).iter_tables():
        pending.append(table)
        if sum(t.num_rows for t in pending) >= prepared_rows:
            flush()
    if pending:
        flush()
    prepare_s = time.perf_counter() - started

    def read_prepared() -> int:
        count = 0
        for path in sorted(prepared.glob("*.parquet")):
            count += len(rows_of(pq.read_table(path)))
        return count

    def read_per_batch() -> int:
        return sum(1 for _ in JoinedRows(str(features)).iter_rows())

    rates: dict[str, list[float]] = {"per_batch": [], "prepared": []}
    for _ in range(repeats):
        for name, fn in (("per_batch", read_per_batch), ("prepared", read_prepared)):
            started = time.perf_counter()
            assert fn() == n_rows
            rates[name].append(n_rows / (time.perf_counter() - started))

    def size(paths: list[Path]) -> int:
        return sum(p.stat().st_size for p in paths)

    feature_bytes = size([*features.glob("audio-feature/*.parquet"), *features.glob("sine-audio-feature/*.parquet")])
    return {
        "rows": n_rows, "commit_batches": len(joined.batches), "prepared_files": files,
        "rows_per_s": rates,
        "rows_per_s_median": {k: statistics.median(v) for k, v in rates.items()},
        "prepare_s": prepare_s, "prepare_rows_per_s": n_rows / prepare_s,
        "feature_set_bytes": feature_bytes, "prepared_bytes": size(list(prepared.glob("*.parquet"))),
    }


def bench_throughput(features: Path, steps: int, repeats: int, batch_size: int) -> dict[str, Any]:
    """AR target tokens/s of the debug preset on real batches (with and without prefetch) and on random ones."""
    import numpy as np
    import torch

    from hummingml.model.batch import make_batch
    from hummingml.train.config import from_preset
    from hummingml.train.data import DataConfig, JoinedRows
    from hummingml.train.loop import Batches, TorchBackend, WorkerContext, prefetch, train_step
    from hummingml.train.parallel.torch import local_process_group

    torch.set_num_threads(1)
    cfg = from_preset("debug", data=DataConfig(features=str(features)), batch_size=batch_size, steps=steps)
    tokens_per_step = cfg.batch_size * cfg.data.frames
    joined = JoinedRows(str(features))
    rng = np.random.default_rng(0)
    n, kc, v = cfg.model.n_codebooks, cfg.model.cond_codebooks, cfg.model.codebook_size
    segment = 345  # the features' 4 s segments: the prompt is drawn up to what a segment leaves beside the window
    longest = min(cfg.data.timbre_max_frames, segment - cfg.data.frames)

    def random_batch() -> dict[str, torch.Tensor]:
        t = cfg.data.frames
        examples = [{"timbre": rng.integers(0, v, (n, int(rng.integers(cfg.data.timbre_min_frames, longest + 1)))),
                     "sine": rng.integers(0, v, (kc, t)), "mono": rng.integers(0, v, (kc, t)),
                     "target": rng.integers(0, v, (n, t))} for _ in range(cfg.batch_size)]
        return make_batch(examples, cfg.model, timbre_frames=cfg.data.timbre_max_frames, frames=cfg.data.frames)

    def real(depth: int) -> tuple[float, float]:
        backend = TorchBackend(cfg, WorkerContext())
        batches = Batches(joined, cfg)
        step, epoch = 0, 0
        train_step(backend, random_batch(), 0)  # warm-up, untimed
        started, cpu = time.perf_counter(), time.process_time()
        while step < steps:
            ahead = prefetch(batches.epoch(epoch), depth)
            for _, batch in ahead:
                train_step(backend, batch, step)
                step += 1
                if step == steps:
                    break
            ahead.close()
            epoch += 1
        tokens = steps * tokens_per_step
        return tokens / (time.perf_counter() - started), tokens / (time.process_time() - cpu)

    def random() -> tuple[float, float]:
        backend = TorchBackend(cfg, WorkerContext())
        ready = [random_batch() for _ in range(steps)]
        train_step(backend, random_batch(), 0)
        started, cpu = time.perf_counter(), time.process_time()
        for step, batch in enumerate(ready):
            train_step(backend, batch, step)
        tokens = steps * tokens_per_step
        return tokens / (time.perf_counter() - started), tokens / (time.process_time() - cpu)

    rates: dict[str, list[float]] = {"real": [], "real_no_prefetch": [], "random": []}
    per_cpu_s: dict[str, list[float]] = {k: [] for k in rates}
    with local_process_group():
        for _ in range(repeats):
            for name, run in (("real", lambda: real(cfg.data.prefetch_batches)), ("real_no_prefetch", lambda: real(0)),
                              ("random", random)):
                wall, cpu = run()
                rates[name].append(wall)
                per_cpu_s[name].append(cpu)
    medians = {k: statistics.median(v) for k, v in rates.items()}
    best = {k: max(v) for k, v in rates.items()}
    cpu_medians = {k: statistics.median(v) for k, v in per_cpu_s.items()}
    return {
        "preset": "debug", "batch_size": cfg.batch_size, "frames": cfg.data.frames,
        "timbre_frames": [cfg.data.timbre_min_frames, longest], "padded_timbre_frames": cfg.data.timbre_max_frames,
        "steps": steps, "torch_threads": 1, "prefetch_batches": cfg.data.prefetch_batches,
        "tokens_per_s": rates, "tokens_per_s_median": medians, "tokens_per_s_best": best,
        "real_over_random": medians["real"] / medians["random"],
        "real_no_prefetch_over_random": medians["real_no_prefetch"] / medians["random"],
        "real_over_random_best": best["real"] / best["random"],
        "real_no_prefetch_over_random_best": best["real_no_prefetch"] / best["random"],
        "tokens_per_cpu_s": per_cpu_s, "tokens_per_cpu_s_median": cpu_medians,
        "real_over_random_per_cpu_s": cpu_medians["real"] / cpu_medians["random"],
    }


def memory_case(features: Path, work: Path, steps: int) -> dict[str, Any]:
    """One dp=2 fit on a fresh local Ray; the peak memory of this process and its children."""
    import ray

    from benchmarks.extraction import PeakRSS
    from hummingml.train.config import from_preset
    from hummingml.train.data import DataConfig, JoinedRows
    from hummingml.train.ray import fit

    rows = sum(len(b.keys) for b in JoinedRows(str(features)).batches)
    with PeakRSS(os.getpid()) as mem:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        cfg = from_preset("debug", name=f"memory-{features.name}-{time.time_ns()}", storage=str(work / "runs"),
                          data=DataConfig(features=str(features)), steps=steps, checkpoint_every=steps,
                          cpus_per_worker=1.0)
        cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, dp=2))
        started = time.perf_counter()
        result = fit(cfg)
        wall = time.perf_counter() - started
        ray.shutdown()
    workers = sum(v for k, v in mem.at_peak.items() if k.startswith("ray::RayTrainWorker"))
    return {"features": str(features), "rows": rows, "steps": steps, "wall_s": wall,
            "epochs_reached": (result.metrics or {}).get("epoch"), "peak_rss_gib": mem.peak / 2**30,
            "peak_pss_gib": mem.peak_pss / 2**30, "pss_mib_at_peak": mem.at_peak,
            "train_workers_pss_mib_at_peak": workers}


def _high_water_mib() -> float:
    """This process's peak resident set (``VmHWM``; unlike ``ru_maxrss`` it does not carry the parent's over exec)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def reader_case(features: Path, hold: bool) -> dict[str, Any]:
    """Peak RSS of this process after reading every row of ``features`` as a worker does (``hold``: keeping them all,
    as a materialised dataset would)."""
    from hummingml.train.data import JoinedRows

    rows = JoinedRows(str(features))
    before = _high_water_mib()
    kept, count = [], 0
    for row in rows.iter_rows():
        count += 1
        if hold:
            kept.append(row)
    return {"rows": count, "hold": hold, "peak_rss_mib": _high_water_mib(), "peak_rss_mib_before_reading": before}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the parts asked for and write the JSON report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="join,throughput,memory", help="any of join,throughput,memory")
    p.add_argument("--scales", default="1,10", help="feature-set sizes for memory (multiples of the base set)")
    p.add_argument("--repeats", type=int, default=5, help="passes of each reader / throughput variant")
    p.add_argument("--steps", type=int, default=40, help="timed optimizer steps per throughput variant")
    p.add_argument("--batch-size", type=int, default=4, help="examples per step")
    p.add_argument("--memory-steps", type=int, default=40, help="optimizer steps of each dp=2 memory run")
    p.add_argument("--prepared-rows", type=int, default=64, help="rows per prepared joined shard")
    p.add_argument("--work", default="/tmp/hummingml-train-data-bench", help="features, shards and runs go here")
    p.add_argument("--reader-scales", default="1,10,100", help="feature-set sizes for the one-process reader's memory")
    p.add_argument("--memory-case", default="", help=argparse.SUPPRESS)  # internal: one memory run, JSON on stdout
    p.add_argument("--reader-case", default="", help=argparse.SUPPRESS)  # internal: one reader run
    p.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="benchmarks/results/train_data.json", help="result JSON")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.reader_case:
        print("MEMORY " + json.dumps(reader_case(Path(args.reader_case), args.hold)), flush=True)
        return {}
    if args.memory_case:
        print("MEMORY " + json.dumps(memory_case(Path(args.memory_case), work, args.memory_steps)), flush=True)
        return {}
    base = base_features(work)
    parts = set(args.parts.split(","))
    report: dict[str, Any] = {
        "command": "python -m benchmarks.train_data " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine() | {"load_avg_1m_at_start": os.getloadavg()[0]},
    }
    scales = [int(s) for s in args.scales.split(",")]
    reader_scales = [int(s) for s in args.reader_scales.split(",")] if "memory" in parts else []
    sets = {s: base if s == 1 else replicated(base, work, s) for s in {*scales, *reader_scales}}
    if "join" in parts:
        report["join"] = bench_join(sets[max(scales)], work, args.repeats, args.prepared_rows)
        print(json.dumps(report["join"]), flush=True)
        wide = rebatched(base, work, max(scales), 32)  # the same rows in commits of 32 (the store's default)
        report["join_32_rows_per_commit"] = bench_join(wide, work, args.repeats, args.prepared_rows)
        print(json.dumps(report["join_32_rows_per_commit"]), flush=True)
    if "throughput" in parts:
        report["throughput"] = bench_throughput(base, args.steps, args.repeats, args.batch_size)
        print(json.dumps(report["throughput"]), flush=True)
    def case(*flags: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "benchmarks.train_data", "--work", str(work), *flags],
                              capture_output=True, text=True, check=True)
        line = next(x for x in done.stdout.splitlines() if x.startswith("MEMORY "))
        return json.loads(line.removeprefix("MEMORY "))

    if "memory" in parts:
        report["memory"] = []
        for scale in scales:
            report["memory"].append({"scale": scale, **case("--memory-case", str(sets[scale]), "--memory-steps",
                                                            str(args.memory_steps))})
            print(json.dumps(report["memory"][-1]), flush=True)
        report["reader_memory"] = []
        for scale in reader_scales:
            for hold in (False, True):
                flags = ["--reader-case", str(sets[scale]), *(["--hold"] if hold else [])]
                report["reader_memory"].append({"scale": scale, **case(*flags)})
                print(json.dumps(report["reader_memory"][-1]), flush=True)
    report["machine"]["load_avg_1m_at_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
