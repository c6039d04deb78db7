"""Audio variants of the mono reference: seeded parameters, and gain, noise and EQ that do what they say."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hummingml.stages.augment import AugmentConfig, MonoVariant, apply, draw
from hummingml.testing.signals import sine

SR = 22_050
CLEAN = MonoVariant(gain_db=0.0, snr_db=200.0, eq_hz=1000.0, eq_db=0.0, eq_q=1.0, noise_seed=0)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_parameters_are_seeded_per_segment_and_copy_and_within_their_ranges() -> None:
    cfg = AugmentConfig()
    a, b = draw(cfg, "src", 3, 0), draw(cfg, "src", 3, 1)
    assert draw(cfg, "src", 3, 0) == a != b != draw(cfg, "src", 4, 0)
    for v in (a, b):
        assert cfg.gain_db[0] <= v.gain_db <= cfg.gain_db[1] and cfg.snr_db[0] <= v.snr_db <= cfg.snr_db[1]
        assert cfg.eq_hz[0] <= v.eq_hz <= cfg.eq_hz[1] and cfg.eq_q[0] <= v.eq_q <= cfg.eq_q[1]


def test_gain_scales_the_level() -> None:
    x = sine(440.0, 1.0, SR)
    y = apply(x, SR, dataclasses.replace(CLEAN, gain_db=-6.0))
    assert rms(y) / rms(x) == pytest.approx(10 ** (-6 / 20), rel=1e-3)


def test_noise_is_added_at_the_stated_snr_and_is_reproducible() -> None:
    x = sine(440.0, 2.0, SR)
    v = dataclasses.replace(CLEAN, snr_db=20.0, noise_seed=5)
    y = apply(x, SR, v)
    assert rms(y - x) / rms(x) == pytest.approx(0.1, rel=0.05)
    np.testing.assert_array_equal(y, apply(x, SR, v))


@pytest.mark.parametrize("eq_db", [-9.0, 6.0])
def test_the_peaking_eq_changes_a_tone_at_its_centre_by_its_gain_and_leaves_far_tones(eq_db: float) -> None:
    v = dataclasses.replace(CLEAN, eq_hz=1000.0, eq_db=eq_db, eq_q=1.0)
    at = sine(1000.0, 1.0, SR)
    far = sine(60.0, 1.0, SR)
    gain_at = 20 * np.log10(rms(apply(at, SR, v)[:, 2000:]) / rms(at[:, 2000:]))
    gain_far = 20 * np.log10(rms(apply(far, SR, v)[:, 2000:]) / rms(far[:, 2000:]))
    assert gain_at == pytest.approx(eq_db, abs=0.3)
    assert abs(gain_far) < 0.5


def test_silence_stays_silent() -> None:
    y = apply(np.zeros((1, SR), np.float32), SR, draw(AugmentConfig(), "s", 0, 0))
    assert np.isfinite(y).all() and not y.any()
