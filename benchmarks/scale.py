"""The extraction engine at scale, with null stages: driver memory, time to first commit, throughput, resume, files.

    python -m benchmarks.scale --inputs 10000,100000,1000000 --out benchmarks/results/scale.json

For each size N a Parquet manifest of N rows (in row groups of 2,048 rows, which the listing tasks read in parallel)
is written, each row a distinct path (a hard link) to one of ``--distinct`` tiny real WAV files (``--seconds`` long,
44.1 kHz stereo, each a different tone), so that every row is its own source with its own identity, decoded,
resampled and committed for real. The extraction job (``python -m ray_jobs.extract --stages null``: separation, pitch
and codec replaced by stand-ins of the right shapes, ``hummingml.stages.null``)
runs on a local Ray started by the job, twice: once from nothing (an output left in ``--work`` by an earlier run of
this benchmark is deleted first), once again on the finished output (a resume with nothing to do). Reported per
size:

- ``driver_peak_rss_mib``: the driver process's peak resident memory (``ru_maxrss``; Ray's own processes excluded),
  and ``driver_rss_mib_curve``: its resident memory sampled every 2 s, as ``[seconds, MiB]`` (at most 60 kept);
- ``first_commit_s``: from the job's start to its first commit marker;
- ``segments_per_s``: segments committed per second between the first and the last commit, and over the whole run;
- ``resume_s``: wall time of the second run, and whether it wrote anything (``resume_wrote``: new files other than
  ``summary.json``);
- ``files``: per output set, the number of Parquet files and their sizes (min, median, max bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine
from hummingml.extract.sources import LISTING_CHUNK

RATE = 44_100
SETS = ("audio-feature", "sine-audio-feature", "errors")
# The driver, as `ray job submit` would run it: the job in this process, then its peak RSS on the last line.
RSS_EVERY_S = 2.0  # how often the driver's resident memory is sampled
CURVE_POINTS = 60  # at most this many samples kept in the results

DRIVER = """
import resource, sys
from ray_jobs.extract import main
code = main(sys.argv[1:])
print("DRIVER_PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
sys.exit(code)
"""


def write_tones(folder: Path, distinct: int, seconds: float) -> list[Path]:
    """``distinct`` 16-bit stereo WAVs at 44.1 kHz, each a different tone."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * RATE)) / RATE
    paths = []
    for i in range(distinct):
        path = folder / f"tone{i:05d}.wav"
        if not path.exists():
            tone = 0.3 * np.sin(2 * np.pi * (110.0 + i) * t)
            pcm = (np.stack([tone, tone * 0.5], axis=1) * 32767).astype("<i2")
            with wave.open(str(path), "wb") as w:
                w.setnchannels(2)
                w.setsampwidth(2)
                w.setframerate(RATE)
                w.writeframes(pcm.tobytes())
        paths.append(path)
    return paths


def write_manifest(work: Path, n: int, tones: list[Path]) -> Path:
    """A Parquet manifest of ``n`` distinct paths: hard links, 1,000 per folder, to the tones in turn."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    links = work / f"links-{n}"
    uris = []
    for i in range(n):
        path = links / f"{i // 1000:05d}" / f"{i:07d}.wav"
        if i % 1000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            os.link(tones[i % len(tones)], path)
        uris.append(str(path))
    manifest = work / f"manifest-{n}.parquet"
    table = pa.table({"uri": uris, "tone": [i % len(tones) for i in range(n)]})
    pq.write_table(table, manifest, row_group_size=LISTING_CHUNK)  # row groups the listing tasks read in parallel
    return manifest


def output_files(root: Path) -> dict[str, Any]:
    """Per output set: Parquet file count and sizes."""
    out = {}
    for name in SETS:
        sizes = sorted(p.stat().st_size for p in (root / name).glob("*.parquet"))
        out[name] = {"files": len(sizes), "min_bytes": sizes[0] if sizes else 0,
                     "median_bytes": int(statistics.median(sizes)) if sizes else 0,
                     "max_bytes": sizes[-1] if sizes else 0, "total_bytes": sum(sizes)}
    return out


def snapshot(root: Path) -> set[str]:
    """Every file under ``root`` except the run's summary and lease."""
    skip = {"summary.json", "_lease.json"}
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name not in skip}


