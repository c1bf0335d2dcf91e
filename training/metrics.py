"""Speech restoration metrics: one function per metric and :func:`score`, which runs a chosen set on one signal.

Intrusive metrics compare an estimate with its clean reference (both at one rate, time-aligned); non-intrusive
ones (DNSMOS) need the estimate only. Every signal is first brought to the rate its metric is defined at:

============  ========  ========================================================================================
metric        rate      definition
============  ========  ========================================================================================
si_sdr        as given  scale-invariant SDR (Le Roux et al. 2019), both signals mean-removed, in dB
lsd           48 kHz    log-spectral distance over all bins 0-24 kHz (see below)
lsd_hf        48 kHz    the same over the bins from 8 kHz to 24 kHz (where a band-limited input has nothing)
pesq_wb       16 kHz    ITU-T P.862.2 wide-band MOS-LQO through the ``pesq`` package
estoi         16 kHz    extended STOI through ``pystoi`` (which resamples to 10 kHz itself)
mel_ssim      48 kHz    SSIM (Wang et al. 2004) of the two log-mel spectrograms
dnsmos_*      16 kHz    DNSMOS P.835 SIG / BAK / OVRL and the P.808 MOS, ONNX models shipped in ``speechmos``
============  ========  ========================================================================================

**LSD** (the AudioSR / NVSR definition): STFT with a 2048-sample Hann window, hop 512, FFT 2048, frames centred
(reflect padding); per frame ``sqrt(mean_f (log10 P_ref - log10 P_est)^2)`` with ``P = max(|X|^2, 1e-8)`` (FFT
not normalised), then the mean over frames. ``lsd_hf`` keeps the bins at or above 8 kHz (683 of 1025).

**mel SSIM**: log10 of a 128-band Slaney mel power spectrogram (20 Hz-24 kHz, FFT 2048, hop 480, floor 1e-5),
SSIM with an 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03 and the reference's value range as data range.

**Edge cases.** A metric that cannot be computed is ``NaN`` and the reason is in ``Scores.reasons`` (a silent
reference for SI-SDR, ESTOI and SSIM; a silent estimate for SI-SDR; PESQ finding no utterance or too short a
signal; ESTOI with fewer than 30 frames of speech, which ``pystoi`` would score 1e-5). Lengths that differ by at
most :data:`LENGTH_TOLERANCE_S` (resampler rounding, codec padding) are cut to the shorter one and noted under
``reasons["length"]``; a larger difference, a non-finite sample or an empty signal is a :class:`MetricInputError`
naming both lengths.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from functools import cache

import numpy as np

from datasets.audio import resample
from datasets.errors import DataError

INTRUSIVE: tuple[str, ...] = ("si_sdr", "lsd", "lsd_hf", "pesq_wb", "estoi", "mel_ssim")
NON_INTRUSIVE: tuple[str, ...] = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")
METRICS: tuple[str, ...] = INTRUSIVE + NON_INTRUSIVE
# which way is better, for reports and plots
HIGHER_IS_BETTER: dict[str, bool] = {m: m not in ("lsd", "lsd_hf") for m in METRICS}
UNITS: dict[str, str] = {"si_sdr": "dB", "lsd": "", "lsd_hf": ""}

SPECTRAL_RATE = 48000
PESQ_RATE = 16000
LSD_N_FFT, LSD_HOP = 2048, 512
LSD_HF_MIN_HZ = 8000.0
LSD_POWER_FLOOR = 1e-8
MEL_N_FFT, MEL_HOP, MEL_BANDS, MEL_FMIN, MEL_FLOOR = 2048, 480, 128, 20.0, 1e-5
SSIM_SIGMA, SSIM_K1, SSIM_K2 = 1.5, 0.01, 0.03
ESTOI_MIN_FRAMES = 30  # pystoi's N: fewer frames of speech and it returns 1e-5
LENGTH_TOLERANCE_S = 0.05
SILENCE = 1e-10  # mean square below which a signal counts as silent (-100 dBFS)


class MetricInputError(DataError):
    """Signals that cannot be scored together (length mismatch, non-finite samples, empty); names them."""


class Scores(dict):
    """``{metric: value}`` (float, ``NaN`` when not computable) with ``reasons``: ``{metric: why NaN}``; a
    ``"length"`` entry notes a small length mismatch that was cut."""

    def __init__(self, values: dict[str, float] | None = None, reasons: dict[str, str] | None = None):
        super().__init__(values or {})
        self.reasons: dict[str, str] = dict(reasons or {})


class _NotComputable(Exception):
    """A metric that has no value for these signals (becomes NaN plus the message as its reason)."""


# --------------------------------------------------------------------------------------------- signals


def _mono(x: np.ndarray, label: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.ndim != 1:
        raise MetricInputError(f"{label}: shape {x.shape}, expected (frames,) or (frames, channels)")
    if x.size == 0:
        raise MetricInputError(f"{label}: empty signal")
    if not np.all(np.isfinite(x)):
        raise MetricInputError(f"{label}: {int(np.sum(~np.isfinite(x)))} non-finite sample(s)")
    return x


def align_lengths(est: np.ndarray, ref: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Cut both to the shorter length when they differ by at most :data:`LENGTH_TOLERANCE_S`; returns the note
    saying so (``None`` when equal). A larger difference is a :class:`MetricInputError` naming both lengths."""
    if len(est) == len(ref):
        return est, ref, None
    diff = abs(len(est) - len(ref)) / sr
    what = f"estimate is {len(est)} samples, reference {len(ref)} at {sr} Hz (differ by {diff:.3f} s"
    if diff > LENGTH_TOLERANCE_S:
        raise MetricInputError(f"length mismatch: {what}, more than {LENGTH_TOLERANCE_S} s)")
    n = min(len(est), len(ref))
    return est[:n], ref[:n], f"{what}); both cut to {n}"


