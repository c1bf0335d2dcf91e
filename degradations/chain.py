"""The default degradation recipe: plan parameters per sample, then render them.

Recipe (all numbers in the ``chain:`` section of ``configs/synth/default.yaml``):

1. ``loudness``: clean to -20 LUFS (target and degraded alike);
2. ``gain`` with probability 0.2: a recording-level change of target and degraded alike (see
   :mod:`degradations.gain` for why it is joint and what it changes);
3. ``reverb`` with probability 0.5 (when the catalogue has RIRs);
4. ``noise`` with probability 0.5 (when the catalogue has noise other than ``noise.exclude_types``: wind);
   then ``wind`` with probability 0.05 (when the catalogue has files of a type in ``wind.noise_types``);
5. ``k`` extra operators, P(k = 0, 1, 2, 3) = .25/.40/.20/.15, drawn without replacement, in random order, from
   ``extras.ops`` (bandwidth, clipping, codec, packet_loss, eq, dynamics, saturation, bitdepth, mic);
6. ``peak``: joint scaling of target and degraded to a peak <= 0.99.

With probability ``noise.after_extras_probability`` (0.5) the noise step moves after the extras, so the noise
stays full band (and uncoded) over band-limited or coded speech, as VoiceFixer leaves it half the time; the
noise step's ``after_extras`` parameter records the draw, and the order of the steps is what render follows. The
wind step goes where the noise step goes (right after it), with or without noise, and records the same draw.

:func:`plan` is a pure function of ``(key, seed, cfg, ctx)``: the chain's structure (which steps, how many
extras, their order) comes from ``sample_rng(seed, key)`` and each operator's parameters from its own sub-stream
``sample_rng(seed, key, op_name)``, so changing one operator's ranges does not move another's draws, and samples
can be planned in any order or in parallel. Every structural draw is made whether or not it is used; draws added
to the recipe come after the older ones, so a key keeps its reverb/noise/extras structure across versions.

:func:`render` passes a sample's valid (non-padded) length to the operators that measure the signal
(``uses_valid``: clipping's quantile, noise's whole-signal level); old plans, whose params lack the keys that ask
for it, render as before.

:func:`render` is a pure function of ``(clean, sr, steps, banks)``; the steps carry every parameter, so a plan
read back from JSON renders the same float32 bytes in any process.

Reproducibility across machines needs the same wheels (numpy, scipy, PyAV with its bundled FFmpeg,
fast-mp3-augment) and, because numpy picks SIMD kernels for the CPU it runs on (exp, tanh, sums), CPUs with the
same features, or ``NPY_DISABLE_CPU_FEATURES`` set to the same list everywhere. Codecs through the ``ffmpeg``
binary (gsm, speex, vorbis) also depend on the system FFmpeg build; the default codec list avoids them. Thread
counts do not matter: sums are numpy reductions (never ``np.dot``, whose BLAS summation order follows the thread
count), codecs run single-threaded, and the only LAPACK calls (a filter's 2x2 initial state, the RT60 line fit)
are far too small to be split across threads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from datasets.config import StrictModel
from datasets.errors import DataError
from degradations.bandwidth import BandwidthConfig
from degradations.base import REGISTRY, Degradation, as_mono_float32, get_operator, sample_rng
from degradations.bitdepth import BitDepthConfig
from degradations.clipping import ClippingConfig
from degradations.codec import CodecConfig, check_codecs
from degradations.dynamics import DynamicsConfig
from degradations.eq import EqConfig
from degradations.gain import GainConfig
from degradations.loudness import LoudnessConfig
from degradations.mic import MicConfig
from degradations.noise import NoiseConfig
from degradations.packet_loss import PacketLossConfig
from degradations.peak import PeakConfig
from degradations.reverb import ReverbConfig
from degradations.saturation import SaturationConfig
from degradations.wind import WindConfig

FIXED_STEPS = ("loudness", "gain", "reverb", "noise", "wind", "peak")


class ExtrasConfig(StrictModel):
    """How many extra operators a sample gets (P(k) for k = 0, 1, ...) and which ones can be drawn."""

    count_probabilities: list[float] = Field(default_factory=lambda: [0.25, 0.40, 0.20, 0.15], min_length=1)
    ops: list[str] = Field(
        default_factory=lambda: [
            "bandwidth",
            "clipping",
            "codec",
            "packet_loss",
            "eq",
            "dynamics",
            "saturation",
            "bitdepth",
            "mic",
        ]
    )

    @field_validator("count_probabilities")
    @classmethod
    def _distribution(cls, v: list[float]) -> list[float]:
        if any(p < 0 for p in v) or not math.isclose(sum(v), 1.0, abs_tol=1e-9):
            raise ValueError(f"must be non-negative and sum to 1, got {v} (sum {sum(v)})")
        return v

    @field_validator("ops")
    @classmethod
    def _registered(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in REGISTRY:
                raise ValueError(f"unknown degradation {name!r}; registered: {', '.join(sorted(REGISTRY))}")
            if name in FIXED_STEPS:
                raise ValueError(f"{name!r} is a fixed step of the chain, not an extra")
        if len(set(v)) != len(v):
            raise ValueError(f"operators are listed twice: {v}")
        return v

    @model_validator(mode="after")
    def _enough_ops(self) -> ExtrasConfig:
        k_max = max((k for k, p in enumerate(self.count_probabilities) if p > 0), default=0)
        if k_max > len(self.ops):
            raise ValueError(f"count_probabilities allow {k_max} extras but ops lists only {len(self.ops)}")
        return self


class ChainConfig(StrictModel):
    """The ``chain:`` section of a synthesis config: one sub-section per operator plus the extras draw."""

    loudness: LoudnessConfig = Field(default_factory=LoudnessConfig)
    gain: GainConfig = Field(default_factory=GainConfig)
    reverb: ReverbConfig = Field(default_factory=ReverbConfig)
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    wind: WindConfig = Field(default_factory=WindConfig)
    extras: ExtrasConfig = Field(default_factory=ExtrasConfig)
    bandwidth: BandwidthConfig = Field(default_factory=BandwidthConfig)
    clipping: ClippingConfig = Field(default_factory=ClippingConfig)
    codec: CodecConfig = Field(default_factory=CodecConfig)
    packet_loss: PacketLossConfig = Field(default_factory=PacketLossConfig)
    eq: EqConfig = Field(default_factory=EqConfig)
    dynamics: DynamicsConfig = Field(default_factory=DynamicsConfig)
    saturation: SaturationConfig = Field(default_factory=SaturationConfig)
    bitdepth: BitDepthConfig = Field(default_factory=BitDepthConfig)
    mic: MicConfig = Field(default_factory=MicConfig)
    peak: PeakConfig = Field(default_factory=PeakConfig)

    def operator(self, name: str) -> Degradation:
        """The registered operator ``name`` configured with this chain's section of the same name."""
        cls = get_operator(name)
        section = getattr(self, name, None)
        return cls(section) if section is not None else cls()


