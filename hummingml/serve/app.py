"""The Ray Serve application: hum -> instrument and song remixes over HTTP, with a web page.

Deployments (each one replica to start, autoscaling up to ``ServeConfig.max_replicas``, ``num_cpus`` each, and
``num_gpus`` for the three that run torch models, which then run on that GPU):

- ``Pitch``: Basic Pitch, batched over requests (``@serve.batch``);
- ``Codec``: the DAC: ``encode`` (every signal of a batch of requests in one ``encode_batch``) and ``decode``;
- ``HumLM``: HummingLM AR + NAR: the generation windows of a batch of requests in shared forward passes;
- ``Separation``: Demucs, for remixes;
- ``Remixer``: one replica; the queue of remix jobs, their status and their results on disk (``jobs_dir``);
- ``Api``: the FastAPI ingress: uploads, limits, auth, the page; it calls the others through handles.

HTTP (OpenAPI at ``/docs``; every ``/v1`` route needs ``Authorization: Bearer <token>`` when a token file is set):

- ``POST /v1/hum`` (multipart: ``hum`` file; ``instrument`` file or ``preset`` name) -> ``audio/wav``, 44.1 kHz;
- ``POST /v1/remix`` (multipart: ``song`` file; ``instrument`` or ``preset``) -> 202 ``{"job_id", "status_url"}``;
- ``GET /v1/jobs/{id}`` -> status, stage, progress, error, and when done the result's URLs and report;
- ``GET /v1/jobs/{id}/audio`` -> the remix WAV; ``GET /v1/presets``; ``GET /v1/health``; ``GET /`` the page.

Errors are JSON ``{"error": reason, "detail": text}``: 400/413/415/422 for bad uploads (:mod:`.uploads`), 401/403
for a missing or wrong token, 429 with ``Retry-After`` when ``max_inflight`` hums or ``max_jobs`` remixes are in
progress, 504 when a hum takes longer than ``request_timeout_s``. Nothing from a request is unpickled or executed:
uploads are bytes given to libsndfile, form fields are strings, and what passes between deployments are arrays
this code made.
"""

import asyncio  # no "from __future__ import annotations": FastAPI reads the routes' annotations at runtime
import dataclasses
import hmac
import io
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Form, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from ray import serve

from hummingml import __version__
from hummingml.audio import F32, FEATURE_SAMPLE_RATE, SOURCE_SAMPLE_RATE, write_pcm16
from hummingml.config import from_dict
from hummingml.quiet import quiet_libraries
from hummingml.serve.config import DEFAULT_INSTRUMENT, RemixConfig, ServeConfig
from hummingml.serve.uploads import UploadError, UploadLimits, check_size, read_upload

STATIC = Path(__file__).parent / "static"
TIMBRE_SECONDS = 5.0  # instrument prompt of every request (capped by the model)
JOB_STAGES = {"queued": 0.0, "separating": 0.1, "cleaning": 0.4, "playing": 0.5, "mixing": 0.9, "done": 1.0}


def _error(status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason, "detail": detail}, status_code=status, headers=headers)


