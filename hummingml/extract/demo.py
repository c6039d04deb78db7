"""``hummingml demo``: a synthesized corpus (plus one broken file) through the whole extraction on a local Ray."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from hummingml.cluster import connect, is_connected
from hummingml.extract.config import ExtractConfig
from hummingml.extract.job import run
from hummingml.testing.corpus import write_corpus
from hummingml.weights.config import ModelsConfig, cache_dir
from hummingml.weights.load import list_cached

BANNER = "=" * 78


def run_demo(out: str, songs: int = 3, seconds: float = 8.0, seed: int = 0, log: TextIO = sys.stdout) -> dict[str, Any]:
    """Write a corpus under ``out/corpus``, extract it into ``out/features``, print the summary; returns it.

    Uses the official pretrained models when they are already on disk, otherwise the tiny random-weight models.
    """
    root = Path(out)
    corpus = root / "corpus"
    write_corpus(corpus, n_songs=songs, seed=seed, seconds=seconds)
    # One broken upload, to show that a bad input becomes an error row and the job goes on.
    good = (corpus / "mix" / "song_00000.wav").read_bytes()
    (corpus / "mix" / "broken_upload.wav").write_bytes(good[: len(good) // 3])

    cached = {(i.kind, i.library) for i in list_cached(cache_dir(ModelsConfig()))}
    has_pretrained = {("pretrained", "descript-audio-codec"), ("pretrained", "demucs")} <= cached
    kind = "pretrained" if has_pretrained else "tiny"
    print(BANNER, file=log)
    if kind == "tiny":
        print("USING TINY RANDOM-WEIGHT MODELS (no official weights found on this machine).", file=log)
        print("The pipeline, files and accounting are real; the DAC codes and stems are NOT meaningful.", file=log)
        print("See README, 'Models', to point hummingml at the official weights.", file=log)
    else:
        print("Using the official pretrained DAC 44 kHz and htdemucs_6s weights.", file=log)
    print(BANNER, file=log, flush=True)

    os.environ.setdefault("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", "10")
    if is_connected():
        print("[demo] using the Ray instance this process is already connected to", file=log)
    else:
        dashboard = connect(dashboard=True)
        print(f"[demo] Ray dashboard: http://{dashboard}" if dashboard else "[demo] no Ray dashboard", file=log)
    cfg = ExtractConfig(
        input=str(corpus / "mix"), output=str(root / "features"), segment_s=4.0,
        models=dataclasses.replace(ModelsConfig(), kind=kind),
    )
    summary = run(cfg, log=log)
    print(BANNER, file=log)
    print(json.dumps({k: summary[k] for k in ("inputs", "ok", "failed", "unaccounted", "feature_rows", "error_rows",
                                              "random_weights", "outputs")}, indent=2), file=log)
    print(f"[demo] inspect with: hummingml inspect {root / 'features'}", file=log, flush=True)
    return summary
