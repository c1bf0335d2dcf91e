"""Additive noise from the noise bank at an SNR measured on active speech.

The speech level is the P.56-like active level of the signal entering the operator (reverberant speech when
reverb ran before), and the noise power is measured over the same active samples, so the SNR describes what a
listener hears while someone talks rather than being diluted by pauses. The noise excerpt starts at a random
offset (``offset_fraction`` of the room the file leaves); a noise shorter than the signal is looped. For a silent
input the noise is set relative to ``reference_level_db`` instead (and the achieved SNR is None).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from datasets.config import StrictModel
from degradations.base import Applied, Degradation, register
from degradations.levels import active_speech_level


class NoiseConfig(StrictModel):
    probability: float = Field(1.0, ge=0.0, le=1.0)
    snr_db: tuple[float, float] = (-5.0, 20.0)
    reference_level_db: float = -26.0

    @field_validator("snr_db")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"lower bound {v[0]} is above upper bound {v[1]}")
        return v


LOOP_CROSSFADE = 480  # samples (10 ms at 48 kHz) blended at the seam of a looped noise


def seamless_loop(noise: np.ndarray, crossfade: int = LOOP_CROSSFADE) -> np.ndarray:
    """One period of ``noise`` whose end runs into its start without a click (linear cross-fade of the seam)."""
    c = min(crossfade, len(noise) // 4)
    if c < 2:
        return noise
    period = np.array(noise[: len(noise) - c], dtype=np.float32)
    fade = np.linspace(0.0, 1.0, c, endpoint=False, dtype=np.float32)
    period[:c] = noise[:c] * fade + noise[len(noise) - c :] * (1.0 - fade)
    return period


def noise_excerpt(noise: np.ndarray, n: int, offset_fraction: float) -> tuple[np.ndarray, int]:
    """``n`` samples of ``noise`` from an offset chosen by ``offset_fraction`` in [0, 1).

    A noise at least ``n`` long is cut at ``offset_fraction`` of the room it leaves; a shorter one is looped
    seamlessly (:func:`seamless_loop`) from ``offset_fraction`` of its period.
    """
    m = len(noise)
    if m == 0:
        raise ValueError("noise: the noise file has no samples")
    if m >= n:
        offset = min(int(offset_fraction * (m - n + 1)), m - n)
        return noise[offset : offset + n], offset
    period = seamless_loop(noise)
    p = len(period)
    offset = min(int(offset_fraction * p), p - 1)
    return np.take(period, (offset + np.arange(n)) % p), offset


@register
class Noise(Degradation):
    """Add bank noise ``noise_id`` at ``snr_db`` (active-speech SNR) from ``offset_fraction``."""

    name = "noise"
    Config = NoiseConfig
    report_keys = ("noise_id", "noise_type", "noise_offset", "snr_db", "achieved_snr_db", "speech_activity")

    def available(self, ctx: Mapping[str, Any]) -> bool:
        return bool(ctx.get("noise"))

    def sample(self, rng: np.random.Generator, ctx: Mapping[str, Any]) -> dict[str, Any]:
        noises = ctx.get("noise") or []
        if not noises:
            raise ValueError("noise: the bank catalogue has no noise files")
        entry = noises[int(rng.integers(len(noises)))]
        lo, hi = self.config.snr_db
        return {
            "noise_id": str(entry["id"]),
            "snr_db": float(rng.uniform(lo, hi)),
            "offset_fraction": float(rng.random()),
            "reference_level_db": float(self.config.reference_level_db),
        }

    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Any) -> Applied:
        if banks is None:
            raise ValueError("noise: needs banks with a noise bank")
        if banks.sr != sr:
            raise ValueError(f"noise: banks are at {banks.sr} Hz but the signal is at {sr} Hz")
        nid = params["noise_id"]
        report: dict[str, Any] = {
            "noise_id": nid,
            "noise_type": banks.entry("noise", nid).meta.get("noise_type"),
            "snr_db": float(params["snr_db"]),
            "achieved_snr_db": None,
            "noise_offset": None,
            "speech_activity": 0.0,
        }
        if len(x) == 0:
            return Applied(x.copy(), report)
        seg, offset = noise_excerpt(banks.noise(nid), len(x), float(params["offset_fraction"]))
        report["noise_offset"] = offset
        level = active_speech_level(x, sr)
        report["speech_activity"] = level.activity
        mask = None if level.silent else level.mask()
        # powers in float64 of the float32 samples (float32 -> float64 is exact: same sums as a float64 copy)
        if mask is None:
            p_speech = 10.0 ** (float(params["reference_level_db"]) / 10.0)
            p_noise = _mean_square(seg)
        else:
            p_speech = level.power
            p_noise = _mean_square(seg[mask])
            if p_noise <= 0.0:  # the excerpt is silent while speech is active: fall back to its overall power
                p_noise = _mean_square(seg)
        if p_noise <= 0.0:
            return Applied(x.copy(), report)
        gain = math.sqrt(p_speech / (p_noise * 10.0 ** (float(params["snr_db"]) / 10.0)))
        # the float64 product of each sample with the gain, rounded once to float32
        added = np.multiply(
            seg, gain, dtype=np.float64, out=np.empty(len(seg), np.float32), casting="same_kind"
        )
        y = x + added
        if mask is not None:
            # what the output actually carries after float32 rounding, on the same active samples
            report["achieved_snr_db"] = _achieved(level.power, (y - x)[mask])
        return Applied(y, report)


def _mean_square(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def _achieved(p_speech: float, noise_on_active: np.ndarray) -> float | None:
    p = float(np.mean(np.square(noise_on_active, dtype=np.float64)))
    return 10.0 * math.log10(p_speech / p) if p > 0 else None
