"""The realism operators and correctness fixes: dynamics, saturation, bit depth, mic colour, input gain, soft
low-pass and imaging band limits, URGENT packet-loss bursts, noise order, the valid-part clipping quantile and
the intermittent-noise SNR. Short signals (1-2 s) keep the set fast."""

from __future__ import annotations

import json

import numpy as np
import pytest
from degradation_helpers import xcorr_lag

from degradations import Banks, ChainConfig, plan, render, sample_rng
from degradations.bandwidth import Bandwidth, poor_resample
from degradations.bitdepth import BitDepth
from degradations.clipping import Clipping
from degradations.dynamics import Dynamics, decay_max
from degradations.gain import Gain
from degradations.levels import active_speech_level
from degradations.mic import Mic
from degradations.noise import MAX_NOISE_PEAK_DB, Noise
from degradations.packet_loss import PacketLoss, uniform_burst_pattern
from degradations.saturation import Saturation
from degradations.synthetic import noise_signal

SR = 48000
CFG = ChainConfig()


def _rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-30)


def _band_db(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return 10 * np.log10(spec[(f >= lo) & (f < hi)].sum() + 1e-30)


# ------------------------------------------------------------------------------------------------ dynamics


def test_decay_max_equals_the_recursion():
    rng = np.random.default_rng(0)
    r = np.maximum(rng.standard_normal(500) * 5, 0.0)
    ref, prev = np.zeros_like(r), 0.0
    for i, v in enumerate(r):
        prev = max(v, 0.9 * prev)
        ref[i] = prev
    np.testing.assert_allclose(decay_max(r, 0.9), ref, rtol=1e-9, atol=1e-12)


def test_compressor_and_limiter_reduce_the_peaks(speech):
    loud = (speech * 4).astype(np.float32)
    op = Dynamics()
    base = {"attack_ms": 5.0, "release_ms": 50.0, "threshold_db": -20.0}
    comp = {**base, "mode": "compressor", "ratio": 8.0, "threshold_db": -40.0}
    hi, lo = op.apply(speech * 2, SR, comp), op.apply(speech * 0.5, SR, comp)  # 12 dB apart, both above
    assert _rms_db(hi) - _rms_db(lo) < 4.0
    lim = op.apply(loud, SR, {**base, "mode": "limiter"})
    assert np.max(np.abs(lim)) <= 10 ** (-20 / 20) + 1e-6
    # the gain follows the level: quiet input passes a compressor untouched
    quiet = (speech * 0.01).astype(np.float32)
    np.testing.assert_allclose(
        op.apply(quiet, SR, {**base, "mode": "compressor", "ratio": 8.0}), quiet, rtol=1e-5
    )


def test_expander_deepens_pauses_and_agc_lifts_quiet_speech(speech):
    op = Dynamics()
    x = (speech + noise_signal(2.0, SR, seed=5) * 0.01).astype(np.float32)
    y = op.apply(
        x,
        SR,
        {
            "mode": "expander",
            "attack_ms": 5.0,
            "release_ms": 50.0,
            "threshold_db": -10.0,
            "ratio": 2.0,
            "makeup_db": 0.0,
        },
    )
    quiet = np.abs(speech) < 1e-4  # pauses: noise only
    assert _rms_db(y[quiet]) < _rms_db(x[quiet]) - 6.0
    soft = (speech * 0.05).astype(np.float32)
    agc = op.apply(
        soft,
        SR,
        {"mode": "agc", "attack_ms": 20.0, "release_ms": 50.0, "target_db": -20.0, "max_gain_db": 20.0},
    )
    assert _rms_db(agc) > _rms_db(soft) + 10.0


# ------------------------------------------------------------------------------------ saturation, bit depth


def test_saturation_is_bounded_odd_and_level_dependent(speech):
    op = Saturation()
    for curve in ("tanh", "arctan"):
        p = {"curve": curve, "drive_db": 10.0}
        y = op.apply((speech * 20).astype(np.float32), SR, p)
        assert np.max(np.abs(y)) <= 1.0
        np.testing.assert_allclose(op.apply(-speech, SR, p), -op.apply(speech, SR, p), rtol=1e-6)
        loud = op.process((speech * 10).astype(np.float32), SR, p, None).report["saturated_fraction"]
        quiet = op.process((speech * 0.1).astype(np.float32), SR, p, None).report["saturated_fraction"]
        assert loud > quiet


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_bit_depth_levels_and_dither_floor(speech, bits):
    op = BitDepth()
    plain = op.apply(speech, SR, {"bits": bits, "dither": "none", "dither_seed": 1})
    step = 2.0 ** (1 - bits)
    np.testing.assert_allclose(plain / step, np.round(plain / step), atol=1e-3)
    assert np.max(np.abs(plain - speech)) <= step / 2 + 1e-7
    dithered = op.apply(speech, SR, {"bits": bits, "dither": "tpdf", "dither_seed": 1})
    err = _rms_db(dithered - speech)
    # TPDF dither (variance step**2 / 6) + rounding (step**2 / 12): step**2 / 4
    expected = 10 * np.log10(step**2 / 4)
    assert err == pytest.approx(expected, abs=1.0)
    assert not np.array_equal(
        dithered, op.apply(speech, SR, {"bits": bits, "dither": "tpdf", "dither_seed": 2})
    )


def test_bit_depth_keeps_a_zero_padded_tail_silent(speech):
    padded = np.concatenate([speech, np.zeros(SR, np.float32)])
    y = BitDepth().apply(padded, SR, {"bits": 8, "dither": "tpdf", "dither_seed": 3})
    assert not y[len(speech) + 1 :].any()


# ---------------------------------------------------------------------------------------- mic, input gain


def test_mic_colours_only_the_air_band():
    x = noise_signal(1.0, SR, seed=2)
    p = {
        "high_shelf": {"freq_hz": 12000.0, "gain_db": 12.0, "q": 0.7},
        "peaks": [{"freq_hz": 16000.0, "gain_db": 6.0, "q": 5.0}],
    }
    y = Mic().apply(x, SR, p)
    assert abs(_band_db(y, 200, 4000) - _band_db(x, 200, 4000)) < 0.5
    assert _band_db(y, 14000, 22000) > _band_db(x, 14000, 22000) + 8.0
    assert xcorr_lag(x, y, 200) == 0


def test_input_gain_scales_target_and_degraded_alike(speech):
    target, degraded, report = Gain().step(speech, speech * 0.5, SR, {"gain_db": -6.0}, None)
    np.testing.assert_allclose(target, speech * 10 ** (-6 / 20), rtol=1e-6)
    np.testing.assert_allclose(degraded, speech * 0.5 * 10 ** (-6 / 20), rtol=1e-6)
    assert report == {"input_gain_db": -6.0}


# ------------------------------------------------------------------------------------------------ bandwidth


def test_soft_lowpass_has_a_continuous_cutoff_and_no_brick_wall():
    x = noise_signal(1.0, SR, seed=3)
    op = Bandwidth()
    y = op.apply(x, SR, {"mode": "lowpass", "cutoff_hz": 5500.0, "family": "butter", "order": 2})
    below, edge = (
        _band_db(y, 1000, 2000) - _band_db(x, 1000, 2000),
        _band_db(y, 5400, 5600) - _band_db(x, 5400, 5600),
    )
    above = _band_db(y, 11000, 12000) - _band_db(x, 11000, 12000)
    assert abs(below) < 0.5 and edge == pytest.approx(-6.0, abs=1.0)  # |H|**2: -6 dB at the -3 dB point
    assert -40.0 < above < -15.0  # a gentle roll-off leaves the octave above audible, unlike a brick wall
    assert xcorr_lag(x, y, 200) == 0


@pytest.mark.parametrize("interpolation", ["zoh", "linear"])
def test_poor_resampling_leaves_images_above_the_new_band(speech, interpolation):
    y = poor_resample(speech, SR, 11025.0, interpolation)
    ref = Bandwidth().apply(speech, SR, {"mode": "resample", "rate_hz": 11025, "family": "poly"})
    assert y.shape == speech.shape and y.dtype == np.float32
    assert (
        _band_db(y, 6000, 16000) > _band_db(ref, 6000, 16000) + 20.0
    )  # images where resampling leaves nothing
    assert abs(xcorr_lag(speech, y, 200)) <= 1


def test_resample_aliases_are_as_weak_as_the_docstring_says():
    t = np.arange(SR) / SR
    tone = (0.5 * np.sin(2 * np.pi * 20000 * t)).astype(np.float32)
    for family in ("poly", "butter", "cheby1", "ellip", "bessel"):
        p = {"rate_hz": 16000, "family": family, "order": 2, "ripple_db": 1.0, "stopband_db": 60.0}
        assert _rms_db(Bandwidth().apply(tone, SR, p)) - _rms_db(tone) < -55.0, family


# ------------------------------------------------------------------------------------------------- packets


def test_uniform_bursts_follow_urgent():
    lost = uniform_burst_pattern(2000, 0.2, 9, seed=4)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, lost.astype(int), 0])))[::2]
    assert 0.12 < lost.mean() <= 0.2 + 1e-9 and np.mean(runs <= 9) > 0.8 and np.median(runs) >= 3
    np.testing.assert_array_equal(lost, uniform_burst_pattern(2000, 0.2, 9, seed=4))
    op = PacketLoss()
    old = {"packet_ms": 20.0, "loss_rate": 0.2, "mean_burst": 2.0, "max_burst": 10, "pattern_seed": 7}
    assert op.process(np.ones(SR, np.float32), SR, old, None).report["burst_model"] == "gilbert"


