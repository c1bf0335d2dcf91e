"""Operators that use banks or levels: noise SNR on active speech, reverb alignment/early target, loudness, peak."""

from __future__ import annotations

import numpy as np
import pytest
from degradation_helpers import xcorr_lag

from degradations import ChainConfig
from degradations.levels import active_speech_level, integrated_loudness, peak
from degradations.noise import noise_excerpt

CFG = ChainConfig()


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 7.5, 20.0])
@pytest.mark.parametrize("noise_id", ["white", "brown", "short"])
def test_noise_hits_the_target_snr_on_active_speech(speech, memory_banks, sr, snr_db, noise_id):
    op = CFG.operator("noise")
    params = {"noise_id": noise_id, "snr_db": snr_db, "offset_fraction": 0.37, "reference_level_db": -26.0}
    out = op.process(speech, sr, params, memory_banks)
    added = out.audio.astype(np.float64) - speech
    level = active_speech_level(speech, sr)  # measured independently of the operator's bookkeeping
    mask = level.mask()
    achieved = level.level_db - 10 * np.log10(np.mean(added[mask] ** 2))
    assert achieved == pytest.approx(snr_db, abs=0.5)
    assert out.report["achieved_snr_db"] == pytest.approx(achieved, abs=0.01)
    assert out.report["snr_db"] == snr_db and out.report["noise_id"] == noise_id


def test_noise_snr_is_on_active_speech_not_the_whole_clip(sr, memory_banks):
    rng = np.random.default_rng(5)
    talk = (rng.standard_normal(sr) * 0.05).astype(np.float32)
    x = np.concatenate([talk, np.zeros(3 * sr, np.float32)])  # 75 % pause
    params = {"noise_id": "white", "snr_db": 10.0, "offset_fraction": 0.0, "reference_level_db": -26.0}
    y = CFG.operator("noise").apply(x, sr, params, memory_banks)
    noise = y.astype(np.float64) - x
    whole_clip_snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise**2))
    active_snr = 10 * np.log10(np.mean(talk.astype(np.float64) ** 2) / np.mean(noise[:sr] ** 2))
    # P.56 counts the hangover and envelope decay after the talk (~0.3 s) as active: ~1.1 dB here
    assert active_snr == pytest.approx(10.0, abs=1.5)
    assert whole_clip_snr < 5.0  # a whole-clip measure would have put the noise 6 dB lower


def test_noise_excerpt_offsets_and_loops():
    noise = np.arange(10, dtype=np.float32)
    seg, off = noise_excerpt(noise, 4, 0.999)
    assert off == 6 and seg.tolist() == [6, 7, 8, 9]
    seg, off = noise_excerpt(noise, 4, 0.0)
    assert off == 0 and seg.tolist() == [0, 1, 2, 3]
    seg, off = noise_excerpt(noise, 25, 0.5)  # looped: the 10-sample noise has a 2-sample cross-faded seam
    period = [
        8.0,
        5.0,
        2.0,
        3.0,
        4.0,
        5.0,
        6.0,
        7.0,
    ]  # [0, 1] blended with [8, 9]: 0*0 + 8*1, then 1*.5 + 9*.5
    assert off == 4 and seg.tolist() == [period[(4 + i) % 8] for i in range(25)]


def test_looped_noise_has_no_click_at_the_seam():
    from degradations.noise import seamless_loop

    rng = np.random.default_rng(3)
    noise = np.cumsum(rng.standard_normal(4800)).astype(np.float32)  # brown noise: a raw seam would jump
    period = seamless_loop(noise)
    looped = np.concatenate([period, period])
    step_at_seam = abs(looped[len(period)] - looped[len(period) - 1])
    assert step_at_seam < 5 * np.std(np.diff(noise))
    assert abs(noise[-1] - noise[0]) > 10 * np.std(np.diff(noise))  # the raw seam does click


def test_noise_on_silent_input_uses_the_reference_level(sr, memory_banks):
    params = {"noise_id": "white", "snr_db": 6.0, "offset_fraction": 0.1, "reference_level_db": -26.0}
    out = CFG.operator("noise").process(np.zeros(sr, np.float32), sr, params, memory_banks)
    assert out.report["achieved_snr_db"] is None
    level = 10 * np.log10(np.mean(out.audio.astype(np.float64) ** 2))
    assert level == pytest.approx(-32.0, abs=0.1)


