"""BS.1770 loudness and the P.56-like active speech level."""

from __future__ import annotations

import math

import numpy as np
import pyloudnorm
import pytest

from degradations.levels import active_speech_level, integrated_loudness, k_weighting_sos, power_db


def test_k_weighting_matches_the_standard_at_48k():
    sos = k_weighting_sos(48000)
    # coefficients printed in ITU-R BS.1770-4, tables 1 and 2
    np.testing.assert_allclose(
        sos[0],
        [1.53512485958697, -2.69169618940638, 1.19839281085285, 1.0, -1.69065929318241, 0.73248077421585],
        rtol=1e-10,
    )
    np.testing.assert_allclose(sos[1], [1.0, -2.0, 1.0, 1.0, -1.99004745483398, 0.99007225036621], rtol=1e-9)


def test_full_scale_1khz_sine_reads_minus_3_01_lufs():
    t = np.arange(5 * 48000) / 48000
    x = np.sin(2 * np.pi * 997 * t)
    assert integrated_loudness(x, 48000) == pytest.approx(-3.01, abs=0.05)


@pytest.mark.parametrize("sr", [48000, 44100, 16000])
def test_loudness_agrees_with_pyloudnorm(speech, sr):
    from degradations.synthetic import speech_like

    x = speech_like(3.0, sr, seed=1)
    ours = integrated_loudness(x, sr)
    theirs = pyloudnorm.Meter(sr).integrated_loudness(x.astype(np.float64))
    # pyloudnorm's K-filter is an approximation away from 48 kHz; within 0.2 LU everywhere
    assert ours == pytest.approx(theirs, abs=0.2 if sr != 48000 else 0.06)


def test_loudness_of_silence_and_tiny_inputs():
    assert integrated_loudness(np.zeros(48000, np.float32), 48000) == -math.inf
    assert integrated_loudness(np.zeros(0, np.float32), 48000) == -math.inf
    assert integrated_loudness(np.array([0.5], np.float32), 48000) <= 0.0


def test_active_level_ignores_pauses():
    rng = np.random.default_rng(0)
    active = (rng.standard_normal(48000 * 2) * 0.05).astype(np.float32)
    x = np.concatenate([np.zeros(48000 * 2, np.float32), active])
    level = active_speech_level(x, 48000)
    assert level.level_db == pytest.approx(power_db(active), abs=0.5)
    assert 0.45 <= level.activity <= 0.6  # the hangover adds up to 200 ms around the active half
    assert power_db(x) < level.level_db - 2.5  # the long-term level is diluted by the pause


def test_active_level_mask_marks_the_active_part(speech):
    level = active_speech_level(speech, 48000)
    mask = level.mask()
    assert mask.shape == speech.shape and mask.dtype == bool
    assert 0.3 < level.activity < 1.0
    # inactive samples carry little of the energy
    e = np.square(speech.astype(np.float64))
    assert e[~mask].sum() < 0.05 * e.sum()


@pytest.mark.parametrize("x", [np.zeros(1000, np.float32), np.zeros(0, np.float32)])
def test_active_level_of_silence(x):
    level = active_speech_level(x, 48000)
    assert level.silent and level.activity == 0.0 and not level.mask().any()


def test_active_level_of_one_sample():
    level = active_speech_level(np.array([0.3], np.float32), 48000)
    assert math.isfinite(level.level_db) and level.mask().shape == (1,)
