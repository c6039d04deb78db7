"""Audio I/O and signal basics: decode, resample, mono.

One convention everywhere: float32 ``(channels, samples)`` plus ``sample_rate: int`` in Hz. Mono is
``(1, samples)``. Conversion to a model's own layout happens only inside that model's stage.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import numpy.typing as npt

SOURCE_SAMPLE_RATE = 44_100  # Hz, the usual rate of the input corpus
FEATURE_SAMPLE_RATE = 22_050  # Hz, the rate of every feature stream (Basic Pitch's own rate)
FRAME_HOP = 256  # samples at FEATURE_SAMPLE_RATE per feature frame: DAC 44 kHz hop 512 / 2 = Basic Pitch FFT_HOP
FRAME_RATE = FEATURE_SAMPLE_RATE / FRAME_HOP  # frames/s, 86.13
STEMS = ("drums", "bass", "vocals", "lead", "chordal", "other")  # our six stems, in the order used everywhere
MELODIC_STEMS = ("vocals", "lead")  # monophonic melodic parts: Basic Pitch runs on these by default

DecodeErrorKind = Literal[
    "empty", "not_found", "unreadable", "not_audio", "corrupt", "truncated", "zero_length", "non_finite"
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


def open_local(source: str | os.PathLike[str]) -> BinaryIO:
    """A local file opened for reading (binary).

    Raises:
        DecodeError: ``not_found`` for a missing path or broken link, ``unreadable`` for anything but a regular file
            (a directory, a FIFO) or an OS error.
    """
    path = Path(source)
    if not path.exists():
        raise DecodeError("not_found", f"{path} does not exist (or is a broken link)")
    if not path.is_file():
        raise DecodeError("unreadable", f"{path} is not a regular file")
    try:
        return path.open("rb")
    except OSError as exc:
        raise DecodeError("unreadable", f"{path}: {exc.strerror or exc}") from exc


def read_local_bytes(source: bytes | str | os.PathLike[str]) -> bytes:
    """The bytes of a local file (bytes pass through); raises as :func:`open_local`."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    with open_local(source) as f:
        try:
            return f.read()
        except OSError as exc:
            raise DecodeError("unreadable", f"{source}: {exc.strerror or exc}") from exc


def _read_at(f: BinaryIO, pos: int, n: int) -> bytes:
    f.seek(pos)
    return f.read(n)


def _check_wav_length(f: BinaryIO, size: int) -> None:
    """Raise ``truncated`` when a RIFF/WAVE header claims more sample data than the file holds.

    libsndfile silently shortens such files to what is present; a user wants to know the upload was cut.
    """
    head = _read_at(f, 0, 12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= size:
        chunk = _read_at(f, pos, 8)
        chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:8])[0]
        if chunk_id == b"data":
            present = size - pos - 8
            # 0 and 0xFFFFFFFF mean "unknown size" (streamed writers); trust the file then.
            if chunk_size not in (0, 0xFFFFFFFF) and present < chunk_size:
                raise DecodeError(
                    "truncated", f"WAV header declares {chunk_size} data bytes but only {present} are present"
                )
            return
        pos += 8 + chunk_size + (chunk_size & 1)


def wav_channel_mask(f: BinaryIO, size: int) -> int | None:
    """The ``dwChannelMask`` of a WAVE_FORMAT_EXTENSIBLE ``fmt `` chunk (RIFF, RF64 or BW64 WAV), else None.

    libsndfile reads the mask but soundfile does not expose it, so the header is read here. A plain PCM/float WAV, a
    mask of 0 ("no speaker positions") and any other format give None; the caller falls back to the default layout
    for the channel count (:func:`channel_layout`).
    """
    head = _read_at(f, 0, 12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64", b"BW64") or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= size:
        chunk = _read_at(f, pos, 8)
        chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:8])[0]
        if chunk_id == b"fmt ":
            body = _read_at(f, pos + 8, min(chunk_size, 24))
            # wFormatTag 0xFFFE, cbSize >= 22: wValidBitsPerSample at 18, dwChannelMask at 20
            if len(body) < 24 or struct.unpack("<H", body[:2])[0] != 0xFFFE or struct.unpack("<H", body[16:18])[0] < 22:
                return None
            return struct.unpack("<I", body[20:24])[0] or None
        if chunk_id == b"data":
            return None
        pos += 8 + chunk_size + (chunk_size & 1)
    return None


