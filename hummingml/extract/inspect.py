"""``hummingml inspect OUT``: what an extraction wrote, in numbers and in a PNG report.

``OUT`` is a local path or a pyarrow filesystem URI (``s3://bucket/out?endpoint_override=...``). Every read takes
only the columns it shows, down to the leaves of nested fields (``melody.list.element.stream``), from the files the
commit markers name, without superseded rows (``hummingml.output.set_files``). The PNG has two pages, one above the
other: an overview (sources, durations, errors, notes per stream, DAC codebook usage) and example segments. When the
run's models had random weights, each page's title says RANDOM WEIGHTS.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hummingml.audio import FEATURE_SAMPLE_RATE
from hummingml.config import ConfigError
from hummingml.extract.card import RANDOM_WARNING, SUMMARY, random_models, read_json, recorded_run
from hummingml.output import Key, join, open_root, set_files, superseded_filter, view
from hummingml.stages.pitch import NoteEvent
from hummingml.stages.synth import render_sine

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

CODEBOOK_SIZE = 1024  # entries per DAC codebook level (tiny, random-full and the 44 kHz DAC alike)
SAMPLE_ROWS = 256  # rows read for the notes and codebook panels: the oldest commits' first row groups
MELODY_LEAVES = [f"melody.list.element.{leaf}" for leaf in (
    "stream", "notes.list.element.start_s", "notes.list.element.end_s", "notes.list.element.pitch",
    "notes.list.element.amplitude",
)]  # fmt: skip


def read_columns(
    out: str, name: str, columns: list[str], max_rows: int | None = None, keys: set[Key] | None = None
) -> pa.Table | None:
    """The current rows of a set with only ``columns`` read, or None when it has none.

    Args:
        out: the output root (local path or pyarrow filesystem URI).
        name: the set.
        columns: top-level column names or Parquet leaf paths into nested fields (``melody.list.element.stream``);
            the table has their top-level columns (holding only the leaves asked for) and ``source_id`` and
            ``segment_index``.
        max_rows: stop after this many rows (whole row groups are read, oldest commits first).
        keys: only these ``(source_id, segment_index)``; a row group none of whose keys is wanted is not read beyond
            its key columns.
    """
    fs, files, superseded = set_files(out, name, log=None)
    keep = superseded_filter(superseded)
    key_columns = ["source_id", "segment_index"]
    read = list(dict.fromkeys([*columns, *key_columns]))
    tables: list[pa.Table] = []
    n_rows = 0
    for path in files:
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            for group in range(parquet.num_row_groups):
                if max_rows is not None and n_rows >= max_rows:
                    break
                group_keys = parquet.read_row_group(group, columns=key_columns)
                wanted = [
                    keep(path, s, i) and (keys is None or (s, int(i)) in keys)
                    for s, i in zip(group_keys["source_id"].to_pylist(), group_keys["segment_index"].to_pylist(),
                                    strict=True)
                ]  # fmt: skip
                if not any(wanted):
                    continue
                table = parquet.read_row_group(group, columns=read).filter(pa.array(wanted))
                tables.append(table)
                n_rows += table.num_rows
    if not tables:
        return None
    table = pa.concat_tables(tables, promote_options="default")
    return table if max_rows is None else table.slice(0, max_rows)


def codebook_usage(codes: pa.ChunkedArray | pa.Array, codebook_size: int = CODEBOOK_SIZE) -> npt.NDArray[np.float64]:
    """Per codebook level, the fraction of the codebook's entries that occur in a column of DAC codes.

    ``codes`` holds one ``(channels, n_codebooks, frames)`` nested list per row; the result has shape
    ``(n_codebooks,)`` (the most levels any row has).
    """
    codes = codes.combine_chunks() if isinstance(codes, pa.ChunkedArray) else codes
    channels = pc.list_flatten(codes)  # one (n_codebooks, frames) list per channel
    levels = pc.list_flatten(channels)  # one (frames,) list per (channel, level)
    if len(levels) == 0:
        return np.zeros(0)
    starts = np.concatenate([[0], np.cumsum(pc.list_value_length(channels).to_numpy(zero_copy_only=False))])
    parent = pc.list_parent_indices(channels).to_numpy()
    level = np.arange(len(levels)) - starts[parent]  # the codebook level of each (frames,) list
    values = pc.list_flatten(levels).to_numpy(zero_copy_only=False).astype(np.int64)
    value_level = level[pc.list_parent_indices(levels).to_numpy()]
    n_levels = int(level.max()) + 1
    inside = (values >= 0) & (values < codebook_size)  # a code outside the codebook counts as no entry
    used = np.bincount(value_level[inside] * codebook_size + values[inside], minlength=n_levels * codebook_size) > 0
    return used.reshape(n_levels, codebook_size).mean(axis=1)


def _run_of(out: str) -> dict[str, Any]:
    """The output's recorded run (summary.json, else the newest feature file's footer)."""
    files = set_files(out, "audio-feature", log=None)[1]
    return recorded_run(out, files[-1] if files else None)


def describe(out: str) -> dict[str, Any]:
    """Counts, durations, error reasons and whether the models had random weights, of an output root."""
    audio = read_columns(out, "audio-feature", ["segment_duration_s", "n_frames"])
    errors = read_columns(out, "errors", ["stage", "error_type"])
    report: dict[str, Any] = {"output": out}
    if audio is not None and audio.num_rows:
        keys = list(zip(audio["source_id"].to_pylist(), audio["segment_index"].to_pylist(), strict=True))
        report["feature_rows"] = audio.num_rows
        report["duplicate_keys"] = len(keys) - len(set(keys))
        report["sources_with_features"] = len({k[0] for k in keys})
        report["audio_hours"] = float(np.sum(audio["segment_duration_s"].to_numpy())) / 3600
        report["frames"] = int(np.sum(audio["n_frames"].to_numpy()))
    else:
        report.update(feature_rows=0, duplicate_keys=0, sources_with_features=0, audio_hours=0.0, frames=0)
    report["error_rows"] = 0 if errors is None else errors.num_rows
    current = view(out, log=None)
    if current is not None:
        report["commit_log"] = current.describe()  # the whole output from its markers, right after any crash
    if errors is not None:
        reasons = Counter(zip(errors["stage"].to_pylist(), errors["error_type"].to_pylist(), strict=True))
        report["errors_by_stage_and_type"] = {f"{s} / {t}": n for (s, t), n in reasons.most_common()}
    report["random_weights"] = bool(random_models(_run_of(out)))
    fs, path = open_root(out)
    summary = read_json(fs, join(path, SUMMARY))
    if summary:
        wanted = ("inputs", "ok", "failed", "unaccounted", "changed_inputs", "wall_s", "random_weights")
        report["last_run"] = {k: v for k, v in summary.items() if k in wanted}
    return report


def _page_title(page: SubFigure, title: str, randoms: list[str]) -> None:
    """The page's title; with random-weight models, the RANDOM WEIGHTS banner above it."""
    if randoms:
        page.suptitle(f"{RANDOM_WARNING}: {', '.join(randoms)}\n{title}", color="white", backgroundcolor="firebrick",
                      fontsize=15, fontweight="bold")  # fmt: skip
    else:
        page.suptitle(title, fontsize=14)


