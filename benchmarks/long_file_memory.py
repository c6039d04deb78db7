"""Peak memory of the decode stage (read, decode, resample, cut into segments) on one long file, by length.

    python -m benchmarks.long_file_memory --minutes 10,30,60 --out benchmarks/results/long_file_memory.json

Each length runs in a fresh process: a stereo 44.1 kHz 16-bit WAV of that length is written, then
``hummingml.extract.steps.DecodeStep.batches`` turns it into 30 s segments exactly as the extraction job's decode task
does (one batch per segment, handed on as it is made). The peak resident memory (``ru_maxrss`` of the child) is
reported next to the file size, so any growth per minute of input is visible.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine

CHILD = """
import resource, sys, time
from hummingml.extract.config import ExtractConfig
from hummingml.extract.record import source_rows
from hummingml.extract.steps import DecodeStep
from hummingml.extract.sources import Source
t = time.perf_counter()
n = sum(1 for _ in DecodeStep(ExtractConfig(segment_s=30.0)).batches(source_rows([Source(sys.argv[1], "x")])))
print(n, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_wav(path: Path, minutes: float) -> int:
    """A stereo 44.1 kHz 16-bit WAV of quiet noise, written in blocks; returns its size in bytes."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=44_100, channels=2, subtype="PCM_16") as f:
        for _ in range(int(minutes * 60)):
            f.write(rng.uniform(-0.1, 0.1, (44_100, 2)).astype(np.float32))
    return path.stat().st_size


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure every length and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", default="10,30,60", help="file lengths to measure")
    p.add_argument("--out", default="benchmarks/results/long_file_memory.json", help="result JSON")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in (float(m) for m in args.minutes.split(",")):
            wav = Path(tmp) / f"{minutes:g}min.wav"
            size = write_wav(wav, minutes)
            done = subprocess.run([sys.executable, "-c", CHILD, str(wav)], capture_output=True, text=True, check=True)
            segments, seconds, maxrss_kib = done.stdout.split()[-3:]
            rows.append({"minutes": minutes, "file_mib": round(size / 2**20, 1), "segments": int(segments),
                         "decode_s": round(float(seconds), 2), "peak_rss_mib": round(int(maxrss_kib) / 1024, 1)})
            print(json.dumps(rows[-1]), flush=True)
            wav.unlink()
    report = {
        "command": "python -m benchmarks.long_file_memory " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine(),
        "self_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "lengths": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
