"""The extraction steps in one process, without Ray (tests, baselines)."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from hummingml.extract.config import ExtractConfig
from hummingml.extract.record import Batch, Summary, source_rows, to_table
from hummingml.extract.sources import Source


def run_local(
    cfg: ExtractConfig,
    sources: list[Source],
    steps: list[Callable[[Batch], Batch]],
    commit: Callable[[Batch], Summary],
    skip: dict[str, list[int]] | None = None,
) -> list[Summary]:
    """Run the steps in this process, one source at a time, committing every ``cfg.commit_rows`` rows."""
    summaries = []
    pending = to_table([])
    for source in sources:
        batch = source_rows([source], skip)
        for step in steps:
            batch = step(batch)
        pending = pa.concat_tables([pending, batch])
        while pending.num_rows >= cfg.commit_rows:
            summaries.append(commit(pending.slice(0, cfg.commit_rows)))
            pending = pending.slice(cfg.commit_rows)
    if pending.num_rows:
        summaries.append(commit(pending))
    return summaries
