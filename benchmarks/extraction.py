"""Extraction throughput: the Ray Data job against a sequential loop and a multiprocessing pool, same work.

    python benchmarks/extraction.py --songs 4 --seconds 10 --models-kind random-full \
        --out benchmarks/results/extraction.json

All three run the same steps (``hummingml.pipeline``: decode, separate, pitch + sine, codec, commit) over the same
synthesized corpus with the same models, each into a fresh output root:

- ``ray``: ``hummingml.extract.run`` on a local Ray with ``--cpus`` CPUs;
- ``sequential``: ``hummingml.pipeline.run_local`` in this process, torch using all cores inside each op;
- ``pool``: a ``multiprocessing`` pool (spawn) for each ``processes x threads`` split in ``--splits``; each process
  loads the models once and takes one source at a time; the best split is reported.

Reported per variant: wall seconds, audio seconds per wall second, and the peak resident memory of the process tree
(sampled every 0.5 s). The JSON also holds the machine, the date and the exact command.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import threading
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from hummingml.models import ModelsConfig
from hummingml.pipeline import ExtractConfig


class PeakRSS:
    """Peak summed RSS of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        self.root, self.every_s, self.peak = psutil.Process(pid), every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for p in [self.root, *self.root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _steps(cfg: ExtractConfig) -> list[Any]:
    from hummingml.pipeline import CodecStep, DecodeStep, PitchStep, SeparateStep

    return [DecodeStep(cfg), SeparateStep(cfg), PitchStep(cfg), CodecStep(cfg)]


def _commit(cfg: ExtractConfig) -> Any:
    from hummingml.extract import models_for_run
    from hummingml.pipeline import CommitStep

    return CommitStep(cfg, *models_for_run(cfg))


def run_sequential(cfg: ExtractConfig) -> None:
    """Every step in this process, one source after another."""
    from hummingml.pipeline import run_local
    from hummingml.sources import list_sources

    run_local(cfg, list_sources(cfg.input), _steps(cfg), _commit(cfg))


_WORKER: dict[str, Any] = {}


def _pool_init(cfg: ExtractConfig, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER.update(cfg=cfg, steps=_steps(cfg), commit=_commit(cfg))


def _pool_task(uri: str) -> int:
    from hummingml.pipeline import run_local
    from hummingml.sources import Source, source_id

    run_local(_WORKER["cfg"], [Source(uri, source_id(uri))], _WORKER["steps"], _WORKER["commit"])
    return 1


def run_pool(cfg: ExtractConfig, processes: int, threads: int) -> None:
    """A spawn pool of ``processes`` workers with ``threads`` torch threads each; models load once per process."""
    from hummingml.sources import list_sources

    uris = [s.uri for s in list_sources(cfg.input)]
    with mp.get_context("spawn").Pool(processes, initializer=_pool_init, initargs=(cfg, threads)) as pool:
        assert sum(pool.imap_unordered(_pool_task, uris)) == len(uris)


def run_ray(cfg: ExtractConfig, cpus: int) -> None:
    """The product: the Ray Data job on a local Ray."""
    import ray

    from hummingml.extract import run

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        with open(os.devnull, "w") as sink:
            run(cfg, log=sink)
    finally:
        ray.shutdown()


def measure(name: str, fn: Any, audio_s: float) -> dict[str, Any]:
    """Wall time, throughput and peak memory of one variant."""
    start = time.perf_counter()
    with PeakRSS(os.getpid()) as mem:
        fn()
    wall = time.perf_counter() - start
    result = {"variant": name, "wall_s": round(wall, 2), "audio_s_per_wall_s": round(audio_s / wall, 4),
              "peak_rss_gib": round(mem.peak / 2**30, 3)}
    print(json.dumps(result), flush=True)
    return result


def machine() -> dict[str, Any]:
    """Cores, memory and CPU model of this machine."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "cpu_model": model, "python": platform.python_version()}


def main() -> None:
    """Parse flags, make the corpus, run the variants, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--songs", type=int, default=4, help="songs in the corpus")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per song")
    parser.add_argument("--models-kind", default="random-full", help="tiny | random-full | pretrained")
    parser.add_argument("--cache-dir", default=None, help="model cache directory")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs given to Ray")
    parser.add_argument("--splits", default="2x1,1x2", help="pool splits to try, processes x threads")
    parser.add_argument("--variants", default="ray,sequential,pool", help="which variants to run")
    parser.add_argument("--work-dir", default="/tmp/hummingml-bench", help="corpus and outputs go here")
    parser.add_argument("--out", default="benchmarks/results/extraction.json", help="result JSON")
    args = parser.parse_args()

    from hummingml.corpus import write_corpus

    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    write_corpus(work / "corpus", n_songs=args.songs, seed=0, seconds=args.seconds)
    audio_s = args.songs * args.seconds
    base = ExtractConfig(input=str(work / "corpus" / "mix"), segment_s=10.0,
                         models=ModelsConfig(kind=args.models_kind, cache_dir=args.cache_dir))
    from hummingml.models import prepare

    prepare(base.models)  # model files are made (or checked) once, outside every timed run
    results = []
    variants = args.variants.split(",")
    if "ray" in variants:
        cfg = replace(base, output=str(work / "out-ray"))
        results.append(measure("ray", lambda: run_ray(cfg, args.cpus), audio_s))
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
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "corpus": {"songs": args.songs, "seconds_per_song": args.seconds, "audio_s": audio_s},
        "models_kind": args.models_kind,
        "results": results,
        "ratios": ratios,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
