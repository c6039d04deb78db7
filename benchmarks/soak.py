"""Soak: extraction over many short files with hostile inputs mixed in and model actors killed at random.

    python -m benchmarks.soak --files 2000 --time-limit-s 3600 --out benchmarks/results/soak.json

Each file is a short synthetic tone, or (with probability ``--fault-rate``) a copy of one regular-file kind of the
hostile corpus (``hummingml.testing.hostile``), whose outcome is known. The extraction job runs as its own driver with a
local Ray; every ``--kill-every-s`` seconds one model actor (separation, pitch or codec) is killed. A job that exits
non-zero is rerun (it resumes) until every input is accounted for or the time limit passes.

The report (JSON, and a line on stdout): files per second, outcomes by error type, kills, job attempts, and the
accounting checks: every input ends as feature rows or one error row, as its kind expects, and no key repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine
from hummingml.extract.sources import canonical_uri, source_id
from hummingml.output import read_set
from hummingml.testing.hostile import Expected, encode, write_hostile_corpus
from hummingml.testing.signals import output_keys, sine

SEGMENT_S = 2.0
ACTORS = ("MapBatches(PipelineStep)", "MapBatches(SeparateStep)", "MapBatches(PitchStep)", "MapBatches(CodecStep)")


def write_soak_corpus(root: Path, files: int, fault_rate: float, seed: int) -> tuple[dict[str, Expected], int]:
    """``files`` inputs under ``root / "inputs"``; returns path -> expected outcome, and how many are hostile."""
    rng = random.Random(seed)
    hostile_dir = root / "hostile-kinds"
    kinds = [k for k in write_hostile_corpus(hostile_dir, SEGMENT_S) if (hostile_dir / k.path).is_file()
             and not (hostile_dir / k.path).is_symlink() and os.access(hostile_dir / k.path, os.R_OK)]
    inputs = root / "inputs"
    inputs.mkdir(parents=True)
    expected: dict[str, Expected] = {}
    hostile = 0
    for i in range(files):
        if rng.random() < fault_rate:
            hostile += 1
            kind = rng.choice(kinds)
            path = inputs / f"{i:06d}-{Path(kind.path).name[-40:]}"
            shutil.copyfile(hostile_dir / kind.path, path)
            expected[str(path)] = kind.expected
        else:
            path = inputs / f"{i:06d}.wav"
            seconds = rng.uniform(0.25, 1.5)
            tone = sine(rng.uniform(110.0, 880.0), seconds=seconds, sample_rate=22_050, amplitude=rng.uniform(0.1, 0.9))
            path.write_bytes(encode(np.repeat(tone, 2, axis=0), 22_050))
            expected[str(path)] = Expected(segments=1)
    return expected, hostile


def kill_one_actor(rng: random.Random) -> str | None:
    """Kill one running model actor; returns its name, or None when none runs."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        found.extend((p, name) for name in ACTORS if name in cmd)
    if not found:
        return None
    process, name = rng.choice(found)
    try:
        process.kill()
    except psutil.Error:
        return None
    return name


def run_job(inputs: Path, out: Path, models: Path, deadline: float, kill_every_s: float, rng: random.Random,
            kills: Counter) -> int | None:
    """One attempt of the extraction job; returns its exit code (None: stopped at the deadline)."""
    cmd = [sys.executable, "-m", "ray_jobs.extract", "--input", str(inputs), "--output", str(out),
           "--segment-s", str(SEGMENT_S), "--commit-rows", "16", "--models-kind", "tiny",
           "--models-cache-dir", str(models), "--max-failed-fraction", "1"]  # hostile inputs fail on purpose
    log = open(out.parent / "soak-job.log", "a")  # noqa: SIM115 - kept open for the child's lifetime
    proc = subprocess.Popen(cmd, env={**os.environ, "RAY_ADDRESS": "local"}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    next_kill = time.monotonic() + kill_every_s if kill_every_s > 0 else float("inf")
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if now > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return None
            if now > next_kill:
                name = kill_one_actor(rng)
                if name:
                    kills[name] += 1
                next_kill = now + kill_every_s * rng.uniform(0.5, 1.5)
            time.sleep(0.2)
        return proc.returncode
    finally:
        log.close()


def check(out: Path, expected: dict[str, Expected]) -> dict[str, Any]:
    """The accounting: outcomes against expectations, and no repeated key in any set."""
    by_id = {source_id(canonical_uri(str(path))): (path, e) for path, e in expected.items()}
    segments = Counter(sid for sid, _ in output_keys(out, "audio-feature"))
    error_table = read_set(str(out), "errors")
    errors = [] if error_table is None else error_table.to_pylist()
    error_of = {e["source_id"]: e for e in errors}
    wrong, missing = [], 0
    for sid, (path, e) in by_id.items():
        if sid not in segments and sid not in error_of:
            missing += 1
            continue
        got = error_of[sid]["error_type"] if sid in error_of else f"{segments[sid]} segments"
        want = e.error_type or f"{e.segments} segments"
        if got != want:
            wrong.append(f"{Path(path).name}: expected {want}, got {got}")
    duplicates = {name: len(keys) - len(set(keys)) for name in ("audio-feature", "sine-audio-feature", "errors")
                  for keys in [output_keys(out, name)]}
    return {
        "unaccounted": missing,
        "wrong_outcomes": wrong[:50],
        "n_wrong": len(wrong),
        "duplicate_keys": duplicates,
        "errors_by_type": dict(Counter(e["error_type"] for e in errors).most_common()),
        "feature_rows": sum(segments.values()),
        "holds": missing == 0 and not wrong and not any(duplicates.values()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the soak and write its report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=2000, help="inputs in the corpus")
    p.add_argument("--fault-rate", type=float, default=0.1, help="share of inputs that are hostile kinds")
    p.add_argument("--kill-every-s", type=float, default=30.0, help="mean seconds between model-actor kills (0: none)")
    p.add_argument("--time-limit-s", type=float, default=3600.0, help="stop (and report) after this long")
    p.add_argument("--seed", type=int, default=0, help="corpus, fault and kill choices")
    p.add_argument("--work", default="soak-work", help="scratch directory (emptied first)")
    p.add_argument("--out", default="", help="write the JSON report here")
    args = p.parse_args(argv)

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    expected, hostile = write_soak_corpus(work, args.files, args.fault_rate, args.seed)
    rng = random.Random(args.seed)
    kills: Counter = Counter()
    out = work / "out"
    started = time.monotonic()
    deadline = started + args.time_limit_s
    attempts = []
    while time.monotonic() < deadline:
        code = run_job(work / "inputs", out, work / "models", deadline, args.kill_every_s, rng, kills)
        attempts.append(code)
        if code == 0:
            break
    wall_s = time.monotonic() - started
    report = {
        "command": "python -m benchmarks.soak " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine(),
        "files": args.files,
        "hostile_inputs": hostile,
        "wall_s": round(wall_s, 1),
        "files_per_s": round(args.files / wall_s, 3),
        "actor_kills": dict(kills),
        "job_attempts": attempts,
        "finished": attempts[-1:] == [0],
        **check(out, expected),
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["holds"] else 1)
