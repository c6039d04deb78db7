"""Audio metrics: SI-SDR and the summary of a list of dB values."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

SI_SDR_MIN_DB, SI_SDR_MAX_DB = -50.0, 60.0  # clamp: identical signals would otherwise give ~+inf dB
SI_SDR_EPS = 1e-8  # added to both energies (torchmetrics and audiotools use the same)
SILENT_POWER = 1e-8  # mean square of the zero-mean reference below which a clip is not scored (RMS 1e-4, -80 dBFS)


# --- SI-SDR --------------------------------------------------------------------------------------------------------


def si_sdr(
    estimate: npt.ArrayLike,
    reference: npt.ArrayLike,
    *,
    zero_mean: bool = True,
    eps: float = SI_SDR_EPS,
    min_db: float = SI_SDR_MIN_DB,
    max_db: float = SI_SDR_MAX_DB,
    silent_power: float = SILENT_POWER,
) -> float:
    """Scale-invariant SDR in dB (Le Roux et al., "SDR - half-baked or well done?", ICASSP 2019).

    With (zero-mean) reference s and estimate e: ``a = (<e, s> + eps) / (||s||^2 + eps)``,
    ``SI-SDR = 10 log10((||a s||^2 + eps) / (||e - a s||^2 + eps))``, in float64, clamped to ``[min_db, max_db]``.

    Args:
        estimate, reference: 1-D signals (any leading axes are flattened) at the same rate; the longer one is cropped
            to the shorter (DAC decodes are padded to whole frames).
        zero_mean: subtract each signal's mean first.
        eps: added to both energies and to the projection.
        min_db, max_db: clamp of the result.
        silent_power: a reference whose mean square (after the mean removal) is below this is near-silent.

    Returns:
        SI-SDR in dB; ``min_db`` for an estimate of energy below ``eps`` (all zero); NaN for a near-silent (or
        empty) reference: callers skip it rather than average it. A negative scale is a scale too: ``-estimate``
        scores like ``estimate``.
    """
    e = np.asarray(estimate, dtype=np.float64).reshape(-1)
    s = np.asarray(reference, dtype=np.float64).reshape(-1)
    n = min(e.size, s.size)
    e, s = e[:n], s[:n]
    if zero_mean and n:
        e, s = e - e.mean(), s - s.mean()
    if n == 0 or float(np.mean(s * s)) < silent_power:
        return math.nan
    if float(e @ e) < eps:  # 0/0 in the formula (eps would turn it into 0 dB): no estimate is the worst estimate
        return float(min_db)
    alpha = (float(e @ s) + eps) / (float(s @ s) + eps)
    target = alpha * s
    residual = e - target
    value = 10.0 * math.log10((float(target @ target) + eps) / (float(residual @ residual) + eps))
    return float(min(max(value, min_db), max_db))


def summarize_db(values: list[float]) -> dict[str, float | int | None]:
    """Mean and median over clips of SI-SDR values in dB; NaN entries (near-silent references) are counted, not used."""
    scored = [v for v in values if not math.isnan(v)]
    return {
        "mean": float(np.mean(scored)) if scored else None,
        "median": float(np.median(scored)) if scored else None,
        "n_scored": len(scored),
        "n_skipped_silent": len(values) - len(scored),
    }
