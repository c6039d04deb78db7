"""Extraction across two Ray nodes on one machine; the second node dies mid-run and the job still accounts for all."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from hummingml.testing.corpus import write_corpus
from tests.ray_internals import actors_under_raylets

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "ray"), "start", "--block", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_for_nodes(address: str, n: int, env: dict[str, str]) -> None:
    code = f"import ray; ray.init(address='{address}'); print(len([x for x in ray.nodes() if x['Alive']]))"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        if out.stdout.strip().endswith(str(n)):
            return
        time.sleep(2)
    pytest.fail(f"{n} Ray nodes did not come up")


def keys(out: Path, name: str) -> list[tuple[str, int]]:
    table = pads.dataset(out / name, format="parquet").to_table(columns=["source_id", "segment_index"])
    return list(zip(table["source_id"].to_pylist(), table["segment_index"].to_pylist(), strict=True))


ATTEMPTS = 3  # in some runs Ray places no pipeline actor on the second node, and the scenario needs one there


def run_and_kill_the_second_node(root: Path, corpus: Path) -> tuple[str, Path] | None:
    """Two nodes, the extraction of ``corpus`` into ``root/out``, the second node killed while pipeline actors run on
    it; returns (job log, output), or None when Ray placed no pipeline actor there before the job ended."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    # token auth on, as in every documented setup; the nodes and the driver share the token
    env = {
        **os.environ,
        "RAY_ADDRESS": "",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    head = start_node(
        [
            "--head",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard",
            "false",
            "--node-ip-address",
            "127.0.0.1",
            "--ray-client-server-port",
            str(free_port()),
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--metrics-export-port",
            str(free_port()),
        ],
        env,
    )
    worker = None
    try:
        wait_for_nodes(address, 1, env)
        worker = start_node(
            [
                "--address",
                address,
                "--num-cpus",
                "2",
                "--node-ip-address",
                "127.0.0.1",
                "--dashboard-agent-listen-port",
                str(free_port()),
                "--metrics-export-port",
                str(free_port()),
            ],
            env,
        )
        wait_for_nodes(address, 2, env)
        out = root / "out"
        job = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ray_jobs.extract",
                "--input",
                str(corpus / "mix"),
                "--output",
                str(out),
                "--segment-s",
                "2",
                "--commit-rows",
                "1",
                "--models-cache-dir",
                str(corpus.parent / "models"),
            ],
            env={**env, "RAY_ADDRESS": address},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list((out / "_commits").glob("*.json"))) < 2:
            time.sleep(0.2)
        # the count is a snapshot of process titles: an actor being created or restarted is not counted yet
        on_second = 0
        while time.monotonic() < deadline and job.poll() is None:
            if (on_second := actors_under_raylets(worker.pid)) > 0:
                break
            time.sleep(0.2)
        if not on_second:
            job.kill()
            job.communicate(timeout=60)
            return None
        assert job.poll() is None, "the job was still running when the node was killed"
        os.killpg(worker.pid, signal.SIGKILL)  # the second node and every worker on it die at once
        log, _ = job.communicate(timeout=600)
        assert job.returncode == 0, log[-4000:]
        return log, out
    finally:
        for proc in (worker, head):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def test_second_node_dies_mid_run(tmp_path) -> None:
    write_corpus(tmp_path / "corpus", n_songs=4, seed=3, seconds=4.0)
    (tmp_path / "corpus" / "mix" / "junk.wav").write_bytes(b"not audio" * 10)
    result = None
    for attempt in range(ATTEMPTS):
        result = run_and_kill_the_second_node(tmp_path / f"attempt{attempt}", tmp_path / "corpus")
        if result is not None:
            break
    assert result is not None, f"no pipeline actor ran on the second node in {ATTEMPTS} runs"
    log, out = result
    assert "5 inputs: 4 ok, 1 failed, 0 unaccounted" in log
    features = keys(out, "audio-feature")
    assert len(features) == len(set(features)) == 4 * 2  # four 4 s songs in 2 s segments, no duplicates
    assert sorted(keys(out, "sine-audio-feature")) == sorted(features)