@dataclass
class RenderResult:
    """Rendered sample: ``target`` and ``degraded`` (float32, equal length, aligned) and a JSON-able report."""

    target: np.ndarray
    degraded: np.ndarray
    report: dict[str, Any]


def _operators(cfg: ChainConfig) -> dict[str, Degradation]:
    names = [*FIXED_STEPS, *cfg.extras.ops]
    return {name: cfg.operator(name) for name in names}


def plan(
    key: str, seed: int, cfg: ChainConfig | None = None, ctx: Mapping[str, Any] | None = None
) -> list[dict]:
    """The ordered steps ``[{"op": name, "params": {...}}, ...]`` for sample ``key`` under ``seed``.

    ``ctx`` is the bank catalogue (:meth:`Banks.catalog`); without RIRs (noise, wind files) the reverb (noise,
    wind) step is never planned. The result is plain JSON.
    """
    cfg = cfg if cfg is not None else ChainConfig()
    ctx = ctx if ctx is not None else {}
    ops = _operators(cfg)
    rng = sample_rng(seed, key)
    # structural draws, always all of them, in a fixed order
    u_reverb = rng.random()
    u_noise = rng.random()
    probs = np.asarray(cfg.extras.count_probabilities, dtype=np.float64)
    k = int(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right"))
    k = min(k, len(probs) - 1, len(cfg.extras.ops))
    order = rng.permutation(len(cfg.extras.ops))
    # draws added after the ones above (so these keep their values for every key)
    u_gain = rng.random()
    u_noise_after = rng.random()
    u_wind = rng.random()

    names: list[str] = []
    if cfg.loudness.enabled:
        names.append("loudness")
    if u_gain < cfg.gain.probability:
        names.append("gain")
    if u_reverb < cfg.reverb.probability and ops["reverb"].available(ctx):
        names.append("reverb")
    noise = u_noise < cfg.noise.probability and ops["noise"].available(ctx)
    noise_after = u_noise_after < cfg.noise.after_extras_probability
    wind = u_wind < cfg.wind.probability and ops["wind"].available(ctx)
    additive = ["noise"] * noise + ["wind"] * wind
    if not noise_after:
        names.extend(additive)
    names.extend(cfg.extras.ops[int(i)] for i in order[:k])
    if noise_after:
        names.extend(additive)
    if cfg.peak.enabled:
        names.append("peak")
    steps = [{"op": name, "params": ops[name].sample(sample_rng(seed, key, name), ctx)} for name in names]
    for step in steps:
        if step["op"] in ("noise", "wind"):
            step["params"]["after_extras"] = bool(noise_after)
    return steps


@cache
def _renderer(name: str) -> Degradation:
    # apply() reads only its params, so a default-configured instance renders any plan
    return get_operator(name)()


def report_keys() -> list[str]:
    """Every report key any registered operator can fill (stable column set for tables)."""
    keys: list[str] = []
    for cls in REGISTRY.values():
        keys.extend(k for k in cls.report_keys if k not in keys)
    return keys


def render(
    clean: np.ndarray,
    sr: int,
    steps: Sequence[Mapping[str, Any]],
    banks: Any = None,
    valid: int | None = None,
) -> RenderResult:
    """Apply ``steps`` (from :func:`plan`) to ``clean`` (float32 mono at ``sr``).

    ``valid``: how many leading samples hold the utterance (the rest is zero padding); operators that measure
    the signal (``uses_valid``) get it as ``params["valid_samples"]``. None: all of them.

    Returns the target (clean after loudness / early-reverb / peak scaling), the degraded signal and the report:
    every key of :func:`report_keys` (None where the step did not run) plus ``ops``, the applied step names.
    """
    x = as_mono_float32(clean, "clean")
    if not np.isfinite(x).all():
        raise DataError("render: clean audio contains NaN or Inf samples")
    target, degraded = x.copy(), x.copy()
    report: dict[str, Any] = dict.fromkeys(report_keys())
    applied: list[str] = []
    for i, step in enumerate(steps):
        try:
            name, params = step["op"], step["params"]
        except (KeyError, TypeError):
            raise ValueError(
                f"render: step {i} must be a mapping with 'op' and 'params', got {step!r}"
            ) from None
        op = _renderer(name)
        if op.uses_valid and valid is not None:
            params = {**params, "valid_samples": int(valid)}
        target, degraded, step_report = op.step(target, degraded, int(sr), params, banks)
        if len(degraded) != len(x) or len(target) != len(x):
            raise RuntimeError(
                f"render: step {i} ({name}) changed the length from {len(x)} to "
                f"{len(degraded)} (degraded) / {len(target)} (target)"
            )
        # the float32 sum is NaN/Inf exactly when a sample is (audio cannot overflow it); 3x cheaper than isfinite
        if not math.isfinite(float(np.sum(degraded))):
            raise RuntimeError(f"render: step {i} ({name}) produced NaN or Inf samples")
        report.update(step_report)
        applied.append(name)
    report["ops"] = applied
    return RenderResult(
        np.asarray(target, dtype=np.float32), np.asarray(degraded, dtype=np.float32), _jsonable(report)
    )


def check_backends(cfg: ChainConfig) -> None:
    """Fail fast when this process cannot render everything ``cfg`` may plan (today: the codecs)."""
    if "codec" in cfg.extras.ops:
        check_codecs(c.name for c in cfg.codec.codecs)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        obj = float(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
