"""Reverberation: convolution with a room impulse response from the RIR bank.

The RIR is truncated, normalised to unit energy (so reverberant speech keeps roughly the dry level whatever the
room, and the final joint peak scaling does not have to crush the target) and the convolution output is shifted
by the direct-path delay (the top of the RIR's first arrival, :func:`datasets.banks.direct_path_index`, which
is not always its largest sample: a reflection can be a hair stronger), so the degraded signal stays
sample-aligned with the target. With ``early_target`` the target becomes the speech convolved with the first
``early_ms`` after the direct path (a common "early reverberation is speech" target). RIRs are truncated
to ``max_rir_s`` after the direct path: beyond a second a speech RIR is ~60 dB down and only costs FFT size.
Convolution is FFT-based (scipy.signal.oaconvolve, float32), deterministic. The prepared RIR and, where
``oaconvolve`` runs as one FFT (a synthesis segment with a RIR of up to a second), the RIR's spectrum at that
FFT size are computed once per bank entry and process (:meth:`degradations.banks.Banks.derived`) instead of once
per sample; the result is the same to the bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import scipy.fft
from pydantic import Field
from scipy.signal import oaconvolve
from scipy.special import lambertw

from datasets.banks import direct_path_index
from datasets.config import StrictModel
from degradations.base import Applied, Degradation, register


class ReverbConfig(StrictModel):
    probability: float = Field(0.5, ge=0.0, le=1.0)
    early_target: bool = False
    early_ms: float = Field(50.0, gt=0.0)
    max_rir_s: float = Field(1.0, gt=0.0)


def prepare_rir(h: np.ndarray, sr: int, max_rir_s: float) -> tuple[np.ndarray, int]:
    """Truncate ``max_rir_s`` after the direct path and normalise to unit energy; returns (rir, direct index)."""
    h = np.asarray(h, dtype=np.float32)
    d = direct_path_index(h)
    end = d + max(1, int(round(max_rir_s * sr)))
    h = h[:end]
    norm = float(np.sqrt(np.sum(np.square(h, dtype=np.float64))))
    if norm == 0.0:
        raise ValueError("reverb: the RIR is all zeros")
    return (h / np.float32(norm)).astype(np.float32), d


def single_fft_size(n: int, m: int) -> int | None:
    """The FFT size ``scipy.signal.oaconvolve`` uses for a full 1-D convolution of lengths ``n`` and ``m`` when it
    computes it as one FFT (``fftconvolve``); None when it uses overlap-add blocks (or no FFT at all)."""
    if n <= 1 or m <= 1:
        return None
    big, small = max(n, m), min(n, m)
    one_block = n == m or small >= big / 2
    if not one_block:
        # scipy's optimal overlap-add block length (scipy.signal._signaltools._calc_oa_lens)
        overlap = small - 1
        opt_size = -overlap * lambertw(-1 / (2 * math.e * overlap), k=-1).real
        one_block = scipy.fft.next_fast_len(math.ceil(opt_size)) >= big
    return scipy.fft.next_fast_len(n + m - 1, True) if one_block else None


def rir_spectrum(h: np.ndarray, nfft: int) -> np.ndarray:
    """The spectrum ``fftconvolve`` takes of ``h`` at FFT size ``nfft`` (read-only)."""
    spec = scipy.fft.rfftn(h, [nfft], axes=[0])
    spec.setflags(write=False)
    return spec


def convolve_aligned(
    x: np.ndarray, h: np.ndarray, delay: int, spectrum: Callable[[int], np.ndarray] | None = None
) -> np.ndarray:
    """``x * h`` cut to ``len(x)`` samples starting at ``delay`` (the direct path), float32.

    ``spectrum(nfft)``, where given, returns :func:`rir_spectrum` of ``h`` (e.g. from a cache); it is used where
    ``oaconvolve`` would compute one FFT of that size, with the same operations, so the output is the same.
    """
    n = len(x)
    if n == 0:
        return x.copy()
    if len(h) == 1:
        return (x * h[0]).astype(np.float32)
    nfft = single_fft_size(n, len(h)) if spectrum is not None else None
    if nfft is None:
        y = oaconvolve(x, h, mode="full")
    else:
        # scipy.signal.fftconvolve's steps, with the RIR's half taken from the cache
        y = scipy.fft.irfftn(scipy.fft.rfftn(x, [nfft], axes=[0]) * spectrum(nfft), [nfft], axes=[0])
    return np.ascontiguousarray(y[delay : delay + n], dtype=np.float32)


@register
class Reverb(Degradation):
    """Convolve with bank RIR ``rir_id`` (direct path aligned); optionally make the target early reverb."""

    name = "reverb"
    Config = ReverbConfig
    # rt60 / drr / c50 from the RIR manifest, measured on the RIR where missing (Banks.rir_info)
    report_keys = ("rir_id", "rt60", "drr", "c50", "early_target")

    def available(self, ctx: Mapping[str, Any]) -> bool:
        return bool(ctx.get("rir"))

    def sample(self, rng: np.random.Generator, ctx: Mapping[str, Any]) -> dict[str, Any]:
        rirs = ctx.get("rir") or []
        if not rirs:
            raise ValueError("reverb: the bank catalogue has no RIRs")
        entry = rirs[int(rng.integers(len(rirs)))]
        return {
            "rir_id": str(entry["id"]),
            "early_target": bool(self.config.early_target),
            "early_ms": float(self.config.early_ms),
            "max_rir_s": float(self.config.max_rir_s),
        }

    def _rir(
        self, sr: int, params: Mapping[str, Any], banks: Any
    ) -> tuple[np.ndarray, int, Callable[[int], np.ndarray], dict[str, Any]]:
        if banks is None:
            raise ValueError("reverb: needs banks with an RIR bank")
        if banks.sr != sr:
            raise ValueError(f"reverb: banks are at {banks.sr} Hz but the signal is at {sr} Hz")
        rid = params["rir_id"]
        max_rir_s = float(params["max_rir_s"])
        h, d = banks.derived(
            "rir", rid, ("prepared", max_rir_s), lambda: prepare_rir(banks.rir(rid), sr, max_rir_s)
        )

        def spectrum(nfft: int) -> np.ndarray:
            return banks.derived("rir", rid, ("spectrum", max_rir_s, nfft), lambda: rir_spectrum(h, nfft))

        report: dict[str, Any] = {"rir_id": rid, **banks.rir_info(rid)}
        report["early_target"] = bool(params.get("early_target", False))
        return h, d, spectrum, report

    def process(self, x: np.ndarray, sr: int, params: Mapping[str, Any], banks: Any) -> Applied:
        h, d, spectrum, report = self._rir(sr, params, banks)
        return Applied(convolve_aligned(x, h, d, spectrum), report)

    def step(self, target, degraded, sr, params, banks):
        h, d, spectrum, report = self._rir(sr, params, banks)
        degraded = convolve_aligned(degraded, h, d, spectrum)
        if params.get("early_target"):
            early = d + int(round(float(params["early_ms"]) * 1e-3 * sr)) + 1
            target = convolve_aligned(target, h[:early], d)
        return target, degraded, report
