"""Bandwidth limitation: a device's band edge, from three mechanisms (``mode``; plans without one: ``resample``).

``resample``: down to ``rate_hz`` (one of a few standard rates) and back, ``family`` picking the band edge:

* ``poly``: polyphase resampling (scipy.signal.resample_poly, Kaiser-windowed sinc) down to ``rate_hz`` and back;
* ``butter`` / ``cheby1`` / ``ellip`` / ``bessel``: an IIR anti-aliasing low-pass of ``order`` 2-10 at the new
  Nyquist frequency, run forward and backward (zero phase, so the output stays aligned; the magnitude is
  squared), then sampling at ``rate_hz``, computed in the frequency domain: whatever the filter leaves above the
  new Nyquist frequency folds back into the band (``X(f + m*rate)`` and ``conj X(m*rate - f)`` add onto
  ``X(f)``). The aliases stay weak: a full-scale 20 kHz tone taken to 16 kHz comes back 57-69 dB down with the
  gentlest designs (order-2 Bessel, Chebyshev, elliptic, Butterworth) and further down with steep ones, i.e.
  under the noise floor of most recordings rather than audible.

  The return to the original rate is an ideal reconstruction filter (an FFT mask that removes everything above
  the new Nyquist frequency, with a short raised-cosine edge against ringing): what the lower rate cannot carry
  is gone, as after a real round trip. Fold positions are rounded to whole FFT bins, exact when
  ``len(x) * rate_hz / sr`` is an integer: any multiple of 20 ms at the default rates (10 ms is not enough at
  22.05 and 44.1 kHz, whose 10 ms are 220.5 and 441 samples), e.g. the 5.12 s training segment.

``lowpass``: a soft roll-off at a continuous ``cutoff_hz`` (2-20 kHz by default) with no brick wall after it, as
an analog stage or a device's DSP leaves it: the zero-phase magnitude ``|H(f)|**2`` of the IIR ``family`` of
``order`` (the forward-backward filter of ``resample``), applied in the frequency domain.

``imaging``: a poor sample-rate conversion through a continuous ``rate_hz`` (3-32 kHz, the ICASSP 2024 SSI
synthesizer's pre-processing resampler): sampled without an anti-aliasing filter and brought back by
zero-order hold (``zoh``) or linear interpolation (``linear``), so the band aliases on the way down and its images
(attenuated by the hold's or the interpolator's sinc-shaped response) fill the band above ``rate_hz / 2`` on the
way up. The hold is centred (each output sample takes the nearest low-rate sample), so it adds no delay.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from math import gcd
from typing import Any, Literal

import numpy as np
import scipy.fft
from pydantic import Field, field_validator
from scipy.signal import bessel, butter, cheby1, ellip, resample_poly, sosfreqz

from datasets.config import StrictModel
from degradations.base import Applied, Degradation, fit_length, register
from degradations.iir import sosfiltfilt_settled

Family = Literal["poly", "butter", "cheby1", "ellip", "bessel"]
FAMILIES: tuple[str, ...] = ("poly", "butter", "cheby1", "ellip", "bessel")
IIR_FAMILIES: tuple[str, ...] = ("butter", "cheby1", "ellip", "bessel")
Mode = Literal["resample", "lowpass", "imaging"]
MODES: tuple[str, ...] = ("resample", "lowpass", "imaging")
Interpolation = Literal["zoh", "linear"]
INTERPOLATIONS: tuple[str, ...] = ("zoh", "linear")
RESPONSE_POINTS = (
    4097  # |H|**2 is evaluated on this grid and interpolated to the FFT bins (smooth for order <= 20)
)
EDGE_FRACTION = 0.03  # raised-cosine edge of the reconstruction mask, as a fraction of the cutoff


class BandwidthConfig(StrictModel):
    modes: list[Mode] = Field(default_factory=lambda: list(MODES), min_length=1)
    rates_hz: list[int] = Field(
        default_factory=lambda: [8000, 16000, 22050, 24000, 32000, 44100], min_length=1
    )
    # continuous cut-off: VoiceFixer draws U(750, 22050) Hz (dm_sr_rand_sr_order.py); 2-20 kHz keeps the
    # devices a 48 kHz restorer meets (telephone-wideband to near full band)
    cutoff_hz: tuple[float, float] = (2000.0, 20000.0)
    # ICASSP 2024 SSI synthesizer: prepro_sample_rate_hz [3000, 32000], ZeroOrderHold / Linear resampling
    imaging_rate_hz: tuple[float, float] = (3000.0, 32000.0)
    interpolations: list[Interpolation] = Field(default_factory=lambda: list(INTERPOLATIONS), min_length=1)
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

    @field_validator("ripple_db", "stopband_db", "cutoff_hz", "imaging_rate_hz")
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


def lowpass_power_response(n: int, sr: int, sos: np.ndarray) -> np.ndarray:
    """``|H(f)|**2`` of ``sos`` on the rfft bins of an ``n``-sample signal (float32)."""
    grid = np.linspace(0.0, sr / 2.0, RESPONSE_POINTS)
    _, h = sosfreqz(sos, worN=grid, fs=sr)
    power = np.abs(h) ** 2
    return np.interp(np.arange(n // 2 + 1) * (sr / n), grid, power).astype(np.float32)


def soft_lowpass(x: np.ndarray, sr: int, sos: np.ndarray) -> np.ndarray:
    """``x`` through the zero-phase ``|H|**2`` of ``sos`` (frequency domain, float32)."""
    n = len(x)
    spec = scipy.fft.rfft(np.asarray(x, dtype=np.float32))
    spec *= lowpass_power_response(n, sr, sos)
    return np.asarray(scipy.fft.irfft(spec, n=n), dtype=np.float32)


def poor_resample(x: np.ndarray, sr: int, rate_hz: float, interpolation: str) -> np.ndarray:
    """Down to ``rate_hz`` and back without filters, by nearest-sample hold or linear interpolation."""
    n = len(x)
    m = max(1, int(np.floor((n - 1) * rate_hz / sr)) + 1)  # low-rate samples inside the signal
    down_at = np.arange(m, dtype=np.float64) * (sr / rate_hz)  # their positions, in input samples
    up_at = np.arange(n, dtype=np.float64) * (rate_hz / sr)  # output positions, in low-rate samples
    if interpolation == "zoh":
        low = x[np.minimum(np.rint(down_at).astype(np.int64), n - 1)]
        return low[np.minimum(np.rint(up_at).astype(np.int64), m - 1)].astype(np.float32)
    if interpolation == "linear":
        low = np.interp(down_at, np.arange(n, dtype=np.float64), x)
        return np.interp(up_at, np.arange(m, dtype=np.float64), low).astype(np.float32)
    raise ValueError(
        f"bandwidth: unknown interpolation {interpolation!r}; expected one of {', '.join(INTERPOLATIONS)}"
    )


@register
class Bandwidth(Degradation):
    """Limit the band by resampling, a soft low-pass or a poor resampler (``mode``, see the module docstring)."""

    name = "bandwidth"
    Config = BandwidthConfig
    # bandwidth_rate_hz: the rate passed through (resample, imaging); bandwidth_cutoff_hz: the band edge in Hz
    report_keys = ("bandwidth_rate_hz", "bandwidth_family", "bandwidth_mode", "bandwidth_cutoff_hz")

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
        # drawn after the draws of plans made before there were modes, whatever the mode
        mode = str(c.modes[int(rng.integers(len(c.modes)))])
        iir_family = str(IIR_FAMILIES[int(rng.integers(len(IIR_FAMILIES)))])
        order = int(rng.integers(c.order[0], c.order[1] + 1))
        ripple = float(rng.uniform(*c.ripple_db))
        stopband = float(rng.uniform(*c.stopband_db))
        cutoff = float(rng.uniform(*c.cutoff_hz))
        imaging_rate = float(rng.uniform(*c.imaging_rate_hz))
        interpolation = str(c.interpolations[int(rng.integers(len(c.interpolations)))])
        if mode == "lowpass":
            # the family list may hold poly, which has no soft low-pass: an IIR family is drawn for this mode
            family = family if family in IIR_FAMILIES else iir_family
            params = {"mode": mode, "cutoff_hz": cutoff, "family": family, "order": order}
            if family in ("cheby1", "ellip"):
                params["ripple_db"] = ripple
            if family == "ellip":
                params["stopband_db"] = stopband
        elif mode == "imaging":
            params = {"mode": mode, "rate_hz": imaging_rate, "interpolation": interpolation}
        else:
            params["mode"] = mode
        return params

    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Any) -> Applied:
        mode = str(params.get("mode", "resample"))
        if mode == "lowpass":
            return self._lowpass(x, sr, params)
        if mode == "imaging":
            rate = float(params["rate_hz"])
            interpolation = str(params["interpolation"])
            report = {
                "bandwidth_rate_hz": rate,
                "bandwidth_family": interpolation,
                "bandwidth_mode": mode,
                "bandwidth_cutoff_hz": rate / 2.0,
            }
            if rate >= sr or len(x) < 2:
                return Applied(x.copy(), report)
            return Applied(poor_resample(x, sr, rate, interpolation), report)
        if mode != "resample":
            raise ValueError(f"bandwidth: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        rate = int(params["rate_hz"])
        family = str(params["family"])
        if family not in FAMILIES:
            raise ValueError(f"bandwidth: unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
        report = {
            "bandwidth_rate_hz": rate,
            "bandwidth_family": family,
            "bandwidth_mode": mode,
            "bandwidth_cutoff_hz": min(rate, sr) / 2.0,
        }
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

    def _lowpass(self, x: np.ndarray, sr: int, params: Mapping[str, Any]) -> Applied:
        family = str(params["family"])
        if family not in IIR_FAMILIES:
            raise ValueError(
                f"bandwidth: lowpass needs an IIR family ({', '.join(IIR_FAMILIES)}), got {family!r}"
            )
        cutoff = float(params["cutoff_hz"])
        report = {
            "bandwidth_rate_hz": None,
            "bandwidth_family": family,
            "bandwidth_mode": "lowpass",
            "bandwidth_cutoff_hz": cutoff,
        }
        if cutoff >= sr / 2.0 or len(x) < 2:
            return Applied(x.copy(), report)
        sos = lowpass_sos(
            family,
            int(params["order"]),
            cutoff,
            sr,
            float(params.get("ripple_db", 1.0)),
            float(params.get("stopband_db", 60.0)),
        )
        return Applied(soft_lowpass(x, sr, sos), report)
