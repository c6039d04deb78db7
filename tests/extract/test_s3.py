"""Extraction from and to an S3 bucket, served by moto's S3 server on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from hummingml.extract.sources import list_sources, read_bytes

pytestmark = pytest.mark.slow


def test_listing_and_reading_objects(s3) -> None:
    query = s3.query
    sources = list_sources(f"s3://audio/mix/?{query}")
    assert [s.uri.split("?")[0].rsplit("/", 1)[-1] for s in sources] == ["bad.wav", "song_00000.wav", "song_00001.wav"]
    assert read_bytes(sources[1].uri)[:4] == b"RIFF"
    from hummingml.audio import DecodeError

    with pytest.raises(DecodeError) as info:
        read_bytes(f"s3://audio/mix/missing.wav?{query}")
    assert info.value.kind == "not_found"


def test_open_source_downloads_once_and_spills_large_objects_to_disk(s3, monkeypatch) -> None:
    import hashlib

    from hummingml.audio import DecodeError
    from hummingml.extract import sources

    uri = f"s3://audio/mix/song_00000.wav?{s3.query}"
    data = read_bytes(uri)
    for spool, on_disk in ((len(data) + 1, False), (1024, True)):
        monkeypatch.setattr(sources, "SPOOL_BYTES", spool)
        monkeypatch.setattr(sources, "CHUNK_BYTES", 4096)
        with sources.open_source(uri) as opened:
            assert (opened.size, opened.sha256) == (len(data), hashlib.sha256(data).hexdigest())
            assert opened.file._rolled is on_disk  # SpooledTemporaryFile: in memory up to SPOOL_BYTES
            assert opened.file.read() == data
    with pytest.raises(DecodeError) as info:
        sources.open_source(f"s3://audio/mix/missing.wav?{s3.query}")
    assert info.value.kind == "not_found"


def test_extraction_from_s3_to_s3(s3, tmp_path) -> None:
    # its own driver and a new local Ray (not the session's), so that every worker gets the test's AWS variables
    query, client = s3.query, s3.client
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ray_jobs.extract",
            "--input",
            f"s3://audio/mix/?{query}",
            "--output",
            f"s3://audio/features/?{query}",
            "--segment-s",
            "2",
            "--models-cache-dir",
            str(tmp_path / "models"),
        ],
        env={**os.environ, "RAY_ADDRESS": "local"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(client.get_object(Bucket="audio", Key="features/summary.json")["Body"].read())
    assert (summary["inputs"], summary["ok"], summary["failed"], summary["accounted"]) == (3, 2, 1, True)
    fs, _ = pafs.FileSystem.from_uri(f"s3://audio/features/?{query}")
    rows = pads.dataset("audio/features/audio-feature", filesystem=fs, format="parquet").to_table().num_rows
    assert rows == 2
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="audio", Prefix="features/")["Contents"]}
    staged_files = [k for k in keys if "/_staging/" in k and not k.endswith("/")]
    assert staged_files == [], keys  # every staged file was moved into place (empty directory markers may stay)
