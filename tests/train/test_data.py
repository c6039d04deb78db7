from __future__ import annotations

import json

import numpy as np

from hummingml.train.data import DataConfig, examples_from_row, split_of

K, F = 4, 200


def row(notes: bool = True, instruments: dict | None = None, n_frames: int = F, source_id: str = "s") -> dict:
    rng = np.random.default_rng(0)
    codes = lambda: rng.integers(0, 1024, (1, K, n_frames))  # noqa: E731
    note = [{"start_s": 0.1, "end_s": 0.5, "pitch": 60, "amplitude": 0.8}] if notes else []
    return {
        "source_id": source_id,
        "segment_index": 0,
        "metadata": json.dumps({"instruments": instruments or {}}),
        "stem_names": ["drums", "bass", "vocals", "lead", "chordal", "other"],
        "stem_codes": [codes() for _ in range(6)],
        "mono_codes": codes(),
        "melody": [{"stream": s, "notes": note, "sine_codes": codes()} for s in ("mono", "vocals", "lead")],
    }


def test_examples_are_aligned_windows_with_a_separate_timbre_clip() -> None:
    r = row()
    cfg = DataConfig(frames=64, timbre_min_frames=16, timbre_max_frames=32, augment=False)
    examples = list(examples_from_row(r, cfg, cond_codebooks=2, codebook_size=1024, split="all"))
    assert [e["part"] for e in examples] == ["vocals", "lead"]
    for e in examples:
        stem = r["stem_codes"][r["stem_names"].index(e["part"])][0]
        sine = next(m for m in r["melody"] if m["stream"] == e["part"])["sine_codes"][0]
        assert e["target"].shape == (K, 64) and e["timbre"].shape == (K, 32)
        assert e["sine"].shape == e["mono"].shape == (2, 64)
        # find the window: the target is a slice of the stem, and sine/mono are the same slice of their streams
        starts = [s for s in range(F - 63) if np.array_equal(stem[:, s : s + 64], e["target"])]
        assert len(starts) == 1
        y = starts[0]
        np.testing.assert_array_equal(e["sine"], sine[:2, y : y + 64])
        np.testing.assert_array_equal(e["mono"], r["mono_codes"][0][:2, y : y + 64])
        t = next(s for s in range(F - 31) if np.array_equal(stem[:, s : s + 32], e["timbre"]))
        assert t + 32 <= y or y + 64 <= t  # the timbre clip never overlaps the target window


def test_augmentation_changes_conditioning_but_not_target_shapes() -> None:
    cfg = DataConfig(frames=64, timbre_min_frames=16, timbre_max_frames=32, mono_noise=0.5, jitter_frames=2)
    plain = list(
        examples_from_row(
            row(),
            DataConfig(frames=64, timbre_min_frames=16, timbre_max_frames=32, augment=False),
            2,
            1024,
            split="all",
        )
    )
    aug = list(examples_from_row(row(), cfg, 2, 1024, split="all"))
    assert all(16 <= e["timbre"].shape[1] <= 32 and e["target"].shape == (K, 64) for e in aug)
    assert any(not np.array_equal(a["mono"], p["mono"]) for a, p in zip(aug, plain, strict=True))


def test_examples_are_deterministic_per_epoch() -> None:
    cfg = DataConfig(frames=64, timbre_min_frames=16, timbre_max_frames=32)
    a = list(examples_from_row(row(), cfg, 2, 1024, epoch=1, split="all"))
    b = list(examples_from_row(row(), cfg, 2, 1024, epoch=1, split="all"))
    assert all(np.array_equal(x["target"], y["target"]) for x, y in zip(a, b, strict=True))


def test_parts_without_notes_and_short_segments_give_nothing() -> None:
    assert list(examples_from_row(row(notes=False), DataConfig(frames=64), 2, 1024, split="all")) == []
    assert list(examples_from_row(row(), DataConfig(frames=190, timbre_min_frames=16), 2, 1024, split="all")) == []


