"""What an upload must be before it is decoded: small enough, audio by its own bytes, and short enough.

Checks run cheapest first: the byte count, the format sniffed from the first bytes (WAV, FLAC, OGG, MP3 only;
never the file name or the client's content type), the duration from the header, then a full decode
(:class:`hummingml.audio.AudioReader`, which walks the whole stream and rejects corrupt, truncated and non-finite
audio). Each failure is an :class:`UploadError` with an HTTP status and a stable ``reason``. Nothing in an upload is
executed or unpickled; it only ever reaches libsndfile as bytes.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np

from hummingml.audio import F32, AudioReader, DecodeError

FORMATS = ("wav", "flac", "ogg", "mp3")  # what sniff() recognises


class UploadError(ValueError):
    """An upload that is refused: ``status`` is the HTTP status to answer, ``reason`` a stable word for clients."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on one uploaded file."""

    max_bytes: int = 20 * 1024 * 1024  # larger bodies are refused with 413 before they are read whole
    max_seconds: float = 30.0  # longer audio is refused with 413 (reason "too_long")
    min_seconds: float = 0.25  # shorter audio is refused with 422 (reason "too_short")


def sniff(data: bytes) -> str:
    """The container format of ``data`` from its magic bytes: one of :data:`FORMATS`.

    Raises:
        UploadError: 400 ``empty`` for no bytes, 415 ``not_audio`` for anything else.
    """
    if not data:
        raise UploadError(400, "empty", "the upload has 0 bytes")
    head = data[:12]
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    raise UploadError(415, "not_audio", f"not a WAV, FLAC, OGG or MP3 file (first bytes {head[:8]!r})")


def check_size(n_bytes: int, limits: UploadLimits) -> None:
    """Raise a 413 ``too_big`` :class:`UploadError` for a body over ``limits.max_bytes`` (before reading it)."""
    if n_bytes > limits.max_bytes:
        raise UploadError(413, "too_big", f"the upload is {n_bytes} bytes; the limit is {limits.max_bytes}")


def _check_seconds(seconds: float, limits: UploadLimits, longest_only: bool = False) -> None:
    if seconds > limits.max_seconds:
        raise UploadError(413, "too_long", f"the audio is {seconds:.2f} s; the limit is {limits.max_seconds:g} s")
    if seconds < limits.min_seconds and not longest_only:
        raise UploadError(422, "too_short", f"the audio is {seconds:.3f} s; the minimum is {limits.min_seconds:g} s")


def read_upload(data: bytes, limits: UploadLimits = UploadLimits()) -> tuple[F32, int]:
    """Check and decode one upload: float32 ``(channels, samples)`` (more than two channels mixed down to stereo)
    and its sample rate.

    Raises:
        UploadError: 400 ``empty``; 413 ``too_big`` / ``too_long``; 415 ``not_audio`` (no known magic bytes);
            422 ``too_short`` or the decoder's kind (``corrupt``, ``truncated``, ``zero_length``, ``non_finite``)
            with its reason.
    """
    import soundfile as sf

    check_size(len(data), limits)
    kind = sniff(data)
    try:  # libsndfile must read the header (so no other decoder ever sees an upload); its duration comes first
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        detail = re.sub(r"<[^>]*>", "the upload", str(exc))  # no object reprs in answers
        raise UploadError(422, "corrupt", f"{kind} upload: {detail}") from exc
    if info.samplerate > 0 and info.frames > 0:
        _check_seconds(info.frames / info.samplerate, limits, longest_only=True)
    try:
        reader = AudioReader(io.BytesIO(data), len(data), to_stereo=True)
        _check_seconds(reader.frames / reader.sample_rate, limits)
        audio = np.concatenate(list(reader.blocks()), axis=1)
    except DecodeError as exc:
        raise UploadError(422, exc.kind, f"{kind} upload: {exc.reason}") from exc
    return np.ascontiguousarray(audio, dtype=np.float32), int(reader.sample_rate)
