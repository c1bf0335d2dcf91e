"""Settled IIR filtering: the plain scipy filters' results on noise and on zero-padded clips, without denormals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from audiomentations import HighPassFilter, HighShelfFilter, LowShelfFilter, PeakingFilter
from scipy.signal import butter, sosfilt, sosfilt_zi, sosfiltfilt

import degradations.iir as iir
from degradations import ChainConfig, sample_rng
from degradations.bandwidth import FAMILIES, lowpass_sos
from degradations.iir import sosfilt_settled, sosfiltfilt_settled
from degradations.levels import LOUDNESS_ABSOLUTE_GATE_LUFS, integrated_loudness, k_weighting_sos
from degradations.synthetic import speech_like

SR = 48000
TINY = np.finfo(np.float64).tiny


def _clips() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    noise = (0.1 * rng.standard_normal(SR * 2)).astype(np.float32)
    speech = speech_like(2.0, SR, seed=1)
    padded = speech.copy()
    padded[int(0.4 * len(padded)) :] = 0.0  # the last 60 % digital silence, as a zero-padded segment
    framed = np.concatenate([np.zeros(3000, np.float32), speech[:20000], np.zeros(50000, np.float32)])
    loud = np.concatenate(
        [np.full(500, 0.9, np.float32), np.zeros(40000, np.float32)]
    )  # a step, then silence
    return {"noise": noise, "speech": speech, "padded": padded, "framed": framed, "loud_step": loud}


CLIPS = _clips()


def _filters() -> dict[str, np.ndarray]:
    out = {"k_weighting": k_weighting_sos(SR)}
    for family in FAMILIES[1:]:
        for order, rate in ((2, 8000), (10, 16000), (7, 44100)):
            out[f"{family}{order}@{rate}"] = lowpass_sos(family, order, rate / 2, SR, 3.0, 40.0)
    out["highpass2@50"] = butter(2, 50.0, btype="highpass", fs=SR, output="sos")
    out["highpass1@480"] = butter(1, 480.0, btype="highpass", fs=SR, output="sos")
    out["peak@100q4"] = PeakingFilter()._get_biquad_coefficients_from_input_parameters(100.0, 12.0, 4.0, SR)
    out["lowshelf@80"] = LowShelfFilter()._get_biquad_coefficients_from_input_parameters(80.0, -12.0, 0.5, SR)
    return out


FILTERS = _filters()


def _same_float32(a: np.ndarray, b: np.ndarray) -> None:
    """Equal float32 values; bit patterns may differ only in the sign of a zero."""
    a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_array_equal(a32, b32)
    differ = a32.view(np.uint32) != b32.view(np.uint32)
    assert not np.any(a32[differ]), "bit differences other than the sign of a zero"


@pytest.mark.parametrize("clip", sorted(CLIPS))
@pytest.mark.parametrize("name", sorted(FILTERS))
def test_sosfilt_settled_is_sosfilt(name: str, clip: str) -> None:
    sos, x = FILTERS[name], CLIPS[clip]
    plain = sosfilt(sos, x)
    settled = sosfilt_settled(sos, x)
    assert settled.dtype == plain.dtype == np.float64
    # bit-identical squares (loudness sums them) and float32 values
    assert (settled * settled).tobytes() == (plain * plain).tobytes()
    _same_float32(settled, plain)
    # and bit-identical wherever the plain output is not negligible
    big = np.abs(plain) >= 1e-150
    assert settled[big].tobytes() == plain[big].tobytes()
    zi = sosfilt_zi(sos) * x[0]
    _same_float32(sosfilt_settled(sos, x, zi=zi), sosfilt(sos, x, zi=zi)[0])


@pytest.mark.parametrize("clip", sorted(CLIPS))
@pytest.mark.parametrize("name", sorted(FILTERS))
def test_sosfiltfilt_settled_is_sosfiltfilt(name: str, clip: str) -> None:
    sos, x = FILTERS[name], CLIPS[clip]
    for padlen in (None, 3 * (2 * len(sos) + 1), 0):
        _same_float32(sosfiltfilt_settled(sos, x, padlen=padlen), sosfiltfilt(sos, x, padlen=padlen))


def test_no_denormal_arithmetic_on_a_padded_clip(monkeypatch) -> None:
    seen: list[int] = []

    def counting(sos, x, zi=None):
        out = sosfilt(sos, x) if zi is None else sosfilt(sos, x, zi=zi)
        y = out if zi is None else out[0]
        seen.append(int(np.count_nonzero((y != 0) & (np.abs(y) < TINY))))
        return out

    monkeypatch.setattr(iir, "sosfilt", counting)
    padded = np.concatenate([CLIPS["speech"], np.zeros(int(3.12 * SR), np.float32)])  # 5.12 s, 60 % zeros
    x = padded.astype(np.float64)
    plain = sosfilt(k_weighting_sos(SR), x)
    assert (
        np.count_nonzero((plain != 0) & (np.abs(plain) < TINY)) > 1000
    )  # what the plain filter goes through
    sosfilt_settled(k_weighting_sos(SR), x)
    sosfiltfilt_settled(FILTERS["highpass2@50"], padded)
    assert seen and sum(seen) == 0


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_state_to_output_gain_is_far_below_the_margin(name: str) -> None:
    # the settling argument needs every later output below 1.5e-162 once the state is below 1e-200
    sos = FILTERS[name]
    gain = 0.0
    zeros = np.zeros(SR * 4)
    for k in range(sos.shape[0] * 2):
        state = np.zeros((sos.shape[0], 2))
        state.flat[k] = 1.0
        gain += float(np.max(np.abs(sosfilt(sos, zeros, zi=state)[0])))
    assert gain < 1e6


def _loudness_plain(x: np.ndarray, sr: int) -> float:
    # integrated_loudness as it was before the settled filter
    y = sosfilt(k_weighting_sos(int(sr)), np.asarray(x, dtype=np.float64))
    sq = y * y
    step = int(round(0.1 * sr))
    n_steps = len(sq) // step
    if n_steps < 4:
        z = np.array([float(np.mean(sq))])
    else:
        c = np.concatenate([[0.0], np.cumsum(sq[: n_steps * step].reshape(n_steps, step).sum(axis=1))])
        z = (c[4:] - c[:-4]) / (4 * step)
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10.0 * np.log10(z)
    gated = z[block_lufs > LOUDNESS_ABSOLUTE_GATE_LUFS]
    if gated.size == 0:
        return -math.inf
    relative = -0.691 + 10.0 * math.log10(float(np.mean(gated))) - 10.0
    gated = z[(block_lufs > LOUDNESS_ABSOLUTE_GATE_LUFS) & (block_lufs > relative)]
    return -0.691 + 10.0 * math.log10(float(np.mean(gated)))


@pytest.mark.parametrize("clip", sorted(CLIPS))
def test_loudness_is_bit_identical_to_the_plain_filter(clip: str) -> None:
    x = CLIPS[clip]
    for scale in (1.0, 1e-3, 3.0):
        xs = (x * np.float32(scale)).astype(np.float32)
        assert integrated_loudness(xs, SR) == _loudness_plain(xs, SR)
    long_padded = np.concatenate(
        [CLIPS["speech"], np.zeros(int(3.12 * SR), np.float32)]
    )  # 5.12 s, 60 % zeros
    assert integrated_loudness(long_padded, SR) == _loudness_plain(long_padded, SR)


def _eq_plain(x: np.ndarray, params: dict) -> np.ndarray:
    # the Eq operator as it was: audiomentations transforms with fixed parameters
    stages = []
    if params.get("highpass"):
        t = HighPassFilter(min_rolloff=12, max_rolloff=48, zero_phase=True)
        t.parameters = {
            "should_apply": True,
            "cutoff_freq": float(params["highpass"]["freq_hz"]),
            "rolloff": int(params["highpass"]["rolloff_db"]),
        }
        stages.append(t)
    bands = [(k, params.get(b)) for b, k in (("low_shelf", LowShelfFilter), ("high_shelf", HighShelfFilter))]
    for kind, b in bands + [(PeakingFilter, b) for b in params.get("peaks") or []]:
        if b:
            t = kind()
            t.parameters = {
                "should_apply": True,
                "center_freq": float(min(b["freq_hz"], 0.45 * SR)),
                "gain_db": float(b["gain_db"]),
                "q_factor": float(b["q"]),
            }
            stages.append(t)
    y = x
    for t in stages:
        y = t.apply(np.ascontiguousarray(y, dtype=np.float32), SR)
    return np.asarray(y, dtype=np.float32)


@pytest.mark.parametrize("clip", ["speech", "padded", "framed"])
def test_eq_gives_audiomentations_values(clip: str) -> None:
    op = ChainConfig().operator("eq")
    x = CLIPS[clip]
    for i in range(12):
        params = op.sample(sample_rng(0, f"eq{i}", "eq"), {})
        _same_float32(op.apply(x, SR, params), _eq_plain(x, params))


@pytest.mark.parametrize("clip", ["speech", "padded", "framed"])
def test_bandwidth_gives_the_plain_filter_values(clip: str, monkeypatch) -> None:
    import degradations.bandwidth as bandwidth

    op = ChainConfig().operator("bandwidth")
    x = CLIPS[clip]
    params = [op.sample(sample_rng(0, f"bw{i}", "bandwidth"), {}) for i in range(16)]
    settled = [op.apply(x, SR, p) for p in params]
    monkeypatch.setattr(bandwidth, "sosfiltfilt_settled", sosfiltfilt)
    for p, y in zip(params, settled, strict=True):
        _same_float32(y, op.apply(x, SR, p))
