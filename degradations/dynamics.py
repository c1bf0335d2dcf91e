"""Dynamics processing: AGC, compressor, limiter or downward expander, as devices and voice apps apply them.

``mode`` picks the processor; all work on 1 ms blocks (the level of a block is its peak, or its RMS for the AGC),
compute a static gain curve in dB and smooth it over time, then interpolate the block gains linearly to samples
and multiply. The gain is a pure function of the input (no delay line), so the output stays time-aligned.

* ``compressor``: above ``threshold_db`` the level rises by ``1/ratio`` dB per dB; the gain reduction is smoothed
  by the decoupled peak detector of Giannoulis, Massberg and Reiss (JAES 2012, "Digital dynamic range compressor
  design"): an instant-attack release stage ``y1[n] = max(r[n], aR * y1[n-1])`` followed by a one-pole attack
  stage. The release stage is computed without a sample loop: ``log y1[n] = max_k(log r[k] + (n-k) log aR)`` is
  a running maximum of ``log r[k] - k log aR`` (:func:`decay_max`).
* ``limiter``: a compressor with infinite ratio whose attack looks ahead (the same running maximum taken backwards
  in time), so the full reduction is reached at the peak; a final clip at the threshold catches what the
  block-to-sample interpolation lets through (a limiter's safety clipper).
* ``expander``: below ``threshold_db`` the level falls by ``ratio`` dB per dB (a soft noise gate), opening
  at once and closing with the release time, then ``makeup_db`` of gain (the ICASSP 2024 SSI synthesizer's
  "anti-AGC": NoiseGate plus 5-20 dB of gain). The default makeup is 0 dB: the SSI gain, with its final hard
  limiter, drives the loudest syllables 10-20 dB over full scale, which here would only make the final joint
  peak scaling turn the target down by as much; the input's level is normalised where it is consumed anyway.
* ``agc``: a slow gain that rides the short-term level (RMS smoothed with ``release_ms``) towards ``target_db``,
  bounded to +-``max_gain_db``, held while the level is under the -70 dBFS gate (BS.1770's absolute gate), and
  smoothed with ``attack_ms``: it lifts pauses and noise floors and pumps, as phone and conferencing AGCs do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator
from scipy.signal import lfilter

from datasets.config import StrictModel
from degradations.base import Applied, Degradation, register

Mode = Literal["agc", "compressor", "limiter", "expander"]
MODES: tuple[str, ...] = ("agc", "compressor", "limiter", "expander")
FLOOR_DB = -120.0  # level assumed for digital silence
GATE_DB = -70.0  # AGC holds its gain below this block level (BS.1770 absolute gate)
MAX_ATTENUATION_DB = 60.0  # deepest expander attenuation


class DynamicsConfig(StrictModel):
    modes: list[Mode] = Field(default_factory=lambda: list(MODES), min_length=1)
    # URGENT 2025 wind-noise compressor (ffmpeg sidechaincompress): threshold 0.1-0.3 (-20..-10.5 dBFS),
    # ratio 1-20, attack and release 5-100 ms; used for the compressor and the limiter
    threshold_db: tuple[float, float] = (-20.0, -10.5)
    ratio: tuple[float, float] = (1.0, 20.0)
    attack_ms: tuple[float, float] = (5.0, 100.0)
    release_ms: tuple[float, float] = (5.0, 100.0)
    # ICASSP 2024 SSI synthesizer: agc_expand_ratio 1.4-2.1 with gate level -10..0 dB (its agc_gain_db 5-20 dB,
    # +6 with the expander, is left out by default: see the module docstring)
    expander_threshold_db: tuple[float, float] = (-10.0, 0.0)
    expander_ratio: tuple[float, float] = (1.4, 2.1)
    expander_makeup_db: tuple[float, float] = (0.0, 0.0)
    # AGC: target level of the DNS challenge synthesizer (target_level -35..-15 dBFS), gain bound of the SSI
    # synthesizer's agc_gain_db (5-20 dB)
    agc_target_db: tuple[float, float] = (-35.0, -15.0)
    agc_max_gain_db: tuple[float, float] = (5.0, 20.0)

    @field_validator(
        "threshold_db",
        "ratio",
        "attack_ms",
        "release_ms",
        "expander_threshold_db",
        "expander_ratio",
        "expander_makeup_db",
        "agc_target_db",
        "agc_max_gain_db",
    )
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"lower bound {v[0]} is above upper bound {v[1]}")
        return v

    @field_validator("ratio", "expander_ratio", "attack_ms", "release_ms")
    @classmethod
    def _positive(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] <= 0:
            raise ValueError(f"need positive values, got {list(v)}")
        return v


def decay_max(r: np.ndarray, a: float) -> np.ndarray:
    """``y[n] = max(r[n], a * y[n-1])`` (``y[-1] = 0``) for ``r >= 0`` and ``0 < a < 1``, without a loop."""
    if len(r) == 0:
        return r.astype(np.float64)
    la = math.log(a)
    idx = np.arange(len(r), dtype=np.float64) * la
    with np.errstate(divide="ignore"):
        lr = np.log(np.asarray(r, dtype=np.float64))
    y = np.exp(np.maximum.accumulate(lr - idx) + idx)
    return np.where(np.isfinite(y), y, 0.0)


def _one_pole(x: np.ndarray, a: float) -> np.ndarray:
    # starts from the first value (no fade-in from zero at the clip start)
    zi = np.array([a * x[0]]) if len(x) else None
    return lfilter([1.0 - a], [1.0, -a], x, zi=zi)[0] if len(x) else x


def _coefficient(ms: float, block_rate: float) -> float:
    return math.exp(-1.0 / max(ms * 1e-3 * block_rate, 1e-9))


def _block_levels(x: np.ndarray, block: int, rms: bool) -> np.ndarray:
    n_blocks = -(-len(x) // block)
    padded = np.zeros(n_blocks * block, dtype=np.float32)
    padded[: len(x)] = x
    frames = padded.reshape(n_blocks, block)
    if rms:
        level = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    else:
        level = np.max(np.abs(frames), axis=1).astype(np.float64)
    with np.errstate(divide="ignore"):
        return np.maximum(20.0 * np.log10(level), FLOOR_DB)


def _to_samples(gain_db: np.ndarray, n: int, block: int) -> np.ndarray:
    """Block gains (dB, one per block centre) as a linear gain per sample, linearly interpolated."""
    g = np.power(10.0, gain_db / 20.0)
    centres = (np.arange(len(g)) + 0.5) * block - 0.5
    return np.interp(np.arange(n, dtype=np.float64), centres, g).astype(np.float32)


def dynamics_gain_db(x: np.ndarray, sr: int, params: Mapping[str, Any]) -> np.ndarray:
    """The gain in dB per 1 ms block of ``x`` for ``params`` (see the module docstring)."""
    mode = str(params["mode"])
    block = max(1, int(round(sr / 1000.0)))
    rate = sr / block
    a_att = _coefficient(float(params["attack_ms"]), rate)
    a_rel = _coefficient(float(params["release_ms"]), rate)
    if mode == "agc":
        power = np.power(10.0, _block_levels(x, block, rms=True) / 10.0)
        level = 10.0 * np.log10(np.maximum(_one_pole(power, a_rel), 10.0 ** (FLOOR_DB / 10.0)))
        bound = float(params["max_gain_db"])
        gain = np.clip(float(params["target_db"]) - level, -bound, bound)
        # hold the last gain through gated (near-silent) stretches; before the first active block, no gain
        active = level >= GATE_DB
        if not active.any():
            return np.zeros_like(level)
        last = np.maximum.accumulate(np.where(active, np.arange(len(level)), -1))
        gain = np.where(last >= 0, gain[np.maximum(last, 0)], 0.0)
        return _one_pole(gain, a_att)
    level = _block_levels(x, block, rms=False)
    threshold = float(params["threshold_db"])
    if mode in ("compressor", "limiter"):
        slope = 1.0 if mode == "limiter" else 1.0 - 1.0 / float(params["ratio"])
        reduction = np.maximum(level - threshold, 0.0) * slope
        held = decay_max(reduction, a_rel)
        if mode == "limiter":  # look-ahead attack: the same decay, backwards in time
            smoothed = decay_max(held[::-1], a_att)[::-1]
        else:
            smoothed = _one_pole(held, a_att)
        return -smoothed
    if mode == "expander":
        attenuation = np.minimum(
            (threshold - np.minimum(level, threshold)) * (float(params["ratio"]) - 1.0), MAX_ATTENUATION_DB
        )
        # openness = MAX - attenuation rises at once (gate opens) and decays with the release (gate closes)
        openness = _one_pole(decay_max(MAX_ATTENUATION_DB - attenuation, a_rel), a_att)
        return float(params["makeup_db"]) - (MAX_ATTENUATION_DB - openness)
    raise ValueError(f"dynamics: unknown mode {mode!r}; expected one of {', '.join(MODES)}")


@register
class Dynamics(Degradation):
    """AGC, compressor, limiter or expander (``mode``), block-wise gain smoothed over time."""

    name = "dynamics"
    Config = DynamicsConfig
    report_keys = ("dynamics_mode", "dynamics_gain_min_db", "dynamics_gain_max_db")

    def sample(self, rng: np.random.Generator, ctx: Mapping[str, Any]) -> dict[str, Any]:
        c = self.config
        mode = str(c.modes[int(rng.integers(len(c.modes)))])
        # every draw is made whatever the mode, so the values do not depend on which mode was drawn
        values = {
            "attack_ms": float(rng.uniform(*c.attack_ms)),
            "release_ms": float(rng.uniform(*c.release_ms)),
            "threshold_db": float(rng.uniform(*c.threshold_db)),
            "ratio": float(rng.uniform(*c.ratio)),
            "expander_threshold_db": float(rng.uniform(*c.expander_threshold_db)),
            "expander_ratio": float(rng.uniform(*c.expander_ratio)),
            "makeup_db": float(rng.uniform(*c.expander_makeup_db)),
            "target_db": float(rng.uniform(*c.agc_target_db)),
            "max_gain_db": float(rng.uniform(*c.agc_max_gain_db)),
        }
        params: dict[str, Any] = {
            "mode": mode,
            "attack_ms": values["attack_ms"],
            "release_ms": values["release_ms"],
        }
        if mode == "compressor":
            params.update(threshold_db=values["threshold_db"], ratio=values["ratio"])
        elif mode == "limiter":
            params.update(threshold_db=values["threshold_db"])
        elif mode == "expander":
            params.update(
                threshold_db=values["expander_threshold_db"],
                ratio=values["expander_ratio"],
                makeup_db=values["makeup_db"],
            )
        else:
            params.update(target_db=values["target_db"], max_gain_db=values["max_gain_db"])
        return params

    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Any) -> Applied:
        mode = str(params["mode"])
        if mode not in MODES:
            raise ValueError(f"dynamics: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        report: dict[str, Any] = {
            "dynamics_mode": mode,
            "dynamics_gain_min_db": None,
            "dynamics_gain_max_db": None,
        }
        if len(x) == 0:
            return Applied(x.copy(), report)
        gain_db = dynamics_gain_db(x, sr, params)
        block = max(1, int(round(sr / 1000.0)))
        y = x * _to_samples(gain_db, len(x), block)
        if mode == "limiter":
            t = np.float32(10.0 ** (float(params["threshold_db"]) / 20.0))
            y = np.clip(y, -t, t)
        report["dynamics_gain_min_db"] = float(np.min(gain_db))
        report["dynamics_gain_max_db"] = float(np.max(gain_db))
        return Applied(np.asarray(y, dtype=np.float32), report)