# ----------------------------------------------------------------------------------- correctness of levels


def test_clipping_threshold_comes_from_the_valid_part(speech):
    padded = np.concatenate([speech, np.zeros(4 * len(speech), np.float32)])
    op = Clipping()
    new = op.process(padded, SR, {"mode": "hard", "quantile": 0.95, "measure": "valid"}, None).report
    alone = op.process(speech, SR, {"mode": "hard", "quantile": 0.95, "measure": "valid"}, None).report
    assert new["clipping_threshold"] == alone["clipping_threshold"]
    assert new["clipped_fraction"] == pytest.approx(0.05, abs=0.01)
    # noise in the padding: the valid length from the render still measures the speech alone
    noisy = padded + np.r_[
        np.zeros(len(speech)), noise_signal(4 * len(speech) / SR, SR, seed=1) * 0.01
    ].astype(np.float32)
    given = {"mode": "hard", "quantile": 0.95, "measure": "valid", "valid_samples": len(speech)}
    assert op.process(noisy, SR, given, None).report["clipped_fraction"] == pytest.approx(0.05, abs=0.01)
    old = op.process(
        padded, SR, {"mode": "hard", "quantile": 0.95}, None
    ).report  # plans made before: as before
    assert old["clipping_threshold"] < new["clipping_threshold"] / 2  # the padding's zeros pulled it down