def _bars(ax: Axes, counts: dict[str, float], title: str, empty: str) -> None:
    if counts:
        bars = ax.barh(list(counts), list(counts.values()), color="C0")
        ax.bar_label(bars, fmt="%.3g", padding=2)
        ax.invert_yaxis()
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)


def _notes_per_stream(sine: pa.Table | None) -> dict[str, float]:
    """Mean notes per segment of each melodic stream."""
    totals: Counter[str] = Counter()
    segments: Counter[str] = Counter()
    for melody in [] if sine is None else sine["melody"].to_pylist():
        for stream in melody:
            totals[stream["stream"]] += len(stream["notes"])
            segments[stream["stream"]] += 1
    return {name: totals[name] / segments[name] for name in segments}


def _overview(page: SubFigure, out: str) -> None:
    """Sources by outcome, source durations, errors by stage and kind, notes per stream, DAC codebook usage."""
    axes = page.subplots(1, 5)
    current = view(out, log=None)
    states = current.describe() if current is not None else {}
    outcome = {k.replace("_", " "): float(states.get(k, 0)) for k in ("complete_ok", "complete_failed", "incomplete")}
    _bars(axes[0], outcome, f"sources: {states.get('sources', 0)}", "no sources")
    audio = read_columns(out, "audio-feature", ["source_duration_s"])
    if audio is not None:
        durations = dict(zip(audio["source_id"].to_pylist(), audio["source_duration_s"].to_pylist(), strict=True))
        axes[1].hist(list(durations.values()), bins=min(30, max(5, len(durations))), color="C0")
    axes[1].set(title="source durations", xlabel="s", ylabel="sources")
    errors = read_columns(out, "errors", ["stage", "error_type"])
    reasons = Counter(
        f"{s} / {t}" for s, t in zip([] if errors is None else errors["stage"].to_pylist(),
                                     [] if errors is None else errors["error_type"].to_pylist(), strict=True)
    )  # fmt: skip
    _bars(axes[2], dict(reasons.most_common(12)), "errors by stage / kind", "no errors")
    sine = read_columns(out, "sine-audio-feature", ["mono_codes", *MELODY_LEAVES[:2]], max_rows=SAMPLE_ROWS)
    n = 0 if sine is None else sine.num_rows
    _bars(axes[3], _notes_per_stream(sine), f"notes per segment by stream ({n} segments)", "no notes")
    channels = read_columns(out, "audio-feature", ["channel_codes"], max_rows=SAMPLE_ROWS)
    for label, table, column in (("mono reference", sine, "mono_codes"), ("channels", channels, "channel_codes")):
        if table is not None:
            usage = codebook_usage(table[column])
            axes[4].plot(np.arange(len(usage)), usage, marker="o", label=label)
    axes[4].xaxis.get_major_locator().set_params(integer=True)
    axes[4].set(title=f"DAC codebook usage ({n} segments)", xlabel="codebook level",
                ylabel=f"fraction of the {CODEBOOK_SIZE} codes used", ylim=(0, 1.05))  # fmt: skip
    if sine is not None or channels is not None:
        axes[4].legend(fontsize=8)