def test_held_out_instruments_form_the_unseen_split() -> None:
    cfg = DataConfig(frames=64, timbre_min_frames=16, timbre_max_frames=32, holdout_instruments=("flute",))
    r = row(instruments={"lead": "flute", "vocals": "voice-ah"})
    assert split_of(r["metadata"], "lead", cfg) == "unseen"
    assert [e["part"] for e in examples_from_row(r, cfg, 2, 1024, split="train")] == ["vocals"]
    assert [e["part"] for e in examples_from_row(r, cfg, 2, 1024, split="unseen")] == ["lead"]


def test_augmentation_conditions_on_an_audio_variant_of_the_mono_reference() -> None:
    r = row()
    variant = np.full((1, K, F), 7)  # a constant variant: visible in the mono window when chosen
    r["mono_variants"] = [{"gain_db": 0.0, "codes": variant}]
    cfg = DataConfig(frames=64, timbre_min_frames=16, timbre_max_frames=32, mono_noise=0.0, jitter_frames=0,
                     mono_variant_prob=1.0)
    examples = list(examples_from_row(r, cfg, 2, 1024, split="all"))
    assert examples and all((e["mono"] == 7).all() for e in examples)
    never = DataConfig(frames=64, timbre_min_frames=16, timbre_max_frames=32, mono_noise=0.0, mono_variant_prob=0.0)
    assert not any((e["mono"] == 7).all() for e in examples_from_row(r, never, 2, 1024, split="all"))
    off = DataConfig(frames=64, timbre_min_frames=16, timbre_max_frames=32, augment=False, mono_variant_prob=1.0)
    assert not any((e["mono"] == 7).all() for e in examples_from_row(r, off, 2, 1024, split="all"))


def test_default_timbre_prompts_are_1_to_5_s_capped_by_what_the_segment_leaves() -> None:
    cfg = DataConfig()  # timbre 86..431 frames (1-5 s at 86.13 frames/s), 64-frame window
    assert (cfg.timbre_min_frames, cfg.timbre_max_frames) == (round(1 * 86.13), round(5 * 86.13))
    for n_frames in (345, 600):  # a 4 s demo segment leaves 281 frames beside the window; 600 frames leave 536
        longest = min(cfg.timbre_max_frames, n_frames - cfg.frames)
        lengths = []
        for i in range(40):
            r = row(n_frames=n_frames, source_id=f"s{i}")
            stem = r["stem_codes"][r["stem_names"].index("lead")][0]
            for e in examples_from_row(r, cfg, 2, 1024, split="all"):
                p, y = e["timbre"].shape[1], e["target_start"]
                assert cfg.timbre_min_frames <= p <= longest and e["target"].shape == (K, cfg.frames)
                if e["part"] == "lead":  # the clip is the stem somewhere outside the window
                    t = next(s for s in range(n_frames - p + 1) if np.array_equal(stem[:, s : s + p], e["timbre"]))
                    assert t + p <= y or y + cfg.frames <= t
                lengths.append(p)
        assert min(lengths) < cfg.timbre_min_frames + 40 and max(lengths) > longest - 40  # drawn across the range
        assert lengths.count(longest) < len(lengths) / 4  # drawn within the cap, not piled up on it
        plain = next(examples_from_row(row(n_frames=n_frames), DataConfig(augment=False), 2, 1024, split="all"))
        assert plain["timbre"].shape[1] == longest
    # a segment too short for the window plus a 1 s clip gives nothing
    too_short = row(n_frames=cfg.frames + cfg.timbre_min_frames - 1)
    assert list(examples_from_row(too_short, cfg, 2, 1024, split="all")) == []
    fits = row(n_frames=cfg.frames + cfg.timbre_min_frames)
    assert [e["part"] for e in examples_from_row(fits, cfg, 2, 1024, split="all")] == ["vocals", "lead"]
