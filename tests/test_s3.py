"""Extraction from and to an S3 bucket, served by moto's S3 server on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from hummingml.corpus import write_corpus
from hummingml.sources import list_sources, read_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with a bucket holding a two-song corpus and a bad file."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    mp = pytest.MonkeyPatch()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        mp.setenv(key, value)
    endpoint = f"127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1")
    client.create_bucket(Bucket="audio")
    corpus = tmp_path_factory.mktemp("s3corpus")
    write_corpus(corpus, n_songs=2, seed=4, seconds=2.0)
    for path in sorted((corpus / "mix").glob("*.wav")):
        client.upload_file(str(path), "audio", f"mix/{path.name}")
    client.put_object(Bucket="audio", Key="mix/bad.wav", Body=b"not audio at all" * 8)
    yield f"endpoint_override={endpoint}&scheme=http&region=us-east-1", client
    server.stop()
    mp.undo()


def test_listing_and_reading_objects(s3) -> None:
    query, _ = s3
    sources = list_sources(f"s3://audio/mix/?{query}")
    assert [s.uri.split("?")[0].rsplit("/", 1)[-1] for s in sources] == ["bad.wav", "song_00000.wav", "song_00001.wav"]
    assert read_bytes(sources[1].uri)[:4] == b"RIFF"
    from hummingml.audio import DecodeError

    with pytest.raises(DecodeError) as info:
        read_bytes(f"s3://audio/mix/missing.wav?{query}")
    assert info.value.kind == "not_found"


def test_extraction_from_s3_to_s3(s3, tmp_path) -> None:
    # its own driver and a new local Ray (not the session's), so that every worker gets the test's AWS variables
    query, client = s3
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
