"""The research protocol in one run: HummingLM against a VALL-E baseline and against itself without augmentation.

On one feature set, with the same budget (steps, batch, seed, prompt lengths) and the same held-out instruments,
:func:`run` trains three models with Ray Train (``hummingml.train.ray.fit``):

- ``hummingml``: HummingLM (the ``humming`` layout: melody-aligned sine and mono conditioning) with augmentation;
- ``valle``: the VALL-E baseline, the same sizes with the ``valle`` layout (no melody stream), with augmentation;
- ``hummingml_no_aug``: HummingLM without augmentation (no mono variants, token noise or jitter; fixed prompt length).

It then evaluates all three on the seen (``train``) and unseen instruments (``hummingml.eval.evaluate.run``), each
split broken down by mode, and writes into ``--out``:

- ``results.json``: the config, the held-out instruments, each run's checkpoint and metrics history (loss curves),
  the evaluation rows, and the comparisons of :data:`COMPARISONS`;
- ``results.md``: the same as markdown tables;
- ``loss.png`` (the loss curves), ``si_sdr.png`` (median SI-SDR per model and split) and ``modes.png`` (per mode);
- ``eval.json`` / ``eval.png``: the evaluation job's own output; ``runs/<model>/``: the Ray Train runs.

A rerun with the same ``--out`` skips a model whose run already reached ``--steps`` and resumes one that did not.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TextIO

from hummingml.config import ConfigError
from hummingml.eval.config import EvalConfig, StudyConfig
from hummingml.output import read_set

MODELS = ("hummingml", "valle", "hummingml_no_aug")
# (name, model a, model b, what a adds over b): the findings the protocol checks
COMPARISONS = (
    ("HummingLM vs VALL-E", "hummingml", "valle", "the melody conditioning"),
    ("augmentation", "hummingml", "hummingml_no_aug", "augmentation"),
)
HEADLINE = ("si_sdr_db", "full", "median")  # the metric the comparisons use: median SI-SDR of full generation


def catalogue(features: str, parts: tuple[str, ...]) -> tuple[dict[str, set[str]], dict[str, int]]:
    """The instruments of each part and the segment count per mode, from the features' manifest metadata.

    Raises:
        ConfigError: the output has no feature rows.
    """
    from hummingml.eval.evaluate import UNKNOWN, manifest_field
    from hummingml.train.data import instrument_of

    table = read_set(features, "audio-feature", ["metadata"])
    if table is None or not table.num_rows:
        raise ConfigError(f"--features {features} has no committed audio-feature rows")
    instruments: dict[str, set[str]] = {part: set() for part in parts}
    modes: dict[str, int] = {}
    for metadata in table.column("metadata").to_pylist():
        for part in parts:
            if name := instrument_of(metadata, part):
                instruments[part].add(name)
        mode = manifest_field(metadata, "mode") or UNKNOWN
        modes[mode] = modes.get(mode, 0) + 1
    return instruments, modes


def choose_holdout(instruments: dict[str, set[str]]) -> tuple[str, ...]:
    """One instrument per part, the last by name, for each part that has more than one (so both splits have it).

    Raises:
        ConfigError: no part has two instruments (the manifest names none, or the corpus is too small).
    """
    held = tuple(sorted(names)[-1] for _, names in sorted(instruments.items()) if len(names) > 1)
    if not held:
        raise ConfigError(
            "no part of the features has two instruments to split into seen and unseen: extract from a manifest that "
            "names them ('instruments' per stem), or give --holdout-instruments"
        )
    return held


def train_configs(cfg: StudyConfig, holdout: tuple[str, ...]) -> dict[str, Any]:
    """The three runs' ``TrainConfig``: identical but for the layout (``valle``) and augmentation (``no_aug``)."""
    from hummingml.train.config import from_preset
    from hummingml.train.data import DataConfig

    data = DataConfig(
        features=cfg.features, parts=cfg.parts, frames=cfg.frames, timbre_min_frames=cfg.timbre_min_frames,
        timbre_max_frames=cfg.timbre_max_frames, holdout_instruments=holdout, seed=cfg.seed,
    )  # fmt: skip
    base = from_preset(
        cfg.preset, storage=str(Path(cfg.out, "runs").resolve()), steps=cfg.steps, batch_size=cfg.batch_size,
        checkpoint_every=cfg.checkpoint_every, keep_checkpoints=1, cpus_per_worker=cfg.cpus_per_worker,
        seed=cfg.seed, data=data,
    )  # fmt: skip
    return {
        "hummingml": replace(base, name="hummingml"),
        "valle": replace(base, name="valle", model=replace(base.model, layout="valle")),
        "hummingml_no_aug": replace(base, name="hummingml_no_aug", data=replace(data, augment=False)),
    }