def test_intermittent_noise_is_bounded(speech):
    clicks = np.zeros(3 * SR, np.float32)
    clicks[::4800] = 0.5
    banks = Banks.from_arrays(SR, noise={"clicks": clicks, "white": noise_signal(3.0, SR, seed=1)})
    op = Noise()
    for snr in (-5.0, 0.0):
        p = {"noise_id": "clicks", "snr_db": snr, "offset_fraction": 0.0, "reference_level_db": -26.0}
        old = op.process(speech, SR, p, banks)
        new = op.process(speech, SR, {**p, "snr_definition": "auto"}, banks)
        ratio = lambda out: np.max(np.abs(out.audio - speech)) / np.max(np.abs(speech))  # noqa: E731
        assert ratio(old) > 10.0 and ratio(new) <= 10 ** (MAX_NOISE_PEAK_DB / 20) + 1e-3
        assert new.report["noise_peak_limited"] and new.report["achieved_snr_db"] > snr
    p = {
        "noise_id": "white",
        "snr_db": -5.0,
        "offset_fraction": 0.0,
        "reference_level_db": -26.0,
        "snr_definition": "auto",
    }
    out = op.process(speech, SR, p, banks)
    assert not out.report["noise_peak_limited"] and out.report["achieved_snr_db"] == pytest.approx(
        -5.0, abs=0.1
    )
    # clicks only in the pauses: the whole-signal (URGENT) definition takes over
    gated = noise_signal(len(speech) / SR, SR, seed=6) * 1e-3  # a faint floor under the clicks
    pauses = np.flatnonzero(~active_speech_level(speech, SR).mask())
    gated[pauses[::2000]] = 0.5
    banks = Banks.from_arrays(SR, noise={"gated": gated})
    p = {
        "noise_id": "gated",
        "snr_db": 10.0,
        "offset_fraction": 0.0,
        "reference_level_db": -26.0,
        "snr_definition": "auto",
    }
    assert op.process(speech, SR, p, banks).report["snr_definition"] == "whole"


