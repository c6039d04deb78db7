"""Extraction throughput: the Ray Data job against a sequential loop and a multiprocessing pool, same work.

    python -m benchmarks.extraction --songs 12 --seconds 10 --models-kind random-full --splits 2x1 \
        --variants ray,ray-stages,sequential,pool --out benchmarks/results/extraction.json
    python -m benchmarks.extraction --device cuda --songs 120 --seconds 10 --models-kind random-full \
        --variants ray,sequential --out benchmarks/results/extraction_gpu.json      # on a GPU host

Every variant runs the same steps (``hummingml.extract.steps``: decode, separate, pitch + sine, codec, commit) over
the same synthesized corpus with the same models, each into a fresh output root:

- ``ray``: ``hummingml.extract.job.run`` on a local Ray with ``--cpus`` CPUs, default placement (on a small CPU node:
  one whole-pipeline actor per core); ``ray-stages``: the same with ``--placement stages`` (a pool per model stage);
- ``sequential``: ``hummingml.extract.local.run_local`` in this process, torch using all cores inside each op;
- ``pool``: a ``multiprocessing`` pool (spawn) for each ``processes x threads`` split in ``--splits``; each process
  loads the models once and takes one source at a time; the best split is reported.

Reported per variant: wall seconds, audio seconds per wall second, and the peak memory of the process tree (sampled
every 0.5 s): summed RSS, summed PSS (shared pages counted once) and each process's PSS at the PSS peak. The JSON
also holds the machine, the date and the exact command.

The sequential loop and the pool also time every step (``stage_s``: seconds summed over all processes). In the pool
with one thread per process, each stage runs at its best thread split for throughput (one per core), so the busy time
summed over the stages and divided by the process count is the machine's limit for this work: the wall time a perfect
scheduler would need. Efficiency = limit / wall time; each stage's share and real-time factor (core-seconds per
second of audio) come from the same figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import threading
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import machine
from hummingml.extract.config import ExtractConfig
from hummingml.weights.config import ModelsConfig


def _label(p: psutil.Process) -> str:
    """A short name for a process of the tree: a Ray worker's title (``ray::MapWorker(...)``) or its program."""
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return "?"
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split(" ")[0]
    if "-c" in cmd:
        cmd = cmd[: cmd.index("-c")]
    names = [Path(c).name for c in cmd[:3] if c and not c.startswith("-")]
    return " ".join(names[-2:]) or p.name()