def test_reverb_is_aligned_and_reports_room(speech, memory_banks, sr):
    op = CFG.operator("reverb")
    for rid in ("rir_a", "rir_b", "rir_c"):
        params = {"rir_id": rid, "early_target": False, "early_ms": 50.0, "max_rir_s": 1.0}
        out = op.process(speech, sr, params, memory_banks)
        click = np.zeros(sr // 2, np.float32)
        click[1000] = 1.0
        assert (
            np.argmax(np.abs(op.apply(click, sr, params, memory_banks))) == 1000
        )  # direct path lands in place
        assert out.report["rir_id"] == rid and out.report["rt60"] > 0 and out.report["drr"] is not None
        # the reverberant tail fills the pauses
        assert np.sum(out.audio**2) > 0.5 * np.sum(speech.astype(np.float64) ** 2)


def test_reverb_aligns_on_the_direct_sound_when_a_reflection_is_stronger(sr):
    from degradations import Banks

    rir = np.zeros(sr // 2, np.float32)
    rir[300] = 0.7  # direct sound
    rir[396] = 0.8  # a reflection 2 ms later, a little stronger (microphone near a wall)
    rir[397:] = (
        0.01
        * np.random.default_rng(0).standard_normal(len(rir) - 397)
        * np.exp(-np.arange(len(rir) - 397) / 4800)
    )
    banks = Banks.from_arrays(sr, rir={"wall": rir})
    params = {"rir_id": "wall", "early_target": False, "early_ms": 50.0, "max_rir_s": 1.0}
    click = np.zeros(sr // 2, np.float32)
    click[1000] = 1.0
    y = CFG.operator("reverb").apply(click, sr, params, banks)
    assert y[1000] == pytest.approx(0.7 / np.sqrt(np.sum(rir.astype(np.float64) ** 2)), rel=1e-5)
    assert np.argmax(np.abs(y)) == 1096  # the reflection follows, 2 ms late
    assert np.abs(y[:1000]).max() < 1e-6  # nothing arrives before the direct sound


def test_reverb_early_target(speech, memory_banks, sr):
    op = CFG.operator("reverb")
    params = {"rir_id": "rir_c", "early_target": True, "early_ms": 50.0, "max_rir_s": 1.0}
    target, degraded, _ = op.step(speech.copy(), speech.copy(), sr, params, memory_banks)
    assert xcorr_lag(speech, target, int(0.05 * sr)) == 0
    assert not np.array_equal(target, speech)
    # early reverb is closer to the reverberant signal's early part than the dry signal is, and less smeared
    assert np.mean((target - degraded) ** 2) < np.mean((speech - degraded) ** 2)
    dry = {**params, "early_target": False}
    target_dry, _, _ = op.step(speech.copy(), speech.copy(), sr, dry, memory_banks)
    np.testing.assert_array_equal(target_dry, speech)


def test_reverb_from_files_resampled_rir(speech, file_banks, sr):
    out = CFG.operator("reverb").process(
        speech,
        sr,
        {"rir_id": "shoebox", "early_target": False, "early_ms": 50.0, "max_rir_s": 1.0},
        file_banks,
    )
    click = np.zeros(sr // 2, np.float32)
    click[5000] = 1.0
    y = CFG.operator("reverb").apply(
        click,
        sr,
        {"rir_id": "shoebox", "early_target": False, "early_ms": 50.0, "max_rir_s": 1.0},
        file_banks,
    )
    assert np.argmax(np.abs(y)) == 5000
    assert out.report["drr"] is not None


def test_room_metrics_are_measured_when_the_manifest_has_none(speech, memory_banks, sr):
    from degradations import Banks
    from degradations.synthetic import synthetic_rir

    banks = Banks.from_arrays(sr, rir={"bare": synthetic_rir(0.6, sr, seed=4)})  # no metadata at all
    params = {"rir_id": "bare", "early_target": False, "early_ms": 50.0, "max_rir_s": 1.0}
    report = CFG.operator("reverb").process(speech, sr, params, banks).report
    assert report["rt60"] == pytest.approx(0.6, rel=0.15)
    assert report["drr"] is not None and report["c50"] is not None


def test_loudness_normalises_to_target(speech, sr):
    op = CFG.operator("loudness")
    for scale in (0.01, 1.0, 5.0):
        out = op.process((speech * scale).astype(np.float32), sr, {"target_lufs": -20.0}, None)
        assert integrated_loudness(out.audio, sr) == pytest.approx(-20.0, abs=0.05)
        assert out.report["loudness_gain_db"] == pytest.approx(-20.0 - out.report["loudness_lufs"])


def test_loudness_leaves_silence_alone(sr):
    out = CFG.operator("loudness").process(np.zeros(sr, np.float32), sr, {"target_lufs": -20.0}, None)
    assert not out.audio.any() and out.report["loudness_gain_db"] is None


def test_peak_scales_jointly(sr):
    op = CFG.operator("peak")
    target = np.full(100, 0.5, np.float32)
    degraded = np.linspace(-3, 2, 100).astype(np.float32)
    t, d, rep = op.step(target, degraded, sr, {"max_peak": 0.99}, None)
    assert max(peak(t), peak(d)) <= 0.99
    assert rep["peak_scale"] == pytest.approx(0.99 / 3.0)
    np.testing.assert_allclose(t / target, rep["peak_scale"], rtol=1e-6)
    quiet = np.full(10, 0.1, np.float32)
    t, d, rep = op.step(quiet, quiet, sr, {"max_peak": 0.99}, None)
    assert rep["peak_scale"] == 1.0 and np.array_equal(t, quiet)
