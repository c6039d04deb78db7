"""The evaluation's PNG: token accuracies and median SI-SDR per checkpoint and split."""

from __future__ import annotations

from typing import Any

import numpy as np


def row_label(row: dict[str, Any]) -> str:
    """``run@step [split]`` of one results row."""
    step = f"@{row['step']}" if row.get("step", -1) >= 0 else ""
    return f"{row['run_name']}{step} [{row['split']}]"


def row_summary(row: dict[str, Any]) -> str:
    """One line of a results row's main metrics (or why it has no examples)."""
    if not row["n_examples"]:
        unseen_undefined = row["split"] == "unseen" and not row["holdout_instruments"]
        return "no examples" + (" (no holdout instruments: set --holdout-instruments)" if unseen_undefined else "")
    sdr = row["si_sdr_db"]
    median = " ".join(f"{k} {'n/a' if v['median'] is None else format(v['median'], '.2f')}" for k, v in sdr.items())
    return (
        f"{row['n_examples']} examples, AR acc {row['ar_teacher_forced']['acc']:.3f} "
        f"top10 {row['ar_teacher_forced']['top10_acc']:.3f} free-running {row['ar_free_running_acc']:.3f}, "
        f"NAR mean acc {row['nar_mean_acc']:.3f}, SI-SDR median dB {median}"
    )


def plot_results(results: dict[str, Any], png: str) -> str:
    """Grouped bars per (checkpoint, split): token accuracies (left) and median SI-SDR in dB (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r["n_examples"]]
    accuracies = {
        "AR top-1 (TF)": lambda r: r["ar_teacher_forced"]["acc"],
        "AR top-10 (TF)": lambda r: r["ar_teacher_forced"]["top10_acc"],
        "AR free-running": lambda r: r["ar_free_running_acc"],
        "NAR mean acc (TF)": lambda r: r["nar_mean_acc"],
    }
    names = ("full", "ar_only", "nar_only", "codec_ceiling", "full_vs_audio")
    sdrs = {n: (lambda r, n=n: (r["si_sdr_db"].get(n) or {}).get("median")) for n in names
            if any(n in r["si_sdr_db"] for r in rows)}
    fig, axes = plt.subplots(1, 2, figsize=(7 + 1.6 * len(rows), 4.5))
    for ax, metrics, ylabel in ((axes[0], accuracies, "accuracy"), (axes[1], sdrs, "median SI-SDR (dB)")):
        x = np.arange(len(metrics))
        width = 0.8 / max(1, len(rows))
        for i, row in enumerate(rows):
            values = [np.nan if f(row) is None else f(row) for f in metrics.values()]
            label = f"{row_label(row)} n={row['n_examples']}"
            ax.bar(x + (i - (len(rows) - 1) / 2) * width, values, width, label=label)
        ax.set_xticks(x, list(metrics), rotation=15)
        ax.set_ylabel(ylabel)
        ax.axhline(0, color="black", lw=0.5)
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    skipped = len(results["rows"]) - len(rows)
    title = "SI-SDR vs the DAC decode of the ground truth (codec_ceiling, full_vs_audio: vs the part's audio)"
    fig.suptitle(title + (f" ({skipped} rows without examples left out)" if skipped else ""))
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png
