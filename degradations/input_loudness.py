"""Loudness normalisation of a model's degraded input, shared by the training loader and restore.

Synthesis normalises the *clean* signal to -20 LUFS before it adds noise, so at low SNR a degraded sample is
several dB hotter than the same recording normalised as a whole. Restore sees loudness-normalised input, so the
training loader normalises the degraded input the same way (:func:`normalize_input`) and multiplies the clean target
by the gain it returned: the model learns a mapping at the level it will meet, and the pair stays consistent.

The measurement is ITU-R BS.1770-4 integrated loudness (:func:`degradations.levels.integrated_loudness`). The gain
is bounded so near-silent input cannot blow up:

* input whose every 400 ms block lies under the -70 LUFS absolute gate (digital silence, a muted stretch) gets gain
  1.0: there is no level to match, and amplifying a noise floor by 50 dB or more helps nobody;
* otherwise the gain is clamped to ``[-max_gain_db, +max_gain_db]`` (default 30 dB: a -50 LUFS whisper reaches -20,
  nothing quieter is raised further);
* ``max_peak`` (optional) lowers the gain further so the output peak stays at or under it. Training and restore
  work in float and keep it off; a caller that must write integer PCM can set it.
"""

from __future__ import annotations

import math

import numpy as np

from degradations.levels import db_to_gain, integrated_loudness, peak

DEFAULT_MAX_GAIN_DB = 30.0


def input_gain(
    x: np.ndarray,
    sr: int,
    target_lufs: float,
    max_gain_db: float = DEFAULT_MAX_GAIN_DB,
    max_peak: float | None = None,
) -> float:
    """The linear gain that brings mono ``x`` to ``target_lufs`` (bounded as the module docstring says)."""
    loudness = integrated_loudness(np.asarray(x), int(sr))
    if not math.isfinite(loudness):
        gain = 1.0
    else:
        gain_db = min(max(float(target_lufs) - loudness, -float(max_gain_db)), float(max_gain_db))
        gain = db_to_gain(gain_db)
    if max_peak is not None:
        p = peak(np.asarray(x))
        if p > 0.0 and p * gain > max_peak:
            gain = float(max_peak) / p
    return float(gain)


def normalize_input(
    x: np.ndarray,
    sr: int,
    target_lufs: float,
    max_gain_db: float = DEFAULT_MAX_GAIN_DB,
    max_peak: float | None = None,
) -> tuple[np.ndarray, float]:
    """``(x * gain, gain)`` with ``gain`` from :func:`input_gain`; float32 out. Apply the same ``gain`` to any
    signal paired with ``x`` (the training target) so the pair keeps its relative level."""
    gain = input_gain(x, sr, target_lufs, max_gain_db=max_gain_db, max_peak=max_peak)
    y = np.asarray(x, dtype=np.float32)
    return (y * np.float32(gain)).astype(np.float32, copy=False), gain
