"""``ray job submit`` of the extraction to a token-protected head started by the test (the README's commands)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hummingml.corpus import write_corpus

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
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_ADDRESS": ""}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--port", str(gcs),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
         "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
         "--metrics-export-port", str(metrics), "--node-ip-address", "127.0.0.1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
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


def test_ray_job_submit_runs_the_extraction(token_head, tmp_path) -> None:
    url, _, env, metrics = token_head
    write_corpus(tmp_path / "corpus", n_songs=1, seed=2, seconds=2.0)
    out = tmp_path / "out"
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", str(REPO), "--submission-id",
         "extract-test", "--", str(BIN / "python"), "-m", "ray_jobs.extract", "--input",
         str(tmp_path / "corpus" / "mix"), "--output", str(out), "--segment-s", "2",
         "--models-cache-dir", str(tmp_path / "models")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", url, "extract-test"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert "succeeded" in status.stdout.lower(), submit.stdout[-3000:] + submit.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["inputs"], summary["ok"], summary["accounted"]) == (1, 1, True)
    # the job's counters reach the node's Prometheus endpoint, which the dashboard's metrics view reads
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline and "hummingml_audio_seconds" not in text:
        time.sleep(2)
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
    assert "hummingml_audio_seconds" in text and "hummingml_segments" in text