def _check_ogg_complete(f: BinaryIO, size: int) -> None:
    """Raise ``truncated`` when an Ogg stream (Vorbis, Opus, FLAC-in-Ogg) breaks off.

    Walks the pages: a page that runs past the end of the data, or a last page without the end-of-stream flag, means
    the file was cut. libsndfile reports such files inconsistently (not audio, zero samples, or silently shorter).
    """
    if _read_at(f, 0, 4) != b"OggS":
        return
    pos, last_flags = 0, 0
    while pos < size:
        header = _read_at(f, pos, 27)
        if header[:4] != b"OggS":
            return  # not a page boundary: trailing or damaged data, which the decoder judges
        if len(header) < 27:
            raise DecodeError("truncated", f"the Ogg stream breaks off at byte {pos} of {size}")
        n_lacing = header[26]
        lacing = f.read(n_lacing)
        if len(lacing) < n_lacing:
            raise DecodeError("truncated", f"the Ogg page at byte {pos} is cut short")
        last_flags = header[5]
        pos += 27 + n_lacing + sum(lacing)
        if pos > size:
            raise DecodeError("truncated", f"the last Ogg page needs {pos - size} more bytes than present")
    if not last_flags & 0x04:
        raise DecodeError("truncated", "the Ogg stream ends without its end-of-stream page")


