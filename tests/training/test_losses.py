"""The GAN stages' losses and distances: values on known inputs, gradient paths, the loss-weight check."""

from __future__ import annotations

import math

import pytest
import torch
from training_helpers import tone

from datasets.config import ConfigError
from training.losses import (
    adaptive_adversarial_weight,
    feature_matching_loss,
    gan_weight,
    hinge_discriminator_loss,
    hinge_generator_loss,
    log_magnitude_distance,
    loss_weights,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    mel_l1,
    multi_resolution_stft_distance,
    spectral_convergence,
    stft_magnitude,
)


def test_lsgan_losses():
    ones, zeros = [torch.ones(2, 5), torch.ones(2, 3)], [torch.zeros(2, 5), torch.zeros(2, 3)]
    assert float(lsgan_discriminator_loss(ones, zeros)) == 0.0  # a perfect discriminator
    assert float(lsgan_discriminator_loss(zeros, ones)) == 4.0  # 2 sub-discriminators x (1 + 1)
    assert float(lsgan_generator_loss(ones)) == 0.0
    assert float(lsgan_generator_loss([torch.full((2, 4), 0.5)])) == 0.25
    with pytest.raises(ValueError, match="equal, non-empty"):
        lsgan_discriminator_loss(ones, zeros[:1])


def test_hinge_losses():
    assert (
        float(hinge_discriminator_loss(torch.full((2, 1, 4, 4), 2.0), torch.full((2, 1, 4, 4), -3.0))) == 0.0
    )
    assert float(hinge_discriminator_loss(torch.zeros(3), torch.zeros(3))) == 1.0
    assert float(hinge_generator_loss(torch.tensor([1.0, 3.0]))) == -2.0


def test_feature_matching_targets_are_detached():
    real = [[torch.ones(2, 3, requires_grad=True), torch.zeros(2, 2, requires_grad=True)]]
    fake = [[torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 2, requires_grad=True)]]
    loss = feature_matching_loss(real, fake)
    assert float(loss.detach()) == 1.0  # mean |1 - 0| + mean |0 - 0|
    loss.backward()
    assert real[0][0].grad is None and fake[0][0].grad is not None
    assert float(feature_matching_loss(real, real).detach()) == 0.0


def test_mel_l1():
    a, b = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    b[1] = 3.0
    assert float(mel_l1(a, b)) == 2.0
    assert mel_l1(a, b, per_example=True).tolist() == [1.0, 3.0]
    with pytest.raises(ValueError, match="mel shapes differ"):
        mel_l1(a, b[:, :2])


def test_stft_distances_on_known_signals():
    wave = tone([440.0, 3000.0], 48000, 9600)[None].repeat(2, 1)
    wave = wave + 0.01 * torch.randn(2, 9600, generator=torch.Generator().manual_seed(0))
    sc, mag = multi_resolution_stft_distance(wave, wave)
    assert sc.shape == mag.shape == (2,)
    assert float(sc.abs().max()) == 0.0 and float(mag.abs().max()) == 0.0
    # doubling the level: |T - 2T| / |T| = 1, |log T - log 2T| = log 2 (up to the magnitude epsilon)
    sc, mag = multi_resolution_stft_distance(2 * wave, wave)
    assert sc.tolist() == pytest.approx([1.0, 1.0], rel=1e-4)
    assert mag.tolist() == pytest.approx([math.log(2)] * 2, rel=1e-3)
    p, t = stft_magnitude(2 * wave, 1024, 120, 600), stft_magnitude(wave, 1024, 120, 600)
    assert spectral_convergence(p, t).shape == log_magnitude_distance(p, t).shape == (2,)


def test_stft_distance_of_a_clip_shorter_than_half_a_window():
    short = torch.randn(1, 500, generator=torch.Generator().manual_seed(1))
    sc, mag = multi_resolution_stft_distance(0.5 * short, short)
    assert math.isfinite(float(sc)) and math.isfinite(float(mag))


def test_stft_distance_gradient_is_finite_at_silence():
    pred = torch.zeros(1, 4800, requires_grad=True)
    sc, mag = multi_resolution_stft_distance(pred, 0.1 * torch.ones(1, 4800))
    (sc + mag).sum().backward()
    assert torch.isfinite(pred.grad).all()


def test_adaptive_weight_balances_gradients_without_accumulating():
    layer = torch.nn.Linear(3, 1, bias=False)
    out = layer(torch.ones(4, 3)).sum()
    weight = adaptive_adversarial_weight(out, 4 * out, layer.weight)
    assert float(weight) == pytest.approx(0.25, rel=1e-3)
    assert not weight.requires_grad and layer.weight.grad is None
    out.backward()  # the graph was kept for the real backward
    big = adaptive_adversarial_weight(
        layer(torch.ones(1, 3)).sum(), 0 * layer(torch.ones(1, 3)).sum(), layer.weight
    )
    assert float(big) == 1e4  # no adversarial gradient: clamped


def test_gan_weight():
    assert gan_weight(0.5, 9, 10) == 0.0
    assert gan_weight(0.5, 10, 10) == 0.5


def test_loss_weights():
    defaults = {"mel": 45.0, "adversarial": 1.0}
    assert loss_weights("vocoder", {"mel": 10}, defaults) == {"mel": 10.0, "adversarial": 1.0}
    assert loss_weights("vocoder", {}, defaults) == defaults
    with pytest.raises(
        ConfigError, match=r"train\.loss\.mle: unknown loss weight for stage vocoder; known: adv"
    ):
        loss_weights("vocoder", {"mle": 1.0}, defaults)
    with pytest.raises(ConfigError, match=r"train\.loss\.mel: weight must be >= 0"):
        loss_weights("vocoder", {"mel": -1.0}, defaults)
