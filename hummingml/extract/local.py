"""The extraction steps in one process, without Ray (tests, baselines)."""

from __future__ import annotations

from collections.abc import Callable

from hummingml.extract.config import ExtractConfig
from hummingml.extract.record import Batch, pack_batch, source_rows, unpack
from hummingml.extract.sources import Source


def run_local(
    cfg: ExtractConfig,
    sources: list[Source],
    steps: list[Callable[[Batch], Batch]],
    commit: Callable[[Batch], Batch],
    skip: dict[str, list[int]] | None = None,
) -> list[Batch]:
    """Run the steps in this process, one source at a time, committing every ``cfg.commit_rows`` rows."""
    summaries, pending = [], []
    for source in sources:
        batch = source_rows([source], skip)
        for step in steps:
            batch = step(batch)
        pending.extend(batch["payload"])
        while len(pending) >= cfg.commit_rows:
            chunk, pending = pending[: cfg.commit_rows], pending[cfg.commit_rows :]
            summaries.append(commit(pack_batch([unpack(p) for p in chunk])))
    if pending:
        summaries.append(commit(pack_batch([unpack(p) for p in pending])))
    return summaries
