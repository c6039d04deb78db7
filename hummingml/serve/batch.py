"""The batch remix's work on one upload, without Ray: read, check, remix, encode; one remix row or one error row.

:class:`BatchRemixer` is what each actor of ``ray_jobs.remix`` holds (``hummingml.serve.ray`` runs it on Ray Data).
A failure of one upload (unreadable, not audio, too long, a model error) becomes its error row; nothing raises past
it, so every upload is accounted for.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow as pa

from hummingml.audio import write_pcm16
from hummingml.config import from_dict
from hummingml.quiet import quiet_libraries
from hummingml.serve.config import RemixBatchConfig
from hummingml.serve.uploads import UploadError, UploadLimits, read_upload
from schemas.features import ERROR_SCHEMA
from schemas.remix import REMIX_SCHEMA

ROW_SCHEMA = pa.schema(
    [f.with_nullable(True) for f in REMIX_SCHEMA if f.name != "segment_index"]
    + [pa.field("ok", pa.bool_())]
    + [f.with_nullable(True) for f in ERROR_SCHEMA if f.name in ("stage", "error_type", "message")]
)  # what an actor returns: a remix row's fields, ok, and an error row's own fields (null in a remix row)
ROW_FIELDS = tuple(ROW_SCHEMA.names)


def flac_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """``audio`` (float32 ``(channels, samples)``) as a 16-bit FLAC file, clipped to [-1, 1]."""
    buf = io.BytesIO()
    write_pcm16(buf, audio, sample_rate, fmt="FLAC")
    return buf.getvalue()


class BatchRemixer:
    """Loads Demucs, the hum model and the instrument clip once; :meth:`__call__` remixes a batch of uploads.

    Args:
        cfg: :class:`RemixBatchConfig` as a dict (``dataclasses.asdict``), as Ray hands constructor arguments over.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        quiet_libraries()
        from hummingml.serve.model import load_hum_model
        from hummingml.serve.remix import instrument_clip
        from hummingml.stages.separate import SeparateConfig, Separator

        self.cfg = from_dict(RemixBatchConfig, cfg)
        self.model = load_hum_model(self.cfg.checkpoint, self.cfg.models)
        self.separator = Separator(SeparateConfig(models=self.cfg.models))
        self.clip, self.clip_rate = instrument_clip(self.cfg.instrument)
        self.limits = UploadLimits(max_bytes=int(self.cfg.max_upload_mb * 1024 * 1024), max_seconds=self.cfg.max_song_s)

    def remix_one(self, uri: str, source_id: str, canonical: str, version: str) -> dict[str, Any]:
        """One output row (every :data:`ROW_SCHEMA` field) for the upload at ``uri``."""
        from hummingml.extract.sources import read_bytes
        from hummingml.serve.remix import remix

        row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
        row.update(source_id=source_id, source_uri=canonical, source_version=version, ok=False)
        stage = "read"
        try:
            data = read_bytes(uri, retries=2)
            stage = "decode"
            song, rate = read_upload(data, self.limits)
            stage = "remix"
            result = remix(song, rate, self.clip, self.clip_rate, self.model, separate=self.separator.separate,
                           cfg=self.cfg.mix)  # fmt: skip
        except UploadError as exc:
            return {**row, "stage": stage, "error_type": f"UploadError:{exc.reason}", "message": exc.message}
        except Exception as exc:  # one upload's failure is its error row; the batch goes on
            return {**row, "stage": stage, "error_type": type(exc).__name__, "message": str(exc) or repr(exc)}
        result.report.update(song=canonical, instrument=self.cfg.instrument)
        return {
            **row,
            "ok": True,
            "instrument": self.cfg.instrument,
            "duration_s": result.audio.shape[1] / result.sample_rate,
            "sample_rate": result.sample_rate,
            "n_notes": len(result.report["notes"]),
            "audio_flac": flac_bytes(result.audio, result.sample_rate),
            "report": json.dumps(result.report),
        }

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Uploads (``uri``, ``source_id``, ``canonical``, ``version`` columns) -> one :data:`ROW_SCHEMA` row each."""
        columns = [batch.column(name).to_pylist() for name in ("uri", "source_id", "canonical", "version")]
        return pa.Table.from_pylist([self.remix_one(*args) for args in zip(*columns, strict=True)], schema=ROW_SCHEMA)
