"""Signal levels: ITU-R BS.1770 integrated loudness and an ITU-T P.56-like active speech level.

Pure numpy/scipy functions, float64 internally, used by the loudness and noise operators and by the tests.

* :func:`integrated_loudness` follows BS.1770-4: K-weighting (the standard's shelf + high-pass pair, derived for
  any sample rate), 400 ms blocks with 75 % overlap, absolute gate at -70 LUFS, relative gate at -10 LU. Inputs
  shorter than one block are measured as a single block (the standard leaves them undefined).
* :func:`active_speech_level` follows the structure of P.56 method B: an envelope of |x| smoothed by two one-pole
  filters (30 ms), a 200 ms hangover, and the active level found where the level measured over the samples above
  a threshold exceeds that threshold by the 15.9 dB margin. The envelope runs on 1 ms blocks instead of samples
  (two orders of magnitude cheaper; the 30 ms smoothing makes the difference negligible), and the thresholds are a
  0.25 dB grid instead of P.56's 3 dB steps. It also returns *which* samples are active, so an SNR can be measured
  on active speech only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import maximum_filter1d
from scipy.signal import lfilter

from degradations.iir import sosfilt_settled

SILENCE_DB = -math.inf
P56_MARGIN_DB = 15.9
P56_TIME_CONSTANT_S = 0.03
P56_HANGOVER_S = 0.2
LOUDNESS_ABSOLUTE_GATE_LUFS = -70.0


def db_to_gain(db: float) -> float:
    """Amplitude factor for a level change of ``db`` decibels."""
    return float(10.0 ** (db / 20.0))


def power_db(x: np.ndarray) -> float:
    """Mean power of ``x`` in dB (re full scale 1.0); -inf for silence or empty input."""
    if len(x) == 0:
        return SILENCE_DB
    p = float(np.mean(np.square(x, dtype=np.float64)))
    return 10.0 * math.log10(p) if p > 0 else SILENCE_DB


def peak(x: np.ndarray) -> float:
    """Largest absolute sample value (0.0 for empty input)."""
    return float(np.max(np.abs(x))) if len(x) else 0.0


# ----------------------------------------------------------------------------------------------- BS.1770 loudness


@lru_cache(maxsize=16)
def k_weighting_sos(sr: int) -> np.ndarray:
    """BS.1770 K-weighting (pre-filter shelf + RLB high-pass) as second-order sections at rate ``sr``.

    The analog prototypes' parameters are those that reproduce the standard's 48 kHz coefficients exactly.
    """
    f0, gain_db, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = math.tan(math.pi * f0 / sr)
    vh = 10.0 ** (gain_db / 20.0)
    vb = vh**0.4996667741545416
    a0 = 1.0 + k / q + k * k
    shelf = [
        (vh + vb * k / q + k * k) / a0,
        2.0 * (k * k - vh) / a0,
        (vh - vb * k / q + k * k) / a0,
        1.0,
        2.0 * (k * k - 1.0) / a0,
        (1.0 - k / q + k * k) / a0,
    ]
    f0, q = 38.13547087602444, 0.5003270373238773
    k = math.tan(math.pi * f0 / sr)
    a0 = 1.0 + k / q + k * k
    highpass = [1.0, -2.0, 1.0, 1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0]
    return np.array([shelf, highpass], dtype=np.float64)


def integrated_loudness(x: np.ndarray, sr: int) -> float:
    """BS.1770-4 integrated loudness of mono ``x`` in LUFS; -inf when every block is below the -70 LUFS gate."""
    if len(x) == 0:
        return SILENCE_DB
    # settled: a zero-padded tail costs what noise costs (no denormal arithmetic), same squares to the bit
    # (sosfilt filters a float64 copy of float32 input itself: exact, and one copy fewer than converting first)
    x = np.asarray(x)
    y = sosfilt_settled(
        k_weighting_sos(int(sr)), x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)
    )
    sq = y * y
    step = int(round(0.1 * sr))  # 100 ms hop = 75 % overlap of 400 ms blocks
    n_steps = len(sq) // step
    step_sums = sq[: n_steps * step].reshape(n_steps, step).sum(axis=1)
    return gated_loudness(step_sums, step, float(np.mean(sq)))


def gated_loudness(step_sums: np.ndarray, step: int, mean_square: float) -> float:
    """BS.1770-4 gating of a K-weighted signal given as the sums of its squares over consecutive 100 ms steps
    (``step`` samples each): 400 ms blocks, absolute gate -70 LUFS, relative gate -10 LU. ``mean_square`` (of the
    whole signal) stands in for a signal shorter than one block. Whole-signal and streaming measurements share it.
    """
    step_sums = np.asarray(step_sums, dtype=np.float64)
    if len(step_sums) < 4:
        z = np.array([mean_square])
    else:
        c = np.concatenate([[0.0], np.cumsum(step_sums)])
        z = (c[4:] - c[:-4]) / (4 * step)
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10.0 * np.log10(z)
    gated = z[block_lufs > LOUDNESS_ABSOLUTE_GATE_LUFS]
    if gated.size == 0:
        return SILENCE_DB
    relative_gate = -0.691 + 10.0 * math.log10(float(np.mean(gated))) - 10.0
    gated = z[(block_lufs > LOUDNESS_ABSOLUTE_GATE_LUFS) & (block_lufs > relative_gate)]
    return -0.691 + 10.0 * math.log10(float(np.mean(gated)))


# ------------------------------------------------------------------------------------- P.56-like active speech level


@dataclass(frozen=True)
class SpeechLevel:
    """Active speech level of a signal and where the speech is active.

    ``level_db`` is the power over the active samples in dB re full scale (-inf for silence); ``activity`` the
    active fraction; ``block_active`` one bool per ``block`` samples.
    """

    level_db: float
    activity: float
    block_active: np.ndarray
    block: int
    length: int

    @property
    def silent(self) -> bool:
        return not math.isfinite(self.level_db)

    def mask(self) -> np.ndarray:
        """Per-sample boolean activity mask of length ``length``."""
        return np.repeat(self.block_active, self.block)[: self.length]

    @property
    def power(self) -> float:
        return 10.0 ** (self.level_db / 10.0) if not self.silent else 0.0


def _smooth(values: np.ndarray, time_constant_s: float, rate: float) -> np.ndarray:
    g = math.exp(-1.0 / (time_constant_s * rate))
    return lfilter([1.0 - g], [1.0, -g], lfilter([1.0 - g], [1.0, -g], values))


def active_speech_level(
    x: np.ndarray,
    sr: int,
    margin_db: float = P56_MARGIN_DB,
    time_constant_s: float = P56_TIME_CONSTANT_S,
    hangover_s: float = P56_HANGOVER_S,
) -> SpeechLevel:
    """P.56-like active speech level of mono ``x`` (see the module docstring for the differences to P.56)."""
    n = len(x)
    block = max(1, int(round(sr / 1000.0)))
    n_blocks = max(1, -(-n // block))
    if n == n_blocks * block:
        x64 = np.asarray(x, dtype=np.float64)
    else:
        x64 = np.zeros(n_blocks * block, dtype=np.float64)
        x64[:n] = x
    energy = float(np.sum(np.square(x64)))  # not np.dot: BLAS sums in a thread-count dependent order
    if n == 0 or energy <= 0.0 or not math.isfinite(energy):
        return SpeechLevel(SILENCE_DB, 0.0, np.zeros(n_blocks, dtype=bool), block, n)
    frames = x64.reshape(n_blocks, block)
    env = _smooth(np.abs(frames).mean(axis=1), time_constant_s, sr / block)
    hang = max(1, int(round(hangover_s * sr / block)))
    # trailing maximum: a block is above a threshold if the envelope was above it in the last `hang` blocks
    held = maximum_filter1d(env, size=hang, origin=(hang - 1) // 2, mode="constant", cval=0.0)
    with np.errstate(divide="ignore"):
        held_db = 20.0 * np.log10(np.maximum(held, 0.0))
    top = float(np.max(held_db))
    if not math.isfinite(top):
        return SpeechLevel(SILENCE_DB, 0.0, np.zeros(n_blocks, dtype=bool), block, n)
    # thresholds from 120 dB below the envelope maximum up to it, increasing
    thresholds = top - np.arange(480, -1, -1) * 0.25
    sorted_db = np.sort(held_db)
    counts = n_blocks - np.searchsorted(sorted_db, thresholds, side="left")
    counts = np.maximum(counts, 1)
    active_level = 10.0 * np.log10(energy / (counts * block))
    diff = active_level - thresholds
    below = np.nonzero(diff <= margin_db)[0]
    if below.size == 0:
        k = len(thresholds) - 1
        threshold, level = float(thresholds[k]), float(active_level[k])
    elif below[0] == 0:
        threshold, level = float(thresholds[0]), float(active_level[0])
    else:
        k = int(below[0])
        # linear interpolation of the crossing diff == margin between grid points k-1 and k
        d0, d1 = diff[k - 1], diff[k]
        t = float((d0 - margin_db) / (d0 - d1)) if d0 != d1 else 1.0
        threshold = float(thresholds[k - 1] + t * (thresholds[k] - thresholds[k - 1]))
        level = float(active_level[k - 1] + t * (active_level[k] - active_level[k - 1]))
    block_active = held_db >= threshold
    if not block_active.any():
        block_active = held_db >= top
    activity = float(block_active.sum() / n_blocks)
    return SpeechLevel(level, activity, block_active, block, n)
