"""Shared fixtures; also keeps every cache and temp file of the libraries out of the home folder."""

from __future__ import annotations

import os
import tempfile

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

    from hummingml.corpus import write_corpus
    from hummingml.extract import run
    from hummingml.models import ModelsConfig
    from hummingml.pipeline import ExtractConfig

    root = tmp_path_factory.mktemp("features")
    write_corpus(root / "corpus", n_songs=2, seed=5, seconds=4.0)
    cfg = ExtractConfig(input=str(root / "corpus" / "manifest.jsonl"), output=str(root / "features"), segment_s=4.0,
                        models=ModelsConfig(kind="tiny", cache_dir=str(root / "models")))
    summary = run(cfg, log=io.StringIO())
    assert summary["ok"] == 2
    return root / "features"
