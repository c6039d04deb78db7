"""Null stages: the outputs of separation, pitch and codec in their real shapes, at almost no cost.

They measure the extraction engine itself (listing, decoding, moving rows, committing, resuming) without the models
that dominate a real run: ``--stages null`` of the extraction job, used by ``benchmarks/scale.py`` and tests only.
Their features carry no information. Every output of such a run says so: the run's model identities are
:func:`null_identities` (kind ``null``, ``random_weights`` true), which the output's files, commit markers and summary
record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hummingml.audio import FRAME_RATE, STEMS, n_frames
from hummingml.stages.codec import CodecTokens
from hummingml.stages.pitch import NoteEvent
from hummingml.stages.separate import Stems

F32 = np.ndarray
NULL_CODEBOOKS = 9  # as the DAC 44 kHz model's
NULL_PITCH = 60  # the one note the null detector finds: middle C over the whole signal


def null_identities() -> list[dict[str, Any]]:
    """The model identities a null-stage run records, one per stage, in the fields of ``ModelIdentity``."""
    return [
        {
            "kind": "null", "name": f"null-{stage}", "sha256": "", "library": "hummingml", "library_version": "",
            "path": "", "random_weights": True, "seed": None, "n_params": 0,
        }
        for stage in ("separate", "pitch", "codec")
    ]


class NullSeparator:
    """Six stems, each the input's stereo image divided by six (so that they sum to the input)."""

    def separate(self, audio: F32, sample_rate: int) -> Stems:
        """Stems of ``audio`` (float32 ``(channels, samples)``), each ``(2, samples)`` at ``sample_rate``."""
        stereo = np.broadcast_to(audio, (2, audio.shape[-1])) if audio.shape[0] == 1 else audio[:2]
        part = (stereo / len(STEMS)).astype(np.float32)
        return Stems(**{stem: part for stem in STEMS}, sample_rate=sample_rate)


class NullDetector:
    """One note spanning the whole signal."""

    def detect(self, audio: F32, sample_rate: int) -> list[NoteEvent]:
        """``[NoteEvent(0, duration, NULL_PITCH, 0.5)]`` for ``audio`` (float32 ``(channels, samples)``)."""
        return [NoteEvent(0.0, audio.shape[-1] / sample_rate, NULL_PITCH, 0.5)]


class NullCodec:
    """All-zero codes of the real codec's shape: ``(channels, n_codebooks, ceil(samples / FRAME_HOP))``."""

    def __init__(self, n_codebooks: int | None = None) -> None:
        self.n_codebooks = n_codebooks or NULL_CODEBOOKS

    def encode(self, audio: F32, sample_rate: int) -> CodecTokens:
        """Codes of ``audio`` (float32 ``(channels, samples)`` at the feature rate ``sample_rate``)."""
        shape = (audio.shape[0], self.n_codebooks, n_frames(audio.shape[-1]))
        return CodecTokens(np.zeros(shape, dtype=np.int16), FRAME_RATE)

    def encode_batch(self, audios: Sequence[F32], sample_rate: int) -> list[CodecTokens]:
        """Codes of each of ``audios``; see :meth:`encode`."""
        return [self.encode(audio, sample_rate) for audio in audios]
