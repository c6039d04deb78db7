"""Filters for the libraries' known, harmless warnings, so that every Ray actor and replica does not repeat them.

Installed by :func:`quiet_libraries` in each process that loads models (the extraction's step actors, the serving
deployments, the batch remix actors). Only the messages listed in :data:`KNOWN_WARNINGS` and
:data:`KNOWN_LOG_LINES` are dropped; every other warning, ours included, still shows.
"""

from __future__ import annotations

import logging
import warnings

# (category, message regex, module regex) of warnings raised on import or load, each harmless here
KNOWN_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (FutureWarning, r"`torch\.nn\.utils\.weight_norm` is deprecated", r"torch\.nn\.utils\.weight_norm"),  # DAC, Demucs
    (FutureWarning, r"`torch\.jit\.script` is deprecated", r"torch\.jit\._script"),  # descript-audiotools
    (UserWarning, r"pkg_resources is deprecated", r"resampy"),  # resampy's import (setuptools<81 is locked)
)
# the start of log lines that basic-pitch writes on the root logger at import: backends we do not use (ONNX runs)
KNOWN_LOG_LINES = ("Coremltools is not installed", "tflite-runtime is not installed", "Tensorflow is not installed")


class _DropKnownLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(KNOWN_LOG_LINES)


def quiet_libraries() -> None:
    """Install the filters in this process (idempotent)."""
    for category, message, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    root = logging.getLogger()
    if not any(isinstance(f, _DropKnownLines) for f in root.filters):
        root.addFilter(_DropKnownLines())
