"""Bandwidth limitation: down to a lower sample rate and back, with a random anti-aliasing filter family.

``family`` picks how the band edge looks:

* ``poly``: polyphase resampling (scipy.signal.resample_poly, Kaiser-windowed sinc) down to ``rate_hz`` and back;
* ``butter`` / ``cheby1`` / ``ellip`` / ``bessel``: an IIR anti-aliasing low-pass of ``order`` 2-10 at the new
  Nyquist frequency, run forward and backward (zero phase, so the output stays aligned; the magnitude is
  squared), then sampling at ``rate_hz``, computed in the frequency domain: whatever the filter leaves above the
  new Nyquist frequency folds back into the band (``X(f + m*rate)`` and ``conj X(m*rate - f)`` add onto
  ``X(f)``), so gentle families (low-order Bessel) alias audibly and steep ones (elliptic) hardly at all.

In both cases the return to the original rate is modelled by an ideal reconstruction filter (an FFT mask that
removes everything above the new Nyquist frequency, with a short raised-cosine edge against ringing): what the
lower rate cannot carry is gone, as after a real round trip. Fold positions are rounded to whole FFT bins,
exact when ``len(x) * rate_hz / sr`` is an integer (any multiple of 10 ms at the default rates).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from math import gcd
from typing import Any, Literal

import numpy as np
import scipy.fft
from pydantic import Field, field_validator
from scipy.signal import bessel, butter, cheby1, ellip, resample_poly

from datasets.config import StrictModel
from degradations.base import Applied, Degradation, fit_length, register
from degradations.iir import sosfiltfilt_settled

Family = Literal["poly", "butter", "cheby1", "ellip", "bessel"]
FAMILIES: tuple[str, ...] = ("poly", "butter", "cheby1", "ellip", "bessel")
EDGE_FRACTION = 0.03  # raised-cosine edge of the reconstruction mask, as a fraction of the cutoff


class BandwidthConfig(StrictModel):
    rates_hz: list[int] = Field(
        default_factory=lambda: [8000, 16000, 22050, 24000, 32000, 44100], min_length=1
    )
    families: list[Family] = Field(default_factory=lambda: list(FAMILIES), min_length=1)
    order: tuple[int, int] = (2, 10)
    ripple_db: tuple[float, float] = (0.1, 3.0)
    stopband_db: tuple[float, float] = (40.0, 80.0)

    @field_validator("order")
    @classmethod
    def _order(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1] <= 20:
            raise ValueError(f"need 1 <= low <= high <= 20, got {list(v)}")
        return v

    @field_validator("rates_hz")
    @classmethod
    def _rates(cls, v: list[int]) -> list[int]:
        if any(r <= 0 for r in v):
            raise ValueError(f"rates must be positive, got {v}")
        return v

    @field_validator("ripple_db", "stopband_db")
    @classmethod
    def _positive_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"need 0 < low <= high, got {list(v)}")
        return v


@lru_cache(maxsize=256)
def lowpass_sos(family: str, order: int, cutoff_hz: float, sr: int, ripple_db: float, stopband_db: float):
    """Second-order sections of the family's digital low-pass at ``cutoff_hz``."""
    if family == "butter":
        return butter(order, cutoff_hz, btype="lowpass", fs=sr, output="sos")
    if family == "cheby1":
        return cheby1(order, ripple_db, cutoff_hz, btype="lowpass", fs=sr, output="sos")
    if family == "ellip":
        return ellip(order, ripple_db, stopband_db, cutoff_hz, btype="lowpass", fs=sr, output="sos")
    if family == "bessel":
        # -3 dB at the cutoff like the others, not the delay-normalised default
        return bessel(order, cutoff_hz, btype="lowpass", norm="mag", fs=sr, output="sos")
    raise ValueError(f"bandwidth: no IIR design for family {family!r}")


