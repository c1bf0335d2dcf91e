"""Microphone response above 10 kHz: the presence shelf and capsule resonances that colour the air band.

:mod:`degradations.eq` shapes the speech band (shelves to 8 kHz, peaks to 10 kHz); a 48 kHz restorer also meets
microphones whose top octave is tilted or peaked (a small capsule's resonance, a grille, a MEMS port). This
operator draws a high shelf at 10-20 kHz and 0-7 narrow peaks or notches at 10-22 kHz. Gains and the peak Q are the
ICASSP 2024 SSI synthesizer's "bad mic" ranges (shelf +-12 dB, peaks +-6 dB at Q 5), moved to the 10-24 kHz band
the issue of device colour is about. Filters are audiomentations' RBJ biquads (as in :mod:`degradations.eq`), run
as one cascade; minimum-phase with a few samples of group delay at most, so the output stays aligned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from audiomentations import HighShelfFilter, PeakingFilter
from pydantic import field_validator
from scipy.signal import sosfilt_zi

from datasets.config import StrictModel
from degradations.base import Applied, Degradation, register
from degradations.eq import _biquad_sos, _log_uniform
from degradations.iir import sosfilt_settled

TOP_FRACTION = (
    0.46  # centre frequencies are kept below this fraction of the sample rate (22.08 kHz at 48 kHz)
)


class MicConfig(StrictModel):
    high_shelf_hz: tuple[float, float] = (10000.0, 20000.0)
    high_shelf_gain_db: tuple[float, float] = (-12.0, 12.0)  # SSI room_bad_mic_params.high_shelf_db
    high_shelf_q: tuple[float, float] = (0.5, 0.9)  # the eq operator's shelf Q range
    peaks: tuple[int, int] = (0, 7)  # SSI room_bad_mic_params.peak_count
    peak_hz: tuple[float, float] = (10000.0, 22000.0)
    peak_gain_db: tuple[float, float] = (-6.0, 6.0)  # SSI room_bad_mic_params.peak_db
    peak_q: float = 5.0  # SSI: PeakFilter q = 5.0

    @field_validator(
        "high_shelf_hz", "high_shelf_gain_db", "high_shelf_q", "peaks", "peak_hz", "peak_gain_db"
    )
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"lower bound {v[0]} is above upper bound {v[1]}")
        return v


@register
class Mic(Degradation):
    """High shelf at 10-20 kHz plus 0-7 narrow peaks at 10-22 kHz."""

    name = "mic"
    Config = MicConfig
    report_keys = ("mic_shelf_db", "mic_peaks")

    def sample(self, rng: np.random.Generator, ctx: Mapping[str, Any]) -> dict[str, Any]:
        c = self.config
        shelf = {
            "freq_hz": _log_uniform(rng, *c.high_shelf_hz),
            "gain_db": float(rng.uniform(*c.high_shelf_gain_db)),
            "q": float(rng.uniform(*c.high_shelf_q)),
        }
        n_peaks = int(rng.integers(c.peaks[0], c.peaks[1] + 1))
        peaks = [
            {
                "freq_hz": _log_uniform(rng, *c.peak_hz),
                "gain_db": float(rng.uniform(*c.peak_gain_db)),
                "q": float(c.peak_q),
            }
            for _ in range(n_peaks)
        ]
        return {"high_shelf": shelf, "peaks": peaks}

    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Any) -> Applied:
        bands = [(HighShelfFilter, params["high_shelf"])] + [
            (PeakingFilter, p) for p in params.get("peaks") or []
        ]
        sections = [
            _biquad_sos(
                kind, min(float(b["freq_hz"]), TOP_FRACTION * sr), float(b["gain_db"]), float(b["q"]), sr
            )
            for kind, b in bands
            if b
        ]
        report = {
            "mic_shelf_db": float(params["high_shelf"]["gain_db"]) if params.get("high_shelf") else None,
            "mic_peaks": len(params.get("peaks") or []),
        }
        if len(x) < 2 or not sections:
            return Applied(x.copy(), report)
        sos = np.concatenate([np.atleast_2d(s) for s in sections], axis=0)
        y = sosfilt_settled(sos, x, zi=sosfilt_zi(sos) * x[0])
        return Applied(np.asarray(y, dtype=np.float32), report)
