"""Wind noise on the microphone: a second additive step after ``noise`` that draws only wind recordings.

URGENT 2025 simulates wind as a distortion of its own (probability 0.05, SNR U(-10, 15) dB) rather than as one
more noise type, so its rate and levels do not follow the main noise step's. :class:`Wind` is
:class:`degradations.noise.Noise` restricted to the catalogue's noise files whose ``noise_type`` is in
``noise_types``: the same excerpt, looping, active-speech SNR (URGENT's whole-signal SNR for intermittent noise,
which gusts often are) and peak cap. The SNR is set against the signal entering the step, which already holds
the ``noise`` step's noise when both run (both at p .5 and .05: 2.5 % of samples); that raises the reference
level by about 10 log10(1 + 10^(-SNR/10)) dB for the noise step's SNR: 0.4 dB at 10 dB, 3 dB at 0 dB.

The step is not available, hence never planned, when the catalogue holds no file of those types (like reverb
without RIRs). Its report keys are the noise step's under a ``wind_`` prefix, so a sample with both keeps both, plus
``wind_sample_rate`` (the native rate of the wind file used). Plans made before the step existed have no wind step:
wind not applied, every ``wind_`` key None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from datasets.config import StrictModel
from degradations.base import Applied, register
from degradations.noise import Noise


class WindConfig(StrictModel):
    # URGENT 2025 simulation: wind noise with probability 0.05
    probability: float = Field(0.05, ge=0.0, le=1.0)
    # URGENT 2025: wind noise SNR U(-10, 15) dB
    snr_db: tuple[float, float] = (-10.0, 15.0)
    # catalogue entries the step draws from (Banks.catalog()["noise"][i]["noise_type"]; the demo bank writes "wind")
    noise_types: list[str] = Field(default_factory=lambda: ["wind"], min_length=1)
    reference_level_db: float = -26.0  # speech level assumed for a silent input (as the noise step)

    @field_validator("snr_db")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"lower bound {v[0]} is above upper bound {v[1]}")
        return v


# the noise step's report keys -> this step's
_REPORT = {
    "noise_id": "wind_id",
    "noise_type": "wind_type",
    "noise_offset": "wind_offset",
    "snr_db": "wind_snr_db",
    "achieved_snr_db": "wind_achieved_snr_db",
    "snr_definition": "wind_snr_definition",
    "noise_after_extras": "wind_after_extras",
    "noise_peak_limited": "wind_peak_limited",
}


@register
class Wind(Noise):
    """Add wind file ``noise_id`` at ``snr_db`` from ``offset_fraction`` (parameters as the noise step's)."""

    name = "wind"
    Config = WindConfig
    report_keys = (*_REPORT.values(), "wind_sample_rate")

    def candidates(self, ctx: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """The catalogue noise entries whose ``noise_type`` is one of ``noise_types`` (in catalogue order)."""
        types = set(self.config.noise_types)
        return [e for e in ctx.get("noise") or [] if e.get("noise_type") in types]

    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Any) -> Applied:
        out = super().process(x, sr, params, banks)
        report = {new: out.report[old] for old, new in _REPORT.items()}
        report["wind_sample_rate"] = banks.entry("noise", params["noise_id"]).sample_rate
        return Applied(out.audio, report)