# ---------------------------------------------------------------------------------------------------- chain


def test_noise_after_extras_is_drawn_recorded_and_rendered(memory_banks, speech_long):
    ctx = memory_banks.catalog()
    first: dict[bool, list] = {}
    for i in range(300):
        steps = plan(f"o{i}", 3, CFG, ctx)
        ops = [s["op"] for s in steps]
        extras = [o for o in ops if o in CFG.extras.ops]
        noise = [s for s in steps if s["op"] == "noise"]
        if noise and extras:
            after = noise[0]["params"]["after_extras"]
            assert (ops.index("noise") > ops.index(extras[-1])) == after  # the step order is the record
            first.setdefault(after, steps)
    assert set(first) == {True, False}
    for after, steps in first.items():
        report = render(speech_long, SR, steps, memory_banks).report
        assert report["noise_after_extras"] == after and report["ops"] == [s["op"] for s in steps]


def test_plans_made_before_the_new_recipe_still_render(speech_long, memory_banks):
    nid = memory_banks.catalog()["noise"][0]["id"]
    old = [
        {"op": "loudness", "params": {"target_lufs": -20.0}},
        {
            "op": "noise",
            "params": {"noise_id": nid, "snr_db": 5.0, "offset_fraction": 0.3, "reference_level_db": -26.0},
        },
        {"op": "bandwidth", "params": {"rate_hz": 16000, "family": "butter", "order": 4}},
        {"op": "clipping", "params": {"mode": "hard", "quantile": 0.95}},
        {"op": "codec", "params": {"codec": "mp3", "bitrate_kbps": 32.0}},
        {
            "op": "packet_loss",
            "params": {
                "packet_ms": 20.0,
                "loss_rate": 0.1,
                "mean_burst": 2.0,
                "max_burst": 10,
                "pattern_seed": 5,
            },
        },
        {"op": "peak", "params": {"max_peak": 0.99}},
    ]
    a = render(speech_long, SR, old, memory_banks)
    b = render(speech_long, SR, old, memory_banks, valid=len(speech_long) // 2)  # old params ignore valid
    assert a.degraded.tobytes() == b.degraded.tobytes()
    assert a.report["snr_definition"] == "active" and a.report["bandwidth_mode"] == "resample"
    json.dumps(a.report, allow_nan=False)


@pytest.mark.parametrize("name", ["dynamics", "saturation", "bitdepth", "mic", "gain"])
def test_new_operators_draw_inside_their_ranges(name, memory_banks):
    op = CFG.operator(name)
    c = getattr(CFG, name)
    for i in range(40):
        p = op.sample(sample_rng(0, f"d{i}", name), memory_banks.catalog())
        assert json.loads(json.dumps(p)) == p
        if name == "saturation":
            assert c.drive_db[0] <= p["drive_db"] <= c.drive_db[1] and p["curve"] in c.curves
        elif name == "bitdepth":
            assert c.bits[0] <= p["bits"] <= c.bits[1] and p["dither"] in c.dithers
        elif name == "gain":
            assert c.gain_db[0] <= p["gain_db"] <= c.gain_db[1]
        elif name == "mic":
            assert c.peaks[0] <= len(p["peaks"]) <= c.peaks[1]
            assert all(c.peak_hz[0] <= b["freq_hz"] <= c.peak_hz[1] for b in p["peaks"])
        else:
            assert p["mode"] in c.modes and c.attack_ms[0] <= p["attack_ms"] <= c.attack_ms[1]
