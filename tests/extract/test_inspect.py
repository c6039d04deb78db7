from __future__ import annotations

import io
import json

import pytest

from hummingml.extract.demo import run_demo
from hummingml.extract.inspect import describe, main

pytestmark = pytest.mark.slow


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
    log_view = report["commit_log"]
    assert (log_view["sources"], log_view["complete_ok"], log_view["complete_failed"]) == (2, 1, 1)
    assert (log_view["feature_rows"], log_view["error_rows"], log_view["superseded_rows"]) == (1, 1, 0)
    png = tmp_path / "report.png"
    out = io.StringIO()
    assert main(str(tmp_path / "demo" / "features"), str(png), log=out) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert json.loads(out.getvalue().split("report written")[0])["feature_rows"] == 1
