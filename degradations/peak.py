"""Final joint peak scaling: target and degraded share one gain so that neither peaks above ``max_peak``.

Only attenuates (a quiet pair is left alone), so the level relation set by loudness normalisation survives for
the usual case; the scale is reported as ``peak_scale``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field

from datasets.config import StrictModel
from degradations.base import Applied, Degradation, register
from degradations.levels import peak


class PeakConfig(StrictModel):
    enabled: bool = True
    max_peak: float = Field(0.99, gt=0.0, le=1.0)


@register
class Peak(Degradation):
    """Scale down so that ``max(|x|) <= max_peak``; in the chain the pair (target, degraded) jointly."""

    name = "peak"
    Config = PeakConfig
    report_keys = ("peak_scale",)

    def sample(self, rng: np.random.Generator, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"max_peak": float(self.config.max_peak)}

    @staticmethod
    def scale(peak_value: float, params: Mapping[str, Any]) -> float:
        limit = float(params["max_peak"])
        if not np.isfinite(peak_value):
            raise ValueError(f"peak: input contains non-finite samples (peak {peak_value})")
        return limit / peak_value if peak_value > limit else 1.0

    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Any) -> Applied:
        s = self.scale(peak(x), params)
        y = (x * np.float32(s)).astype(np.float32) if s != 1.0 else x.copy()
        return Applied(_enforce(y, params), {"peak_scale": s})

    def step(self, target, degraded, sr, params, banks):
        s = self.scale(max(peak(target), peak(degraded)), params)
        if s == 1.0:
            return target, degraded, {"peak_scale": 1.0}
        g = np.float32(s)
        return _enforce(target * g, params), _enforce(degraded * g, params), {"peak_scale": s}


def _enforce(y: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    # float32 rounding of the product can land one ulp above the limit; clamp those few samples
    limit = np.float32(params["max_peak"])
    if float(limit) > float(params["max_peak"]):
        limit = np.nextafter(limit, np.float32(0.0))
    y = np.asarray(y, dtype=np.float32)
    return np.clip(y, -limit, limit, out=y)