def _finished(run_dir: Path, steps: int) -> Path | None:
    """The run's newest checkpoint if it reached ``steps``, else None."""
    from hummingml.train.checkpoint import checkpoint_step, resolve_checkpoint

    try:
        newest = resolve_checkpoint(run_dir)
    except FileNotFoundError:
        return None
    return newest if checkpoint_step(newest) >= steps else None


def _value(row: dict[str, Any] | None) -> float | None:
    """The headline metric of an evaluation row (or of one mode's metrics), None without examples."""
    node: Any = row
    for key in HEADLINE:
        node = node.get(key) if isinstance(node, dict) else None
    return None if node is None else float(node)


def _delta(a: float | None, b: float | None) -> dict[str, float | None]:
    """``a - b`` in dB, and relative to ``|b|`` in percent (None where either is missing or b is 0)."""
    if a is None or b is None:
        return {"a_db": a, "b_db": b, "delta_db": None, "relative_pct": None}
    relative = None if b == 0 else 100.0 * (a - b) / abs(b)
    return {"a_db": a, "b_db": b, "delta_db": a - b, "relative_pct": relative}


def compare(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The study's findings from the evaluation rows: model pairs per split, seen against unseen, per mode and per
    instrument."""
    by = {(r["run_name"], r["split"]): r for r in rows}
    pairs = {
        title: {split: _delta(_value(by.get((a, split))), _value(by.get((b, split)))) for split in ("train", "unseen")}
        | {"adds": adds, "a": a, "b": b}
        for title, a, b, adds in COMPARISONS
    }
    seen_unseen = {name: _delta(_value(by.get((name, "unseen"))), _value(by.get((name, "train")))) for name in MODELS}
    modes: dict[str, dict[str, dict[str, float | None]]] = {}
    instruments: dict[str, dict[str, Any]] = {}
    for (name, split), row in sorted(by.items()):
        for mode, metrics in (row.get("by_mode") or {}).items():
            modes.setdefault(split, {}).setdefault(mode, {})[name] = _value(metrics)
        for instrument, metrics in (row.get("by_instrument") or {}).items():
            instruments.setdefault(instrument, {"split": split})[name] = _value(metrics)
    best_mode: dict[str, list[str]] = {}  # every mode that shares the best value (ties at the SI-SDR clamp are common)
    for split, table in modes.items():
        scored = {mode: float(v["hummingml"] or 0.0) for mode, v in table.items() if v.get("hummingml") is not None}
        top = max(scored.values(), default=None)
        best_mode[split] = sorted(mode for mode, value in scored.items() if value == top)
    return {
        "metric": "median SI-SDR (dB) of full generation (AR level 0 + NAR levels) vs the ground-truth decode",
        "pairs": pairs,
        "unseen_vs_seen": seen_unseen,
        "by_mode": modes,
        "hummingml_best_mode": best_mode,
        "by_instrument": instruments,
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """``results.md``: what was run, the main table, the comparisons, seen against unseen, and the mode table."""
    c, rows = results["comparisons"], results["evaluation"]["rows"]
    lines = [
        "# hummingml study",
        "",
        f"Features `{results['config']['features']}`, preset `{results['config']['preset']}`, "
        f"{results['config']['steps']} steps each, held-out instruments: {', '.join(results['holdout_instruments'])}.",
        f"Codec: {results['codec']}.",
        "",
        "| model | split | examples | AR acc (TF) | AR acc (free) | NAR acc | SI-SDR full (dB) | ar_only | nar_only |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sdr = r["si_sdr_db"] or {}
        tf = r["ar_teacher_forced"] or {}
        lines.append(
            f"| {r['run_name']} | {r['split']} | {r['n_examples']} | {_fmt(tf.get('acc'), 3)} | "
            f"{_fmt(r['ar_free_running_acc'], 3)} | {_fmt(r['nar_mean_acc'], 3)} | "
            + " | ".join(_fmt((sdr.get(k) or {}).get("median")) for k in ("full", "ar_only", "nar_only"))
            + " |"
        )
    lines += ["", f"Comparisons ({c['metric']}):", "", "| comparison | split | a | b | a - b (dB) | relative |",
              "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for title, pair in c["pairs"].items():
        for split in ("train", "unseen"):
            d = pair[split]
            rel = "n/a" if d["relative_pct"] is None else f"{d['relative_pct']:+.1f} %"
            lines.append(
                f"| {title} ({pair['a']} - {pair['b']}) | {split} | {_fmt(d['a_db'])} | {_fmt(d['b_db'])} | "
                f"{_fmt(d['delta_db'])} | {rel} |"
            )
    lines += ["", "Unseen against seen instruments (unseen - seen, dB):", "", "| model | seen | unseen | delta |",
              "|---|---:|---:|---:|"]  # fmt: skip
    for name, d in c["unseen_vs_seen"].items():
        lines.append(f"| {name} | {_fmt(d['b_db'])} | {_fmt(d['a_db'])} | {_fmt(d['delta_db'])} |")
    lines += ["", "Per instrument (median SI-SDR full, dB; unseen = held out of training):", "",
              "| instrument | split | " + " | ".join(MODELS) + " |", "|---|---|" + "---:|" * len(MODELS)]  # fmt: skip
    for instrument, values in sorted(c["by_instrument"].items()):
        lines.append(f"| {instrument} | {values['split']} | " + " | ".join(_fmt(values.get(m)) for m in MODELS) + " |")
    for split, table in c["by_mode"].items():
        lines += ["", f"Per mode, {split} split (median SI-SDR full, dB):", "", "| mode | " + " | ".join(MODELS) + " |",
                  "|---|" + "---:|" * len(MODELS)]  # fmt: skip
        for mode, values in sorted(table.items()):
            lines.append(f"| {mode} | " + " | ".join(_fmt(values.get(m)) for m in MODELS) + " |")
        best = c["hummingml_best_mode"].get(split) or []
        tie = f" ({len(best)} tied)" if len(best) > 1 else ""
        lines.append(f"\nHummingLM's best mode on {split}: {', '.join(best) or 'n/a'}{tie}.")
    return "\n".join(lines) + "\n"


def _bars(path: Path, labels: list[str], series: dict[str, list[float | None]], title: str) -> str:
    """A PNG of grouped bars of median SI-SDR: one group per label, one bar per series (None: no bar)."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(labels)), 4))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        x = np.arange(len(labels)) + (i - (len(series) - 1) / 2) * width
        ax.bar(x, [np.nan if v is None else v for v in values], width, label=name)
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set(ylabel="median SI-SDR, full (dB)", title=title)
    ax.axhline(0, color="black", lw=0.5)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return str(path)


def plot(results: dict[str, Any], out: Path) -> list[str]:
    """``loss.png``, ``si_sdr.png`` and ``modes.png`` under ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, run in results["runs"].items():
        steps = [h["step"] for h in run["history"]]
        for ax, key in zip(axes, ("ar_loss", "nar_loss"), strict=True):
            ax.plot(steps, [h.get(key) for h in run["history"]], marker="o", label=name)
            ax.set(title=key.replace("_", " "), xlabel="step", ylabel="cross-entropy (nats)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=80)
    plt.close(fig)
    written.append(str(out / "loss.png"))

    rows = results["evaluation"]["rows"]
    by_split = {
        "seen" if split == "train" else "unseen": [
            _value(next((r for r in rows if r["run_name"] == m and r["split"] == split), None)) for m in MODELS
        ]
        for split in ("train", "unseen")
    }
    written.append(_bars(out / "si_sdr.png", list(MODELS), by_split, f"codec: {results['codec']}"))
    table = results["comparisons"]["by_mode"].get("train", {})
    modes = sorted(table)
    by_model = {name: [table[m].get(name) for m in modes] for name in MODELS}
    written.append(_bars(out / "modes.png", modes, by_model, "per mode, seen instruments"))
    return written


def dry_run_plan(cfg: StudyConfig) -> dict[str, Any]:
    """The study's ``--dry-run``: its config, the three training configs and the evaluation, from the flags alone."""
    if problems := cfg.problems():
        raise ConfigError("\n".join(problems))
    holdout = cfg.holdout_instruments or ("<one per part, chosen from the features>",)
    runs = {name: asdict(c) for name, c in train_configs(cfg, tuple(holdout)).items()}
    evaluate = {"splits": ["train", "unseen"], "breakdown": "mode", "max_examples": cfg.max_examples}
    return {"job": "study", "config": asdict(cfg), "runs": runs, "evaluate": evaluate}


def run(cfg: StudyConfig, log: TextIO | None = None) -> dict[str, Any]:
    """Train the three models, evaluate them, write the results (module docstring); returns ``results.json``'s
    content.

    Raises:
        ConfigError: a flag no study can use, features without rows, or no instrument to hold out.
        RuntimeError: a training run failed.
    """
    if problems := cfg.problems():
        raise ConfigError("\n".join(problems))
    from hummingml.eval.evaluate import run as evaluate
    from hummingml.train.checkpoint import read_history
    from hummingml.train.ray import fit

    log = log or sys.stdout
    started = time.time()
    instruments, modes = catalogue(cfg.features, cfg.parts)
    holdout = cfg.holdout_instruments or choose_holdout(instruments)
    out = Path(cfg.out)  # created once the features are known to be usable
    out.mkdir(parents=True, exist_ok=True)
    print(f"[study] held out: {', '.join(holdout)}; segments per mode: {json.dumps(modes, sort_keys=True)}", file=log)
    configs = train_configs(cfg, holdout)
    runs: dict[str, dict[str, Any]] = {}
    for name, train_cfg in configs.items():
        run_dir = Path(train_cfg.storage, name)
        checkpoint = _finished(run_dir, cfg.steps)
        if checkpoint is None:
            print(f"[study] training {name} ({cfg.steps} steps)", file=log, flush=True)
            result = fit(train_cfg)
            if result.error is not None:
                raise RuntimeError(f"training {name} failed: {result.error}")
            checkpoint = _finished(run_dir, cfg.steps)
            if checkpoint is None:
                raise RuntimeError(f"training {name} ended without a checkpoint at step {cfg.steps} in {run_dir}")
        else:
            print(f"[study] {name}: already trained ({checkpoint})", file=log)
        runs[name] = {"checkpoint": str(checkpoint), "history": read_history(checkpoint)}
    eval_cfg = EvalConfig(
        checkpoint=runs[MODELS[0]]["checkpoint"], compare=tuple(runs[m]["checkpoint"] for m in MODELS[1:]),
        data_features=cfg.features, split=("train", "unseen"), holdout_instruments=holdout,
        max_examples=cfg.max_examples, codec_ceiling=cfg.codec_ceiling, seed=cfg.seed,
        out=str(out / "eval.json"), plot=str(out / "eval.png"),
    )  # fmt: skip
    evaluation = evaluate(eval_cfg, models_given=set(), log=log)
    dac = evaluation["rows"][0]["dac"]
    random_codec = dac["kind"] != "pretrained"
    results = {
        "config": asdict(cfg),
        "holdout_instruments": list(holdout),
        "instruments": {part: sorted(names) for part, names in instruments.items()},
        "segments_per_mode": modes,
        "codec": f"{dac['kind']} {dac['name']}" + (" (RANDOM WEIGHTS: see docs/evaluation.md)" if random_codec else ""),
        "runs": runs,
        "evaluation": evaluation,
        "comparisons": compare(evaluation["rows"]),
        "wall_s": round(time.time() - started, 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(markdown(results))
    plot(results, out)
    print(f"[study] wrote {out / 'results.json'}, results.md, loss.png, si_sdr.png, modes.png", file=log)
    print(markdown(results), file=log)
    return results
