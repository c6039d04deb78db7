"""Time and memory to read an output's commit log: what a resumed run (and every reader) does before it starts.

    python -m benchmarks.commit_log --batches 1000,10000,100000 --out benchmarks/results/commit_log.json

For each size a fresh output root on local disk gets that many commit markers of ``--rows`` rows each, for sources
of ``--segments`` segments (synthetic keys, written as ``OutputStore.commit`` writes them, without Parquet files).
A fresh process then reads them and builds the current view (``OutputStore.current``); its wall time and peak
resident memory are reported. Then another process rolls the markers up (``OutputStore.roll_up``) and a third reads
the rolled-up log the same way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine

CHILD = """
import resource, sys, time
from hummingml.extract.store import OutputStore
store = OutputStore(sys.argv[1])
t = time.perf_counter()
n = store.roll_up(min_markers=1) if sys.argv[2] == "roll" else len(store.current().sources)
print(n, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_markers(root: Path, batches: int, rows: int, segments: int) -> None:
    """``batches`` markers of ``rows`` rows, sources of ``segments`` segments each, as the store writes them."""
    commits = root / "_commits"
    commits.mkdir(parents=True)
    now = time.time_ns()
    for b in range(batches):
        marker = {
            "format": 2,
            "batch": f"{b:024x}",
            "committed_unix_ns": now + b,
            "lease": "bench",
            "files": {f"_staging/{b:024x}/{name}.parquet": f"{name}/part-{b:024x}.parquet"
                      for name in ("audio-feature", "sine-audio-feature")},
            "rows": [[f"{(b * rows + r) // segments:032x}", (b * rows + r) % segments, segments, True, "1000:1"]
                     for r in range(rows)],
        }
        (commits / f"{b:024x}.json").write_text(json.dumps(marker))


def timed(root: Path, what: str = "read") -> dict[str, Any]:
    """One fresh process reading the log at ``root`` (``read``: sources found) or rolling it up (``roll``: markers
    rolled up): the count, seconds, peak RSS."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), what], check=True, capture_output=True, text=True)
    n, seconds, rss_kib = out.stdout.split()
    count = "markers" if what == "roll" else "sources"
    return {count: int(n), "seconds": round(float(seconds), 3), "peak_rss_mib": round(int(rss_kib) / 1024, 1)}


def run(batches: list[int], rows: int, segments: int, work: Path) -> dict[str, Any]:
    """The reading time and memory per size."""
    results = []
    for n in batches:
        root = work / f"out-{n}"
        write_markers(root, n, rows, segments)
        results.append({"batches": n, "rows": n * rows, **timed(root)})
        results[-1]["roll_up"] = timed(root, "roll")
        results[-1]["rolled_read"] = timed(root)
        print(json.dumps(results[-1]), flush=True)
    return {"benchmark": "commit_log", "machine": machine(), "rows_per_batch": rows, "segments_per_source": segments,
            "results": results}


def main(argv: list[str] | None = None) -> int:
    """Run and write the JSON report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="1000,10000", help="comma-separated marker counts")
    p.add_argument("--rows", type=int, default=32, help="rows per marker (the default --commit-rows)")
    p.add_argument("--segments", type=int, default=10, help="segments per source (10: a 5 min song in 30 s segments)")
    p.add_argument("--out", default="benchmarks/results/commit_log.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        report = run([int(b) for b in args.batches.split(",")], args.rows, args.segments, Path(work))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
