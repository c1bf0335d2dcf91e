"""Input gain: the recording level a device or a speaker's distance sets, applied to target and degraded alike.

Why a joint gain, and where it matters: synthesis normalises the clean signal to -20 LUFS (``loudness``), and the
model's input is normalised again where it is consumed: the training loader with ``train.input_loudness_lufs``
(-20 LUFS by default) and the restorer with the recovery model's same setting, both by the bounded gain of
:mod:`degradations.input_loudness` (at most +-30 dB, so the +-10 dB here is always undone). A gain on the degraded
signal alone would there be undone as a level and would only move the target's level against the input's. What normalisation cannot undo is the level at which the
level-dependent operators act: bit-depth reduction (a fixed quantisation step), saturation and the dynamics
processors (fixed dBFS thresholds), codecs (integer PCM input). So the gain runs right after ``loudness`` and scales
target and degraded by one factor: where the input is normalised the pair keeps its relation and only those
operators see another level; where it is not (``input_loudness_lufs: null``), the model also meets inputs at many
levels with targets at the same level, as the ICASSP 2024 SSI synthesizer's speaker gain change does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from datasets.config import StrictModel
from degradations.base import Applied, Degradation, register
from degradations.levels import db_to_gain


class GainConfig(StrictModel):
    # ICASSP 2024 SSI demo synthesizer (synthesizer_config.yaml): speaker_gain_delta_db range [-10, 10], likelihood 0.2
    probability: float = Field(0.2, ge=0.0, le=1.0)
    gain_db: tuple[float, float] = (-10.0, 10.0)

    @field_validator("gain_db")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"lower bound {v[0]} is above upper bound {v[1]}")
        return v


@register
class Gain(Degradation):
    """Scale by ``gain_db``; in the chain target and degraded jointly (see the module docstring)."""

    name = "gain"
    Config = GainConfig
    report_keys = ("input_gain_db",)

    def sample(self, rng: np.random.Generator, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"gain_db": float(rng.uniform(*self.config.gain_db))}

    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Any) -> Applied:
        g = np.float32(db_to_gain(float(params["gain_db"])))
        return Applied((x * g).astype(np.float32, copy=False), {"input_gain_db": float(params["gain_db"])})

    def step(self, target, degraded, sr, params, banks):
        g = np.float32(db_to_gain(float(params["gain_db"])))
        report = {"input_gain_db": float(params["gain_db"])}
        return (
            (target * g).astype(np.float32, copy=False),
            (degraded * g).astype(np.float32, copy=False),
            report,
        )
