"""``ray job submit`` of the extraction to a token-protected head started by the test (the README's commands)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hummingml.testing.corpus import write_corpus

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def token_head():
    token = secrets.token_hex(16)
    gcs, dashboard, metrics = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_ADDRESS": "",
    }
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--num-cpus",
            "2",
            "--port",
            str(gcs),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard),
            "--include-dashboard",
            "true",
            "--ray-client-server-port",
            str(free_port()),
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--metrics-export-port",
            str(metrics),
            "--node-ip-address",
            "127.0.0.1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/gcs_healthz", timeout=2)
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    else:
        os.killpg(head.pid, signal.SIGKILL)
        pytest.fail("the Ray head did not come up within 90 s")
    yield url, token, env, metrics
    os.killpg(head.pid, signal.SIGKILL)  # the head and every process it started share this process group
    head.wait(timeout=30)
    # `ray start` recorded this head as the machine's current cluster; a later plain ray.init() would try to join it
    current = Path(os.environ.get("RAY_TMPDIR", tempfile.gettempdir())) / "ray" / "ray_current_cluster"
    if current.exists() and current.read_text().strip().endswith(f":{gcs}"):
        current.unlink()


def test_jobs_api_refuses_missing_and_wrong_tokens(token_head) -> None:
    url, token, _, _ = token_head
    for headers, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 403)):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(f"{url}/api/jobs/", headers=headers), timeout=10)
        assert info.value.code == status
    ok = urllib.request.urlopen(
        urllib.request.Request(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"}), timeout=10
    )
    assert ok.status == 200


def submit(url: str, env: dict[str, str], submission_id: str, args: list[str]) -> str:
    """``ray job submit`` of ``python -m <args>`` with this repository as working dir; returns the job's status."""
    done = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            url,
            "--working-dir",
            str(REPO),
            "--submission-id",
            submission_id,
            "--",
            str(BIN / "python"),
            "-m",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    status = subprocess.run(
        [str(BIN / "ray"), "job", "status", "--address", url, submission_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return status.stdout.lower() + "\n" + done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def extracted(token_head, tmp_path_factory):
    url, _, env, _ = token_head
    root = tmp_path_factory.mktemp("job")
    write_corpus(root / "corpus", n_songs=2, seed=5, seconds=4.0)
    out = root / "out"
    status = submit(
        url,
        env,
        "extract-test",
        [
            "ray_jobs.extract",
            "--input",
            str(root / "corpus" / "manifest.jsonl"),
            "--output",
            str(out),
            "--segment-s",
            "4",
            "--models-cache-dir",
            str(root / "models"),
        ],
    )
    return out, status


def test_ray_job_submit_runs_the_extraction(token_head, extracted) -> None:
    _, _, _, metrics = token_head
    out, status = extracted
    assert "succeeded" in status, status
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["inputs"], summary["ok"], summary["accounted"]) == (2, 2, True)
    # the job's counters reach the node's Prometheus endpoint, which the dashboard's metrics view reads
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline and "hummingml_audio_seconds" not in text:
        time.sleep(2)
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
    assert "hummingml_audio_seconds" in text and "hummingml_segments" in text


def test_ray_job_submit_trains_on_the_extracted_shards(token_head, extracted, tmp_path) -> None:
    url, _, env, _ = token_head
    out, _ = extracted
    status = submit(
        url,
        env,
        "train-test",
        [
            "ray_jobs.train",
            "--preset",
            "debug",
            "--data-features",
            str(out),
            "--storage",
            str(tmp_path / "runs"),
            "--steps",
            "4",
            "--checkpoint-every",
            "2",
            "--cpus-per-worker",
            "0.5",
        ],
    )
    assert "succeeded" in status, status
    assert list((tmp_path / "runs" / "hummingml-debug").glob("checkpoint_*/position.npy"))
