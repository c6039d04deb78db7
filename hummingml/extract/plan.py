"""Which listed inputs a run processes, and at its end what became of them, decided in parts.

The listing and the output's committed state are cut by source id into the same ``parts``, so that each part is
planned (and, at the end, accounted for) on its own: a distributed anti-join of the listing against what is committed.
The extraction job runs one task per part (``hummingml.extract.ray``); its driver holds counts, never the inputs.
A listed input is ``(position, Source)``: its position in the listing orders the inputs, so that the first of
several spellings of one file wins and ``--limit`` takes the first inputs listed.
"""

from __future__ import annotations

from typing import Any

from hummingml.extract.sources import Source
from hummingml.output import CurrentView, SourceState

Listed = tuple[int, Source]  # (position in the listing, the input)
CHUNK_POSITIONS = 2**32  # position = chunk number * CHUNK_POSITIONS + index in the chunk
EXAMPLES = 20  # examples kept of each kind of notable input (changed, not in the input)


def part_of(source_id: str, parts: int) -> int:
    """The part a source belongs to: its id (hex) taken modulo ``parts``."""
    return int(source_id[:8], 16) % parts


def split_listing(sources: list[Source], chunk: int, parts: int) -> list[list[Listed]]:
    """The sources of listing chunk number ``chunk``, positioned and cut into ``parts``."""
    out: list[list[Listed]] = [[] for _ in range(parts)]
    for i, s in enumerate(sources):
        out[part_of(s.source_id, parts)].append((chunk * CHUNK_POSITIONS + i, s))
    return out


def split_state(view: CurrentView, parts: int) -> list[dict[str, SourceState]]:
    """The committed state of every source of ``view``, cut into ``parts``."""
    out: list[dict[str, SourceState]] = [{} for _ in range(parts)]
    for sid, state in view.sources.items():
        out[part_of(sid, parts)][sid] = state
    return out


def cutoff(counts: list[int], limit: int) -> int:
    """The position below which the first ``limit`` listed inputs lie (0: all), from the chunks' input counts."""
    left = limit
    for chunk, n in enumerate(counts):
        if limit and left <= n:
            return chunk * CHUNK_POSITIONS + left
        left -= n
    return len(counts) * CHUNK_POSITIONS


def unique(listed: list[list[Listed]]) -> list[Listed]:
    """The listed inputs of one part in listing order, the first of each identity only."""
    seen: set[str] = set()
    out = []
    for position, s in sorted((x for chunk in listed for x in chunk), key=lambda x: x[0]):
        if s.source_id not in seen:
            seen.add(s.source_id)
            out.append((position, s))
    return out


def plan(
    sources: list[Source], progress: dict[str, SourceState], retry_errors: bool
) -> tuple[list[Source], dict[str, list[int]], list[str]]:
    """(inputs to process, segments to skip per input, inputs that changed since their rows were committed).

    An input whose listed version (size and modification time) differs from its committed rows' is processed
    whole; its new rows supersede the old ones. A listing that could not stat an input (version "") says nothing
    about a change. A complete input of the same version is skipped (unless it failed and ``retry_errors``); a
    partial one is resumed, skipping its committed segments.
    """
    pending, skip, changed = [], {}, []
    for s in sources:
        p = progress.get(s.source_id)
        if p is not None and s.version and p.version != s.version:
            changed.append(s.uri)
            pending.append(s)
            continue
        if p is not None and p.complete and not (retry_errors and p.failed):
            continue
        pending.append(s)
        if p is not None:
            skip[s.source_id] = sorted(p.ok_segments if retry_errors else p.ok_segments | p.error_segments)
    return pending, skip, changed


def plan_part(
    listed: list[list[Listed]], state: dict[str, SourceState], retry_errors: bool, below: int
) -> tuple[list[Source], dict[str, list[int]], dict[str, Any]]:
    """One part's inputs to process (those listed below position ``below``), the segments to skip, and counts:
    ``listed`` (distinct inputs), ``repeated`` (further spellings dropped), ``in_run``, ``pending``, ``changed`` and
    ``changed_examples``."""
    distinct = unique(listed)
    run = [s for position, s in distinct if position < below]
    pending, skip, changed = plan(run, state, retry_errors)
    counts = {
        "listed": len(distinct),
        "repeated": sum(len(chunk) for chunk in listed) - len(distinct),
        "in_run": len(run),
        "pending": len(pending),
        "changed": len(changed),
        "changed_examples": changed[:EXAMPLES],
    }
    return pending, skip, counts


def account_part(listed: list[list[Listed]], state: dict[str, SourceState], below: int) -> dict[str, Any]:
    """What became of one part's inputs of this run (listed below position ``below``), by the committed ``state``:
    complete ok, complete with errors, unaccounted (no rows, some segments without rows, or rows of another version
    of the input only), their feature and error rows; and the committed sources the listing does not name
    (``not_in_input``, removed files or another input's)."""
    distinct = unique(listed)
    ok = failed = missing = rows = errors = 0
    for position, s in distinct:
        if position >= below:
            continue
        p = state.get(s.source_id)
        if p is None or not p.complete or (s.version and p.version != s.version):  # rows of an older version
            missing += 1
            continue
        rows += len(p.ok_segments)
        errors += len(p.error_segments)
        if p.failed:
            failed += 1
        else:
            ok += 1
    names = {s.source_id for _, s in distinct}
    not_listed = sorted(sid for sid in state if sid not in names)
    return {
        "inputs": ok + failed + missing, "ok": ok, "failed": failed, "unaccounted": missing, "feature_rows": rows,
        "error_rows": errors, "not_in_input": len(not_listed), "not_in_input_examples": not_listed[:EXAMPLES],
    }


def add_counts(counts: list[dict[str, Any]]) -> dict[str, Any]:
    """The parts' counts summed (numbers) or joined and cut to ``EXAMPLES`` (lists of examples)."""
    total: dict[str, Any] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, [] if isinstance(v, list) else 0) + v
    return {k: sorted(v)[:EXAMPLES] if isinstance(v, list) else v for k, v in total.items()}
