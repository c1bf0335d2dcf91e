"""STFT / log-mel / resampling: framing contracts and round-trip error bounds."""

from __future__ import annotations

import math

import pytest
import torch
from training_helpers import DEVICES, tone

from training.features import ComplexSTFT, LogMel, MelConfig, StftConfig, mel_filterbank, mel_frames, resample


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("samples", [81920, 12345, 4001])
def test_stft_round_trip_is_exact(device, samples):
    front = ComplexSTFT().to(device)
    x = torch.randn(3, samples, device=device)
    spec = front(x)
    assert spec.shape == (3, 2, 256, 1 + samples // 128)
    assert (front.inverse(spec, samples) - x).abs().max().item() < 1e-5


def test_stft_paper_clip_shape_and_leading_dims():
    front = ComplexSTFT()
    spec = front(torch.randn(2, 3, 81920))
    assert spec.shape == (2, 3, 2, 256, 641)
    assert front.inverse(spec, 81920).shape == (2, 3, 81920)


def test_compression_matches_formula_and_inverts():
    cfg = StftConfig(compression_alpha=0.3, compression_beta=0.5)
    front = ComplexSTFT(cfg)
    spec = torch.randn(4, 6, dtype=torch.complex64)
    spec[0, 0] = 0  # silent bin must stay finite and exactly zero
    comp = front.compress(spec)
    expected = 0.5 * spec.abs() ** 0.3 * torch.exp(1j * spec.angle())
    assert torch.allclose(comp[1:], expected[1:], atol=1e-6)
    assert comp[0, 0] == 0
    assert torch.allclose(front.decompress(comp), spec, atol=1e-5)


def test_stft_rejects_too_short_input():
    with pytest.raises(ValueError, match="too short"):
        ComplexSTFT()(torch.randn(1, 100))


@pytest.mark.parametrize("samples,frames", [(245760, 512), (245761, 513), (480, 1), (1000, 3)])
def test_mel_framing_is_ceil_of_hop(samples, frames):
    mel = LogMel()
    assert mel_frames(samples, 480) == frames
    assert mel(torch.randn(samples) * 0.1).shape == (256, frames)


def test_mel_of_silence_is_the_floor_and_tone_peaks_in_right_band():
    mel = LogMel()
    silent = mel(torch.zeros(1, 48000))
    assert torch.allclose(silent, torch.full_like(silent, math.log(1e-5)))
    lm = mel(tone([1000.0], 48000, 48000))
    peak = int(lm[:, 10:-10].mean(dim=1).argmax())
    fb = mel_filterbank(48000, 2048, 256, 20.0, 24000.0)
    centre_hz = float((fb[peak] * torch.linspace(0, 24000, 1025)).sum() / fb[peak].sum())
    assert 900 < centre_hz < 1100


def test_mel_round_trip_error_bound():
    mel = LogMel()
    x = torch.randn(2, 48000, generator=torch.Generator().manual_seed(1)) * 0.1
    log_mel = mel(x)
    mag = mel.to_magnitude(log_mel)
    assert mag.shape == (2, 1025, log_mel.shape[-1]) and bool((mag >= 0).all())
    err = (mel.mel_from_magnitude(mag) - log_mel).abs()
    # mel -> magnitude -> mel: mean within 0.01 nats, worst bin (rank-deficient low filters) within 1 nat
    assert err.mean().item() < 0.01
    assert err.max().item() < 1.0


def test_mel_config_validation():
    with pytest.raises(ValueError, match="f_max"):
        MelConfig(f_max=30000.0)


@pytest.mark.parametrize("device", DEVICES)
def test_resample_round_trip_keeps_passband(device):
    x = tone([440.0, 3000.0, 6500.0], 48000, 48000).to(device)
    down = resample(x, 48000, 16000)
    assert down.shape == (16000,)
    # direct comparison with the analytic 16 kHz signal, away from the edges
    ref16 = tone([440.0, 3000.0, 6500.0], 16000, 16000).to(device)
    assert (down - ref16)[500:-500].abs().max().item() < 1e-4
    back = resample(down, 16000, 48000)
    assert back.shape == x.shape
    assert (back - x)[1500:-1500].abs().max().item() < 1e-4


def test_resample_removes_content_above_new_nyquist_and_handles_odd_lengths():
    x = tone([12000.0], 48000, 48001)
    down = resample(x[None, None], 48000, 16000)
    assert down.shape == (1, 1, 16001)
    assert down[..., 500:-500].abs().max().item() < 1e-4  # 12 kHz aliases into the band unless filtered
    assert resample(x, 48000, 48000) is x
    with pytest.raises(ValueError):
        resample(x, 0, 16000)