def _wav_bytes(audio: F32, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    write_pcm16(buf, audio, sample_rate)
    return buf.getvalue()


def _set_batching(method: Any, max_batch: int, batch_wait_s: float) -> None:
    """Set the batch size and wait of a ``@serve.batch`` method of this replica.

    ``method`` is ``Any``: Ray annotates ``serve.batch`` as returning a plain callable, without these two setters.
    """
    method.set_max_batch_size(max_batch)
    method.set_batch_wait_timeout_s(batch_wait_s)


# --- model deployments ---------------------------------------------------------------------------------------------


@serve.deployment
class Pitch:
    """Basic Pitch: notes of mono 22.05 kHz audio, several requests per batch."""

    def __init__(self, max_batch: int, batch_wait_s: float) -> None:
        quiet_libraries()
        from hummingml.stages.pitch import PitchDetector

        self.detector = PitchDetector()
        _set_batching(self.detect, max_batch, batch_wait_s)

    @serve.batch
    async def detect(self, audios: list[F32]) -> list[list[Any]]:
        """The notes of each float32 ``(1, samples)`` clip at 22.05 kHz."""
        return [self.detector.detect(a, FEATURE_SAMPLE_RATE) for a in audios]


@serve.deployment
class Codec:
    """The DAC: encode the signals of several requests in one batch; decode codes back to audio.

    The encoder runs as the extraction's does (:class:`hummingml.stages.codec.Codec`: OpenVINO on a CPU, eager
    PyTorch on the GPU a replica was given).
    """

    def __init__(self, models: dict[str, Any], max_batch: int, batch_wait_s: float) -> None:
        quiet_libraries()
        from hummingml.stages.codec import Codec as DacCodec
        from hummingml.stages.codec import CodecConfig, receptive_field_frames
        from hummingml.weights.config import ModelsConfig

        self.codec = DacCodec(CodecConfig(models=from_dict(ModelsConfig, models)))
        assert self.codec.identity is not None  # set whenever Codec loads the weights itself
        self.dac, self.identity = self.codec.model, self.codec.identity
        self.receptive_frames = receptive_field_frames(self.dac)
        for method in (self.encode, self.decode):
            _set_batching(method, max_batch, batch_wait_s)

    def info(self) -> dict[str, Any]:
        """The encoder's receptive field in frames and the weights' identity."""
        return {"receptive_frames": self.receptive_frames, "identity": self.identity.to_dict()}

    @serve.batch
    async def encode(self, requests: list[list[F32]]) -> list[list[np.ndarray]]:
        """Codes int16 ``(n_codebooks, frames)`` of each 22.05 kHz mono signal of each request."""
        signals = [s for signals in requests for s in signals]
        tokens = iter(self.codec.encode_batch(signals, FEATURE_SAMPLE_RATE))
        return [[next(tokens).codes[0] for _ in signals] for signals in requests]

    @serve.batch
    async def decode(self, codes: list[np.ndarray]) -> list[tuple[F32, int]]:
        """Audio ``(1, frames * hop)`` at the codec's rate of each ``(n_codebooks, frames)`` code array, decoded
        together (zero-padded to the longest, then cropped)."""
        from hummingml.stages import codec

        longest = max(c.shape[1] for c in codes)
        stacked = np.stack([np.pad(c, ((0, 0), (0, longest - c.shape[1]))) for c in codes])
        rate = float(self.dac.sample_rate) / int(self.dac.hop_length)
        audio, sample_rate = codec.decode(codec.CodecTokens(stacked.astype(np.int16), rate), self.dac)
        hop = int(self.dac.hop_length)
        return [(audio[i : i + 1, : c.shape[1] * hop], sample_rate) for i, c in enumerate(codes)]


@serve.deployment
class HumLM:
    """HummingLM AR + NAR of one checkpoint (or the labelled untrained model): the windows of several requests in
    shared forward passes."""

    def __init__(self, checkpoint: str, models: dict[str, Any] | None, max_batch: int, batch_wait_s: float) -> None:
        quiet_libraries()
        from hummingml.eval.generate import timbre_frames
        from hummingml.serve.model import load_hum_model
        from hummingml.weights.config import ModelsConfig, resolve_device

        self.model = load_hum_model(checkpoint, from_dict(ModelsConfig, models) if models else None)
        device = resolve_device("auto")  # a GPU when the replica was given one
        self.model.ar.to(device)
        self.model.nar.to(device)
        self.prompt_frames = timbre_frames(self.model.cfg, TIMBRE_SECONDS)
        _set_batching(self.generate, max_batch, batch_wait_s)

    def info(self) -> dict[str, Any]:
        """The prompt length in frames and the model's description (label, trained or not, DAC)."""
        return {"prompt_frames": self.prompt_frames, "model": self.model.describe()}

    @serve.batch
    async def generate(self, requests: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """All codebook levels ``(n_codebooks, frames)`` for each request's (sine, hum, timbre) codes."""
        from hummingml.eval.generate import generate_windows, make_windows

        windows = [
            make_windows(sine, hum, timbre, self.model.cfg, self.prompt_frames) for sine, hum, timbre in requests
        ]
        flat = generate_windows([w for ws in windows for w in ws], self.model.ar, self.model.nar, self.model.cfg,
                                batch_size=64)  # fmt: skip
        out, k = [], 0
        for ws in windows:
            out.append(np.concatenate(flat[k : k + len(ws)], axis=1))
            k += len(ws)
        return out


@serve.deployment
class Separation:
    """Demucs: the six stems of 44.1 kHz stereo songs."""

    def __init__(self, models: dict[str, Any], max_batch: int, batch_wait_s: float) -> None:
        quiet_libraries()
        from hummingml.stages.separate import SeparateConfig, Separator
        from hummingml.weights.config import ModelsConfig

        self.separator = Separator(SeparateConfig(models=from_dict(ModelsConfig, models)))
        _set_batching(self.separate, max_batch, batch_wait_s)

    @serve.batch
    async def separate(self, songs: list[F32]) -> list[dict[str, F32]]:
        """Stems by name, float32 ``(2, samples)`` at 44.1 kHz, of each song."""
        return [s.as_dict() for s in self.separator.separate_batch(songs, SOURCE_SAMPLE_RATE)]


# --- the hum path, shared by /v1/hum and the remix jobs -------------------------------------------------------------


class HumPath:
    """hum -> Pitch -> sine -> Codec.encode -> HumLM -> Codec.decode, through deployment handles."""

    def __init__(self, pitch: Any, codec: Any, lm: Any) -> None:
        self.pitch, self.codec, self.lm = pitch, codec, lm
        self._info: dict[str, Any] | None = None
        self.preset_codes: dict[str, np.ndarray] = {}  # preset name -> its prompt's codes

    async def info(self) -> dict[str, Any]:
        """The model's and the codec's facts (asked once)."""
        if self._info is None:
            lm, codec = await asyncio.gather(self.lm.info.remote(), self.codec.info.remote())
            self._info = {**lm, **codec}
        return self._info

    async def play(
        self, hum: F32, hum_rate: int, timbre: F32, timbre_rate: int, preset: str = ""
    ) -> tuple[F32, int, list[Any], dict[str, float]]:
        """``(audio (1, n), sample_rate, notes, timings)``: the hum's melody played with the timbre clip's
        instrument, as long as the hum (see :func:`hummingml.eval.generate.generate`), and each step's seconds.
        ``preset`` names a preset clip: its codes are encoded once and kept."""
        from hummingml.eval.generate import conditioning_audio, fit_length
        from hummingml.stages.synth import render_sine

        info = await self.info()
        clock = time.perf_counter()
        timings: dict[str, float] = {}

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name], clock = now - clock, now

        hum22, timbre22 = conditioning_audio(hum, hum_rate, timbre, timbre_rate, info["prompt_frames"],
                                             info["receptive_frames"])  # fmt: skip
        lap("resample")
        notes = await self.pitch.detect.remote(hum22)
        lap("pitch")
        sine = render_sine(notes, hum22.shape[1], FEATURE_SAMPLE_RATE)
        if preset and preset in self.preset_codes:
            sine_codes, hum_codes = await self.codec.encode.remote([sine, hum22])
            timbre_codes = self.preset_codes[preset]
        else:
            sine_codes, hum_codes, timbre_codes = await self.codec.encode.remote([sine, hum22, timbre22])
            if preset:
                self.preset_codes[preset] = timbre_codes
        lap("encode")
        codes = await self.lm.generate.remote((sine_codes, hum_codes, timbre_codes))
        lap("lm")
        audio, rate = await self.codec.decode.remote(codes)
        lap("decode")
        return fit_length(audio, round(hum.shape[1] * rate / hum_rate)), rate, notes, timings


# --- remix jobs ------------------------------------------------------------------------------------------------------


MAX_STARTS = 2  # a job its replica died running this many times is failed, not started again (a job that kills it)


def save_input(jobs_dir: Path, job_id: str, song: F32, timbre: F32) -> None:
    """``jobs_dir/<id>.input.npz``: a queued job's decoded song and clip (plain arrays, read without pickle),
    written before the job is queued and deleted when it ends."""
    tmp = jobs_dir / f"{job_id}.input.tmp.npz"
    np.savez(tmp, song=song, timbre=timbre)
    os.replace(tmp, jobs_dir / f"{job_id}.input.npz")


def load_input(jobs_dir: Path, job_id: str) -> tuple[F32, F32]:
    """(song, clip) that :func:`save_input` wrote."""
    with np.load(jobs_dir / f"{job_id}.input.npz", allow_pickle=False) as saved:
        return saved["song"], saved["timbre"]


def take_over_jobs(jobs_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The jobs ``jobs_dir`` records as queued or running (a replica that died held them): ``(to run again, oldest
    first; ids marked failed)``. A job is run again when its input is saved and it was started fewer than
    :data:`MAX_STARTS` times; otherwise it is marked failed with the reason."""
    again, failed = [], []
    jobs = [json.loads(path.read_text()) for path in jobs_dir.glob("*.status.json")]
    held = sorted((j for j in jobs if j.get("status") in ("queued", "running")), key=lambda j: j.get("submitted", 0.0))
    for job in held:
        starts = int(job.get("starts", 0))
        if (jobs_dir / f"{job['id']}.input.npz").is_file() and starts < MAX_STARTS:
            job.update(status="queued", stage="queued", progress=0.0, resumed=True)
            again.append(job)
        else:
            why = "its input is gone" if starts < MAX_STARTS else f"the service stopped while running it {starts} times"
            job.update(status="failed", error=f"the service restarted before this job finished and {why}; submit it "
                       "again", finished=time.time())  # fmt: skip
            (jobs_dir / f"{job['id']}.input.npz").unlink(missing_ok=True)
            failed.append(job["id"])
        write_status(jobs_dir, job)
    return again, failed


def write_status(jobs_dir: Path, job: dict[str, Any]) -> None:
    """``jobs_dir/<id>.status.json``, replaced atomically."""
    tmp = jobs_dir / f"{job['id']}.status.json.tmp"
    tmp.write_text(json.dumps(job))
    os.replace(tmp, jobs_dir / f"{job['id']}.status.json")


@serve.deployment(num_replicas=1)
class Remixer:
    """The remix jobs: at most ``max_jobs`` queued or running, one running at a time; status and results in
    ``jobs_dir`` (``<id>.wav``, ``<id>.json`` report, ``<id>.status.json``, and ``<id>.input.npz`` until it ends), so
    a finished job outlives the replica, and the jobs a replica held when it died are run by the next one
    (:func:`take_over_jobs`; a job that was running when its replica died :data:`MAX_STARTS` times is failed)."""

    def __init__(self, cfg: dict[str, Any], separation: Any, pitch: Any, codec: Any, lm: Any) -> None:
        self.cfg = from_dict(ServeConfig, cfg)
        self.dir = Path(self.cfg.jobs_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.separation, self.hum = separation, HumPath(pitch, codec, lm)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.running = asyncio.Semaphore(1)
        again, self.interrupted = take_over_jobs(self.dir)  # the constructor runs in the replica's event loop
        for job in again:
            self.jobs[job["id"]] = job
            self._start(job["id"], *load_input(self.dir, job["id"]))

    def _set(self, job_id: str, **fields: Any) -> None:
        job = self.jobs[job_id]
        job.update(fields)
        job["progress"] = JOB_STAGES.get(job["stage"], job.get("progress", 0.0))
        write_status(self.dir, job)

    async def submit(self, song: F32, song_rate: int, timbre: F32, timbre_rate: int, instrument: str) -> dict[str, Any]:
        """Queue a job; ``{"job_id"}``, or ``{"error": "busy"}`` when ``max_jobs`` are queued or running."""
        active = sum(job["status"] in ("queued", "running") for job in self.jobs.values())
        if active >= self.cfg.max_jobs:
            return {"error": "busy", "detail": f"{active} remix jobs are queued or running (limit {self.cfg.max_jobs})"}
        job_id = uuid.uuid4().hex
        seconds = round(song.shape[1] / song_rate, 3)
        await asyncio.to_thread(save_input, self.dir, job_id, song, timbre)
        self.jobs[job_id] = {"id": job_id, "status": "queued", "stage": "queued", "instrument": instrument,
                             "seconds": seconds, "submitted": time.time(), "error": None, "song_rate": song_rate,
                             "timbre_rate": timbre_rate, "starts": 0}  # fmt: skip
        self._set(job_id)
        self._start(job_id, song, timbre)
        return {"job_id": job_id}

    def _start(self, job_id: str, song: F32, timbre: F32) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job_id, song, timbre))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, job_id: str, song: F32, timbre: F32) -> None:
        from hummingml.eval.generate import Generated
        from hummingml.serve.remix import assemble, clean_vocals, to_stereo
        from hummingml.stages.separate import Stems

        job = self.jobs[job_id]
        song_rate, timbre_rate, instrument = job["song_rate"], job["timbre_rate"], job["instrument"]
        async with self.running:
            try:
                started = time.perf_counter()
                self._set(job_id, status="running", stage="separating", starts=job.get("starts", 0) + 1)
                audio = to_stereo(song, song_rate)
                stems = Stems(**await self.separation.separate.remote(audio), sample_rate=SOURCE_SAMPLE_RATE)
                self._set(job_id, stage="cleaning")
                mix_cfg = RemixConfig()
                vocals = await asyncio.to_thread(clean_vocals, stems.vocals, SOURCE_SAMPLE_RATE, mix_cfg)
                self._set(job_id, stage="playing")
                played, rate, notes, _ = await self.hum.play(vocals, SOURCE_SAMPLE_RATE, timbre, timbre_rate,
                                                             instrument if instrument != "upload" else "")  # fmt: skip
                self._set(job_id, stage="mixing")
                info = await self.hum.info()
                result = await asyncio.to_thread(
                    assemble, song, song_rate, audio, stems, vocals, Generated(played, rate, notes), info["model"],
                    mix_cfg, {"total_s": time.perf_counter() - started}, "demucs",
                )  # fmt: skip
                await asyncio.to_thread(write_pcm16, str(self.dir / f"{job_id}.wav"), result.audio, result.sample_rate)
                (self.dir / f"{job_id}.json").write_text(json.dumps(result.report, indent=2))
                self._set(job_id, status="done", stage="done", finished=time.time())
            except Exception as exc:  # the job fails, with its reason; the service goes on
                self._set(job_id, status="failed", error=f"{type(exc).__name__}: {exc}", finished=time.time())
            (self.dir / f"{job_id}.input.npz").unlink(missing_ok=True)

    def status(self, job_id: str) -> dict[str, Any] | None:
        """The job's status dict (from memory, else from ``jobs_dir``), or None for an unknown id."""
        if job_id in self.jobs:
            return dict(self.jobs[job_id])
        path = self.dir / f"{job_id}.status.json"
        if len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id) and path.is_file():
            return json.loads(path.read_text())
        return None

    def paths(self, job_id: str) -> tuple[str, str]:
        """The job's WAV and report paths (they exist once its status is ``done``)."""
        return str(self.dir / f"{job_id}.wav"), str(self.dir / f"{job_id}.json")


# --- the HTTP API ----------------------------------------------------------------------------------------------------

api = FastAPI(
    title="hummingml",
    version=__version__,
    description="Hum -> instrument, and remixes of uploaded songs. Every /v1 route needs a bearer token when the "
    "service was started with --token-file.",
)
FORM_SLACK_BYTES = 64 * 1024  # a multipart body's own bytes beside the file (boundaries, headers, small fields)


@api.middleware("http")
async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Before a /v1 body is read: 401/403 without the right token (when one is set), 413 for a declared body over
    the upload limit. ``Api.__init__`` puts ``(token, max_bytes)`` in ``api.state.guard``."""
    token, max_bytes = getattr(request.app.state, "guard", ("", 0))
    path, root = request.scope["path"], request.scope.get("root_path", "")
    if path[len(root) :].startswith("/v1/") if root and path.startswith(root) else path.startswith("/v1/"):
        if token:
            got = request.headers.get("authorization", "")
            if not got.startswith("Bearer "):
                return _error(401, "unauthorized", "send Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"})
            if not hmac.compare_digest(got[len("Bearer ") :].encode(), token.encode()):
                return _error(403, "forbidden", "the token is not valid")
        length = request.headers.get("content-length", "")
        if max_bytes and length.isdigit():
            try:
                check_size(int(length) - FORM_SLACK_BYTES, UploadLimits(max_bytes=max_bytes))
            except UploadError as exc:
                return _error(exc.status, exc.reason, exc.message)
    return await call_next(request)


@serve.deployment
@serve.ingress(api)
class Api:
    """The ingress: checks uploads, limits and the token, then runs the hum path or hands remixes to Remixer."""

    def __init__(self, cfg: dict[str, Any], remixer: Any, pitch: Any, codec: Any, lm: Any) -> None:
        self.cfg = from_dict(ServeConfig, cfg)
        self.token = Path(self.cfg.token_file).read_text().strip() if self.cfg.token_file else ""
        self.remixer, self.hum = remixer, HumPath(pitch, codec, lm)
        self.inflight = 0
        self.preset_clips: dict[str, tuple[F32, int]] = {}  # preset name -> (clip, sample rate), loaded on first use
        mb = int(self.cfg.max_upload_mb * 1024 * 1024)
        api.state.guard = (self.token, mb)  # read by the guard middleware in this replica
        self.hum_limits = UploadLimits(max_bytes=mb, max_seconds=self.cfg.max_hum_s)
        self.song_limits = UploadLimits(max_bytes=mb, max_seconds=self.cfg.max_song_s)

    # -- helpers

    async def _instrument(self, instrument: UploadFile | None, preset: str | None) -> tuple[F32, int, str]:
        from hummingml.serve.presets import preset_clip, preset_names

        if instrument is not None and instrument.filename:
            clip, rate = await self._read(instrument, UploadLimits(max_seconds=60.0, min_seconds=0.5))
            return clip, rate, "upload"
        name = preset or DEFAULT_INSTRUMENT
        if name not in preset_names():
            raise UploadError(422, "unknown_preset", f"no preset {name!r}; presets: {', '.join(preset_names())}")
        if name not in self.preset_clips:
            self.preset_clips[name] = (preset_clip(name, TIMBRE_SECONDS), SOURCE_SAMPLE_RATE)
        return (*self.preset_clips[name], name)

    async def _read(self, upload: UploadFile, limits: UploadLimits) -> tuple[F32, int]:
        data = await upload.read(limits.max_bytes + 1)
        return await asyncio.to_thread(read_upload, data, limits)

    async def _guarded(self, work: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await work()
        except UploadError as exc:
            return _error(exc.status, exc.reason, exc.message)

    # -- routes

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        """The web page: record or upload a hum, pick an instrument, play and download the result."""
        return HTMLResponse((STATIC / "index.html").read_text())

    @api.get("/v1/health")
    async def health(self) -> Response:
        """The model in use (label says when its weights are random) and the service version."""
        info = await self.hum.info()
        return JSONResponse({"ok": True, "version": __version__, "model": info["model"],
                             "dac": info["identity"], "inflight": self.inflight})  # fmt: skip

    @api.get("/v1/presets")
    async def presets(self) -> Response:
        """The instrument presets a request may name."""
        from hummingml.serve.presets import preset_names

        return JSONResponse({"presets": list(preset_names()), "default": DEFAULT_INSTRUMENT})

    @api.post("/v1/hum", response_class=Response, responses={200: {"content": {"audio/wav": {}}}})
    async def hum_route(
        self,
        hum: UploadFile,
        instrument: UploadFile | None = None,
        preset: str | None = Form(None),
    ) -> Response:
        """A hum (WAV, FLAC, OGG or MP3) and an instrument clip or preset name -> that instrument playing the hum's
        melody: a 16-bit WAV at 44.1 kHz as long as the hum."""

        async def work() -> Response:
            if self.inflight >= self.cfg.max_inflight:
                return _error(429, "busy", f"{self.inflight} hums in progress (limit {self.cfg.max_inflight})",
                              {"Retry-After": "1"})  # fmt: skip
            self.inflight += 1
            try:
                audio, rate = await self._read(hum, self.hum_limits)
                clip, clip_rate, name = await self._instrument(instrument, preset)
                try:
                    played = self.hum.play(audio, rate, clip, clip_rate, name if name != "upload" else "")
                    out, out_rate, notes, timings = await asyncio.wait_for(played,
                                                                  self.cfg.request_timeout_s)  # fmt: skip
                except asyncio.TimeoutError:
                    return _error(504, "timeout", f"the hum took longer than {self.cfg.request_timeout_s:g} s")
            finally:
                self.inflight -= 1
            info = await self.hum.info()
            headers = {"X-Hummingml-Model": info["model"]["label"], "X-Hummingml-Notes": str(len(notes)),
                       "X-Hummingml-Instrument": name,
                       "Server-Timing": ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in timings.items()),
                       "Content-Disposition": 'attachment; filename="hummingml.wav"'}  # fmt: skip
            return Response(_wav_bytes(out, out_rate), media_type="audio/wav", headers=headers)

        return await self._guarded(work)

    @api.post("/v1/remix", status_code=202)
    async def remix_route(
        self,
        song: UploadFile,
        instrument: UploadFile | None = None,
        preset: str | None = Form(None),
    ) -> Response:
        """Queue a remix of ``song``: separated, its vocals cleaned, their melody played by the instrument, mixed
        with the backing stems. Answers 202 with the job id; poll ``/v1/jobs/{id}``."""

        async def work() -> Response:
            audio, rate = await self._read(song, self.song_limits)
            clip, clip_rate, name = await self._instrument(instrument, preset)
            queued = await self.remixer.submit.remote(audio, rate, clip, clip_rate, name)
            if "error" in queued:
                return _error(429, queued["error"], queued["detail"], {"Retry-After": "10"})
            return JSONResponse({"job_id": queued["job_id"], "status_url": f"/v1/jobs/{queued['job_id']}"},
                                status_code=202)  # fmt: skip

        return await self._guarded(work)

    @api.get("/v1/jobs/{job_id}")
    async def job(self, job_id: str) -> Response:
        """A remix job: ``status`` (queued, running, done, failed), ``stage``, ``progress`` 0-1, ``error``, ``starts``
        (how many times a replica started it), ``resumed`` (true when a new replica took it over), and when done
        ``audio_url`` and ``report`` (the sidecar: models, durations, notes, loudness)."""
        status = await self.remixer.status.remote(job_id)
        if status is None:
            return _error(404, "no_such_job", f"no remix job {job_id!r}")
        if status["status"] == "done":
            _, report = await self.remixer.paths.remote(job_id)
            status["audio_url"] = f"/v1/jobs/{job_id}/audio"
            status["report"] = json.loads(Path(report).read_text())
        return JSONResponse(status)

    @api.get("/v1/jobs/{job_id}/audio", response_class=FileResponse)
    async def job_audio(self, job_id: str) -> Response:
        """The finished remix: a 16-bit WAV, 44.1 kHz stereo."""
        status = await self.remixer.status.remote(job_id)
        if status is None or status["status"] != "done":
            return _error(404, "not_ready", f"remix job {job_id!r} has no audio (yet)")
        wav, _ = await self.remixer.paths.remote(job_id)
        return FileResponse(wav, media_type="audio/wav", filename=f"remix-{job_id[:8]}.wav")


# --- building and running --------------------------------------------------------------------------------------------


def build_app(cfg: ServeConfig) -> Any:
    """The application graph: every deployment bound to its arguments and options from ``cfg``."""
    models = dataclasses.asdict(cfg.models)
    batch = {"max_batch": cfg.max_batch, "batch_wait_s": cfg.batch_wait_s}
    scaling = {"min_replicas": 1, "max_replicas": cfg.max_replicas, "target_ongoing_requests": 2}

    def options(deployment: Any, gpu: bool = False, **extra: Any) -> Any:
        resources = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus if gpu else 0}
        return deployment.options(ray_actor_options=resources, **extra)

    # a checkpoint's own extraction record picks the DAC unless --models-* were given (ServeConfig defaults)
    lm_models = None if cfg.checkpoint and cfg.models == type(cfg.models)() else models
    pitch = options(Pitch, autoscaling_config=scaling).bind(**batch)
    codec = options(Codec, gpu=True, autoscaling_config=scaling).bind(models, **batch)
    lm = options(HumLM, gpu=True, autoscaling_config=scaling).bind(cfg.checkpoint, lm_models, **batch)
    separation = options(Separation, gpu=True, autoscaling_config=scaling).bind(models, max_batch=2,
                                                                       batch_wait_s=cfg.batch_wait_s)  # fmt: skip
    plain = dataclasses.asdict(cfg)
    remixer = options(Remixer).bind(plain, separation, pitch, codec, lm)
    return options(Api, autoscaling_config=scaling).bind(plain, remixer, pitch, codec, lm)


def app_builder(args: dict[str, Any]) -> Any:
    """``serve deploy`` / ``serve run`` entry point (``import_path: hummingml.serve.app:app_builder``): ``args`` are
    :class:`ServeConfig` fields (``models`` a dict of ``ModelsConfig`` fields)."""
    from hummingml.config import ConfigError

    cfg = from_dict(ServeConfig, args)
    if problems := cfg.problems():
        raise ConfigError("\n".join(problems))
    return build_app(cfg)


def main(cfg: ServeConfig) -> int:
    """``hummingml serve``: join the Ray cluster of ``RAY_ADDRESS`` (or start a local one), start Serve's HTTP proxy
    on ``cfg.host:cfg.port``, deploy the app and block until Ctrl-C (then shut the app down)."""
    from hummingml.cluster import connect

    if dashboard := connect(dashboard=True):
        print(f"hummingml serve: Ray dashboard {dashboard}", file=sys.stderr, flush=True)
    serve.start(http_options={"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s + 30})
    serve.run(build_app(cfg), name="hummingml", route_prefix="/")
    url = f"http://{cfg.host}:{cfg.port}/"
    auth = "bearer token required on /v1" if cfg.token_file else "no auth (loopback only)"
    print(f"hummingml serve: {url} (API docs {url}docs; {auth}); Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0