@lru_cache(maxsize=64)
def reconstruction_mask(n: int, sr: int, cutoff_hz: float) -> np.ndarray:
    """rfft-domain gain: 1 below ``(1-EDGE)*cutoff``, raised-cosine edge, 0 from ``cutoff`` up (read-only)."""
    f = np.arange(n // 2 + 1) * (sr / n)
    lo = cutoff_hz * (1.0 - EDGE_FRACTION)
    mask = np.ones_like(f)
    edge = (f > lo) & (f < cutoff_hz)
    mask[edge] = 0.5 * (1.0 + np.cos(np.pi * (f[edge] - lo) / (cutoff_hz - lo)))
    mask[f >= cutoff_hz] = 0.0
    mask = mask.astype(np.float32)
    mask.setflags(write=False)
    return mask


def band_limit(x: np.ndarray, sr: int, cutoff_hz: float, alias_rate_hz: int | None = None) -> np.ndarray:
    """Remove everything above ``cutoff_hz`` (ideal reconstruction at the lower rate).

    With ``alias_rate_hz``, first fold the spectrum as sampling at that rate would (see the module docstring).
    """
    n = len(x)
    # single precision: twice as fast, and the result is stored as float32 anyway
    spec = scipy.fft.rfft(np.asarray(x, dtype=np.float32))
    if alias_rate_hz is not None:
        spec = _fold(spec, n, sr, alias_rate_hz)
    spec *= reconstruction_mask(n, sr, float(cutoff_hz))
    return np.asarray(scipy.fft.irfft(spec, n=n), dtype=np.float32)


def _fold(spec: np.ndarray, n: int, sr: int, rate: int) -> np.ndarray:
    """Baseband spectrum after sampling at ``rate``: images above ``rate / 2`` added onto ``[0, rate / 2]``."""
    top = len(spec) - 1  # highest rfft bin
    period = rate * n / sr  # the new sampling rate in bins
    band = int(np.floor(period / 2)) + 1  # bins 0 .. rate/2
    out = spec.copy()
    k = np.arange(band)
    m = 1
    while round(m * period) - band < top:
        shift = int(round(m * period))
        up = k + shift  # X(f + m*rate)
        ok = up <= top
        out[k[ok]] += spec[up[ok]]
        down = shift - k  # conj X(m*rate - f), above rate/2 only (the band itself is not folded twice)
        # for even n the top bin is the single Nyquist component, already reached through an `up` term
        ok = (down < top if n % 2 == 0 else down <= top) & (down >= band)
        out[k[ok]] += np.conj(spec[down[ok]])
        m += 1
    return out


@register
class Bandwidth(Degradation):
    """Limit the band to ``rate_hz / 2`` with filter ``family`` (see the module docstring)."""

    name = "bandwidth"
    Config = BandwidthConfig
    report_keys = ("bandwidth_rate_hz", "bandwidth_family")

    def sample(self, rng: np.random.Generator, ctx: Mapping[str, Any]) -> dict[str, Any]:
        c = self.config
        family = str(c.families[int(rng.integers(len(c.families)))])
        params: dict[str, Any] = {
            "rate_hz": int(c.rates_hz[int(rng.integers(len(c.rates_hz)))]),
            "family": family,
        }
        if family != "poly":
            params["order"] = int(rng.integers(c.order[0], c.order[1] + 1))
        if family in ("cheby1", "ellip"):
            params["ripple_db"] = float(rng.uniform(*c.ripple_db))
        if family == "ellip":
            params["stopband_db"] = float(rng.uniform(*c.stopband_db))
        return params

    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Any) -> Applied:
        rate = int(params["rate_hz"])
        family = str(params["family"])
        if family not in FAMILIES:
            raise ValueError(f"bandwidth: unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
        report = {"bandwidth_rate_hz": rate, "bandwidth_family": family}
        cutoff = rate / 2.0
        if rate >= sr or len(x) < 2:
            return Applied(x.copy(), report)
        if family == "poly":
            g = gcd(rate, sr)
            up, down = rate // g, sr // g
            y = resample_poly(resample_poly(x, up, down), down, up)
            y = fit_length(y, len(x))
        else:
            sos = lowpass_sos(
                family,
                int(params["order"]),
                cutoff,
                sr,
                float(params.get("ripple_db", 1.0)),
                float(params.get("stopband_db", 60.0)),
            )
            padlen = min(3 * (2 * len(sos) + 1), len(x) - 1)
            y = sosfiltfilt_settled(sos, x, padlen=padlen)  # sosfiltfilt, at noise cost on silence
            return Applied(
                band_limit(np.asarray(y, dtype=np.float32), sr, cutoff, alias_rate_hz=rate), report
            )
        return Applied(band_limit(np.asarray(y, dtype=np.float32), sr, cutoff), report)
