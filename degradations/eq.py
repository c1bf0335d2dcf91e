"""Equalisation: low/high shelves, peaking bands and a high-pass, as a microphone or a channel would colour speech.

The filter kernels are audiomentations' (RBJ-cookbook biquads for shelves and peaks, a zero-phase Butterworth
high-pass), driven with our explicit parameters instead of its global-RNG draws. Shelves and peaks are minimum
phase biquads whose group delay is a few samples away from their centre frequency, so the output stays aligned;
the high-pass (50-500 Hz, where group delay is large) runs forward-backward, zero phase.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from audiomentations import HighShelfFilter, LowShelfFilter, PeakingFilter
from pydantic import Field, field_validator
from scipy.signal import butter, sosfilt_zi

from datasets.config import StrictModel
from degradations.base import Applied, Degradation, register
from degradations.iir import sosfilt_settled, sosfiltfilt_settled


class EqConfig(StrictModel):
    low_shelf_probability: float = Field(0.5, ge=0.0, le=1.0)
    low_shelf_hz: tuple[float, float] = (80.0, 400.0)
    high_shelf_probability: float = Field(0.5, ge=0.0, le=1.0)
    high_shelf_hz: tuple[float, float] = (2000.0, 8000.0)
    shelf_gain_db: tuple[float, float] = (-12.0, 12.0)
    shelf_q: tuple[float, float] = (0.5, 0.9)
    peaks: tuple[int, int] = (0, 3)
    peak_hz: tuple[float, float] = (100.0, 10000.0)
    peak_gain_db: tuple[float, float] = (-12.0, 12.0)
    peak_q: tuple[float, float] = (0.5, 4.0)
    highpass_probability: float = Field(0.5, ge=0.0, le=1.0)
    highpass_hz: tuple[float, float] = (50.0, 500.0)
    highpass_rolloff_db: list[int] = Field(default_factory=lambda: [12, 24], min_length=1)

    @field_validator(
        "low_shelf_hz", "high_shelf_hz", "shelf_gain_db", "peak_hz", "peak_gain_db", "peak_q", "highpass_hz"
    )
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"lower bound {v[0]} is above upper bound {v[1]}")
        return v

    @field_validator("shelf_q")
    @classmethod
    def _shelf_q(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1.0:
            raise ValueError(f"the shelf filters need 0 < low <= high <= 1, got {list(v)}")
        return v

    @field_validator("peaks")
    @classmethod
    def _peaks(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= v[0] <= v[1]:
            raise ValueError(f"need 0 <= low <= high, got {list(v)}")
        return v

    @field_validator("highpass_rolloff_db")
    @classmethod
    def _rolloff(cls, v: list[int]) -> list[int]:
        if any(r <= 0 or r % 12 for r in v):
            raise ValueError(f"zero-phase roll-offs are positive multiples of 12 dB/octave, got {v}")
        return v


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _biquad_sos(kind: type, freq: float, gain_db: float, q: float, sr: int) -> np.ndarray:
    # audiomentations' RBJ-cookbook coefficients for its shelf / peaking filter class ``kind``
    return kind()._get_biquad_coefficients_from_input_parameters(float(freq), float(gain_db), float(q), sr)


@register
class Eq(Degradation):
    """Low/high shelf, 0-3 peaking bands and a zero-phase high-pass, each present at random."""

    name = "eq"
    Config = EqConfig
    report_keys = ("eq_bands",)

    def sample(self, rng: np.random.Generator, ctx: Mapping[str, Any]) -> dict[str, Any]:
        c = self.config
        params: dict[str, Any] = {"low_shelf": None, "high_shelf": None, "peaks": [], "highpass": None}
        # fixed draw order (every draw always made) keeps each band's values independent of the others' presence
        for band, prob, hz in (
            ("low_shelf", c.low_shelf_probability, c.low_shelf_hz),
            ("high_shelf", c.high_shelf_probability, c.high_shelf_hz),
        ):
            present = rng.random() < prob
            values = {
                "freq_hz": _log_uniform(rng, *hz),
                "gain_db": float(rng.uniform(*c.shelf_gain_db)),
                "q": float(rng.uniform(*c.shelf_q)),
            }
            if present:
                params[band] = values
        n_peaks = int(rng.integers(c.peaks[0], c.peaks[1] + 1))
        for _ in range(n_peaks):
            params["peaks"].append(
                {
                    "freq_hz": _log_uniform(rng, *c.peak_hz),
                    "gain_db": float(rng.uniform(*c.peak_gain_db)),
                    "q": float(rng.uniform(*c.peak_q)),
                }
            )
        present = rng.random() < c.highpass_probability
        hp = {
            "freq_hz": _log_uniform(rng, *c.highpass_hz),
            "rolloff_db": int(c.highpass_rolloff_db[int(rng.integers(len(c.highpass_rolloff_db)))]),
        }
        if present:
            params["highpass"] = hp
        if not any((params["low_shelf"], params["high_shelf"], params["peaks"], params["highpass"])):
            params["highpass"] = hp  # an EQ step that does nothing would waste a draw of the chain
        return params

    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Any) -> Applied:
        # audiomentations' kernels (HighPassFilter with zero_phase, LowShelf/HighShelf/PeakingFilter .apply),
        # run through the settled filters so that a zero-padded tail costs what noise costs: the same float32
        # values as audiomentations' apply (tests/degradations/test_iir.py)
        nyquist = sr / 2.0
        y = x
        if len(x) >= 2:
            hp = params.get("highpass")
            if hp:
                order = int(hp["rolloff_db"]) // 12
                cutoff = float(hp["freq_hz"])
                # too short for forward-backward filtering (or nothing left to pass): skipped
                if len(y) > 3 * (2 * order + 1) and cutoff < nyquist:
                    sos = butter(order, cutoff, btype="highpass", analog=False, fs=sr, output="sos")
                    y = sosfiltfilt_settled(sos, y).astype(np.float32)
            biquads = [
                (kind, params.get(band))
                for band, kind in (("low_shelf", LowShelfFilter), ("high_shelf", HighShelfFilter))
            ]
            biquads += [(PeakingFilter, b) for b in params.get("peaks") or []]
            for kind, b in biquads:
                if not b:
                    continue
                sos = _biquad_sos(kind, min(b["freq_hz"], 0.45 * sr), b["gain_db"], b["q"], sr)
                y = sosfilt_settled(sos, y, zi=sosfilt_zi(sos) * y[0]).astype(np.float32)
        y = np.asarray(y, dtype=np.float32)
        return Applied(y.copy() if y is x else y, {"eq_bands": _describe(params)})


def _describe(params: Mapping[str, Any]) -> int:
    return sum(1 for k in ("low_shelf", "high_shelf", "highpass") if params.get(k)) + len(
        params.get("peaks") or []
    )
