"""Overdrive-style saturation: the signal driven into a smooth memoryless curve, as an overloaded preamp does.

``y = f(g * x)`` with ``g`` the ``drive_db`` gain and ``f`` a curve bounded by 1 with unit slope at zero: ``tanh``
(pedalboard's Distortion, which the ICASSP 2024 SSI synthesizer uses) or ``arctan`` (``2/pi * atan(pi/2 * u)``, a
softer knee and a slower approach to the ceiling). Unlike ``clipping`` (a threshold relative to the signal's own
quantiles) the curve is fixed in full-scale terms, so how hard a sample saturates depends on its level: loud
syllables distort, quiet ones pass nearly clean. Memoryless, so the output is aligned with the input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from datasets.config import StrictModel
from degradations.base import Applied, Degradation, register
from degradations.levels import db_to_gain

Curve = Literal["tanh", "arctan"]
CURVES: tuple[str, ...] = ("tanh", "arctan")


class SaturationConfig(StrictModel):
    curves: list[Curve] = Field(default_factory=lambda: list(CURVES), min_length=1)
    # ICASSP 2024 SSI synthesizer: extra_tanh_distortion_drive_db range [2, 10]
    drive_db: tuple[float, float] = (2.0, 10.0)

    @field_validator("drive_db")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"lower bound {v[0]} is above upper bound {v[1]}")
        return v


@register
class Saturation(Degradation):
    """Drive by ``drive_db`` into the ``curve`` (tanh or arctan)."""

    name = "saturation"
    Config = SaturationConfig
    report_keys = ("saturation_curve", "saturation_drive_db", "saturated_fraction")

    def sample(self, rng: np.random.Generator, ctx: Mapping[str, Any]) -> dict[str, Any]:
        c = self.config
        return {
            "curve": str(c.curves[int(rng.integers(len(c.curves)))]),
            "drive_db": float(rng.uniform(*c.drive_db)),
        }

    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Any) -> Applied:
        curve = str(params["curve"])
        if curve not in CURVES:
            raise ValueError(f"saturation: unknown curve {curve!r}; expected one of {', '.join(CURVES)}")
        g = np.float32(db_to_gain(float(params["drive_db"])))
        u = x * g
        if curve == "tanh":
            y = np.tanh(u)
        else:
            y = np.arctan(u * np.float32(np.pi / 2)) * np.float32(2 / np.pi)
        # samples driven past the knee: compressed by more than 1 dB (|f(u)| < 0.891 |u|)
        fraction = float(np.count_nonzero(np.abs(y) < np.float32(0.891) * np.abs(u))) / max(len(x), 1)
        report = {
            "saturation_curve": curve,
            "saturation_drive_db": float(params["drive_db"]),
            "saturated_fraction": fraction,
        }
        return Applied(np.asarray(y, dtype=np.float32), report)
