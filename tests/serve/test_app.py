"""The Ray Serve application on loopback, through a real HTTP client: hum, remix jobs, bad uploads, limits, auth,
concurrency, and the web page in a real headless Chromium."""

from __future__ import annotations

import dataclasses
import io
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import soundfile as sf

from hummingml.serve.config import ServeConfig
from hummingml.testing.corpus import make_song
from hummingml.testing.signals import sine
from hummingml.weights.config import ModelsConfig

pytestmark = pytest.mark.slow
TOKEN = "test-token-0123456789"
HUM_S = 2.0


def wav(audio: np.ndarray, sample_rate: int, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio.T, sample_rate, format=fmt)
    return buf.getvalue()


def hum_wav(seconds: float = HUM_S, sample_rate: int = 16_000) -> bytes:
    notes = (220.0, 247.0, 262.0, 294.0)
    return wav(np.concatenate([sine(f, seconds / len(notes), sample_rate, amplitude=0.4) for f in notes], axis=1),
               sample_rate)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def service(ray_local, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The app on 127.0.0.1 with a token, tiny models, small limits; yields (base URL, auth headers, config)."""
    from ray import serve

    from hummingml.serve.app import build_app

    root = tmp_path_factory.mktemp("serve")
    (root / "token").write_text(TOKEN + "\n")
    cfg = ServeConfig(port=free_port(), token_file=str(root / "token"), jobs_dir=str(root / "jobs"), max_hum_s=10.0,
                      max_song_s=8.0, max_upload_mb=2.0, max_inflight=32, max_jobs=1, max_replicas=1, num_cpus=0.15,
                      models=ModelsConfig(kind="tiny", cache_dir=str(root / "models")))  # fmt: skip
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(cfg), name="hummingml", route_prefix="/")
    # a second app under a route prefix, with one hum at a time and a timeout no hum meets
    tight = dataclasses.replace(cfg, max_inflight=1, request_timeout_s=0.3, jobs_dir=str(root / "tight-jobs"))
    serve.run(build_app(tight), name="tight", route_prefix="/tight")
    yield f"http://127.0.0.1:{cfg.port}", {"Authorization": f"Bearer {TOKEN}"}, cfg
    serve.shutdown()


def post_hum(url: str, headers: dict[str, str], data: bytes, **form: str) -> requests.Response:
    return requests.post(f"{url}/v1/hum", files={"hum": ("hum.wav", data)}, data=form, headers=headers, timeout=120)


def test_hum_returns_a_wav_as_long_as_the_hum(service: Any) -> None:
    url, auth, _ = service
    r = post_hum(url, auth, hum_wav(), preset="organ")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav" and r.headers["x-hummingml-instrument"] == "organ"
    assert "UNTRAINED" in r.headers["x-hummingml-model"] and int(r.headers["x-hummingml-notes"]) >= 1
    audio, rate = sf.read(io.BytesIO(r.content), always_2d=True)
    assert rate == 44_100 and audio.shape == (round(HUM_S * 44_100), 1)
    own = post_hum(url, auth, hum_wav(), preset="")  # an own instrument clip instead of a preset
    assert own.status_code == 200
    clip = wav(sine(440.0, 2.0, 22_050), 22_050, "FLAC")
    r = requests.post(f"{url}/v1/hum", files={"hum": ("h.wav", hum_wav()), "instrument": ("i.flac", clip)},
                      headers=auth, timeout=120)  # fmt: skip
    assert r.status_code == 200 and r.headers["x-hummingml-instrument"] == "upload"


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"", 400, "empty"),
        (b"#!/bin/sh\nrm -rf /\n", 415, "not_audio"),
        (b"\x80\x04\x95\x00pickle", 415, "not_audio"),
        (hum_wav(12.0), 413, "too_long"),  # the limit is 10 s
        (hum_wav(0.1), 422, "too_short"),
        (hum_wav()[:2000], 422, "truncated"),
        (wav(np.zeros((1, 16_000 * 70), np.float32), 16_000), 413, "too_big"),  # 2.2 MB; the limit is 2 MB
    ],
)
def test_bad_uploads_get_a_4xx_with_a_reason(service: Any, data: bytes, status: int, reason: str) -> None:
    url, auth, _ = service
    r = post_hum(url, auth, data)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == reason and body["detail"]


def test_an_unknown_preset_and_a_missing_file_are_refused(service: Any) -> None:
    url, auth, _ = service
    r = post_hum(url, auth, hum_wav(), preset="tuba")
    assert r.status_code == 422 and r.json()["error"] == "unknown_preset" and "flute" in r.json()["detail"]
    assert requests.post(f"{url}/v1/hum", headers=auth, timeout=30).status_code == 422  # no hum field


def test_the_token_guards_every_v1_route_but_not_the_page(service: Any) -> None:
    url, auth, _ = service
    assert post_hum(url, {}, hum_wav()).status_code == 401
    assert post_hum(url, {"Authorization": "Bearer wrong"}, hum_wav()).status_code == 403
    for path in ("/v1/health", "/v1/presets", "/v1/jobs/" + "0" * 32):
        assert requests.get(url + path, timeout=30).status_code == 401
    page = requests.get(url + "/", timeout=30)
    assert page.status_code == 200 and "<title>hummingml" in page.text
    health = requests.get(url + "/v1/health", headers=auth, timeout=30).json()
    assert health["ok"] and health["model"]["trained"] is False
    spec = requests.get(url + "/openapi.json", timeout=30).json()
    assert {"/v1/hum", "/v1/remix", "/v1/jobs/{job_id}"} <= set(spec["paths"])


def test_twenty_concurrent_hums_are_all_answered(service: Any) -> None:
    url, auth, _ = service
    data = hum_wav()
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: post_hum(url, auth, data), range(20)))
    assert [r.status_code for r in answers] == [200] * 20
    lengths = {sf.info(io.BytesIO(r.content)).frames for r in answers}
    assert lengths == {round(HUM_S * 44_100)}


def test_a_remix_job_ends_in_a_stereo_wav_and_a_second_one_waits_its_turn(service: Any) -> None:
    url, auth, _ = service
    song = make_song(0, seed=3, seconds=3.0)
    upload = {"song": ("song.wav", wav(song.mix, 44_100))}
    r = requests.post(f"{url}/v1/remix", files=upload, data={"preset": "marimba"}, headers=auth, timeout=60)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    busy = requests.post(f"{url}/v1/remix", files=upload, headers=auth, timeout=60)  # max_jobs=1
    assert busy.status_code == 429 and busy.headers["retry-after"] and busy.json()["error"] == "busy"
    seen, deadline = [], time.monotonic() + 180
    while time.monotonic() < deadline:
        status = requests.get(f"{url}/v1/jobs/{job_id}", headers=auth, timeout=30).json()
        seen.append(status["stage"])
        if status["status"] in ("done", "failed"):
            break
        time.sleep(0.5)
    assert status["status"] == "done", status
    assert status["progress"] == 1.0 and seen == sorted(seen, key=list(("queued", "separating", "cleaning", "playing",
                                                                         "mixing", "done")).index)  # fmt: skip
    report = status["report"]
    assert report["stems"] == "demucs" and report["output"]["channels"] == 2 and report["notes"] is not None
    audio = requests.get(f"{url}{status['audio_url']}", headers=auth, timeout=30)
    assert audio.status_code == 200
    data, rate = sf.read(io.BytesIO(audio.content), always_2d=True)
    assert rate == 44_100 and data.shape == (song.mix.shape[1], 2) and np.abs(data).max() <= 0.99
    assert requests.get(f"{url}/v1/jobs/{'f' * 32}", headers=auth, timeout=30).status_code == 404
    assert requests.get(f"{url}/v1/jobs/..%2Ftoken", headers=auth, timeout=30).status_code == 404


def test_the_web_page_uploads_a_hum_and_plays_the_result(service: Any, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium binary (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    url, _, _ = service
    (tmp_path / "hum.wav").write_bytes(hum_wav())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#auth:not([hidden])")  # the API answered 401: the page asks for the token
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
        page.wait_for_function("document.querySelectorAll('#preset option').length > 3")
        page.select_option("#preset", "flute")
        page.set_input_files("#file", str(tmp_path / "hum.wav"))
        page.click("#go")
        page.wait_for_function("document.querySelector('#result').src.startsWith('blob:')", timeout=120_000)
        duration = page.evaluate(
            "() => new Promise((ok, no) => { const a = document.querySelector('#result');"
            " if (a.readyState >= 1) ok(a.duration); a.onloadedmetadata = () => ok(a.duration); a.onerror = no; })"
        )
        assert duration == pytest.approx(HUM_S, abs=0.05)
        assert "notes found" in page.inner_text("#status") and "UNTRAINED" in page.inner_text("#model")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_a_new_remixer_runs_again_the_jobs_a_dead_one_held_or_says_why_not(tmp_path: Path) -> None:
    import json

    from hummingml.serve.app import MAX_STARTS, load_input, save_input, take_over_jobs, write_status

    song, clip = np.ones((2, 10), np.float32), np.zeros((1, 5), np.float32)
    jobs = {"a": ("running", 1, True), "b": ("queued", 0, False), "c": ("done", 1, False), "d": ("running", 2, True),
            "e": ("queued", 0, True)}  # fmt: skip
    for n, (name, (status, starts, saved)) in enumerate(jobs.items()):
        write_status(tmp_path, {"id": name * 32, "status": status, "stage": status, "error": None, "starts": starts,
                                "submitted": 100.0 - n})  # fmt: skip
        if saved:
            save_input(tmp_path, name * 32, song, clip)
    again, failed = take_over_jobs(tmp_path)
    assert [j["id"] for j in again] == ["e" * 32, "a" * 32] and failed == ["d" * 32, "b" * 32]  # oldest first
    assert all(j["status"] == "queued" and j["resumed"] for j in again)
    saved_song, saved_clip = load_input(tmp_path, "a" * 32)
    assert np.array_equal(saved_song, song) and np.array_equal(saved_clip, clip)
    status = {c: json.loads((tmp_path / f"{c * 32}.status.json").read_text()) for c in jobs}
    assert [status[c]["status"] for c in "abcde"] == ["queued", "failed", "done", "failed", "queued"]
    assert "input is gone" in status["b"]["error"] and f"{MAX_STARTS} times" in status["d"]["error"]
    assert not (tmp_path / f"{'d' * 32}.input.npz").exists()  # a failed job's input is not kept
    assert take_over_jobs(tmp_path)[1] == []


def test_a_remix_job_survives_its_replica_being_killed(service: Any) -> None:
    import ray

    url, auth, cfg = service
    song = make_song(1, seed=4, seconds=3.0)
    r = requests.post(f"{url}/v1/remix", files={"song": ("song.wav", wav(song.mix, 44_100))},
                      data={"preset": "marimba"}, headers=auth, timeout=60)  # fmt: skip
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert requests.get(f"{url}/v1/jobs/{job_id}", headers=auth, timeout=30).json()["status"] != "done"
    named = ray.util.list_named_actors(all_namespaces=True)  # this driver's cluster, through its own GCS client
    [replica] = [a for a in named if a["namespace"] == "serve" and "hummingml#Remixer#" in a["name"]]
    ray.kill(ray.get_actor(replica["name"], namespace="serve"), no_restart=True)  # Serve starts another replica
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        answer = requests.get(f"{url}/v1/jobs/{job_id}", headers=auth, timeout=30)
        if answer.status_code == 200 and answer.json()["status"] in ("done", "failed"):
            break
        time.sleep(1.0)
    status = answer.json()
    assert status["status"] == "done" and status["resumed"] and status["starts"] >= 1, status
    audio = requests.get(f"{url}{status['audio_url']}", headers=auth, timeout=30)
    data, rate = sf.read(io.BytesIO(audio.content), always_2d=True)
    assert rate == 44_100 and data.shape == (song.mix.shape[1], 2)
    assert not (Path(cfg.jobs_dir) / f"{job_id}.input.npz").exists()


def test_a_prefixed_app_keeps_its_guard_and_answers_429_and_504(service: Any) -> None:
    url, auth, _ = service
    assert post_hum(url + "/tight", {}, hum_wav()).status_code == 401  # the guard sees /v1 under the prefix
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post_hum(url + "/tight", auth, hum_wav()), range(4)))
    codes = sorted(r.status_code for r in answers)
    # one hum at a time: those arriving while it runs get 429; a 2 s hum takes longer than 0.3 s: 504
    assert set(codes) == {429, 504}, codes
    busy = [r for r in answers if r.status_code == 429]
    assert all(r.headers["retry-after"] and r.json()["error"] == "busy" for r in busy)
    assert all(r.json()["error"] == "timeout" for r in answers if r.status_code == 504)
