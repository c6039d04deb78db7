"""Arrow schema of the batch remix's output (``ray_jobs.remix``): one row per upload remixed, or an error row.

The output root has the extraction's layout (commit markers, lease, staging; ``hummingml.extract.store``) with two
sets: ``remix/`` (this schema) and ``errors/`` (the extraction's error schema, stage ``read``, ``decode`` or
``remix``), keyed by (``source_id``, ``segment_index`` = 0).
"""

from __future__ import annotations

import pyarrow as pa

from schemas.features import ERROR_SCHEMA, ID_DOC, URI_DOC, VERSION_DOC, _f

REMIX_SCHEMA_VERSION = "1.0"

REMIX_SCHEMA = pa.schema(
    [
        _f("source_id", pa.string(), ID_DOC),
        _f("segment_index", pa.int32(), "always 0: an upload is remixed whole"),
        _f("source_uri", pa.string(), URI_DOC),
        _f("source_version", pa.string(), VERSION_DOC),
        _f("instrument", pa.string(), "the preset name or clip path that played the melody"),
        _f("duration_s", pa.float32(), "length of the remix (the upload's length)", "s"),
        _f("sample_rate", pa.int32(), "sample rate of audio_flac", "Hz"),
        _f("n_notes", pa.int32(), "notes Basic Pitch found in the cleaned vocals"),
        _f("audio_flac", pa.large_binary(), "the remix: 16-bit stereo FLAC file bytes"),
        _f("report", pa.string(), "JSON sidecar: models, durations, notes, loudness of each part, config, timings"),
    ]
)

REMIX_SETS = {"remix": REMIX_SCHEMA, "errors": ERROR_SCHEMA}
