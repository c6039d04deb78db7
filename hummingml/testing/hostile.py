"""A corpus of hostile inputs, each with the outcome extraction must give it.

``write_hostile_corpus(root, segment_s)`` writes one file (or directory, link, FIFO) per kind under ``root`` and
returns what each must become: feature rows for a number of segments, one error row of a given type and stage, or
no rows of its own when it is another input under a second name (a link to it: one source, listed once).
The reliability tests run the extraction job over it and check every kind; users can do the same against their own
deployment (``hummingml.testing.hostile.write_hostile_corpus``).
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hummingml.audio import F32, FEATURE_SAMPLE_RATE, n_segments, segment_length
from hummingml.testing.signals import sine


@dataclass(frozen=True)
class Expected:
    """What extraction must make of one input: ``segments`` feature rows, one error row, or the rows of ``same_as``."""

    segments: int = 0  # feature rows (segments) when the input is good
    error_type: str = ""  # the error row's error_type, e.g. "DecodeError:truncated"; "" for a good input
    stage: str = ""  # the error row's stage: read or decode
    same_as: str = ""  # the corpus path of the input this one is (same source, listed once); "" for its own source

    @property
    def ok(self) -> bool:
        """The input must end as feature rows."""
        return not self.error_type


@dataclass(frozen=True)
class HostileInput:
    """One input of the corpus: its kind, its path (relative to the corpus root, bytes-safe) and the expectation."""

    kind: str
    path: str
    expected: Expected


def encode(audio: F32, sample_rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    """``audio`` (channels, samples) encoded with libsndfile."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio.T, sample_rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def float_wav(samples: np.ndarray, sample_rate: int = 16_000) -> bytes:
    """A mono 32-bit float WAV of ``samples`` as they are (NaN, infinity and values beyond full scale kept)."""
    return encode(np.asarray(samples, dtype=np.float32)[None, :], sample_rate, "WAV", "FLOAT")


