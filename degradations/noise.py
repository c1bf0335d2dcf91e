"""Additive noise from the noise bank at an SNR measured on active speech.

The speech level is the P.56-like active level of the signal entering the operator (reverberant speech when
reverb ran before), and the noise power is measured over the same active samples, so the SNR describes what a
listener hears while someone talks rather than being diluted by pauses. The noise excerpt starts at a random
offset (``offset_fraction`` of the room the file leaves); a noise shorter than the signal is looped. For a silent
input the noise is set relative to ``reference_level_db`` instead (and the achieved SNR is None).

Intermittent noise (clicks, door slams, a dog barking in a pause) breaks the active-speech measure: the excerpt may
be nearly silent exactly where speech is active, and scaling that near-silence up to the drawn SNR makes the bursts
in the pauses many times louder than the speech (clicks reached 11.7x the speech peak). With ``snr_definition:
auto`` (every new plan), when the excerpt's power over the whole (valid) signal exceeds its power under active
speech by more than :data:`INTERMITTENT_DB`, the SNR falls back to URGENT's whole-signal definition (speech and
noise power over the whole valid signal, as URGENT's ``mix_noise`` measures them); ``snr_definition`` in the
report says which one was used.
Power alone cannot bound a sparse noise's peaks (a click train at 0 dB SNR peaks 13x above the speech wherever it
is measured), so ``auto`` also caps the noise peak at :data:`MAX_NOISE_PEAK_DB` above the speech peak, lowering
the gain where needed (``noise_peak_limited`` in the report; the achieved SNR then exceeds the drawn one).
Stationary noise does not reach the cap at the configured SNRs (white noise at -5 dB SNR peaks about 4 dB above
speech). Plans without the key keep the active-speech measure and no cap.

``after_extras`` is recorded from the plan: True when the chain adds the noise after the extra operators, so it
stays full-band over band-limited or coded speech (see :mod:`degradations.chain`).

The step draws among the catalogue's noise files whose ``noise_type`` is not in ``exclude_types`` (files without a
type are always drawn); wind, by default, comes only from its own step (:mod:`degradations.wind`, the same operator
restricted to wind files).
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
    # ICASSP 2024 SSI synthesizer: onlinesynth_nearend_prop_noisy 0.5 (URGENT 2025 adds noise to every sample)
    probability: float = Field(0.5, ge=0.0, le=1.0)
    # DNS challenge synthesizer: snr_lower -5, snr_upper 25 in the ICASSP config (0-40 by default); VoiceFixer:
    # snr_range [-5, 40]. Up to 40 dB a model also meets recordings whose noise it should leave alone
    snr_db: tuple[float, float] = (-5.0, 40.0)
    reference_level_db: float = -26.0
    # VoiceFixer leaves the noise full band about half the time (dm_sr_rand_sr_order.py: chance % 2 == 0)
    after_extras_probability: float = Field(0.5, ge=0.0, le=1.0)
    # noise types left to their own step: URGENT 2025 draws wind apart (p .05 at -10..15 dB, chain.wind)
    exclude_types: list[str] = Field(default_factory=lambda: ["wind"])

    @field_validator("snr_db")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"lower bound {v[0]} is above upper bound {v[1]}")
        return v


LOOP_CROSSFADE = 480  # samples (10 ms at 48 kHz) blended at the seam of a looped noise
INTERMITTENT_DB = 3.0  # whole-signal noise power this far above the active-speech one: intermittent noise
MAX_NOISE_PEAK_DB = 10.0  # auto: the noise peak stays within this many dB above the speech peak


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
    report_keys = (
        "noise_id",
        "noise_type",
        "noise_offset",
        "snr_db",
        "achieved_snr_db",
        "speech_activity",
        "snr_definition",
        "noise_after_extras",
        "noise_peak_limited",
    )
    uses_valid = True

    def candidates(self, ctx: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """The catalogue noise entries this step draws from (in catalogue order): every type but ``exclude_types``."""
        excluded = set(self.config.exclude_types)
        return [e for e in ctx.get("noise") or [] if e.get("noise_type") not in excluded]

    def available(self, ctx: Mapping[str, Any]) -> bool:
        return bool(self.candidates(ctx))

    def sample(self, rng: np.random.Generator, ctx: Mapping[str, Any]) -> dict[str, Any]:
        noises = self.candidates(ctx)
        if not noises:
            raise ValueError(f"{self.name}: the bank catalogue has no noise files it may draw")
        entry = noises[int(rng.integers(len(noises)))]
        lo, hi = self.config.snr_db
        return {
            "noise_id": str(entry["id"]),
            "snr_db": float(rng.uniform(lo, hi)),
            "offset_fraction": float(rng.random()),
            "reference_level_db": float(self.config.reference_level_db),
            "snr_definition": "auto",
        }

    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Any) -> Applied:
        if banks is None:
            raise ValueError(f"{self.name}: needs banks with a noise bank")
        if banks.sr != sr:
            raise ValueError(f"{self.name}: banks are at {banks.sr} Hz but the signal is at {sr} Hz")
        nid = params["noise_id"]
        report: dict[str, Any] = {
            "noise_id": nid,
            "noise_type": banks.entry("noise", nid).meta.get("noise_type"),
            "snr_db": float(params["snr_db"]),
            "achieved_snr_db": None,
            "noise_offset": None,
            "speech_activity": 0.0,
            "snr_definition": None,
            "noise_after_extras": bool(params.get("after_extras", False)),
            "noise_peak_limited": False,
        }
        definition = params.get("snr_definition", "active")
        if definition not in ("active", "auto"):
            raise ValueError(
                f"{self.name}: unknown snr_definition {definition!r}; expected 'active' or 'auto'"
            )
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
            report["snr_definition"] = "active"
            if definition == "auto":
                valid = params.get("valid_samples")
                n = min(max(int(valid), 1), len(x)) if valid is not None else len(x)
                p_whole = _mean_square(seg[:n])
                if p_whole > p_noise * 10.0 ** (INTERMITTENT_DB / 10.0):
                    p_speech, p_noise = _mean_square(x[:n]), p_whole
                    mask = np.zeros(len(x), dtype=bool)
                    mask[:n] = True
                    report["snr_definition"] = "whole"
        if p_noise <= 0.0:
            return Applied(x.copy(), report)
        gain = math.sqrt(p_speech / (p_noise * 10.0 ** (float(params["snr_db"]) / 10.0)))
        if definition == "auto" and mask is not None:
            speech_peak, noise_peak = float(np.max(np.abs(x))), float(np.max(np.abs(seg)))
            cap = speech_peak * 10.0 ** (MAX_NOISE_PEAK_DB / 20.0)
            if noise_peak * gain > cap > 0.0:
                gain = cap / noise_peak
                report["noise_peak_limited"] = True
        # the float64 product of each sample with the gain, rounded once to float32
        added = np.multiply(
            seg, gain, dtype=np.float64, out=np.empty(len(seg), np.float32), casting="same_kind"
        )
        y = x + added
        if mask is not None:
            # what the output actually carries after float32 rounding, on the same samples the SNR was set on
            report["achieved_snr_db"] = _achieved(p_speech, (y - x)[mask])
        return Applied(y, report)


def _mean_square(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def _achieved(p_speech: float, noise_on_active: np.ndarray) -> float | None:
    p = float(np.mean(np.square(noise_on_active, dtype=np.float64)))
    return 10.0 * math.log10(p_speech / p) if p > 0 else None
