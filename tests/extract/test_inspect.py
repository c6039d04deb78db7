from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from hummingml.config import ConfigError
from hummingml.extract.card import RANDOM_WARNING
from hummingml.extract.demo import run_demo
from hummingml.extract.inspect import MELODY_LEAVES, codebook_usage, describe, main, read_columns, report_figure
from schemas.features import CODES

PNG = b"\x89PNG\r\n\x1a\n"


def banners(out: str) -> list[str]:
    """The title of every page of the report."""
    import matplotlib.pyplot as plt

    fig = report_figure(out)
    try:
        return [page.get_suptitle() for page in fig.subfigs]
    finally:
        plt.close(fig)


@pytest.mark.slow
def test_demo_then_inspect(ray_local, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HUMMINGML_CACHE", str(tmp_path / "models"))
    log = io.StringIO()
    summary = run_demo(str(tmp_path / "demo"), songs=1, seconds=3.0, log=log)
    text = log.getvalue()
    assert "USING TINY RANDOM-WEIGHT MODELS" in text
    assert (summary["inputs"], summary["ok"], summary["failed"], summary["accounted"]) == (2, 1, 1, True)
    report = describe(str(tmp_path / "demo" / "features"))
    assert report["feature_rows"] == 1 and report["duplicate_keys"] == 0 and report["error_rows"] == 1
    assert report["errors_by_stage_and_type"] == {"decode / DecodeError:truncated": 1}
    assert report["random_weights"] is True
    log_view = report["commit_log"]
    assert (log_view["sources"], log_view["complete_ok"], log_view["complete_failed"]) == (2, 1, 1)
    assert (log_view["feature_rows"], log_view["error_rows"], log_view["superseded_rows"]) == (1, 1, 0)
    png = tmp_path / "report.png"
    out = io.StringIO()
    assert main(str(tmp_path / "demo" / "features"), str(png), log=out) == 0
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    assert json.loads(out.getvalue().split("report written")[0])["feature_rows"] == 1
    pages = banners(str(tmp_path / "demo" / "features"))
    assert len(pages) == 2 and all(RANDOM_WARNING in title for title in pages)  # the overview, then the examples
    assert "overview" in pages[0]


@pytest.mark.slow
def test_reads_only_the_columns_it_shows(demo_features) -> None:
    sine = read_columns(str(demo_features), "sine-audio-feature", MELODY_LEAVES[:2], max_rows=1)
    assert sine is not None and sine.num_rows == 1
    assert sine.column_names == ["melody", "source_id", "segment_index"]
    stream = sine.schema.field("melody").type.value_type
    assert [f.name for f in stream] == ["stream", "notes"]  # no midi, no sine codes
    assert [f.name for f in stream.field("notes").type.value_type] == ["start_s"]
    everything = read_columns(str(demo_features), "audio-feature", ["n_frames"])
    assert everything is not None and everything.column_names == ["n_frames", "source_id", "segment_index"]
    first = everything.slice(0, 1).to_pylist()[0]
    keyed = read_columns(str(demo_features), "audio-feature", ["channel_codes"],
                         keys={(first["source_id"], first["segment_index"])})  # fmt: skip
    assert keyed is not None and keyed.num_rows == 1 and keyed["source_id"][0].as_py() == first["source_id"]


@pytest.mark.slow
def test_inspect_of_an_output_on_s3(demo_features, s3, tmp_path) -> None:
    for path in sorted(p for p in Path(demo_features).rglob("*") if p.is_file()):
        s3.client.upload_file(str(path), "audio", f"out/{path.relative_to(demo_features).as_posix()}")
    uri = f"s3://audio/out?{s3.query}"
    local, remote = describe(str(demo_features)), describe(uri)
    assert {k: v for k, v in remote.items() if k != "output"} == {k: v for k, v in local.items() if k != "output"}
    png = tmp_path / "s3-report.png"
    assert main(uri, str(png), log=io.StringIO()) == 0 and png.read_bytes()[:8] == PNG
    assert all(RANDOM_WARNING in title for title in banners(uri))
    with pytest.raises(ConfigError, match="no extraction output"):
        main(f"s3://audio/nothing-here?{s3.query}")


def test_an_unknown_output_is_refused_and_nothing_is_created(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no extraction output"):
        main(str(tmp_path / "nothing-here"), str(tmp_path / "report.png"), log=io.StringIO())
    assert list(tmp_path.iterdir()) == []


def test_codebook_usage_counts_the_distinct_codes_of_each_level() -> None:
    stereo = [[[0, 1, 2, 3], [5, 5, 5, 5]], [[0, 0, 0, 4], [6, 6, 6, 6]]]  # (channels 2, levels 2, frames 4)
    mono = [[[7, 7], [5, 7]]]
    codes = pa.chunked_array([pa.array([stereo], CODES), pa.array([mono], CODES)])
    assert codebook_usage(codes, codebook_size=8).tolist() == [6 / 8, 3 / 8]
    usage = codebook_usage(pa.array([np.arange(24).reshape(1, 3, 8).tolist()], CODES), codebook_size=32)
    assert usage.tolist() == [8 / 32] * 3
