"""``hummingml inspect OUT``: what an extraction wrote, in numbers and in a PNG report."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from hummingml.audio import FEATURE_SAMPLE_RATE
from hummingml.config import ConfigError
from hummingml.output import read_set, view
from hummingml.stages.pitch import NoteEvent
from hummingml.stages.synth import render_sine


def _table(out: str, name: str, columns: list[str] | None = None) -> Any:
    """The current rows of a set (the newest commit of each key), or None."""
    try:
        return read_set(out, name, columns)
    except (FileNotFoundError, ValueError):
        return None


def describe(out: str) -> dict[str, Any]:
    """Counts, durations and error reasons of an output root."""
    audio = _table(out, "audio-feature", ["source_id", "segment_index", "segment_duration_s", "n_frames"])
    errors = _table(out, "errors", ["source_id", "stage", "error_type"])
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
    summary = Path(out) / "summary.json"
    if summary.exists():
        wanted = ("inputs", "ok", "failed", "unaccounted", "changed_inputs", "wall_s", "random_weights")
        report["last_run"] = {k: v for k, v in json.loads(summary.read_text()).items() if k in wanted}
    return report


def plot_report(out: str, png: str, n_examples: int = 2) -> str:
    """A PNG with, per example segment: the notes as a piano roll, the sine rendering of the first melodic stream,
    and the DAC code maps of the mono reference and the first channel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sine = _table(out, "sine-audio-feature", ["source_uri", "segment_index", "segment_duration_s", "mono_codes",
                                                "melody"])
    audio = _table(out, "audio-feature", ["source_uri", "segment_index", "channel_codes"])
    if sine is None or sine.num_rows == 0:
        raise ValueError(f"{out} has no sine-audio-feature rows to plot")
    rows = sine.slice(0, n_examples).to_pylist()
    channel = {(r["source_uri"], r["segment_index"]): r["channel_codes"] for r in audio.to_pylist()}
    fig, axes = plt.subplots(len(rows), 4, figsize=(20, 3.2 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows, strict=True):
        title = f"{Path(row['source_uri']).name} #{row['segment_index']}"
        for k, stream in enumerate(row["melody"]):
            for j, n in enumerate(stream["notes"]):
                ax_row[0].plot([n["start_s"], n["end_s"]], [n["pitch"], n["pitch"]], lw=4, alpha=0.6,
                               color=f"C{k}", label=stream["stream"] if j == 0 else None)
        ax_row[0].legend(fontsize=7)
        ax_row[0].set(title=f"{title}: notes", xlabel="s", ylabel="MIDI pitch")
        first = row["melody"][min(1, len(row["melody"]) - 1)]
        notes = [NoteEvent(n["start_s"], n["end_s"], n["pitch"], n["amplitude"]) for n in first["notes"]]
        n_samples = round(row["segment_duration_s"] * FEATURE_SAMPLE_RATE)
        wave = render_sine(notes, n_samples)[0]
        ax_row[1].plot(np.arange(n_samples) / FEATURE_SAMPLE_RATE, wave, lw=0.3)
        ax_row[1].set(title=f"sine rendering ({first['stream']})", xlabel="s")
        ax_row[2].imshow(np.array(row["mono_codes"][0]), aspect="auto", interpolation="nearest", cmap="viridis")
        ax_row[2].set(title="mono reference codes", xlabel="frame", ylabel="codebook")
        codes = channel.get((row["source_uri"], row["segment_index"]))
        if codes is not None:
            ax_row[3].imshow(np.array(codes[0]), aspect="auto", interpolation="nearest", cmap="viridis")
        ax_row[3].set(title="channel 0 codes", xlabel="frame", ylabel="codebook")
    fig.tight_layout()
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
