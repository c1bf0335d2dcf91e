"""Deterministic synthetic signals for tests, benchmarks and examples (no files, no downloads).

``speech_like`` is a voiced/unvoiced babble with syllable-rate pauses: a harmonic source with a wandering pitch
through two formant resonances, plus fricative noise bursts, so level, activity and codec behaviour resemble
speech far more than white noise does. ``noise_signal`` and ``synthetic_rir`` (exponentially decaying noise
after a direct path and a few early reflections) build in-memory banks.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter


def _resonator(f: float, bw: float, sr: int) -> tuple[list[float], list[float]]:
    r = np.exp(-np.pi * bw / sr)
    return [1.0 - r], [1.0, -2.0 * r * np.cos(2 * np.pi * f / sr), r * r]


def speech_like(seconds: float, sr: int = 48000, seed: int = 0, level: float = 0.1) -> np.ndarray:
    """Speech-like float32 signal with pauses (about 70 % active), RMS around ``level`` while active."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    f0 = 110.0 + 40.0 * np.sin(2 * np.pi * 0.9 * t + rng.uniform(0, 6.28)) + 10.0 * rng.standard_normal()
    phase = 2 * np.pi * np.cumsum(f0) / sr
    source = np.zeros(n)
    for k in range(1, 60):
        source += np.sin(k * phase) / k * (k * 110.0 < sr / 2)
    voiced = source
    for f, bw in ((rng.uniform(500, 800), 120.0), (rng.uniform(1200, 2200), 200.0)):
        b, a = _resonator(f, bw, sr)
        voiced = voiced + 0.5 * lfilter(b, a, source) * 10
    hiss = lfilter([1.0, -0.9], [1.0], rng.standard_normal(n)) * 0.3
    # syllables: 4 per second, ~70 % of them present, each with a raised-cosine envelope
    env = np.zeros(n)
    unvoiced_env = np.zeros(n)
    syl = int(0.25 * sr)
    for start in range(0, n, syl):
        if rng.random() < 0.7:
            length = min(syl, n - start)
            w = np.hanning(length)
            env[start : start + length] = w
            if rng.random() < 0.3:
                unvoiced_env[start : start + length] = w
    y = voiced * env + hiss * unvoiced_env
    rms = np.sqrt(np.mean(y[env > 0.1] ** 2)) if np.any(env > 0.1) else 1.0
    return (y / rms * level).astype(np.float32)


def noise_signal(seconds: float, sr: int = 48000, seed: int = 0, color: float = 0.0) -> np.ndarray:
    """Stationary noise, ``color`` in [0, 1): 0 white, towards 1 increasingly low-pass (one-pole)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(round(seconds * sr)))
    if color > 0:
        x = lfilter([1.0 - color], [1.0, -color], x)
    return (0.1 * x / np.std(x)).astype(np.float32)


def synthetic_rir(rt60: float, sr: int = 48000, seed: int = 0, pre_delay_s: float = 0.005) -> np.ndarray:
    """A plausible RIR: silence, a unit direct path, a few early reflections, then an exponential noise tail."""
    rng = np.random.default_rng(seed)
    n = int(round((pre_delay_s + rt60) * sr)) + 1
    h = np.zeros(n)
    d = int(round(pre_delay_s * sr))
    h[d] = 1.0
    for _ in range(6):
        i = d + int(rng.uniform(0.002, 0.04) * sr)
        if i < n:
            h[i] += rng.uniform(-0.5, 0.5)
    tail_t = np.arange(n - d - 1) / sr
    decay = np.exp(-6.9 * tail_t / rt60)  # 60 dB down (amplitude 1e-3) after rt60
    h[d + 1 :] += 0.05 * rng.standard_normal(n - d - 1) * decay * np.clip(tail_t / 0.005, 0, 1)
    return h.astype(np.float32)
