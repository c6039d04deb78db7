"""Training curves as TensorBoard event files: ``tensorboard --logdir <storage>/<name>/tensorboard``.

Rank 0 adds every metrics report of the loop (the same numbers Ray Train receives and the checkpoint's history keeps)
as scalars at its step. A resumed run appends to the same directory, so the curves continue; TensorBoard shows the
newest value where a step repeats (a run resumed from a checkpoint older than its last report).
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

# Scalars are grouped in TensorBoard by the part before the slash.
GROUPS = {"ar_": "ar", "nar_level": "nar_levels", "nar_": "nar"}


def tag(name: str) -> str:
    """The TensorBoard tag of a report key: ``ar_loss`` -> ``ar/ar_loss``, ``tokens_per_s`` -> ``run/tokens_per_s``."""
    for prefix, group in GROUPS.items():
        if name.startswith(prefix):
            return f"{group}/{name}"
    return f"run/{name}"


def curves_dir(storage: str, name: str) -> str | None:
    """``<storage>/<name>/tensorboard`` for a local ``storage``; None for an object store (event files are written
    locally; sync them yourself, or read the checkpoints' metrics history)."""
    if "://" in storage and not storage.startswith("file://"):
        return None
    return os.path.join(os.path.abspath(storage.removeprefix("file://")), name, "tensorboard")


class Curves:
    """A TensorBoard writer of metrics reports (``torch.utils.tensorboard.SummaryWriter``); a context manager."""

    def __init__(self, logdir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = logdir
        self.writer = SummaryWriter(log_dir=logdir)

    def add(self, report: dict[str, Any]) -> None:
        """Every numeric value of ``report`` at ``report["step"]``, flushed so TensorBoard shows it at once."""
        step = int(report["step"])
        for name, value in sorted(report.items()):
            if name != "step" and isinstance(value, int | float):
                self.writer.add_scalar(tag(name), float(value), step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()

    def __enter__(self) -> Curves:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