def run_job(manifest: Path, output: Path, flags: list[str], log: Path) -> dict[str, Any]:
    """Run the job once; its wall time, the driver's peak RSS and the time of its first commit marker."""
    commits = output / "_commits"
    before = {p.name for p in commits.glob("*.json")} if commits.exists() else set()
    first: list[float] = []
    done = threading.Event()
    start = time.monotonic()

    def watch() -> None:
        while not done.wait(0.2):
            if commits.exists() and any(p.name not in before for p in os.scandir(commits) if p.name.endswith(".json")):
                first.append(time.monotonic() - start)
                return

    threading.Thread(target=watch, daemon=True).start()
    cmd = [sys.executable, "-c", DRIVER, "--input", str(manifest), "--output", str(output), "--stages", "null",
           *flags]
    curve: list[tuple[float, float]] = []  # (seconds since the start, the driver's RSS in MiB)
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            curve.extend([(round(time.monotonic() - start, 1), rss)] if (rss := rss_mib(proc.pid)) else [])
            time.sleep(RSS_EVERY_S)
        code = proc.returncode
    wall = time.monotonic() - start
    done.set()
    text = log.read_text()
    if code != 0:
        raise RuntimeError(f"the job exited {code}; see {log}:\n{text[-3000:]}")
    rss = next(int(line.split()[1]) for line in text.splitlines() if line.startswith("DRIVER_PEAK_RSS_KIB"))
    step = max(1, len(curve) // CURVE_POINTS)
    return {"wall_s": round(wall, 2), "driver_peak_rss_mib": round(rss / 1024, 1),
            "first_commit_s": round(first[0], 2) if first else None, "driver_rss_mib_curve": curve[::step]}


def rss_mib(pid: int) -> float:
    """The resident memory of process ``pid`` now, in MiB (0 when it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def commit_span(output: Path) -> float:
    """Seconds between the first and the last commit (the recorded commit times of the markers and the log)."""
    import pyarrow.fs as pafs

    from hummingml.output import read_markers

    times = [m.time_ns for m in read_markers(pafs.LocalFileSystem(), str(output), log=None)[0]]
    return (max(times) - min(times)) / 1e9 if len(times) > 1 else 0.0


def measure(n: int, work: Path, tones: list[Path], flags: list[str]) -> dict[str, Any]:
    """Both runs at one size."""
    manifest = write_manifest(work, n, tones)
    output = work / f"out-{n}"
    shutil.rmtree(output, ignore_errors=True)  # an output of an earlier run in the same --work: start afresh
    first = run_job(manifest, output, flags, work / f"log-{n}-first.txt")
    summary = json.loads((output / "summary.json").read_text())
    segments = summary["feature_rows"] + summary["error_rows"]
    span = commit_span(output)
    files = output_files(output)
    before = snapshot(output)
    resume = run_job(manifest, output, flags, work / f"log-{n}-resume.txt")
    wrote = sorted(snapshot(output) - before)
    return {
        "inputs": n,
        "segments": segments,
        "accounted": summary["accounted"],
        "driver_peak_rss_mib": first["driver_peak_rss_mib"],
        "driver_rss_mib_curve": first["driver_rss_mib_curve"],
        "first_commit_s": first["first_commit_s"],
        "wall_s": first["wall_s"],
        "segments_per_s": round(segments / span, 1) if span else None,
        "segments_per_s_whole_run": round(segments / first["wall_s"], 1),
        "resume_s": resume["wall_s"],
        "resume_driver_peak_rss_mib": resume["driver_peak_rss_mib"],
        "resume_wrote": wrote[:10],
        "files": files,
    }


def main() -> None:
    """Parse the flags, run every size, write the results JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", default="10000,100000,1000000", help="comma-separated manifest sizes")
    ap.add_argument("--distinct", type=int, default=2000, help="distinct tiny WAV files the rows point at")
    ap.add_argument("--seconds", type=float, default=0.5, help="length of each tiny file")
    ap.add_argument("--work", default="", help="working folder (default: a new temporary one, kept)")
    ap.add_argument("--out", default="benchmarks/results/scale.json", help="results JSON")
    ap.add_argument("--job-flags", default="", help='extra flags for the extraction job, e.g. "--writers 2"')
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="hml-scale-"))
    tones = write_tones(work / "tones", args.distinct, args.seconds)
    results = []
    for n in (int(x) for x in args.inputs.split(",")):
        results.append(measure(n, work, tones, shlex.split(args.job_flags)))
        print(json.dumps(results[-1]), flush=True)
    record = {
        "command": "python -m benchmarks.scale " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "distinct_files": args.distinct,
        "file_seconds": args.seconds,
        "job_flags": args.job_flags,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
