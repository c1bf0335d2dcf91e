"""Metrics against known values (identical signals, a pure delay, white noise at a known SNR, a low-passed copy)
and against the reference packages (pesq, pystoi, speechmos) called directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import butter, sosfiltfilt

from datasets.audio import resample
from training import metrics
from training.metrics import METRICS, MetricInputError, score, si_sdr

SR = 48000


def speech_like(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """A broadband, amplitude-modulated harmonic signal with a noise floor: like voiced speech, full band."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 140 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 150))
    x = x * (0.55 + 0.45 * np.sin(2 * np.pi * 3.1 * t)) + 0.05 * rng.standard_normal(len(t))
    return (0.3 * x / np.max(np.abs(x))).astype(np.float32)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return speech_like()


def test_identical_signals_score_perfectly(clean):
    s = score(clean, SR, clean, metrics=metrics.INTRUSIVE)
    assert s["si_sdr"] >= 100  # capped at 200 dB instead of +inf
    assert s["lsd"] == 0 and s["lsd_hf"] == 0
    assert s["mel_ssim"] == pytest.approx(1.0)
    assert s["estoi"] == pytest.approx(1.0, abs=1e-6)
    assert s["pesq_wb"] > 4.5  # P.862.2 tops out at 4.64
    assert not s.reasons


def test_si_sdr_is_scale_invariant_but_not_delay_invariant(clean):
    assert si_sdr(0.25 * clean, clean) >= 100
    delay = 240  # 5 ms
    delayed = np.concatenate([np.zeros(delay, np.float32), clean[:-delay]])
    s = score(delayed, SR, clean, metrics=["si_sdr", "lsd"])
    # a 5 ms shift decorrelates the harmonics: SI-SDR collapses, the magnitude-only LSD barely moves
    assert s["si_sdr"] < 0
    assert s["lsd"] < 0.5


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_si_sdr_of_white_noise_at_a_known_snr(clean, snr_db):
    noise = np.random.default_rng(1).standard_normal(len(clean))
    noise *= np.sqrt(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    assert si_sdr(clean + noise, clean) == pytest.approx(snr_db, abs=0.1)


def test_lsd_of_a_low_passed_copy(clean):
    sos = butter(16, 8000, btype="low", fs=SR, output="sos")
    low = sosfiltfilt(sos, clean).astype(np.float32)
    s = score(low, SR, clean, metrics=["lsd", "lsd_hf"])
    assert s["lsd_hf"] > 2  # the 8-24 kHz band is gone (orders of magnitude of power)
    # below 8 kHz the copy is the original: full-band LSD is the 8-24 kHz one diluted by the bin count
    bins = np.fft.rfftfreq(metrics.LSD_N_FFT, 1 / SR)
    share = np.mean(bins >= metrics.LSD_HF_MIN_HZ)
    assert share == pytest.approx(683 / 1025)
    assert s["lsd"] == pytest.approx(math.sqrt(share) * s["lsd_hf"], rel=0.03)
    # a copy low-passed higher up loses less
    higher = sosfiltfilt(butter(16, 16000, btype="low", fs=SR, output="sos"), clean).astype(np.float32)
    assert score(higher, SR, clean, metrics=["lsd_hf"])["lsd_hf"] < s["lsd_hf"]


def test_pesq_and_estoi_agree_with_the_packages(clean):
    from pesq import pesq
    from pystoi import stoi

    noisy = clean + 0.03 * np.random.default_rng(2).standard_normal(len(clean)).astype(np.float32)
    s = score(noisy, SR, clean, metrics=["pesq_wb", "estoi"])
    ref16, est16 = resample(clean, SR, 16000), resample(noisy, SR, 16000)
    assert s["pesq_wb"] == pytest.approx(
        pesq(16000, ref16.astype(np.float64), est16.astype(np.float64), "wb")
    )
    assert s["estoi"] == pytest.approx(stoi(ref16, est16, 16000, extended=True), abs=1e-9)
    # given at 16 kHz, nothing is resampled
    s16 = score(est16, 16000, ref16, metrics=["pesq_wb"])
    assert s16["pesq_wb"] == pytest.approx(pesq(16000, ref16, est16, "wb"), abs=1e-6)


def test_dnsmos_agrees_with_speechmos_and_needs_no_reference(clean):
    from speechmos import dnsmos

    x16 = resample(clean, SR, 16000)
    s = score(x16, 16000)
    assert set(s) == set(metrics.NON_INTRUSIVE)
    expected = dnsmos.run(x16, 16000)
    assert s["dnsmos_sig"] == pytest.approx(expected["sig_mos"])
    assert s["dnsmos_bak"] == pytest.approx(expected["bak_mos"])
    assert s["dnsmos_ovrl"] == pytest.approx(expected["ovrl_mos"])
    assert s["dnsmos_p808"] == pytest.approx(expected["p808_mos"])
    assert all(1 <= s[m] <= 5 for m in s)


def test_silent_reference_gives_nan_with_reasons(clean):
    silent = np.zeros_like(clean)
    s = score(clean, SR, silent, metrics=metrics.INTRUSIVE)
    for name in ("si_sdr", "estoi", "mel_ssim", "pesq_wb"):
        assert math.isnan(s[name]), name
        assert s.reasons[name], name
    assert "silent" in s.reasons["si_sdr"] and "silent" in s.reasons["estoi"]
    assert math.isfinite(s["lsd"])
    assert "estimate is silent" in score(silent, SR, clean, metrics=["si_sdr"]).reasons["si_sdr"]


def test_too_short_for_pesq_and_estoi_is_nan_not_a_crash(clean):
    short = clean[: SR // 10]
    s = score(short, SR, short, metrics=["pesq_wb", "estoi", "si_sdr"])
    assert math.isnan(s["pesq_wb"]) and "PESQ" in s.reasons["pesq_wb"]
    assert math.isnan(s["estoi"]) and "frames" in s.reasons["estoi"]
    assert s["si_sdr"] >= 100


def test_length_mismatch_is_named(clean):
    s = score(clean[:-48], SR, clean, metrics=["si_sdr"])  # 1 ms: cut and noted
    assert s["si_sdr"] >= 100 and "both cut to" in s.reasons["length"]
    with pytest.raises(
        MetricInputError, match=rf"estimate is {len(clean) - SR} samples, reference {len(clean)}"
    ):
        score(clean[:-SR], SR, clean)


def test_bad_inputs_are_named(clean):
    bad = clean.copy()
    bad[10] = np.nan
    with pytest.raises(MetricInputError, match="estimate: 1 non-finite"):
        score(bad, SR, clean, metrics=["si_sdr"])
    with pytest.raises(MetricInputError, match="reference: empty"):
        score(clean, SR, clean[:0], metrics=["si_sdr"])
    with pytest.raises(ValueError, match="unknown metric"):
        score(clean, SR, clean, metrics=["pesq_nb"])
    stereo = np.stack([clean, clean], axis=1)
    assert score(stereo, SR, clean, metrics=["si_sdr"])["si_sdr"] >= 100
    assert set(METRICS) >= set(score(clean, SR, clean, metrics=["lsd"]))
