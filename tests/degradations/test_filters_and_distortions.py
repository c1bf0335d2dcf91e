"""Bandwidth limitation, clipping, packet loss and EQ."""

from __future__ import annotations

import numpy as np
import pytest
from degradation_helpers import energy_above_db

from degradations import ChainConfig
from degradations.bandwidth import FAMILIES
from degradations.packet_loss import loss_pattern

CFG = ChainConfig()
RATES = [8000, 16000, 22050, 24000, 32000, 44100]


@pytest.fixture(scope="module")
def white(sr) -> np.ndarray:
    # white noise is the hardest case for a band limit: as much energy just above the cutoff as anywhere
    return (np.random.default_rng(0).standard_normal(sr) * 0.1).astype(np.float32)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rate", RATES)
def test_band_limited_output_has_no_energy_above_cutoff(white, sr, family, rate):
    params = {"rate_hz": rate, "family": family, "order": 2, "ripple_db": 1.0, "stopband_db": 40.0}
    y = CFG.operator("bandwidth").apply(white, sr, params)
    assert energy_above_db(y, sr, rate / 2) < -40.0
    # and the pass band survives
    low = np.fft.rfftfreq(len(y), 1 / sr) < 0.5 * rate / 2
    assert np.sum(np.abs(np.fft.rfft(y))[low] ** 2) > 0.5 * np.sum(np.abs(np.fft.rfft(white))[low] ** 2)


@pytest.mark.parametrize("family", ["butter", "cheby1", "ellip", "bessel"])
def test_filter_families_differ(white, sr, family):
    base = {"rate_hz": 16000, "family": "poly"}
    y0 = CFG.operator("bandwidth").apply(white, sr, base)
    y1 = CFG.operator("bandwidth").apply(
        white, sr, {**base, "family": family, "order": 4, "ripple_db": 2.0, "stopband_db": 50.0}
    )
    assert not np.allclose(y0, y1, atol=1e-4)


def test_bandwidth_rejects_unknown_family(white, sr):
    with pytest.raises(ValueError, match="unknown family 'fir'"):
        CFG.operator("bandwidth").apply(white, sr, {"rate_hz": 8000, "family": "fir"})


@pytest.mark.parametrize("quantile", [0.9, 0.95, 0.99])
def test_hard_clipping_fraction_is_as_recorded(speech, sr, quantile):
    out = CFG.operator("clipping").process(speech, sr, {"mode": "hard", "quantile": quantile}, None)
    t = out.report["clipping_threshold"]
    at_rail = np.count_nonzero(np.abs(out.audio) >= np.float32(t)) / len(speech)
    strictly_above = np.count_nonzero(np.abs(speech) > np.float32(t)) / len(speech)
    assert out.report["clipped_fraction"] == pytest.approx(strictly_above)
    assert out.report["clipped_fraction"] == pytest.approx(1 - quantile, abs=0.01)
    assert at_rail >= out.report["clipped_fraction"] and at_rail - out.report["clipped_fraction"] < 1e-3
    assert np.max(np.abs(out.audio)) == pytest.approx(t)


def test_soft_clipping_saturates_below_threshold(speech, sr):
    out = CFG.operator("clipping").process(speech, sr, {"mode": "soft", "quantile": 0.9}, None)
    t = out.report["clipping_threshold"]
    assert np.max(np.abs(out.audio)) <= t + 1e-6
    small = np.abs(speech) < 0.05 * t
    np.testing.assert_allclose(out.audio[small], speech[small], rtol=1e-3, atol=1e-7)
    assert out.report["clipped_fraction"] == pytest.approx(0.1, abs=0.01)


