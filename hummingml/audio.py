"""Audio I/O and signal basics: decode, resample, mono.

One convention everywhere: float32 ``(channels, samples)`` plus ``sample_rate: int`` in Hz. Mono is
``(1, samples)``. Conversion to a model's own layout happens only inside that model's stage.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

SOURCE_SAMPLE_RATE = 44_100  # Hz, the usual rate of the input corpus
FEATURE_SAMPLE_RATE = 22_050  # Hz, the rate of every feature stream (Basic Pitch's own rate)
FRAME_HOP = 256  # samples at FEATURE_SAMPLE_RATE per feature frame: DAC 44 kHz hop 512 / 2 = Basic Pitch FFT_HOP
FRAME_RATE = FEATURE_SAMPLE_RATE / FRAME_HOP  # frames/s, 86.13

DecodeErrorKind = Literal[
    "empty", "not_found", "unreadable", "not_audio", "corrupt", "truncated", "zero_length", "non_finite", "channels"
]

F32 = npt.NDArray[np.float32]


class DecodeError(ValueError):
    """The input could not be turned into audio.

    ``kind`` is one of :data:`DecodeErrorKind` (stable, for error rows and tests); the message says what is wrong in
    words.
    """

    def __init__(self, kind: DecodeErrorKind, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind: DecodeErrorKind = kind
        self.reason = message


def read_local_bytes(source: bytes | str | os.PathLike[str]) -> bytes:
    """The bytes of a local file (bytes pass through).

    Raises:
        DecodeError: ``not_found`` for a missing path or broken link, ``unreadable`` for a directory or an OS error.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    path = Path(source)
    if not path.exists():
        raise DecodeError("not_found", f"{path} does not exist (or is a broken link)")
    if not path.is_file():
        raise DecodeError("unreadable", f"{path} is not a regular file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DecodeError("unreadable", f"{path}: {exc.strerror or exc}") from exc


def _check_wav_length(data: bytes) -> None:
    """Raise ``truncated`` when a RIFF/WAVE header claims more sample data than the file holds.

    libsndfile silently shortens such files to what is present; a user wants to know the upload was cut.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if chunk_id == b"data":
            present = len(data) - pos - 8
            # 0 and 0xFFFFFFFF mean "unknown size" (streamed writers); trust the file then.
            if size not in (0, 0xFFFFFFFF) and present < size:
                raise DecodeError("truncated", f"WAV header declares {size} data bytes but only {present} are present")
            return
        pos += 8 + size + (size & 1)


def _check_ogg_complete(data: bytes) -> None:
    """Raise ``truncated`` when an Ogg stream (Vorbis, Opus, FLAC-in-Ogg) breaks off.

    Walks the pages: a page that runs past the end of the data, or a last page without the end-of-stream flag, means
    the file was cut. libsndfile reports such files inconsistently (not audio, zero samples, or silently shorter).
    """
    if data[:4] != b"OggS":
        return
    pos, last_flags = 0, 0
    while pos < len(data):
        if data[pos : pos + 4] != b"OggS":
            return  # not a page boundary: trailing or damaged data, which the decoder judges
        if pos + 27 > len(data):
            raise DecodeError("truncated", f"the Ogg stream breaks off at byte {pos} of {len(data)}")
        n_lacing = data[pos + 26]
        if pos + 27 + n_lacing > len(data):
            raise DecodeError("truncated", f"the Ogg page at byte {pos} is cut short")
        body = sum(data[pos + 27 : pos + 27 + n_lacing])
        last_flags = data[pos + 5]
        pos += 27 + n_lacing + body
        if pos > len(data):
            raise DecodeError("truncated", f"the last Ogg page needs {pos - len(data)} more bytes than present")
    if not last_flags & 0x04:
        raise DecodeError("truncated", "the Ogg stream ends without its end-of-stream page")


def decode(source: bytes | str | os.PathLike[str]) -> tuple[F32, int]:
    """Decode an encoded audio file into float32 samples.

    Args:
        source: the encoded file's bytes, or a path to it. WAV, FLAC, OGG/Vorbis/Opus and (with a libsndfile
            that has MPEG support) MP3 are read by libsndfile; anything else falls back to audioread, which
            decodes MP3/M4A/AAC when an ffmpeg or GStreamer backend is present.

    Returns:
        ``(audio, sample_rate)`` where ``audio`` is float32 ``(channels, samples)`` in [-1, 1] for integer formats
        and ``sample_rate`` is in Hz. Any channel count and rate are kept as they are.

    Raises:
        DecodeError: for a missing, unreadable, empty, non-audio, corrupt, truncated, zero-length or
            non-finite input; ``kind`` says which. (``channels`` is raised by callers that limit the channel count.)
    """
    import soundfile as sf

    data = read_local_bytes(source)
    if not data:
        raise DecodeError("empty", "the input has 0 bytes")
    _check_wav_length(data)
    _check_ogg_complete(data)
    buf = io.BytesIO(data)
    try:
        f = sf.SoundFile(buf)
    except sf.LibsndfileError as exc:
        audio, sample_rate = _decode_with_audioread(data, str(exc))
    else:
        with f:
            declared, sample_rate = f.frames, int(f.samplerate)
            try:
                samples = f.read(dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                # A decoder that fails once it has consumed every byte ran out of data: the file was cut short.
                kind: DecodeErrorKind = "truncated" if buf.tell() >= len(data) else "corrupt"
                raise DecodeError(kind, f"the stream broke off while decoding ({exc})") from exc
        if declared > 0 and samples.shape[0] < declared:
            raise DecodeError(
                "truncated", f"the stream declares {declared} frames but only {samples.shape[0]} could be read"
            )
        audio = np.ascontiguousarray(samples.T)
    if audio.shape[-1] == 0:
        raise DecodeError("zero_length", "the stream decodes to 0 samples")
    if sample_rate <= 0:
        raise DecodeError("corrupt", f"invalid sample rate {sample_rate}")
    if not np.isfinite(audio).all():
        bad = int(np.size(audio) - np.count_nonzero(np.isfinite(audio)))
        raise DecodeError("non_finite", f"{bad} samples are NaN or infinite")
    return audio, sample_rate


def _decode_with_audioread(data: bytes, sndfile_error: str) -> tuple[F32, int]:
    """Decode formats libsndfile does not know (MP3 on old libsndfile, M4A/AAC) with audioread, if installed."""
    import tempfile

    try:
        import audioread
    except ImportError as exc:
        raise DecodeError("not_audio", f"not a format libsndfile reads ({sndfile_error})") from exc
    with tempfile.NamedTemporaryFile(suffix=".audio") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            with audioread.audio_open(tmp.name) as f:
                channels, sample_rate = int(f.channels), int(f.samplerate)
                pcm = b"".join(f)
        except (audioread.NoBackendError, audioread.DecodeError, EOFError, OSError) as exc:
            raise DecodeError(
                "not_audio", f"no decoder recognises the input (libsndfile: {sndfile_error}; audioread: {exc!r})"
            ) from exc
    ints = np.frombuffer(pcm, dtype="<i2")
    if channels <= 0 or ints.size % channels:
        raise DecodeError("corrupt", f"decoder returned {ints.size} samples for {channels} channels")
    audio = (ints.reshape(-1, channels).T / 32768.0).astype(np.float32)
    return np.ascontiguousarray(audio), sample_rate


def resample(audio: F32, sample_rate: int, target_rate: int = FEATURE_SAMPLE_RATE, quality: str = "HQ") -> F32:
    """Resample every channel with soxr.

    Args:
        audio: float32 ``(channels, samples)``.
        sample_rate: rate of ``audio`` in Hz.
        target_rate: output rate in Hz (default 22 050).
        quality: soxr quality recipe, ``"HQ"`` (high, the default) or ``"VHQ"`` (very high).

    Returns:
        float32 ``(channels, round(samples * target_rate / sample_rate))``.
    """
    import soxr

    if audio.ndim != 2:
        raise ValueError(f"audio must be (channels, samples), got shape {audio.shape}")
    if sample_rate == target_rate:
        return audio.astype(np.float32, copy=False)
    # a real C-ordered copy: soxr checks strides, which numpy leaves odd on views with a length-1 axis
    out = soxr.resample(audio.T.astype(np.float32, order="C"), sample_rate, target_rate, quality=quality)
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32).reshape(-1, audio.shape[0]).T)


def to_mono(audio: F32) -> F32:
    """The mono reference: the mean of the channels, float32 ``(1, samples)``.

    The mean is taken in float64, so the mono of identical channels is exactly that channel.
    """
    if audio.ndim != 2:
        raise ValueError(f"audio must be (channels, samples), got shape {audio.shape}")
    return audio.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)


def n_frames(n_samples: int, hop: int = FRAME_HOP) -> int:
    """Number of feature frames covering ``n_samples`` at the feature rate: ``ceil(n_samples / hop)``."""
    return -(-n_samples // hop)