def write_hostile_corpus(root: Path, segment_s: float, long_s: float = 0.0) -> list[HostileInput]:
    """Write every hostile kind under ``root``; return the inputs with their expected outcomes.

    Args:
        root: an empty or missing directory.
        segment_s: the extraction's ``segment_s`` (the expected segment counts depend on it).
        long_s: when > 0, also write a mono 8 kHz file this many seconds long (the one-hour kind uses 3600).

    Files are short (under one segment unless the kind is about length) so the corpus runs in seconds with the
    tiny models. Kinds that depend on the platform (an unreadable file is readable by root) state the outcome for
    the current process.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    seconds = min(1.0, segment_s / 2)
    tone = sine(440.0, seconds=seconds, sample_rate=22_050, amplitude=0.5)
    stereo = np.concatenate([tone, sine(660.0, seconds=seconds, sample_rate=22_050)], axis=0)
    wav16 = encode(stereo, 22_050)
    flac = encode(stereo, 22_050, "FLAC")
    ogg = encode(stereo, 22_050, "OGG", "VORBIS")
    mp3 = encode(stereo, 22_050, "MP3", "MPEG_LAYER_III")
    opus = encode(np.repeat(sine(440.0, seconds=seconds, sample_rate=48_000), 2, axis=0), 48_000, "OGG", "OPUS")
    one = Expected(segments=1)
    seg_len = segment_length(segment_s)

    def err(error_type: str, stage: str = "decode") -> Expected:
        return Expected(error_type=f"DecodeError:{error_type}", stage=stage)

    def at(rate: int, channels: int = 2, subtype: str | None = None, fmt: str = "WAV") -> bytes:
        audio = np.repeat(sine(440.0, seconds=seconds, sample_rate=rate), channels, axis=0)
        return encode(audio, rate, fmt, subtype)

    lying = bytearray(wav16)
    data_at = wav16.index(b"data") + 4
    lying[data_at : data_at + 4] = struct.pack("<I", struct.unpack("<I", wav16[data_at : data_at + 4])[0] * 2)
    n = tone.shape[1]
    files: dict[str, tuple[str, bytes | Callable[[Path], None], Expected]] = {
        # not audio at all
        "zero bytes": ("zero.wav", b"", err("empty")),
        "random bytes .wav": ("random.wav", rng.bytes(8192), err("not_audio")),
        "random bytes .flac": ("random.flac", rng.bytes(8192), err("not_audio")),
        "random bytes .mp3": ("random.mp3", rng.bytes(8192), err("not_audio")),
        "text named .ogg": ("text.ogg", b"this is not audio\n" * 100, err("not_audio")),
        # cut short or lying
        "wav header only": ("header-only.wav", wav16[:44], err("truncated")),
        "wav cut in half": ("half.wav", wav16[: len(wav16) // 2], err("truncated")),
        "wav header claims more data": ("lying-header.wav", bytes(lying), err("truncated")),
        "flac cut in half": ("half.flac", flac[: len(flac) // 2], err("truncated")),
        "ogg cut in half": ("half.ogg", ogg[: len(ogg) // 2], err("truncated")),
        "opus cut in half": ("half.opus", opus[: len(opus) // 2], err("truncated")),
        "mp3 cut in half": ("half.mp3", mp3[: len(mp3) // 2], err("truncated")),
        "zero-length wav": ("no-samples.wav", encode(np.zeros((2, 0), np.float32), 22_050), err("zero_length")),
        "float wav with NaN": ("nan.wav", float_wav(np.array([0.0, np.nan, 0.1] * 100)), err("non_finite")),
        "float wav with Inf": ("inf.wav", float_wav(np.array([0.0, np.inf, 0.1] * 100)), err("non_finite")),
        # sample formats
        "8-bit unsigned wav": ("u8.wav", at(22_050, subtype="PCM_U8"), one),
        "16-bit wav": ("s16.wav", wav16, one),
        "24-bit wav": ("s24.wav", at(22_050, subtype="PCM_24"), one),
        "32-bit int wav": ("s32.wav", at(22_050, subtype="PCM_32"), one),
        "32-bit float wav": ("f32.wav", at(22_050, subtype="FLOAT"), one),
        "64-bit float wav": ("f64.wav", at(22_050, subtype="DOUBLE"), one),
        "A-law wav": ("alaw.wav", at(22_050, subtype="ALAW"), one),
        "mu-law wav": ("ulaw.wav", at(22_050, subtype="ULAW"), one),
        "IMA ADPCM wav": ("ima-adpcm.wav", at(22_050, subtype="IMA_ADPCM"), one),
        "flac": ("ok.flac", flac, one),
        "ogg vorbis": ("ok.ogg", ogg, one),
        "ogg opus": ("ok.opus", opus, one),
        "mp3": ("ok.mp3", mp3, one),
        "aiff": ("ok.aiff", at(22_050, fmt="AIFF", subtype="PCM_16"), one),
        "flac named .wav": ("flac-inside.wav", flac, one),
        "wav with trailing garbage": ("trailing-garbage.wav", wav16 + rng.bytes(1000), one),
        # channels
        # channels: more than two are mixed down to stereo (hummingml.audio.downmix_matrix), none refused for its count
        "mono": ("mono.wav", at(22_050, channels=1), one),
        "3 channels": ("ch3.wav", at(22_050, channels=3), one),
        "4 channels": ("ch4.wav", at(22_050, channels=4), one),
        "6 channels": ("ch6.wav", at(22_050, channels=6), one),
        "8 channels": ("ch8.wav", at(22_050, channels=8), one),
        "16 channels": ("ch16.wav", at(22_050, channels=16), one),
        "5.1 WAVE_FORMAT_EXTENSIBLE": ("ch6-extensible.wav", at(22_050, channels=6, fmt="WAVEX"), one),
        "5.1 ogg vorbis": ("ch6.ogg", at(22_050, channels=6, subtype="VORBIS", fmt="OGG"), one),
        "wav declaring 0 channels": ("no-channels.wav", _patched(wav16, 22, "<H", 0), err("not_audio")),
        "wav declaring 0 Hz": ("zero-rate.wav", _patched(wav16, 24, "<I", 0), err("corrupt")),
        # rates
        "8 kHz": ("r8k.wav", at(8_000), one),
        "44.1 kHz": ("r44k.wav", at(44_100), one),
        "96 kHz": ("r96k.wav", at(96_000), one),
        "192 kHz": ("r192k.wav", at(192_000), one),
        # lengths
        "10 ms": ("10ms.wav", encode(stereo[:, : FEATURE_SAMPLE_RATE // 100], 22_050), one),
        "one sample": ("one-sample.wav", encode(stereo[:, :1], 22_050), one),
        "exactly one segment": ("one-segment.wav", encode(_tile(stereo, seg_len), 22_050), one),
        "one segment + 1 sample": ("one-segment-plus-one.wav", encode(_tile(stereo, seg_len + 1), 22_050),
                                   Expected(segments=2)),
        # content
        "digital silence": ("silence.wav", encode(np.zeros((2, n), np.float32), 22_050), one),
        "DC offset": ("dc.wav", encode(np.full((2, n), 0.5, np.float32), 22_050), one),
        "full-scale square": ("square.wav", encode(np.sign(stereo + 1e-9).astype(np.float32), 22_050), one),
        "white noise": ("noise.wav", encode(rng.uniform(-1, 1, (2, n)).astype(np.float32), 22_050), one),
        "float beyond full scale": ("loud.wav", float_wav(np.sin(np.arange(n) / 8.0) * 8.0, 22_050), one),
        "denormal samples": ("denormal.wav", float_wav(np.full(n, 1e-42), 22_050), one),
        # names and file-system objects
        "non-UTF-8 name": ("bad-\udcff\udcfe-name.wav", wav16, one),
        "very long name": ("l" * 240 + ".wav", wav16, one),
        "spaces and quotes in name": ("it's a \"song\" (live).wav", wav16, one),
        "duplicate content, first name": ("copy-a.wav", mp3, one),
        "duplicate content, second name": ("copy-b.mp3", mp3, one),
        "upper-case extension": ("UPPER.WAV", wav16, one),
        "in a nested directory": ("nested/deeper/inner.wav", wav16, one),
        "directory named x.wav": ("dir.wav", lambda p: p.mkdir(), err("unreadable", "read")),
        "broken symlink": ("broken-link.wav", lambda p: os.symlink(p.parent / "nowhere.wav", p),
                           err("not_found", "read")),
        "symlink to a good file": ("link-to-good.wav", lambda p: os.symlink(p.parent / "s16.wav", p),
                                   Expected(same_as="s16.wav")),
        "FIFO named x.wav": ("fifo.wav", lambda p: os.mkfifo(p), err("unreadable", "read")),
        "unreadable file": ("unreadable.wav", _unreadable(wav16),
                            one if os.geteuid() == 0 else err("unreadable", "read")),
    }
    if long_s > 0:
        long = sine(220.0, seconds=long_s, sample_rate=8_000, amplitude=0.3)
        expected = Expected(n_segments(long.shape[1], 8_000, segment_s))
        files["long (8 kHz mono)"] = ("long.wav", encode(long, 8_000), expected)
    out = []
    for kind, (name, content, expected) in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        else:
            path.write_bytes(content)
        out.append(HostileInput(kind, name, expected))
    return out


def _patched(wav: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``wav`` with one header field (at ``offset``, packed as ``fmt``) set to ``value``: 22 is the channel count and 24
    the sample rate of a plain 44-byte-header WAV."""
    out = bytearray(wav)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _tile(audio: F32, n: int) -> F32:
    """``audio`` repeated along time to exactly ``n`` samples."""
    return np.tile(audio, (1, -(-n // audio.shape[1])))[:, :n]


def _unreadable(data: bytes) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_bytes(data)
        path.chmod(0)

    return write


def markdown_table(segment_s: float = 2.0) -> str:
    """The kinds and their expected outcomes as a Markdown table (docs/reliability.md holds it)."""
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        inputs = write_hostile_corpus(Path(root), segment_s)
    lines = ["| kind | file | expected outcome |", "|---|---|---|"]
    for i in inputs:
        name = i.path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        name = name if len(name) < 40 else name[:12] + "…" + name[-8:]
        outcome = (f"error row: stage `{i.expected.stage}`, `{i.expected.error_type}`" if not i.expected.ok
                   else f"{i.expected.segments} feature row{'s' if i.expected.segments > 1 else ''}")
        if i.expected.same_as:
            outcome = f"same source as `{i.expected.same_as}` (listed once, no rows of its own)"
        if i.kind == "unreadable file":  # depends on who runs it; the table states both
            outcome = "1 feature row as root; error row: stage `read`, `DecodeError:unreadable` for other users"
        lines.append(f"| {i.kind} | `{name}` | {outcome} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
