"""Reverberation: convolution with a room impulse response from the RIR bank.

The RIR is truncated, normalised to unit energy (so reverberant speech keeps roughly the dry level whatever the
room, and the final joint peak scaling does not have to crush the target) and the convolution output is shifted
by the direct-path delay (the RIR's largest sample), so the degraded signal stays sample-aligned with the target. With ``early_target`` the target becomes the speech convolved with the
first ``early_ms`` after the direct path (a common "early reverberation is speech" target). RIRs are truncated
to ``max_rir_s`` after the direct path: beyond a second a speech RIR is ~60 dB down and only costs FFT size.
Convolution is FFT-based (scipy.signal.oaconvolve, float32), deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field
from scipy.signal import oaconvolve

from datasets.config import StrictModel
from degradations.base import Applied, Degradation, register


class ReverbConfig(StrictModel):
    probability: float = Field(0.5, ge=0.0, le=1.0)
    early_target: bool = False
    early_ms: float = Field(50.0, gt=0.0)
    max_rir_s: float = Field(1.0, gt=0.0)


def direct_path_index(h: np.ndarray) -> int:
    """Index of the direct path: the largest absolute sample of the RIR."""
    return int(np.argmax(np.abs(h)))


def direct_to_reverberant_db(h: np.ndarray, sr: int, window_ms: float = 2.5) -> float | None:
    """DRR: energy within +-``window_ms`` of the direct path over the energy after it, in dB."""
    d = direct_path_index(h)
    w = int(round(window_ms * 1e-3 * sr))
    e = np.square(h.astype(np.float64))
    direct = float(e[max(0, d - w) : d + w + 1].sum())
    late = float(e[d + w + 1 :].sum())
    if direct <= 0.0 or late <= 0.0:
        return None
    return 10.0 * np.log10(direct / late)


def estimate_rt60(h: np.ndarray, sr: int) -> float | None:
    """RT60 from the Schroeder energy decay curve: T20 (line through -5 .. -25 dB) extrapolated to 60 dB.

    None when the RIR does not decay by 25 dB after its direct path (too short or too noisy to tell).
    """
    e = np.square(np.asarray(h, dtype=np.float64)[direct_path_index(h) :])
    edc = np.cumsum(e[::-1])[::-1]
    if edc[0] <= 0.0:
        return None
    with np.errstate(divide="ignore"):
        edc_db = 10.0 * np.log10(edc / edc[0])
    fit = np.nonzero((edc_db <= -5.0) & (edc_db >= -25.0))[0]
    if fit.size < 2 or edc_db[-1] > -25.0:
        return None
    t = fit / sr
    y = edc_db[fit]
    # closed-form least squares (numpy sums, not LAPACK: the result must not depend on BLAS threading)
    tm, ym = t.mean(), y.mean()
    slope = float(np.sum((t - tm) * (y - ym)) / np.sum((t - tm) ** 2))
    return -60.0 / slope if slope < 0 else None


def prepare_rir(h: np.ndarray, sr: int, max_rir_s: float) -> tuple[np.ndarray, int]:
    """Truncate ``max_rir_s`` after the direct path and normalise to unit energy; returns (rir, direct index)."""
    h = np.asarray(h, dtype=np.float32)
    d = direct_path_index(h)
    end = d + max(1, int(round(max_rir_s * sr)))
    h = h[:end]
    norm = float(np.sqrt(np.sum(np.square(h, dtype=np.float64))))
    if norm == 0.0:
        raise ValueError("reverb: the RIR is all zeros")
    return (h / np.float32(norm)).astype(np.float32), d


def convolve_aligned(x: np.ndarray, h: np.ndarray, delay: int) -> np.ndarray:
    """``x * h`` cut to ``len(x)`` samples starting at ``delay`` (the direct path), float32."""
    n = len(x)
    if n == 0:
        return x.copy()
    if len(h) == 1:
        return (x * h[0]).astype(np.float32)
    y = oaconvolve(x, h, mode="full")
    return np.ascontiguousarray(y[delay : delay + n], dtype=np.float32)


@register
class Reverb(Degradation):
    """Convolve with bank RIR ``rir_id`` (direct path aligned); optionally make the target early reverb."""

    name = "reverb"
    Config = ReverbConfig
    # rt60 / drr / c50 come from the RIR manifest; rt60 and drr are measured on the RIR where it has none
    report_keys = ("rir_id", "rt60", "drr", "c50", "early_target")

    def available(self, ctx: Mapping[str, Any]) -> bool:
        return bool(ctx.get("rir"))

    def sample(self, rng: np.random.Generator, ctx: Mapping[str, Any]) -> dict[str, Any]:
        rirs = ctx.get("rir") or []
        if not rirs:
            raise ValueError("reverb: the bank catalogue has no RIRs")
        entry = rirs[int(rng.integers(len(rirs)))]
        return {
            "rir_id": str(entry["id"]),
            "early_target": bool(self.config.early_target),
            "early_ms": float(self.config.early_ms),
            "max_rir_s": float(self.config.max_rir_s),
        }

    def _rir(self, sr: int, params: Mapping[str, Any], banks: Any) -> tuple[np.ndarray, int, dict[str, Any]]:
        if banks is None:
            raise ValueError("reverb: needs banks with an RIR bank")
        if banks.sr != sr:
            raise ValueError(f"reverb: banks are at {banks.sr} Hz but the signal is at {sr} Hz")
        rid = params["rir_id"]
        raw = banks.rir(rid)
        h, d = prepare_rir(raw, sr, float(params["max_rir_s"]))
        meta = banks.entry("rir", rid).meta
        drr = meta.get("drr")
        rt60 = meta.get("rt60")
        report = {
            "rir_id": rid,
            "rt60": rt60 if rt60 is not None else estimate_rt60(raw, sr),
            "drr": drr if drr is not None else direct_to_reverberant_db(raw, sr),
            "c50": meta.get("c50"),
            "early_target": bool(params.get("early_target", False)),
        }
        return h, d, report

    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Any) -> Applied:
        h, d, report = self._rir(sr, params, banks)
        return Applied(convolve_aligned(x, h, d), report)

    def step(self, target, degraded, sr, params, banks):
        h, d, report = self._rir(sr, params, banks)
        degraded = convolve_aligned(degraded, h, d)
        if params.get("early_target"):
            early = d + int(round(float(params["early_ms"]) * 1e-3 * sr)) + 1
            target = convolve_aligned(target, h[:early], d)
        return target, degraded, report