class AudioReader:
    """An encoded audio stream, checked once from end to end, then read from the start in blocks, in fixed memory.

    Opening walks the whole stream (block by block, keeping no samples) so that a bad file fails here, before any
    audio is used, with the same :class:`DecodeError` kinds as :func:`decode`; it also yields the exact frame count.
    :meth:`blocks` then decodes again from the start. Formats libsndfile does not read (M4A/AAC; MP3 with an old
    libsndfile) go through audioread, which decodes the whole file into memory.

    Args:
        f: the encoded file, seekable (a local file, an in-memory buffer, a spooled download); not closed here.
        size: its length in bytes.
        block_frames: frames per decoded block.
        to_stereo: mix more than two channels down to stereo (:func:`downmix_matrix`, by the file's channel layout),
            block by block as :meth:`blocks` reads; mono and stereo are kept as they are.

    Attributes:
        channels: channels of the blocks (2 after a downmix). source_channels: channels in the file.
        sample_rate: as in the file. frames: the number of frames per channel (exact).
        channel_mask: the WAV header's speaker mask (:func:`wav_channel_mask`), or None.
        downmix: the downmix rule applied (:func:`downmix_matrix`), "" when none.

    Raises:
        DecodeError: for an empty, non-audio, corrupt, truncated, zero-length or non-finite input.
    """

    def __init__(self, f: BinaryIO, size: int, block_frames: int = 1 << 18, to_stereo: bool = False) -> None:
        import soundfile as sf

        if size == 0:
            raise DecodeError("empty", "the input has 0 bytes")
        _check_wav_length(f, size)
        _check_ogg_complete(f, size)
        self._f, self._size, self.block_frames = f, size, block_frames
        self._whole: F32 | None = None
        self._mix: npt.NDArray[np.float64] | None = None
        self.channel_mask: int | None = None
        order: ChannelOrder = "wav"
        f.seek(0)
        try:
            with sf.SoundFile(f) as probe:
                if probe.format == "OGG" and probe.subtype in ("VORBIS", "OPUS"):
                    order = "vorbis"
        except sf.LibsndfileError as exc:
            f.seek(0)
            self._whole, self.sample_rate = _decode_with_audioread(f.read(), str(exc))
            self.channels, self.frames = self._whole.shape
        else:
            self.frames = 0
            for block in self.blocks():
                if not np.isfinite(block).all():
                    bad = int(np.size(block) - np.count_nonzero(np.isfinite(block)))
                    raise DecodeError("non_finite", f"{bad} samples are NaN or infinite (in frames from {self.frames})")
                self.frames += block.shape[1]
            self.channels = self._channels
        if self.frames == 0:
            raise DecodeError("zero_length", "the stream decodes to 0 samples")
        if self.sample_rate <= 0:
            raise DecodeError("corrupt", f"invalid sample rate {self.sample_rate}")
        if self._whole is not None and not np.isfinite(self._whole).all():
            bad = int(np.size(self._whole) - np.count_nonzero(np.isfinite(self._whole)))
            raise DecodeError("non_finite", f"{bad} samples are NaN or infinite")
        if self._whole is None:
            self.channel_mask = wav_channel_mask(f, size)
        self.source_channels, self.downmix = self.channels, ""
        if to_stereo and self.channels > 2:  # chosen once per source, applied to every block
            matrix, self.downmix = downmix_matrix(self.channels, self.channel_mask, order)
            self._mix, self.channels = matrix, 2

    def blocks(self) -> Iterator[F32]:
        """float32 ``(channels, n)`` blocks from the start of the stream, ``block_frames`` frames each but the last
        (mixed down to stereo when the reader was opened ``to_stereo``)."""
        if self._mix is not None:
            for block in self._blocks():
                yield mix_channels(self._mix, block)
        else:
            yield from self._blocks()

    def _blocks(self) -> Iterator[F32]:
        """The blocks as in the file (all of its channels)."""
        import soundfile as sf

        if self._whole is not None:
            for start in range(0, self._whole.shape[1], self.block_frames):
                yield self._whole[:, start : start + self.block_frames]
            return
        self._f.seek(0)
        with sf.SoundFile(self._f) as f:
            declared, self.sample_rate, self._channels = f.frames, int(f.samplerate), int(f.channels)
            read = 0
            while True:
                try:
                    block = f.read(self.block_frames, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as exc:
                    # A decoder that fails once it has consumed every byte ran out of data: the file was cut short.
                    kind: DecodeErrorKind = "truncated" if self._f.tell() >= self._size else "corrupt"
                    raise DecodeError(kind, f"the stream broke off while decoding ({exc})") from exc
                if not len(block):
                    break
                read += len(block)
                yield np.ascontiguousarray(block.T)
        if declared > 0 and read < declared:
            raise DecodeError("truncated", f"the stream declares {declared} frames but only {read} could be read")


def decode(source: bytes | str | os.PathLike[str]) -> tuple[F32, int]:
    """Decode an encoded audio file into float32 samples, all in memory (:class:`AudioReader` streams instead).

    Args:
        source: the encoded file's bytes, or a path to it. WAV, FLAC, OGG/Vorbis/Opus and (with a libsndfile
            that has MPEG support) MP3 are read by libsndfile; anything else falls back to audioread, which
            decodes MP3/M4A/AAC when an ffmpeg or GStreamer backend is present.

    Returns:
        ``(audio, sample_rate)`` where ``audio`` is float32 ``(channels, samples)`` in [-1, 1] for integer formats
        and ``sample_rate`` is in Hz. Any channel count and rate are kept as they are.

    Raises:
        DecodeError: for a missing, unreadable, empty, non-audio, corrupt, truncated, zero-length or
            non-finite input; ``kind`` says which.
    """
    data = read_local_bytes(source)
    reader = AudioReader(io.BytesIO(data), len(data), block_frames=max(1, len(data)))
    return np.concatenate(list(reader.blocks()), axis=1), reader.sample_rate


def write_pcm16(target: str | os.PathLike[str] | BinaryIO, audio: F32, sample_rate: int, fmt: str = "WAV") -> None:
    """Write ``audio`` (float32 ``(channels, samples)``) as a 16-bit PCM ``fmt`` file (WAV or FLAC), clipped to
    [-1, 1], to a path or a binary file object."""
    import soundfile as sf

    sf.write(target, np.clip(audio, -1.0, 1.0).T, sample_rate, format=fmt, subtype="PCM_16")


def resampled_length(frames: int, sample_rate: int, target_rate: int) -> int:
    """Samples that resampling ``frames`` samples from ``sample_rate`` to ``target_rate`` gives (rounded half up)."""
    return frames if sample_rate == target_rate else (2 * frames * target_rate + sample_rate) // (2 * sample_rate)


def resampled_pieces(
    reader: AudioReader, target_rate: int, piece_samples: int, quality: str = "HQ"
) -> Iterator[F32]:
    """The stream resampled to ``target_rate`` (soxr, streaming) and cut into pieces of ``piece_samples``.

    Equal to cutting :func:`resample` of the whole decoded stream (soxr's streaming and one-shot outputs are the
    same samples); the last piece is shorter. Memory holds a few blocks and one piece, whatever the length.
    """
    import soxr

    total = resampled_length(reader.frames, reader.sample_rate, target_rate)
    stream = None
    if reader.sample_rate != target_rate:
        stream = soxr.ResampleStream(reader.sample_rate, target_rate, reader.channels, dtype="float32",
                                     quality=quality)
    pending: list[F32] = []
    held = done = 0

    def take(n: int) -> F32:
        nonlocal pending, held
        joined = np.concatenate(pending, axis=1) if len(pending) > 1 else pending[0]
        pending = [joined[:, n:]] if joined.shape[1] > n else []
        held -= min(n, joined.shape[1])
        return np.ascontiguousarray(joined[:, :n])

    def feed(block: F32, last: bool) -> Iterator[F32]:
        nonlocal held, done
        if stream is not None:
            block = np.asarray(stream.resample_chunk(np.ascontiguousarray(block.T), last=last)).T
        block = block[:, : max(0, total - done - held)]  # soxr's count can differ from the rounded one by a sample
        if block.shape[1]:
            pending.append(block)
            held += block.shape[1]
        while held >= piece_samples or (last and held):
            piece = take(min(piece_samples, held))
            done += piece.shape[1]
            yield piece

    for block in reader.blocks():
        yield from feed(block, last=False)
    yield from feed(np.zeros((reader.channels, 0), np.float32), last=True)
    if done < total:  # and the other way round
        yield np.zeros((reader.channels, total - done), np.float32)


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


ChannelOrder = Literal["wav", "vorbis"]

# Speaker positions of WAVE_FORMAT_EXTENSIBLE's dwChannelMask, bit 0 first (Microsoft KSAUDIO / SMPTE names).
SPEAKERS = (
    "FL", "FR", "FC", "LFE", "BL", "BR", "FLC", "FRC", "BC", "SL", "SR",
    "TC", "TFL", "TFC", "TFR", "TBL", "TBC", "TBR",
)  # fmt: skip
UNASSIGNED = "X"  # a channel the layout gives no speaker (beyond the mask's bits, or a reserved bit)

# Default layout by channel count when the file names none: the WAV/SMPTE masks, which are also FLAC's orders.
DEFAULT_CHANNEL_MASKS = {3: 0x7, 4: 0x33, 5: 0x37, 6: 0x3F, 7: 0x70F, 8: 0x63F}
# Ogg Vorbis (and Opus, mapping family 1) order, Vorbis I specification section 4.3.9.
VORBIS_LAYOUTS = {
    3: ("FL", "FC", "FR"),
    4: ("FL", "FR", "BL", "BR"),
    5: ("FL", "FC", "FR", "BL", "BR"),
    6: ("FL", "FC", "FR", "BL", "BR", "LFE"),
    7: ("FL", "FC", "FR", "SL", "SR", "BC", "LFE"),
    8: ("FL", "FC", "FR", "SL", "SR", "BL", "BR", "LFE"),
}
MINUS_3DB = 0.7071  # ITU-R BS.775's centre and surround coefficient (1/sqrt 2, as the standard rounds it)
# (to left, to right) per speaker before normalisation: ITU-R BS.775 (L/R 1, C and surrounds 0.7071, LFE dropped),
# extended to the other mask positions: every centre-line speaker as C, every other side speaker as a surround.
_COEFFICIENTS = {
    "FL": (1.0, 0.0), "FR": (0.0, 1.0), "LFE": (0.0, 0.0),
    **dict.fromkeys(("FC", "BC", "TC", "TFC", "TBC", UNASSIGNED), (MINUS_3DB, MINUS_3DB)),
    **dict.fromkeys(("BL", "SL", "FLC", "TFL", "TBL"), (MINUS_3DB, 0.0)),
    **dict.fromkeys(("BR", "SR", "FRC", "TFR", "TBR"), (0.0, MINUS_3DB)),
}  # fmt: skip
# Names of the usual layouts, by speaker set (side and back surrounds mix alike, so 5.1 is either).
_LAYOUT_NAMES = {
    frozenset(sp.split()): name
    for sp, name in [
        ("FL FR FC", "3.0"), ("FL FR BL BR", "quad"), ("FL FR SL SR", "quad"), ("FL FR FC LFE", "3.1"),
        ("FL FR FC BL BR", "5.0"), ("FL FR FC SL SR", "5.0"), ("FL FR FC LFE BL BR", "5.1"),
        ("FL FR FC LFE SL SR", "5.1"), ("FL FR FC LFE BC SL SR", "6.1"), ("FL FR FC LFE BC BL BR", "6.1"),
        ("FL FR FC LFE BL BR SL SR", "7.1"), ("FL FR FC LFE BL BR FLC FRC", "7.1-wide"),
    ]
}  # fmt: skip


def channel_layout(
    channels: int, channel_mask: int | None = None, order: ChannelOrder = "wav"
) -> tuple[str, ...] | None:
    """The speaker of each channel (names from :data:`SPEAKERS`), or None when the layout is unknown.

    Args:
        channels: the channel count.
        channel_mask: a WAVE_FORMAT_EXTENSIBLE ``dwChannelMask``: channel ``i`` is the ``i``-th set bit, lowest
            first; channels beyond the set bits (and reserved bits) are :data:`UNASSIGNED`; set bits beyond the
            channel count are ignored. None or 0: no mask.
        order: without a mask, ``"wav"`` takes the WAV/SMPTE default for 3 to 8 channels
            (:data:`DEFAULT_CHANNEL_MASKS`: 3 = L R C, 4 = L R Ls Rs, 5 = L R C Ls Rs, 6 = L R C LFE Ls Rs,
            7 = L R C LFE Cs Ls Rs, 8 = L R C LFE Lb Rb Ls Rs; FLAC uses the same orders); ``"vorbis"`` the Ogg
            Vorbis/Opus order (:data:`VORBIS_LAYOUTS`).

    Returns:
        ``channels`` speaker names, or None for a count with no default layout (over 8 channels without a mask).
    """
    if channel_mask:
        bits = [SPEAKERS[b] if b < len(SPEAKERS) else UNASSIGNED for b in range(32) if channel_mask >> b & 1]
        return tuple((bits + [UNASSIGNED] * channels)[:channels])
    if channels == 1:
        return ("FC",)
    if channels == 2:
        return ("FL", "FR")
    if order == "vorbis":
        return VORBIS_LAYOUTS.get(channels)
    mask = DEFAULT_CHANNEL_MASKS.get(channels)
    return None if mask is None else channel_layout(channels, mask)


def downmix_matrix(
    channels: int, channel_mask: int | None = None, order: ChannelOrder = "wav"
) -> tuple[npt.NDArray[np.float64], str]:
    """The stereo downmix of a ``channels``-channel layout: ``(matrix, rule)``.

    Rules (``rule`` names the one used):

    - 1 or 2 channels: no mix; the identity ``(channels, channels)``, rule ``""``.
    - A known layout (:func:`channel_layout`, from the mask or by the count's default order): ITU-R BS.775
      coefficients per speaker. Lo = L + 0.7071 C + 0.7071 (each left surround: Ls, Lb, Lsd...), Ro likewise; LFE
      dropped, as BS.775 does; other centre-line speakers (back, top centre) and unassigned channels as C, other
      left/right speakers (front of centre, top) as surrounds. Rule ``"itu-r-bs775-<layout>"`` with the layout's
      usual name (``3.0``, ``quad``, ``3.1``, ``5.0``, ``5.1``, ``6.1``, ``7.1``, ``7.1-wide``) or its speakers in
      channel order (``FL+FR+FC+TC``).
    - Any other count (over 8 channels without a mask): even channels (0, 2, ...) to the left, odd to the right,
      equal weights. Rule ``"alternate-lr"``.

    Normalisation: the whole matrix is divided by its largest per-output sum of coefficients when that exceeds 1, so
    each output's coefficients sum to at most 1 and an input within [-1, 1] cannot clip (5.1: 1 / 2.414, -7.7 dB;
    7.1: 1 / 3.121, -9.9 dB). A fixed gain, not a peak normalisation, so that the mix is linear, the same for every
    file of a layout, and can be applied block by block while streaming; one factor for both outputs keeps the
    left/right balance.

    Returns:
        float64 ``(2, channels)`` (identity ``(channels, channels)`` for 1 or 2 channels) and the rule.
    """
    if channels <= 0:
        raise ValueError(f"channels must be positive, got {channels}")
    if channels <= 2:
        return np.eye(channels), ""
    layout = channel_layout(channels, channel_mask, order)
    if layout is None:
        matrix = np.zeros((2, channels))
        matrix[0, 0::2] = matrix[1, 1::2] = 1.0
        rule = "alternate-lr"
    else:
        matrix = np.array([_COEFFICIENTS[sp] for sp in layout]).T
        name = _LAYOUT_NAMES.get(frozenset(layout)) if len(set(layout)) == channels else None
        rule = f"itu-r-bs775-{name or '+'.join(layout)}"
    return matrix / max(1.0, float(matrix.sum(axis=1).max())), rule


def mix_channels(matrix: npt.NDArray[np.floating], audio: F32) -> F32:
    """``matrix @ audio``: float32 ``(outputs, samples)`` from ``(outputs, channels)`` and ``(channels, samples)``.

    Summed in float64 channel by channel, so that a sample's result does not depend on how the stream was cut into
    blocks (a BLAS product may order its sums by the block's shape).
    """
    if audio.ndim != 2 or audio.shape[0] != matrix.shape[1]:
        raise ValueError(f"audio must be ({matrix.shape[1]}, samples), got shape {audio.shape}")
    out = np.zeros((matrix.shape[0], audio.shape[1]), np.float64)
    for c in range(matrix.shape[1]):
        for o in range(matrix.shape[0]):
            if matrix[o, c]:
                out[o] += matrix[o, c] * audio[c]
    return out.astype(np.float32)


def downmix_to_stereo(audio: F32, channel_mask: int | None = None, order: ChannelOrder = "wav") -> tuple[F32, str]:
    """Mix more than two channels down to stereo (:func:`downmix_matrix` has the rules); mono and stereo unchanged.

    Args:
        audio: float32 ``(channels, samples)``.
        channel_mask: the file's WAVE_FORMAT_EXTENSIBLE speaker mask, or None to take the layout from the count.
        order: the default channel order of the file's format without a mask: ``"wav"`` (WAV, FLAC, most others)
            or ``"vorbis"`` (Ogg Vorbis and Opus).

    Returns:
        ``(stereo, rule)``: float32 ``(2, samples)`` and the rule's name; ``(audio, "")`` for 1 or 2 channels.
        Linear and sample by sample, so mixing a stream's blocks one at a time gives the mix of the whole.
    """
    if audio.ndim != 2:
        raise ValueError(f"audio must be (channels, samples), got shape {audio.shape}")
    if audio.shape[0] <= 2:
        return audio, ""
    matrix, rule = downmix_matrix(audio.shape[0], channel_mask, order)
    return mix_channels(matrix, audio), rule


def n_frames(n_samples: int, hop: int = FRAME_HOP) -> int:
    """Number of feature frames covering ``n_samples`` at the feature rate: ``ceil(n_samples / hop)``."""
    return -(-n_samples // hop)


def segment_length(segment_s: float) -> int:
    """Samples at FEATURE_SAMPLE_RATE per segment of ``segment_s`` seconds (at least one frame hop)."""
    return max(FRAME_HOP, round(segment_s * FEATURE_SAMPLE_RATE))


def n_segments(frames: int, sample_rate: int, segment_s: float) -> int:
    """Segments that ``frames`` samples at ``sample_rate`` are cut into: the last one shorter, at least one."""
    total = resampled_length(frames, sample_rate, FEATURE_SAMPLE_RATE)
    return max(1, -(-total // segment_length(segment_s)))
