"""The extraction's metrics: what the steps report in one process, what a real Ray node exports to Prometheus after a
small extraction, and the Grafana dashboard and docs/monitoring.md against the metrics the code defines."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pytest

from hummingml.audio import FRAME_RATE
from hummingml.extract.config import ExtractConfig, run_metadata
from hummingml.extract.metrics import LATENCY_BUCKETS_S, METRICS, STAGES, StepMetrics
from hummingml.extract.record import source_rows
from hummingml.extract.sources import Source
from hummingml.extract.steps import CodecStep, CommitStep, DecodeStep, PitchStep, SeparateStep
from hummingml.stages.null import null_identities
from hummingml.testing.corpus import write_corpus

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "hummingml.json"
MONITORING = REPO / "docs" / "monitoring.md"
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
SEGMENT_S = 2.0
SONG_S = 4.0  # two segments per song


def corpus(root: Path) -> tuple[Path, int]:
    """Two songs and a file that is not audio (an error row of stage decode); returns the folder and its bytes."""
    write_corpus(root, n_songs=2, seed=5, seconds=SONG_S)
    (root / "mix" / "bad.wav").write_bytes(b"not audio at all" * 8)
    return root / "mix", sum(p.stat().st_size for p in (root / "mix").iterdir())


def parquet_bytes(output: Path) -> int:
    return sum(p.stat().st_size for p in output.rglob("*.parquet") if "_staging" not in p.parts)


# --- one process: the steps' calls -------------------------------------------------------------------------------


class Recorder(StepMetrics):
    """A reporter that keeps every call: counter sums, gauge values in order, histogram observations."""

    def __init__(self) -> None:
        super().__init__()
        self.counters: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.gauges: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
        self.observations: defaultdict[tuple[str, str], list[float]] = defaultdict(list)

    def inc(self, metric: str, value: float, tags: dict[str, str] | None = None) -> None:
        self.counters[(metric, json.dumps(tags or {}))] += value

    def set(self, metric: str, value: float, tags: dict[str, str] | None = None) -> None:
        self.gauges[(metric, (tags or {}).get("stage", ""))].append(value)

    def observe(self, metric: str, value: float, tags: dict[str, str] | None = None) -> None:
        self.observations[(metric, (tags or {})["stage"])].append(value)


def test_each_step_reports_its_batches_bytes_and_errors(tmp_path) -> None:
    mix, input_bytes = corpus(tmp_path / "corpus")
    cfg = ExtractConfig(output=str(tmp_path / "out"), segment_s=SEGMENT_S, stages="null")
    rec = Recorder()
    decode = DecodeStep(cfg, metrics=lambda: rec)
    models = [cls(cfg, metrics=lambda: rec) for cls in (SeparateStep, PitchStep, CodecStep)]
    commit = CommitStep(cfg, run_metadata(cfg, null_identities()), FRAME_RATE, metrics=lambda: rec)
    sources = [Source(str(p), p.stem) for p in sorted(mix.iterdir())]
    finished = []
    for batch in decode.batches(source_rows(sources, {})):
        for step in models:
            batch = step(batch)
        finished.append(batch)
    summary = commit(pa.concat_tables(finished))

    segments = round(2 * SONG_S / SEGMENT_S)
    assert int(summary["ok"].sum()) == segments and list(summary["stage"]).count("decode") == 1
    rows = segments + 1  # and the error row
    for stage in STAGES:
        per_segment = rec.observations[("hummingml_segment_seconds", stage)]
        assert len(per_segment) == (rows if stage == "commit" else segments), stage  # error rows are not worked on
        batches = rec.observations[("hummingml_batch_seconds", stage)]
        assert batches and all(s >= 0 for s in batches + per_segment), stage
        assert sum(per_segment) <= sum(batches) * (1 + 1e-9), stage  # a batch's time shared by its segments
        for gauge in ("hummingml_in_flight_rows", "hummingml_in_flight_batches"):
            values = rec.gauges[(gauge, stage)]
            assert max(values) > 0 and values[-1] == 0, (gauge, stage, values)  # inside while running, then none
    assert len(rec.observations[("hummingml_batch_seconds", "separate")]) == rows  # one row per model batch
    assert rec.counters[("hummingml_read_bytes", "{}")] == input_bytes
    assert rec.counters[("hummingml_written_bytes", "{}")] == parquet_bytes(tmp_path / "out") > 0
    assert rec.counters[("hummingml_errors", '{"stage": "decode"}')] == 1
    assert rec.counters[("hummingml_segments", '{"status": "ok"}')] == segments


def test_a_failing_batch_is_timed_and_leaves_nothing_in_flight() -> None:
    rec = Recorder()
    with pytest.raises(RuntimeError), rec.timed("codec", 3):
        raise RuntimeError("the model died")
    assert rec.gauges[("hummingml_in_flight_rows", "codec")] == [3, 0]
    assert len(rec.observations[("hummingml_batch_seconds", "codec")]) == 1
    assert len(rec.observations[("hummingml_segment_seconds", "codec")]) == 3


# --- the dashboard and the docs ----------------------------------------------------------------------------------

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                   "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, keywords, labels or numbers."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors (and Grafana's $__rate_interval)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        before = expr[m.start() - 1] if m.start() else " "
        if before.isdigit() or before == "." or expr[m.end() :].lstrip().startswith("("):
            continue  # an exponent (1e-9), or a function or aggregation
        if m.group().lower() not in PROMQL_KEYWORDS:
            names.add(m.group())
    return names


def defined(exported: str) -> str | None:
    """The metric of :data:`METRICS` that Ray exports under ``exported``, or None."""
    for name, metric in METRICS.items():
        if any(exported == f"ray_{name}{suffix}" for suffix in SUFFIXES[metric.kind]):
            return name
    return None


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('histogram_quantile(0.95, sum by (stage, le) (rate(ray_x_bucket{stage="codec"}[$__rate_interval])))',
         {"ray_x_bucket"}),
        ("(sum(a) - sum(b)) / (sum(deriv(c[15m])) > 1e-9) and on(job) d", {"a", "b", "c", "d"}),
    ],
)  # fmt: skip
def test_the_promql_reader_finds_the_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


def test_the_dashboard_is_grafana_json_on_a_prometheus_variable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]
        assert all(t["datasource"] == panel["datasource"] and t["expr"].strip() for t in panel["targets"])


def test_the_dashboard_queries_only_the_metrics_the_code_defines() -> None:
    exprs = dashboard_exprs()
    names = {name: defined(name) for expr in exprs for name in promql_metric_names(expr)}
    assert all(promql_metric_names(expr) for expr in exprs)
    assert not {n for n, d in names.items() if d is None}, "not defined in hummingml.extract.metrics.METRICS"
    assert set(names.values()) == set(METRICS)  # and every metric has a panel
    for expr in exprs:  # quantiles are read from the buckets of a histogram
        if "histogram_quantile" in expr:
            assert all(n.endswith("_bucket") for n in promql_metric_names(expr)), expr


def test_the_monitoring_doc_lists_every_metric_as_exported() -> None:
    text = MONITORING.read_text()
    for name, metric in METRICS.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `ray_{name}")), "")
        assert metric.kind in row and all(f"`{k}`" in row for k in metric.tag_keys), name
    histograms = {f"ray_{name}" for name, metric in METRICS.items() if metric.kind == "histogram"}  # their families
    documented = set(re.findall(r"\bray_hummingml_\w+", text))
    assert not {m for m in documented if not defined(m) and m not in histograms}


# --- a real Ray node's Prometheus endpoint -------------------------------------------------------------------------

# The driver: a local Ray with a known metrics export port, one extraction, its summary on stdout; it keeps the node
# up until its stdin closes.
DRIVER = """
import json, sys
import ray
from hummingml.extract.config import ExtractConfig
from hummingml.extract.job import run