def _examples(page: SubFigure, out: str, sine: pa.Table) -> None:
    """Per example segment: the notes as a piano roll, the sine rendering of the first melodic stream after the
    mono reference, and the DAC code maps of the mono reference and of the first channel."""
    rows = sine.to_pylist()
    keys = {(r["source_id"], int(r["segment_index"])) for r in rows}
    audio = read_columns(out, "audio-feature", ["channel_codes"], keys=keys)
    channel = {} if audio is None else {(r["source_id"], r["segment_index"]): r["channel_codes"]
                                        for r in audio.to_pylist()}  # fmt: skip
    axes = page.subplots(len(rows), 4, squeeze=False)
    for ax_row, row in zip(axes, rows, strict=True):
        title = f"{Path(row['source_uri']).name} #{row['segment_index']}"
        for k, stream in enumerate(row["melody"]):
            for j, n in enumerate(stream["notes"]):
                ax_row[0].plot(
                    [n["start_s"], n["end_s"]],
                    [n["pitch"], n["pitch"]],
                    lw=4,
                    alpha=0.6,
                    color=f"C{k}",
                    label=stream["stream"] if j == 0 else None,
                )
        if any(stream["notes"] for stream in row["melody"]):
            ax_row[0].legend(fontsize=7)
        ax_row[0].set(title=f"{title}: notes", xlabel="s", ylabel="MIDI pitch")
        if row["melody"]:
            first = row["melody"][min(1, len(row["melody"]) - 1)]
            notes = [NoteEvent(n["start_s"], n["end_s"], n["pitch"], n["amplitude"]) for n in first["notes"]]
            n_samples = round(row["segment_duration_s"] * FEATURE_SAMPLE_RATE)
            wave = render_sine(notes, n_samples)[0]
            ax_row[1].plot(np.arange(n_samples) / FEATURE_SAMPLE_RATE, wave, lw=0.3)
            ax_row[1].set(title=f"sine rendering ({first['stream']})", xlabel="s")
        ax_row[2].imshow(np.array(row["mono_codes"][0]), aspect="auto", interpolation="nearest", cmap="viridis")
        ax_row[2].set(title="mono reference codes", xlabel="frame", ylabel="codebook")
        codes = channel.get((row["source_id"], row["segment_index"]))
        if codes is not None:
            ax_row[3].imshow(np.array(codes[0]), aspect="auto", interpolation="nearest", cmap="viridis")
        ax_row[3].set(title="channel 0 codes", xlabel="frame", ylabel="codebook")


def report_figure(out: str, n_examples: int = 2) -> Figure:
    """The report as a matplotlib figure: the overview page, then a page of ``n_examples`` example segments (left out
    when the output has no feature rows). Each page is a subfigure whose title carries the RANDOM WEIGHTS banner
    when the run's models had random weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    randoms = random_models(_run_of(out))
    sine = read_columns(out, "sine-audio-feature", ["source_uri", "segment_duration_s", "mono_codes", *MELODY_LEAVES],
                        max_rows=n_examples)  # fmt: skip
    n_rows = 0 if sine is None else sine.num_rows
    fig = plt.figure(figsize=(24, 4.5 + 3.2 * n_rows), layout="constrained")
    heights = [4.5, 3.2 * n_rows] if n_rows else [4.5]
    pages: list[SubFigure] = list(fig.subfigures(len(heights), 1, squeeze=False, height_ratios=heights).ravel())
    _overview(pages[0], out)
    _page_title(pages[0], f"overview of {out}", randoms)
    if sine is not None and n_rows:
        _examples(pages[1], out, sine)
        _page_title(pages[1], f"{n_rows} example segment(s)", randoms)
    return fig


def plot_report(out: str, png: str, n_examples: int = 2) -> str:
    """Write :func:`report_figure` to ``png``; returns ``png``."""
    import matplotlib.pyplot as plt

    fig = report_figure(out, n_examples)
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png


def main(out: str, png: str | None = None, log: TextIO = sys.stdout) -> int:
    """Print the description as JSON and, if ``png`` is given, write the plot report there.

    Raises:
        ConfigError: ``out`` holds no extraction output (it has no commit log); nothing is created.
    """
    if view(out, log=None) is None:
        raise ConfigError(f"{out} holds no extraction output (no _commits folder)")
    print(json.dumps(describe(out), indent=2), file=log)
    if png:
        print(f"report written to {plot_report(out, png)}", file=log)
    return 0
