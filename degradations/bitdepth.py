"""Bit-depth reduction: requantisation to ``bits`` bits, plain (rounding) or with TPDF dither.

``y = clip(round(x / q + d) * q, -1, 1 - q)`` with ``q = 2 ** (1 - bits)`` the step of a ``bits``-bit converter
whose full scale is 1.0. Without dither (``dither: none``) the error follows the signal: harmonic distortion and
granular noise that switches off in pauses, as a cheap ADC or a badly converted file gives. With TPDF dither
(``d`` the difference of two uniform draws, +-1 step, the usual mastering dither) the error becomes a steady
white noise floor at about ``-6.02 * bits + 4.8`` dB re full scale. The dither sequence comes from
``dither_seed`` in the params. Level-dependent by nature: the same 8 bits cost a quiet recording more. Samples
beyond full scale are clipped, as an integer format would. Digital silence before the first and after the last
non-zero sample (a zero-padded tail) stays silent, as converters that mute dither on digital zero leave it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from datasets.config import StrictModel
from degradations.base import Applied, Degradation, register
from degradations.iir import _first_nonzero, _last_nonzero_end

Dither = Literal["none", "tpdf"]
DITHERS: tuple[str, ...] = ("none", "tpdf")


class BitDepthConfig(StrictModel):
    # ICASSP 2024 SSI synthesizer: dac_bitdepth range [8, 24]; above 16 bits the quantisation floor (< -96 dBFS)
    # lies under any recording's noise, so the default stops at 16
    bits: tuple[int, int] = (8, 16)
    dithers: list[Dither] = Field(default_factory=lambda: list(DITHERS), min_length=1)

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 2 <= v[0] <= v[1] <= 24:
            raise ValueError(f"need 2 <= low <= high <= 24, got {list(v)}")
        return v


def quantize(x: np.ndarray, bits: int, dither: str, seed: int) -> np.ndarray:
    """``x`` requantised to ``bits`` bits (see the module docstring), float32."""
    scale = np.float32(2.0 ** (bits - 1))
    u = x * scale
    if dither == "tpdf":
        start, end = _first_nonzero(x), _last_nonzero_end(x)
        if end > start:
            rng = np.random.default_rng(seed)
            m = end - start
            u = u.copy()
            u[start:end] += rng.random(m, dtype=np.float32) - rng.random(m, dtype=np.float32)
    elif dither != "none":
        raise ValueError(f"bitdepth: unknown dither {dither!r}; expected one of {', '.join(DITHERS)}")
    q = np.clip(np.round(u), -scale, scale - 1)
    return (q / scale).astype(np.float32)


@register
class BitDepth(Degradation):
    """Requantise to ``bits`` bits with ``dither`` none or tpdf."""

    name = "bitdepth"
    Config = BitDepthConfig
    report_keys = ("bit_depth", "bit_depth_dither")

    def sample(self, rng: np.random.Generator, ctx: Mapping[str, Any]) -> dict[str, Any]:
        c = self.config
        return {
            "bits": int(rng.integers(c.bits[0], c.bits[1] + 1)),
            "dither": str(c.dithers[int(rng.integers(len(c.dithers)))]),
            "dither_seed": int(rng.integers(2**63 - 1)),
        }

    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Any) -> Applied:
        bits, dither = int(params["bits"]), str(params["dither"])
        if not 2 <= bits <= 24:
            raise ValueError(f"bitdepth: bits must be 2-24, got {bits}")
        y = quantize(x, bits, dither, int(params["dither_seed"]))
        return Applied(y, {"bit_depth": bits, "bit_depth_dither": dither})
