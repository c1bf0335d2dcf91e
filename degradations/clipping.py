"""Clipping at a level set by a quantile of |x|: hard (flat tops) or soft (tanh saturation).

The threshold ``t`` is the ``quantile`` of |x| (0.90-0.99 by default), so about ``1 - quantile`` of the samples
are clipped whatever the input level. Hard: ``clip(x, -t, t)``. Soft: ``t * tanh(x / t)`` (unit slope at zero,
saturating at ``t``; the "drive" is how far the peaks exceed ``t``). ``clipped_fraction`` is the fraction of
samples with ``|x| > t``, i.e. those flattened (hard) or pushed into saturation (soft).

The quantile is taken over the valid part of the segment (``measure: valid``, every new plan): the first
``valid_samples`` samples, which the chain's render passes from the plan's ``valid`` column (a short utterance
zero-padded to the segment length), or, applied on its own, up to the last non-zero sample. Over the whole padded
segment the quantile would fall into the padding's zeros (or the noise floor there) and clip the speech far harder
than configured. Plans without ``measure`` (made before it existed) keep the whole-segment quantile.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from datasets.config import StrictModel
from degradations.base import Applied, Degradation, register
from degradations.iir import _last_nonzero_end

Mode = Literal["hard", "soft"]


class ClippingConfig(StrictModel):
    modes: list[Mode] = Field(default_factory=lambda: ["hard", "soft"], min_length=1)
    quantile: tuple[float, float] = (0.90, 0.99)

    @field_validator("quantile")
    @classmethod
    def _check(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError(f"need 0 < low <= high <= 1, got {list(v)}")
        return v


@register
class Clipping(Degradation):
    """Hard or soft (tanh) clipping at the ``quantile`` of |x|."""

    name = "clipping"
    Config = ClippingConfig
    # drive: how far the input peak exceeds the threshold, in dB
    report_keys = ("clipping_mode", "clipping_threshold", "clipped_fraction", "clipping_drive_db")
    uses_valid = True

    def sample(self, rng: np.random.Generator, ctx: Mapping[str, Any]) -> dict[str, Any]:
        modes = self.config.modes
        return {
            "mode": str(modes[int(rng.integers(len(modes)))]),
            "quantile": float(rng.uniform(*self.config.quantile)),
            "measure": "valid",
        }

    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Any) -> Applied:
        mode = params["mode"]
        if mode not in ("hard", "soft"):
            raise ValueError(f"clipping: unknown mode {mode!r}; expected 'hard' or 'soft'")
        report: dict[str, Any] = {
            "clipping_mode": mode,
            "clipping_threshold": None,
            "clipped_fraction": 0.0,
            "clipping_drive_db": None,
        }
        if len(x) == 0:
            return Applied(x.copy(), report)
        mag = np.abs(x)
        measure = params.get("measure", "segment")
        if measure == "valid":
            valid = params.get("valid_samples")
            n = int(valid) if valid is not None else _last_nonzero_end(x)
            n = min(max(n, 1), len(x))
        elif measure == "segment":
            n = len(x)
        else:
            raise ValueError(f"clipping: unknown measure {measure!r}; expected 'valid' or 'segment'")
        t = np.float32(np.quantile(mag[:n], float(params["quantile"]), method="lower"))
        if not t > 0:  # silence (or mostly zeros): nothing to clip
            return Applied(x.copy(), report)
        report["clipping_threshold"] = float(t)
        report["clipped_fraction"] = float(np.count_nonzero(mag[:n] > t) / n)
        report["clipping_drive_db"] = float(20.0 * np.log10(float(mag.max()) / float(t)))
        if mode == "hard":
            y = np.clip(x, -t, t)
        else:
            y = (np.tanh(x.astype(np.float64) / float(t)) * float(t)).astype(np.float32)
        return Applied(np.asarray(y, dtype=np.float32), report)
