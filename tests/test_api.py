"""The Python API (``hummingml.read_features``, ``decode_codes``, ``run_extraction``, ...) and ``--version``."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hummingml
from hummingml.config import ConfigError
from hummingml.output import read_set
from hummingml.weights.config import ModelsConfig

ROOT = Path(__file__).resolve().parents[1]


def test_importing_hummingml_loads_the_api_lazily_without_torch_or_ray() -> None:
    code = (
        "import sys, hummingml\n"
        "heavy = lambda: sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray'})\n"
        "print(heavy(), 'hummingml.api' in sys.modules)\n"
        "functions = [hummingml.run_extraction, hummingml.read_features, hummingml.read_codes,\n"
        "             hummingml.load_codec, hummingml.decode_codes]\n"
        "print(heavy(), all(f.__module__.startswith('hummingml.') for f in functions))\n"
        "import hummingml.extract.job\n"
        "print(type(hummingml.extract).__name__, set(hummingml.API) <= set(dir(hummingml)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.splitlines() == ["[] False", "[] True", "module True"], done.stderr
    with pytest.raises(AttributeError, match="no attribute 'extract_everything'"):
        hummingml.extract_everything  # noqa: B018


@pytest.mark.parametrize("module", ["hummingml.cli", "ray_jobs.extract", "ray_jobs.train", "ray_jobs.evaluate"])
def test_version_flag_prints_the_package_version(module: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, f"hummingml {hummingml.__version__}\n", "")
    declared = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert declared is not None and declared.group(1) == hummingml.__version__


def test_run_extraction_builds_the_jobs_config_from_python_values(monkeypatch, tmp_path: Path) -> None:
    import hummingml.extract.job as job

    seen = []
    monkeypatch.setattr(job, "run", lambda cfg, log: seen.append(cfg) or {"ok": 0})
    summary = hummingml.run_extraction(
        str(tmp_path / "in"), str(tmp_path / "out"), segment_s=4.0, melodic_stems=["vocals"],
        models=ModelsConfig(kind="tiny", seed=3), models_cache_dir=str(tmp_path / "models"), codec_n_codebooks=2,
        retry_errors=True, log=io.StringIO(),
    )  # fmt: skip
    cfg = seen[0]
    assert summary == {"ok": 0}
    assert (cfg.input, cfg.output, cfg.segment_s, cfg.melodic_stems) == (
        str(tmp_path / "in"), str(tmp_path / "out"), 4.0, ("vocals",))  # fmt: skip
    assert (cfg.models.kind, cfg.models.seed, cfg.models.cache_dir) == ("tiny", 3, str(tmp_path / "models"))
    assert (cfg.codec.n_codebooks, cfg.retry_errors, cfg.stem_channels) == (2, True, "mono")  # the rest: defaults


def test_run_extraction_refuses_bad_flags_before_creating_anything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        hummingml.run_extraction(str(tmp_path / "in"), str(tmp_path / "out"), segment_s=-1.0, models_seed=-2)
    assert {line.split()[0] for line in str(exc.value).splitlines()} == {"--segment-s", "--models-seed"}
    with pytest.raises(TypeError, match="unexpected keyword argument 'segment_seconds'"):
        hummingml.run_extraction(str(tmp_path / "in"), str(tmp_path / "out"), segment_seconds=4.0)
    with pytest.raises(TypeError, match="models must be a ModelsConfig, got dict"):
        hummingml.run_extraction(str(tmp_path / "in"), str(tmp_path / "out"), models={"kind": "tiny"})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_read_features_gives_the_current_rows_as_a_ray_dataset(demo_features: Path) -> None:
    import ray.data

    for name in ("audio-feature", "sine-audio-feature"):
        ds = hummingml.read_features(demo_features, name)
        assert isinstance(ds, ray.data.Dataset)
        current = read_set(str(demo_features), name, log=None)
        assert current is not None and ds.count() == current.num_rows > 0
        assert ds.schema().names == current.schema.names
        keys = sorted((r["source_id"], r["segment_index"]) for r in ds.select_columns(["source_id", "segment_index"])
                      .iter_rows())  # fmt: skip
        assert keys == sorted(zip(current["source_id"].to_pylist(), current["segment_index"].to_pylist(), strict=True))
    narrow = hummingml.read_features(str(demo_features), columns=["source_id", "n_frames"])
    assert narrow.schema().names == ["source_id", "n_frames"]
    assert all(row["n_frames"] > 0 for row in narrow.iter_rows())
    with pytest.raises(FileNotFoundError, match="no committed errors files"):  # every demo input succeeded
        hummingml.read_features(demo_features, "errors")
    with pytest.raises(ValueError, match="set_name must be one of"):
        hummingml.read_features(demo_features, "features")


@pytest.mark.slow
def test_decode_codes_of_a_row_read_with_ray(demo_features: Path, one_torch_thread) -> None:
    row = hummingml.read_features(demo_features, "sine-audio-feature").take(1)[0]
    codes = np.asarray(row["mono_codes"], dtype=np.int16)  # (1, n_codebooks, frames)
    audio, rate = hummingml.decode_codes(codes, demo_features, device="cpu")  # the DAC the output records
    assert audio.dtype == np.float32 and rate == 44_100
    assert audio.shape == (1, codes.shape[2] * 512) and np.isfinite(audio).all() and np.abs(audio).max() > 0
    stored = hummingml.read_codes(demo_features, row["source_id"], row["segment_index"], "mono")
    np.testing.assert_array_equal(stored.codes, codes)  # the command's reader finds the same row
    model = hummingml.load_codec(demo_features, device="cpu")
    again, _ = hummingml.decode_codes(stored.codes, model=model)
    np.testing.assert_allclose(again, audio, atol=1e-5)


@pytest.mark.slow
def test_read_features_drops_superseded_rows(ray_local, tmp_path: Path) -> None:
    """A source whose input changed: both versions' rows are in the files, the Dataset holds the newer one only."""
    from hummingml.extract.store import OutputStore
    from tests.test_decode import SOURCE, feature_rows

    store = OutputStore(str(tmp_path), log=None)
    store.commit(feature_rows(0, "1:1", salt=1), [(SOURCE, 0, 1, True, "1:1")], {})
    store.commit(feature_rows(0, "2:2", salt=2), [(SOURCE, 0, 1, True, "2:2")], {})
    assert len(list((tmp_path / "sine-audio-feature").glob("*.parquet"))) == 2
    rows = hummingml.read_features(tmp_path, "sine-audio-feature").take_all()
    assert [(r["source_id"], r["source_version"]) for r in rows] == [(SOURCE, "2:2")]
    narrow = hummingml.read_features(tmp_path, columns=["source_version"]).take_all()  # the key is read, then dropped
    assert narrow == [{"source_version": "2:2"}]