port, mix, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _metrics_export_port=port)
summary = run(ExtractConfig(input=mix, output=out, segment_s=float(sys.argv[4]), stages="null"), log=sys.stderr)
print(json.dumps({k: summary[k] for k in ("inputs", "ok", "failed", "feature_rows", "error_rows")}), flush=True)
sys.stdin.read()
ray.shutdown()
"""
SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
Sample = tuple[str, dict[str, str], float]


def scrape(url: str) -> list[Sample]:
    """The samples of a Prometheus text exposition."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = []
    for line in text.splitlines():
        if (m := SAMPLE.match(line)) and not line.startswith("#"):
            samples.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return samples


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum over the series of ``name`` whose labels include ``labels`` (each worker exports its own series)."""
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_ray_node_exports_every_stage_after_an_extraction(tmp_path) -> None:
    mix, input_bytes = corpus(tmp_path / "corpus")
    out, port = tmp_path / "out", free_port()
    env = {**os.environ, "RAY_ADDRESS": ""}
    with (tmp_path / "driver.log").open("w") as log:
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(port), str(mix), str(out), str(SEGMENT_S)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    seen: dict[str, float] = {}  # the driver's gauges are exported while its pipeline runs: watch them all along
    in_flight: defaultdict[str, set[str]] = defaultdict(set)  # gauge -> the stages it was exported for
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(1.0):
            try:
                samples = scrape(url)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                continue
            for gauge in ("ray_hummingml_inputs_planned", "ray_hummingml_inputs_done"):
                if any(n == gauge for n, _, _ in samples):
                    seen[gauge] = max(seen.get(gauge, 0.0), total(samples, gauge))
            for name, labels, _ in samples:
                if name in ("ray_hummingml_in_flight_rows", "ray_hummingml_in_flight_batches"):
                    in_flight[name].add(labels["stage"])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        line = driver.stdout.readline() if driver.stdout else ""
        assert line, (tmp_path / "driver.log").read_text()[-3000:]
        summary = json.loads(line)
        segments = round(2 * SONG_S / SEGMENT_S)
        assert (summary["inputs"], summary["ok"], summary["feature_rows"], summary["error_rows"]) == (3, 2, 4, 1)
        expected = {  # (metric, stage or status) -> value once every process has reported (every ~10 s)
            **{("ray_hummingml_segment_seconds_count", s): segments for s in STAGES if s != "commit"},
            ("ray_hummingml_segment_seconds_count", "commit"): segments + 1,
            ("ray_hummingml_batch_seconds_count", "separate"): segments + 1,  # one row per model batch
            ("ray_hummingml_errors_total", "decode"): 1,
            ("ray_hummingml_segments_total", "ok"): segments,
            ("ray_hummingml_read_bytes_total", ""): input_bytes,
            ("ray_hummingml_written_bytes_total", ""): parquet_bytes(out),
            ("ray_hummingml_audio_seconds_total", ""): 2 * SONG_S,
        }
        driver_gauges = {"ray_hummingml_inputs_planned": 3, "ray_hummingml_inputs_done": 3}  # the highest seen

        def value(samples: list[Sample], metric: str, tag: str) -> float:
            key = "status" if metric == "ray_hummingml_segments_total" else "stage"
            return total(samples, metric, **({key: tag} if tag else {}))

        deadline, samples = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            samples = scrape(url)
            if all(value(samples, m, t) == v for (m, t), v in expected.items()) and seen == driver_gauges:
                break
            time.sleep(1.0)
        assert {k: value(samples, *k) for k in expected} == expected
        assert seen == driver_gauges
        for stage in STAGES:
            for histogram in ("ray_hummingml_segment_seconds", "ray_hummingml_batch_seconds"):
                buckets: defaultdict[float, float] = defaultdict(float)
                for name, labels, v in samples:
                    if name == f"{histogram}_bucket" and labels.get("stage") == stage:
                        buckets[float(labels["le"])] += v
                bounds = sorted(buckets)
                assert bounds == [*LATENCY_BUCKETS_S, float("inf")], (histogram, stage)
                counts = [buckets[b] for b in bounds]
                assert counts == sorted(counts) and counts[-1] == total(samples, f"{histogram}_count", stage=stage)
                assert counts[-1] > 0, (histogram, stage)
        for gauge in ("ray_hummingml_in_flight_rows", "ray_hummingml_in_flight_batches"):
            assert in_flight[gauge] == set(STAGES), gauge  # every stage's processes exported it
            assert total(samples, gauge) == 0  # nothing is left inside a stage
        exported = {name for name, _, _ in samples} | set(seen) | set(in_flight)
        missing = {n for expr in dashboard_exprs() for n in promql_metric_names(expr)} - exported
        assert not missing, f"the dashboard queries series this node does not export: {sorted(missing)}"
    finally:
        stop.set()
        if driver.stdin:
            driver.stdin.close()
        try:
            driver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            driver.kill()
