"""Helpers shared by the degradation tests."""

from __future__ import annotations

import numpy as np


def xcorr_lag(reference: np.ndarray, y: np.ndarray, max_lag: int) -> int:
    """Lag (samples, positive = y late) maximising the cross-correlation within +-max_lag."""
    from scipy.signal import correlate

    c = correlate(y.astype(np.float64), reference.astype(np.float64), mode="full", method="fft")
    zero = len(reference) - 1
    window = c[zero - max_lag : zero + max_lag + 1]
    return int(np.argmax(window)) - max_lag


def energy_above_db(y: np.ndarray, sr: int, cutoff_hz: float) -> float:
    """Energy above ``cutoff_hz`` relative to the total, in dB."""
    spec = np.abs(np.fft.rfft(y.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(len(y), 1.0 / sr)
    total = spec.sum()
    return float(10 * np.log10(max(spec[f > cutoff_hz].sum(), 1e-300) / total))
