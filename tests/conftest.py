"""Shared fixtures; also keeps every cache and temp file of the libraries out of the home folder."""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# numba (librosa/resampy) and Ray write caches; keep them in one temp dir per session unless CI set them already.
_scratch = tempfile.mkdtemp(prefix="hummingml-tests-")
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(_scratch, "numba"))
os.environ.setdefault("RAY_TMPDIR", os.path.join(_scratch, "ray"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests without CUDA and ``needs_weights`` tests without HUMMINGML_WEIGHTS_DIR."""
    import torch

    has_gpu = torch.cuda.is_available()
    has_weights = bool(os.environ.get("HUMMINGML_WEIGHTS_DIR"))
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU"))
        if "needs_weights" in item.keywords and not has_weights:
            item.add_marker(pytest.mark.skip(reason="HUMMINGML_WEIGHTS_DIR is not set"))


@pytest.fixture()
def one_torch_thread():
    """One intra-op thread: the test models are tiny, and two threads on a busy 2-core box spin for seconds a step."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance with 2 CPUs for the whole session (the size of a developer laptop or CI machine)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_features(ray_local, tmp_path_factory):
    """A small extraction output (two 4 s songs, tiny models) shared by the training tests."""
    import io

    from hummingml.extract.config import ExtractConfig
    from hummingml.extract.job import run
    from hummingml.testing.corpus import write_corpus
    from hummingml.weights.config import ModelsConfig

    root = tmp_path_factory.mktemp("features")
    write_corpus(root / "corpus", n_songs=2, seed=5, seconds=4.0)
    cfg = ExtractConfig(input=str(root / "corpus" / "manifest.jsonl"), output=str(root / "features"), segment_s=4.0,
                        models=ModelsConfig(kind="tiny", cache_dir=str(root / "models")))
    summary = run(cfg, log=io.StringIO())
    assert summary["ok"] == 2
    return root / "features"


@pytest.fixture(scope="session")
def trained_run(demo_features, tmp_path_factory):
    """``trained_run(preset)``: one short training run per preset on the demo features for the whole session, in this
    process (the training loop without Ray); returns (run dir, metrics of its last report)."""
    from hummingml.train.config import from_preset
    from hummingml.train.data import DataConfig, JoinedRows
    from hummingml.train.loop import DirectoryReporter, loop
    from hummingml.train.parallel.torch import local_process_group

    runs: dict[str, tuple[Path, dict[str, Any]]] = {}

    def train(preset: str) -> tuple[Path, dict[str, Any]]:
        if preset not in runs:
            data = DataConfig(features=str(demo_features), frames=64, timbre_min_frames=16, timbre_max_frames=32)
            storage = tmp_path_factory.mktemp("runs")
            cfg = from_preset(preset, name=preset, storage=str(storage), steps=10, checkpoint_every=10, batch_size=4,
                              data=data)
            reporter = DirectoryReporter(storage / preset)
            with local_process_group():
                loop(cfg, JoinedRows(cfg.data.features), reporter)
            runs[preset] = (storage / preset, reporter.history[-1])
        return runs[preset]

    return train


@dataclass
class S3Server:
    """A running moto S3 server: ``query`` is the pyarrow URI options that reach it; ``restart`` ends an outage."""

    server: Any
    client: Any
    query: str
    port: int

    def stop(self) -> None:
        """An outage: the endpoint refuses connections (the objects stay in moto's in-process backend)."""
        self.server.stop()

    def start(self) -> None:
        """The endpoint serves again on the same port, with the same objects."""
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)
        self.server.start()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with a bucket ``audio`` holding ``mix/``: a two-song corpus and a bad file."""
    import boto3
    from moto.server import ThreadedMotoServer

    from hummingml.testing.corpus import write_corpus

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
    handle = S3Server(server, client, f"endpoint_override={endpoint}&scheme=http&region=us-east-1", port)
    yield handle
    handle.server.stop()
    mp.undo()
