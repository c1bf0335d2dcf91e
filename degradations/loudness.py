"""Loudness normalisation of the clean signal to a target integrated loudness (ITU-R BS.1770).

Applied first in the chain, to target and degraded alike (they are equal at that point), so the restoration
model sees clean references at one loudness. Silent input (every block below the -70 LUFS gate) is left as is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from datasets.config import StrictModel
from degradations.base import Applied, Degradation, register
from degradations.levels import db_to_gain, integrated_loudness


class LoudnessConfig(StrictModel):
    enabled: bool = True
    target_lufs: float = -20.0


@register
class Loudness(Degradation):
    """Scale to ``target_lufs`` integrated loudness; the gain in dB is reported as ``loudness_gain_db``."""

    name = "loudness"
    Config = LoudnessConfig
    report_keys = ("loudness_lufs", "loudness_gain_db")

    def sample(self, rng: np.random.Generator, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"target_lufs": float(self.config.target_lufs)}

    def gain_db(self, x: np.ndarray, sr: int, params: Mapping[str, Any]) -> tuple[float | None, float]:
        lufs = integrated_loudness(x, sr)
        if not math.isfinite(lufs):
            return None, 0.0
        return lufs, float(params["target_lufs"]) - lufs

    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Any) -> Applied:
        lufs, gain = self.gain_db(x, sr, params)
        y = (x * np.float32(db_to_gain(gain))).astype(np.float32, copy=False) if gain else x.copy()
        return Applied(y, {"loudness_lufs": lufs, "loudness_gain_db": gain if lufs is not None else None})

    def step(self, target, degraded, sr, params, banks):
        # one gain, measured on the degraded input, for both signals: they stay level-matched
        lufs, gain = self.gain_db(degraded, sr, params)
        g = np.float32(db_to_gain(gain))
        report = {"loudness_lufs": lufs, "loudness_gain_db": gain if lufs is not None else None}
        return _scaled(target, g), _scaled(degraded, g), report


def _scaled(x: np.ndarray, g: np.float32) -> np.ndarray:
    y = x * g  # float32 already for float32 input: no second copy
    return y if y.dtype == np.float32 else y.astype(np.float32)
