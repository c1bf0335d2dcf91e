"""Every tiny network can fit one fixed batch: its training loss falls at least 10x in a few hundred CPU steps.

This catches broken gradients (detached paths, zero-initialised layers that never learn, wrong targets) that
shape tests cannot see. Losses are the stages' reconstruction objectives on small inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from training_helpers import tone

from training.features import ComplexSTFT, LogMel
from training.models import build


def fit(
    net: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], steps: int, lr: float
) -> tuple[float, float]:
    """Adam on one batch; returns the first loss and the mean of the last ten."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], sum(losses[-10:]) / 10


@pytest.mark.parametrize("residual", [False, True])
def test_recovery_overfits(tiny_configs, residual):
    """Direct form: from random weights, the loss falls 10x. Residual form (the tiny config): it starts at the
    identity's loss (noisy vs clean) and must fall 5x below it, i.e. learn to denoise, not only copy."""
    cfg = tiny_configs["recovery"]
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"residual": residual})})
    net, front = build(cfg), ComplexSTFT(cfg.features.stft)
    clean = tone([300.0, 1200.0], 16000, 4000)[None].repeat(2, 1)
    noisy = clean + 0.3 * torch.randn(2, 4000, generator=torch.Generator().manual_seed(1))
    x, y = front(noisy)[..., :32, :], front(clean)[..., :32, :]  # 32 lowest bins keep the test fast
    first, last = fit(net, lambda: F.mse_loss(net(x), y), steps=120, lr=3e-3)
    if residual:
        assert first == pytest.approx(F.mse_loss(x, y).item())
    assert last < first / (5 if residual else 10), (first, last)


def test_autoencoder_overfits(tiny_configs):
    cfg = tiny_configs["autoencoder"]
    net, mel = build(cfg), LogMel(cfg.features.mel)
    t = torch.arange(16 * 480, dtype=torch.float64) / 48000
    wave = (0.3 * torch.sin(2 * math.pi * (220 + 2000 * t) * t)).float()[None]
    batch = torch.cat([mel(wave)[:, :64], mel(0.5 * wave)[:, 64:128]])  # (2, 64 mels, 16 frames)
    gen = torch.Generator().manual_seed(0)

    def loss() -> torch.Tensor:
        recon, posterior = net(batch, generator=gen)
        return F.l1_loss(recon, batch) + 1e-6 * posterior.kl().mean()

    first, last = fit(net, loss, steps=300, lr=3e-3)
    assert last < first / 10, (first, last)


def test_vocoder_overfits(tiny_configs):
    cfg = tiny_configs["vocoder"]
    net, mel = build(cfg), LogMel(cfg.features.mel)
    t = torch.arange(8 * 480, dtype=torch.float64) / 48000
    wave = 0.3 * torch.sin(2 * math.pi * (220 + 2000 * t) * t).float()
    wave = (wave + 0.05 * torch.randn(8 * 480, generator=torch.Generator().manual_seed(0)))[None]
    target = mel(wave)
    first, last = fit(net, lambda: F.l1_loss(mel(net(target)), target), steps=300, lr=2e-3)
    assert last < first / 10, (first, last)


def test_ldm_overfits(tiny_configs):
    net = build(tiny_configs["ldm"])
    diffusion = net.diffusion()
    z = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    cond = z + 0.3 * torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    # a fixed generator per step: the same timesteps, noise and condition dropout every step (one batch)
    first, last = fit(
        net,
        lambda: diffusion.training_loss(net, z, cond, torch.Generator().manual_seed(1)),
        steps=80,
        lr=3e-3,
    )
    assert last < first / 10, (first, last)