def _is_silent(x: np.ndarray) -> bool:
    return float(np.mean(np.square(x))) < SILENCE


def _at(x: np.ndarray, sr: int, rate: int) -> np.ndarray:
    return x if sr == rate else resample(x.astype(np.float32), sr, rate).astype(np.float64)


# ------------------------------------------------------------------------------------------------ SI-SDR


def si_sdr(est: np.ndarray, ref: np.ndarray) -> float:
    """Scale-invariant SDR in dB of equal-length 1-D signals (means removed first)."""
    est = np.asarray(est, dtype=np.float64) - np.mean(est)
    ref = np.asarray(ref, dtype=np.float64) - np.mean(ref)
    if _is_silent(ref):
        raise _NotComputable("reference is silent")
    if _is_silent(est):
        raise _NotComputable("estimate is silent (SI-SDR is minus infinity)")
    alpha = np.dot(est, ref) / np.dot(ref, ref)
    target = alpha * ref
    noise = est - target
    # identical signals: the error floor caps the value at 200 dB instead of +inf
    return float(
        10 * np.log10(np.dot(target, target) / max(np.dot(noise, noise), 1e-20 * np.dot(target, target)))
    )


# ---------------------------------------------------------------------------------------------------- STFT


def _power_spectrogram(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """``(frames, n_fft // 2 + 1)`` power of a centred (reflect-padded) Hann STFT, FFT not normalised."""
    pad = n_fft // 2
    mode = "reflect" if len(x) > pad else "constant"
    x = np.pad(x, (pad, pad), mode=mode)
    frames = 1 + (len(x) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.fft.rfft(x[idx] * np.hanning(n_fft + 1)[:-1], axis=1)  # periodic Hann
    return spec.real**2 + spec.imag**2


def lsd_pair(est48: np.ndarray, ref48: np.ndarray) -> tuple[float, float]:
    """``(lsd, lsd_hf)`` of equal-length 48 kHz signals (see the module docstring)."""
    log_ref = np.log10(np.maximum(_power_spectrogram(ref48, LSD_N_FFT, LSD_HOP), LSD_POWER_FLOOR))
    log_est = np.log10(np.maximum(_power_spectrogram(est48, LSD_N_FFT, LSD_HOP), LSD_POWER_FLOOR))
    sq = (log_ref - log_est) ** 2
    hf = np.fft.rfftfreq(LSD_N_FFT, 1 / SPECTRAL_RATE) >= LSD_HF_MIN_HZ
    full = float(np.mean(np.sqrt(np.mean(sq, axis=1))))
    high = float(np.mean(np.sqrt(np.mean(sq[:, hf], axis=1))))
    return full, high


# ------------------------------------------------------------------------------------------------ mel SSIM


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    lin = hz / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log, lin)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


@cache
def mel_filterbank(sr: int = SPECTRAL_RATE, n_fft: int = MEL_N_FFT, bands: int = MEL_BANDS) -> np.ndarray:
    """``(bands, n_fft // 2 + 1)`` Slaney-normalised triangular filters from 20 Hz to ``sr / 2``."""
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(MEL_FMIN), _hz_to_mel(sr / 2), bands + 2))
    lower = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - freqs[None, :]) / (edges[2:] - edges[1:-1])[:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def log_mel(x48: np.ndarray) -> np.ndarray:
    """``(bands, frames)`` log10 mel power spectrogram of a 48 kHz signal (the mel SSIM features)."""
    power = _power_spectrogram(x48, MEL_N_FFT, MEL_HOP)
    return np.log10(np.maximum(mel_filterbank() @ power.T, MEL_FLOOR))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Mean SSIM of two equal-shape 2-D arrays (Gaussian window, sigma 1.5, truncated at 11 taps)."""
    from scipy.ndimage import gaussian_filter

    def blur(z: np.ndarray) -> np.ndarray:
        return gaussian_filter(z, SSIM_SIGMA, truncate=3.5, mode="reflect")

    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def mel_ssim(est48: np.ndarray, ref48: np.ndarray) -> float:
    """SSIM of the log-mel spectrograms of equal-length 48 kHz signals, the reference's range as data range."""
    if _is_silent(ref48):
        raise _NotComputable("reference is silent")
    a, b = log_mel(ref48), log_mel(est48)
    data_range = float(a.max() - a.min())
    if data_range <= 0:
        raise _NotComputable("reference log-mel spectrogram is constant")
    return ssim(a, b, data_range)


# ----------------------------------------------------------------------------------------- PESQ and ESTOI


def pesq_wb(est16: np.ndarray, ref16: np.ndarray) -> float:
    """P.862.2 wide-band PESQ of 16 kHz signals through the ``pesq`` package."""
    from pesq import PesqError, pesq

    try:
        return float(pesq(PESQ_RATE, ref16, est16, "wb"))
    except PesqError as e:
        reason = {
            "BufferTooShortError": "signal too short for PESQ",
            "NoUtterancesError": "no utterance",
        }.get(type(e).__name__, type(e).__name__)
        raise _NotComputable(f"{reason} ({' '.join(str(e).split()) or type(e).__name__})") from None


def estoi(est16: np.ndarray, ref16: np.ndarray) -> float:
    """Extended STOI of 16 kHz signals through ``pystoi``; NaN where pystoi would return its 1e-5 placeholder."""
    from pystoi import stoi

    if _is_silent(ref16):
        raise _NotComputable("reference is silent")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(stoi(ref16, est16, PESQ_RATE, extended=True))
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        raise _NotComputable(f"fewer than {ESTOI_MIN_FRAMES} frames of speech (about 0.4 s) for ESTOI")
    return value


# -------------------------------------------------------------------------------------------------- DNSMOS


def dnsmos(est16: np.ndarray) -> dict[str, float]:
    """DNSMOS P.835 (SIG, BAK, OVRL) and P.808 of a 16 kHz signal with the ONNX models in the ``speechmos``
    wheel (nothing is downloaded). The signal is clipped to [-1, 1], which ``speechmos`` requires; shorter than
    9.01 s it is repeated to that length, longer it is scored in 9.01 s windows 1 s apart and averaged."""
    from speechmos import dnsmos as speechmos_dnsmos

    out = speechmos_dnsmos.run(np.clip(est16, -1.0, 1.0).astype(np.float32), PESQ_RATE)
    return {
        "dnsmos_sig": float(out["sig_mos"]),
        "dnsmos_bak": float(out["bak_mos"]),
        "dnsmos_ovrl": float(out["ovrl_mos"]),
        "dnsmos_p808": float(out["p808_mos"]),
    }


# --------------------------------------------------------------------------------------------------- score


def _check_names(metrics: Iterable[str] | None) -> tuple[str, ...]:
    names = METRICS if metrics is None else tuple(metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    return names


def score(
    est: np.ndarray, sr: int, ref: np.ndarray | None = None, metrics: Iterable[str] | None = None
) -> Scores:
    """Score ``est`` (1-D, or ``(frames, channels)`` averaged to mono) at ``sr`` against ``ref`` (same rate).

    ``metrics`` defaults to :data:`METRICS`; without ``ref`` the intrusive ones are skipped (absent from the
    result). Returns :class:`Scores`: a value per metric, ``NaN`` with a reason where it has none.
    """
    names = _check_names(metrics)
    est = _mono(est, "estimate")
    values: dict[str, float] = {}
    reasons: dict[str, str] = {}
    intrusive = [m for m in names if m in INTRUSIVE] if ref is not None else []
    if intrusive:
        ref = _mono(ref, "reference")
        est_i, ref_i, note = align_lengths(est, ref, sr)
        if note:
            reasons["length"] = note
        cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def at(rate: int) -> tuple[np.ndarray, np.ndarray]:
            if rate not in cache:
                cache[rate] = (_at(est_i, sr, rate), _at(ref_i, sr, rate))
            return cache[rate]

        lsd_values: tuple[float, float] | None = None
        for name in intrusive:
            try:
                if name == "si_sdr":
                    values[name] = si_sdr(est_i, ref_i)
                elif name in ("lsd", "lsd_hf"):
                    lsd_values = lsd_values or lsd_pair(*at(SPECTRAL_RATE))
                    values[name] = lsd_values[0] if name == "lsd" else lsd_values[1]
                elif name == "mel_ssim":
                    values[name] = mel_ssim(*at(SPECTRAL_RATE))
                elif name == "pesq_wb":
                    values[name] = pesq_wb(*at(PESQ_RATE))
                elif name == "estoi":
                    values[name] = estoi(*at(PESQ_RATE))
            except _NotComputable as e:
                values[name], reasons[name] = math.nan, str(e)
    wanted = [m for m in names if m in NON_INTRUSIVE]
    if wanted:
        mos = dnsmos(_at(est, sr, PESQ_RATE))
        values.update({m: mos[m] for m in wanted})
    return Scores(values, reasons)