def test_packet_loss_zeroes_exactly_the_recorded_packets(speech_long, sr):
    params = {"packet_ms": 20.0, "loss_rate": 0.2, "mean_burst": 2.5, "max_burst": 10, "pattern_seed": 42}
    x = speech_long.copy()
    x[x == 0] = 1e-6  # so that every zero in the output is a loss
    out = CFG.operator("packet_loss").process(x, sr, params, None)
    packet = out.report["packet_samples"]
    assert packet == 960
    lost = set(out.report["lost_packets"])
    assert lost
    for i in range(-(-len(x) // packet)):
        seg = slice(i * packet, (i + 1) * packet)
        if i in lost:
            assert not out.audio[seg].any()
        else:
            np.testing.assert_array_equal(out.audio[seg], x[seg])


def test_loss_pattern_statistics_and_burst_cap():
    lost = loss_pattern(200_000, loss_rate=0.15, mean_burst=3.0, max_burst=10, seed=1)
    assert lost.mean() == pytest.approx(0.15, abs=0.01)
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], lost.astype(int), [0]]))))[::2]
    assert runs.max() <= 10
    assert runs.mean() == pytest.approx(3.0, rel=0.15)
    capped = loss_pattern(10_000, loss_rate=0.9, mean_burst=10.0, max_burst=4, seed=2)
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], capped.astype(int), [0]]))))[::2]
    assert runs.max() <= 4


def test_eq_changes_the_spectrum_as_drawn(sr):
    x = (np.random.default_rng(1).standard_normal(sr) * 0.05).astype(np.float32)
    params = {
        "low_shelf": {"freq_hz": 300.0, "gain_db": 12.0, "q": 0.7},
        "high_shelf": None,
        "peaks": [],
        "highpass": None,
    }
    y = CFG.operator("eq").apply(x, sr, params)
    f = np.fft.rfftfreq(len(x), 1 / sr)
    band = f < 100
    gain_db = 10 * np.log10(
        np.sum(np.abs(np.fft.rfft(y))[band] ** 2) / np.sum(np.abs(np.fft.rfft(x))[band] ** 2)
    )
    assert gain_db == pytest.approx(12.0, abs=1.0)
    hp = {
        "low_shelf": None,
        "high_shelf": None,
        "peaks": [],
        "highpass": {"freq_hz": 400.0, "rolloff_db": 24},
    }
    y = CFG.operator("eq").apply(x, sr, hp)
    assert energy_above_db(y, sr, 200) > -0.5  # almost nothing left below 200 Hz


def test_eq_sample_never_empty():
    op = CFG.operator("eq")
    from degradations import sample_rng

    for i in range(50):
        p = op.sample(sample_rng(0, f"k{i}", "eq"), {})
        assert p["low_shelf"] or p["high_shelf"] or p["peaks"] or p["highpass"]


@pytest.mark.parametrize("factor", [2, 3, 6])
def test_iir_families_alias_like_true_decimation(sr, factor):
    """Sampling at the lower rate is computed by spectral folding; for integer ratios it equals x[::factor]."""
    from degradations.bandwidth import band_limit, reconstruction_mask

    x = np.random.default_rng(2).standard_normal(sr).astype(np.float32)
    rate = sr // factor
    dec = np.fft.rfft(x[::factor].astype(np.float64)) * factor
    spec = np.zeros(len(x) // 2 + 1, complex)
    spec[: len(dec)] = dec
    reference = np.fft.irfft(spec * reconstruction_mask(len(x), sr, rate / 2), len(x))
    np.testing.assert_allclose(band_limit(x, sr, rate / 2, alias_rate_hz=rate), reference, atol=1e-4)


def test_gentle_filters_alias_a_tone_into_the_band(sr):
    t = np.arange(sr) / sr
    tone = (0.5 * np.sin(2 * np.pi * 5000 * t)).astype(np.float32)  # 1 kHz above the new Nyquist of 4 kHz
    op = CFG.operator("bandwidth")
    bessel = op.apply(tone, sr, {"rate_hz": 8000, "family": "bessel", "order": 2})
    ellip = op.apply(
        tone, sr, {"rate_hz": 8000, "family": "ellip", "order": 8, "ripple_db": 0.5, "stopband_db": 80.0}
    )
    spectrum = np.abs(np.fft.rfft(bessel))
    assert np.argmax(spectrum) * sr / len(tone) == pytest.approx(3000, abs=2)  # 8000 - 5000
    assert np.std(bessel) > 100 * np.std(ellip)
