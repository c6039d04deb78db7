"""The batch remix on a local Ray: every upload ends as a remix or an error row, once, across reruns and changes."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hummingml.config import ConfigError
from hummingml.extract.store import Lease, LeaseHeld, OutputStore
from hummingml.serve.config import RemixBatchConfig
from hummingml.serve.ray import run_batch
from hummingml.testing.corpus import make_song
from hummingml.weights.config import ModelsConfig
from schemas.remix import REMIX_SETS

pytestmark = pytest.mark.slow


def current_rows(out: Path) -> dict[str, list[str]]:
    """set -> source_uri of each current row."""
    from hummingml.output import read_set

    return {name: sorted(read_set(str(out), name).column("source_uri").to_pylist()) for name in REMIX_SETS}


@pytest.fixture()
def uploads(tmp_path: Path) -> Path:
    folder = tmp_path / "uploads"
    folder.mkdir()
    for i in range(2):
        sf.write(folder / f"song{i}.wav", make_song(i, seed=9, seconds=2.0).mix.T, 44_100, subtype="PCM_16")
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVE" + b"\x00" * 64)
    return folder


def test_every_upload_is_remixed_once_across_reruns_and_changes(ray_local, uploads: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = RemixBatchConfig(input=str(uploads), output=str(out), commit_rows=2, actors=1,
                           models=ModelsConfig(kind="tiny", cache_dir=str(tmp_path / "models")))  # fmt: skip
    summary = run_batch(cfg, log=io.StringIO())
    assert (summary["inputs"], summary["remixed"], summary["failed"], summary["accounted"]) == (3, 2, 1, True)
    rows = current_rows(out)
    assert rows["remix"] == sorted(str(uploads / f"song{i}.wav") for i in range(2))
    assert rows["errors"] == [str(uploads / "broken.wav")]
    from hummingml.output import read_set

    remix = read_set(str(out), "remix").to_pylist()[0]
    audio, rate = sf.read(io.BytesIO(remix["audio_flac"]), always_2d=True)
    assert rate == 44_100 and audio.shape == (88_200, 2) and remix["duration_s"] == pytest.approx(2.0)
    error = read_set(str(out), "errors").to_pylist()[0]
    assert error["stage"] in ("decode", "read") and error["message"]
    markers = len(OutputStore(str(out), log=None).markers())

    # the same uploads named another way, from another directory: nothing to do
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        again = run_batch(
            RemixBatchConfig(**{**cfg.__dict__, "input": "uploads/./", "output": "out"}), log=io.StringIO()
        )
    finally:
        os.chdir(cwd)
    assert (again["skipped"], again["remixed"], again["failed"], again["accounted"]) == (3, 0, 0, True)
    assert len(OutputStore(str(out), log=None).markers()) == markers

    # a repaired upload is remixed again, and its error row is superseded
    shutil.copy(uploads / "song0.wav", uploads / "broken.wav")
    fixed = run_batch(cfg, log=io.StringIO())
    assert (fixed["skipped"], fixed["remixed"], fixed["failed"]) == (2, 1, 0)
    rows = current_rows(out)
    assert len(rows["remix"]) == 3 and rows["errors"] == []


def test_a_second_driver_and_another_config_are_refused(ray_local, uploads: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = RemixBatchConfig(input=str(uploads), output=str(out), limit=1,
                           models=ModelsConfig(kind="tiny", cache_dir=str(tmp_path / "models")))  # fmt: skip
    held = Lease.acquire(OutputStore(str(out), log=None), timeout_s=60)
    try:
        with pytest.raises(LeaseHeld):
            run_batch(cfg, log=io.StringIO())
    finally:
        held.release()
    first = run_batch(cfg, log=io.StringIO())  # --limit 1: one upload now, the rest left for later
    assert (first["remixed"] + first["failed"], first["left_by_limit"], first["accounted"]) == (1, 2, False)
    with pytest.raises(ConfigError, match="instrument"):
        run_batch(RemixBatchConfig(**{**cfg.__dict__, "instrument": "organ"}), log=io.StringIO())
    assert np.isfinite(first["seconds"])