class PeakRSS:
    """Peak memory of a process and all its descendants, sampled in a thread.

    ``peak`` is the largest sum of resident set sizes; ``peak_pss`` the largest sum of proportional set sizes, which
    counts each shared page (Ray's object store, shared libraries) once across the processes rather than once per
    process that maps it. ``at_peak`` is the per-process PSS (MiB, by label) of the sample with the largest PSS sum.
    """

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        self.root, self.every_s = psutil.Process(pid), every_s
        self.peak = self.peak_pss = 0
        self.at_peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = pss = 0
            by_label: dict[str, float] = {}
            for p in [self.root, *self.root.children(recursive=True)]:
                try:
                    info = p.memory_full_info()
                except psutil.Error:
                    continue
                rss += info.rss
                pss += info.pss
                label = _label(p)
                by_label[label] = by_label.get(label, 0.0) + info.pss / 2**20
            self.peak = max(self.peak, rss)
            if pss > self.peak_pss:
                self.peak_pss = pss
                self.at_peak = {k: round(v, 1) for k, v in sorted(by_label.items(), key=lambda kv: -kv[1])}
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Timed:
    """A pipeline step that adds its wall time to ``seconds[name]``."""

    def __init__(self, name: str, step: Any, seconds: dict[str, float]) -> None:
        self.name, self.step, self.seconds = name, step, seconds

    def __call__(self, batch: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.step(batch)
        finally:
            self.seconds[self.name] = self.seconds.get(self.name, 0.0) + time.perf_counter() - start


def _steps(cfg: ExtractConfig, seconds: dict[str, float]) -> list[Any]:
    from hummingml.extract.steps import CodecStep, DecodeStep, PitchStep, SeparateStep

    steps = {"decode": DecodeStep(cfg), "separate": SeparateStep(cfg), "pitch": PitchStep(cfg), "codec": CodecStep(cfg)}
    return [Timed(name, step, seconds) for name, step in steps.items()]


def _commit(cfg: ExtractConfig, seconds: dict[str, float]) -> Any:
    from hummingml.extract.job import models_for_run
    from hummingml.extract.steps import CommitStep

    return Timed("commit", CommitStep(cfg, *models_for_run(cfg)), seconds)


def run_sequential(cfg: ExtractConfig) -> dict[str, float]:
    """Every step in this process, one source after another; returns the seconds spent in each step."""
    from hummingml.extract.local import run_local
    from hummingml.extract.sources import list_sources

    seconds: dict[str, float] = {}
    run_local(cfg, list_sources(cfg.input), _steps(cfg, seconds), _commit(cfg, seconds))
    return seconds


_WORKER: dict[str, Any] = {}


def _pool_init(cfg: ExtractConfig, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    seconds: dict[str, float] = {}
    _WORKER.update(cfg=cfg, steps=_steps(cfg, seconds), commit=_commit(cfg, seconds), seconds=seconds)


def _pool_task(uri: str) -> dict[str, float]:
    from hummingml.extract.local import run_local
    from hummingml.extract.sources import Source, source_id

    _WORKER["seconds"].clear()
    run_local(_WORKER["cfg"], [Source(uri, source_id(uri))], _WORKER["steps"], _WORKER["commit"])
    return dict(_WORKER["seconds"])


def run_pool(cfg: ExtractConfig, processes: int, threads: int) -> dict[str, float]:
    """A spawn pool of ``processes`` workers with ``threads`` torch threads each; models load once per process.

    Returns the seconds spent in each step, summed over the processes.
    """
    from hummingml.extract.sources import list_sources

    uris = [s.uri for s in list_sources(cfg.input)]
    seconds: dict[str, float] = {}
    with mp.get_context("spawn").Pool(processes, initializer=_pool_init, initargs=(cfg, threads)) as pool:
        for task in pool.imap_unordered(_pool_task, uris):
            for name, s in task.items():
                seconds[name] = seconds.get(name, 0.0) + s
    return seconds


def run_ray(cfg: ExtractConfig, cpus: int) -> None:
    """The product: the Ray Data job on a local Ray."""
    import ray

    from hummingml.extract.job import run

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        with open(os.devnull, "w") as sink:
            run(cfg, log=sink)
    finally:
        ray.shutdown()


def measure(name: str, fn: Any, audio_s: float) -> dict[str, Any]:
    """Wall time, throughput and peak memory of one variant (and its per-step seconds, if ``fn`` returns them)."""
    start = time.perf_counter()
    with PeakRSS(os.getpid()) as mem:
        seconds = fn()
    wall = time.perf_counter() - start
    result = {"variant": name, "wall_s": round(wall, 2), "audio_s_per_wall_s": round(audio_s / wall, 4),
              "peak_rss_gib": round(mem.peak / 2**30, 3), "peak_pss_gib": round(mem.peak_pss / 2**30, 3),
              "pss_mib_at_peak": mem.at_peak}
    if seconds:
        result["stage_s"] = {k: round(v, 2) for k, v in seconds.items()}
    print(json.dumps(result), flush=True)
    return result


def machine_limit(results: list[dict[str, Any]], audio_s: float) -> dict[str, Any] | None:
    """The limit from the one-thread-per-process pool with the most processes: its summed step time per process.

    Also each step's share of the busy time and its real-time factor (seconds at one thread per second of audio).
    """
    single = [r for r in results if r["variant"].startswith("pool") and r["variant"].endswith("x1") and "stage_s" in r]
    if not single:
        return None
    best = max(single, key=lambda r: int(r["variant"].split()[1].split("x")[0]))
    processes = int(best["variant"].split()[1].split("x")[0])
    busy = sum(best["stage_s"].values())
    return {
        "from": best["variant"],
        "limit_s": round(busy / processes, 2),
        "stages": {
            name: {"share": round(s / busy, 4), "rtf_one_thread": round(s / audio_s, 4)}
            for name, s in sorted(best["stage_s"].items(), key=lambda kv: -kv[1])
        },
    }


def main() -> None:
    """Parse flags, make the corpus, run the variants, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--songs", type=int, default=4, help="songs in the corpus")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per song")
    parser.add_argument("--models-kind", default="random-full", help="tiny | random-full | pretrained")
    parser.add_argument("--cache-dir", default=None, help="model cache directory")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs given to Ray")
    parser.add_argument("--splits", default="2x1,1x2", help="pool splits to try, processes x threads")
    parser.add_argument("--variants", default="ray,sequential,pool",
                        help="which variants to run, of ray, ray-stages, sequential, pool")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where separation and the codec run (auto: cuda when torch sees a GPU)")
    parser.add_argument("--work-dir", default="/tmp/hummingml-bench", help="corpus and outputs go here")
    parser.add_argument("--out", default="benchmarks/results/extraction.json", help="result JSON")
    args = parser.parse_args()

    from hummingml.testing.corpus import write_corpus

    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    write_corpus(work / "corpus", n_songs=args.songs, seed=0, seconds=args.seconds)
    audio_s = args.songs * args.seconds
    base = ExtractConfig(input=str(work / "corpus" / "mix"), segment_s=10.0,
                         models=ModelsConfig(kind=args.models_kind, cache_dir=args.cache_dir))
    # separation and codec on the device; on a GPU the codec batches 8 windows per call, the Ray job gives each of
    # the two stages its own pool with half a GPU per actor (placement "auto")
    base = replace(base, separate=replace(base.separate, device=args.device),
                   codec=replace(base.codec, device=args.device))
    from hummingml.weights.load import prepare

    prepare(base.models)  # model files are made (or checked) once, outside every timed run
    results = []
    variants = args.variants.split(",")
    if "ray" in variants:
        cfg = replace(base, output=str(work / "out-ray"))
        results.append(measure("ray", lambda: run_ray(cfg, args.cpus), audio_s))
    if "ray-stages" in variants:
        staged = replace(base, output=str(work / "out-ray-stages"), placement="stages")
        results.append(measure("ray-stages", lambda: run_ray(staged, args.cpus), audio_s))
    if "sequential" in variants:
        cfg = replace(base, output=str(work / "out-sequential"))
        results.append(measure("sequential", lambda: run_sequential(cfg), audio_s))
    if "pool" in variants:
        for split in args.splits.split(","):
            processes, threads = (int(x) for x in split.split("x"))
            cfg = replace(base, output=str(work / f"out-pool-{split}"))
            results.append(measure(f"pool {split}", partial(run_pool, cfg, processes, threads), audio_s))
    by_name = {r["variant"]: r for r in results}
    ratios = {}
    pools = [r for r in results if r["variant"].startswith("pool")]
    if "ray" in by_name and "sequential" in by_name:
        ratios["ray_over_sequential"] = round(by_name["sequential"]["wall_s"] / by_name["ray"]["wall_s"], 3)
    if "ray" in by_name and pools:
        best = min(pools, key=lambda r: r["wall_s"])
        ratios["ray_over_best_pool"] = round(best["wall_s"] / by_name["ray"]["wall_s"], 3)
        ratios["best_pool"] = best["variant"]
    limit = machine_limit(results, audio_s)
    if limit:
        for r in results:
            r["efficiency"] = round(limit["limit_s"] / r["wall_s"], 3)
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m benchmarks.extraction " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "corpus": {"songs": args.songs, "seconds_per_song": args.seconds, "audio_s": audio_s},
        "models_kind": args.models_kind,
        "device": args.device,
        "results": results,
        "ratios": ratios,
        "limit": limit,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
