"""Arrow schemas of the extraction outputs: the single source of column names and types.

Every field carries ``doc`` and ``unit`` metadata; docs/schemas.md documents the same fields for readers. Each
written file also carries ``hummingml.schema`` (the set name), ``hummingml.schema_version``, and ``hummingml.run``
(JSON: model identities, library versions, config) in its Parquet key-value metadata.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "2.2"  # 1.1: sine-audio-feature.mono_variants; 2.0: canonical source ids, source_version;
# 2.1: downmix (inputs of more than two channels are mixed down to stereo instead of refused);
# 2.2: audio-feature.stem_origins (stems given by the manifest are used instead of separated ones)


URI_DOC = (
    "the input's canonical URI: a local file's absolute path with symlinks resolved, or scheme://bucket/key "
    "(bytes of a non-UTF-8 file name as \\xNN escapes)"
)
ID_DOC = "stable id of the input: sha256 of its canonical URI (source_uri, real bytes), first 32 hex digits"
VERSION_DOC = (
    "the input's size and modification time when it was listed ('<bytes>:<mtime ns>'), followed by "
    "';stems=<16 hex>' (a hash of the given stems' URIs, sizes and modification times) when the manifest gives "
    "stems; a rerun that lists another value processes the input again and its older rows are superseded"
)


def _f(name: str, type_: pa.DataType, doc: str, unit: str = "", nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc, "unit": unit})


# (channels, n_codebooks, frames) DAC codes; channels is 1 for a mono stream
CODES = pa.list_(pa.list_(pa.list_(pa.int16())))

NOTE = pa.struct(
    [
        _f("start_s", pa.float32(), "note onset from the segment start", "s"),
        _f("end_s", pa.float32(), "note offset from the segment start", "s"),
        _f("pitch", pa.int16(), "MIDI note number, 69 = A4 = 440 Hz"),
        _f("amplitude", pa.float32(), "Basic Pitch note amplitude in [0, 1]"),
    ]
)

MELODY_STREAM = pa.struct(
    [
        _f("stream", pa.string(), "which audio the notes come from: 'mono' (the mono reference) or a stem name"),
        _f("notes", pa.list_(NOTE), "Basic Pitch notes of that audio"),
        _f("midi", pa.binary(), "the notes as a standard MIDI file"),
        _f("sine_codes", CODES, "DAC codes of the notes' sine rendering, shape (1, n_codebooks, frames)"),
    ]
)

PROVENANCE = [
    _f("source_id", pa.string(), ID_DOC),
    _f("segment_index", pa.int32(), "0-based index of the segment within the source"),
    _f("source_uri", pa.string(), URI_DOC),
    _f("source_version", pa.string(), VERSION_DOC),
    _f("content_sha256", pa.string(), "sha256 of the input's bytes (hex)"),
    _f("source_sample_rate", pa.int32(), "sample rate of the decoded input", "Hz"),
    _f("source_channels", pa.int16(), "channel count of the decoded input"),
    _f(
        "downmix",
        pa.string(),
        "how an input of more than two channels was mixed down to stereo (hummingml.audio.downmix_matrix): "
        "'itu-r-bs775-<layout>' (e.g. itu-r-bs775-5.1) or 'alternate-lr'; '' for mono and stereo inputs; "
        "null in outputs written before schema 2.1",
        nullable=True,
    ),
    _f("source_duration_s", pa.float64(), "duration of the whole input", "s"),
    _f("segment_start_s", pa.float64(), "segment start within the source", "s"),
    _f("segment_duration_s", pa.float64(), "segment duration (the last segment may be shorter)", "s"),
    _f("n_segments", pa.int32(), "number of segments of the source"),
    _f("sample_rate", pa.int32(), "rate of the feature audio (22 050)", "Hz"),
    _f("frame_rate", pa.float32(), "DAC frames per second (86.13 for DAC 44 kHz)", "Hz"),
    _f("n_frames", pa.int32(), "DAC frames in this segment: ceil(segment samples at 22.05 kHz / 256)"),
    _f(
        "metadata",
        pa.string(),
        "JSON object of the manifest's extra columns for this input ('{}' if none); its 'stems' (given stems) maps "
        "each stem to its file's canonical URI",
    ),
]

AUDIO_FEATURE_SCHEMA = pa.schema(
    [
        *PROVENANCE,
        _f(
            "channel_codes",
            CODES,
            "DAC codes of each channel of the source (of its stereo downmix when it has more than two, see downmix), "
            "shape (channels, n_codebooks, frames)",
        ),
        _f("stem_names", pa.list_(pa.string()), "names of the stems in stem_codes order"),
        _f(
            "stem_codes",
            pa.list_(CODES),
            "DAC codes per stem, each (stem channels, n_codebooks, frames); stem channels = 1 (mono) or 2",
        ),
        _f(
            "stem_origins",
            pa.list_(pa.string()),
            "where each stem came from, in stem_names order: 'given' (the manifest's stems column named its file, "
            "decoded and used as it is; docs/stems.md) or the name of the separation model that made it (its "
            "identity in the run's models); null in outputs written before schema 2.2",
            nullable=True,
        ),
    ]
)

MONO_VARIANT = pa.struct(
    [
        _f("gain_db", pa.float32(), "level change", "dB"),
        _f("snr_db", pa.float32(), "white noise added at this signal-to-noise ratio", "dB"),
        _f("eq_hz", pa.float32(), "centre frequency of the peaking EQ", "Hz"),
        _f("eq_db", pa.float32(), "gain of the peaking EQ at its centre", "dB"),
        _f("eq_q", pa.float32(), "quality factor of the peaking EQ"),
        _f("noise_seed", pa.int64(), "seed of the noise (the variant can be made again from these fields)"),
        _f("codes", CODES, "DAC codes of the variant, shape (1, n_codebooks, frames)"),
    ]
)

SINE_AUDIO_FEATURE_SCHEMA = pa.schema(
    [
        *PROVENANCE,
        _f(
            "mono_codes",
            CODES,
            "DAC codes of the mono reference (mean of the channels), shape (1, n_codebooks, frames)",
        ),
        _f(
            "mono_variants",
            pa.list_(MONO_VARIANT),
            "augmented copies of the mono reference (ExtractConfig.mono_variants, hummingml.stages.augment)",
        ),
        _f("melody", pa.list_(MELODY_STREAM), "notes and sine codes per melodic stream: the mono reference first"),
    ]
)

ERROR_SCHEMA = pa.schema(
    [
        _f("source_id", pa.string(), "stable id of the input (as in the feature sets)"),
        _f("segment_index", pa.int32(), "segment that failed, or -1 when the whole source failed"),
        _f("source_uri", pa.string(), URI_DOC),
        _f("source_version", pa.string(), VERSION_DOC),
        _f("stage", pa.string(), "stage that failed: read, decode, separate, pitch, codec"),
        _f("error_type", pa.string(), "exception class, with DecodeError's kind after a colon"),
        _f("message", pa.string(), "what went wrong, in words"),
    ]
)

SCHEMAS = {
    "audio-feature": AUDIO_FEATURE_SCHEMA,
    "sine-audio-feature": SINE_AUDIO_FEATURE_SCHEMA,
    "errors": ERROR_SCHEMA,
}
