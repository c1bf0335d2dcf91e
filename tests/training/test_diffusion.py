"""Diffusion module: cosine schedule, x0/v objectives, condition dropout, DDIM sampler determinism."""

from __future__ import annotations

import math

import pytest
import torch

from training.models import build
from training.models.diffusion import (
    DiffusionConfig,
    GaussianDiffusion,
    SamplerConfig,
    cosine_alphas_cumprod,
    drop_condition,
)


def test_cosine_schedule_shape_and_ends():
    a = cosine_alphas_cumprod(1000)
    assert a.shape == (1000,)
    assert bool((a[1:] < a[:-1]).all())  # strictly decreasing signal level
    assert 0.999 < a[0].item() < 1.0
    assert a[-1].item() < 1e-4
    # the cosine schedule keeps half the signal power around the middle (the linear one loses it early)
    assert 0.4 < a[500].item() < 0.6


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_target_and_predict_x0_are_inverse(prediction):
    d = GaussianDiffusion(DiffusionConfig(prediction=prediction))
    x0, noise = torch.randn(4, 3, 5, 6), torch.randn(4, 3, 5, 6)
    t = torch.tensor([0, 10, 500, 999])
    x_t = d.q_sample(x0, t, noise)
    assert torch.allclose(d.predict_x0(d.target(x0, noise, t), x_t, t), x0, atol=1e-4)


class Oracle(torch.nn.Module):
    """A perfect denoiser for one known clean latent (in the configured objective)."""

    def __init__(self, d: GaussianDiffusion, x0: torch.Tensor) -> None:
        super().__init__()
        self.d, self.x0, self.calls = d, x0, 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x_t = x[:, : self.x0.shape[1]]
        x0 = self.x0.repeat(x.shape[0] // self.x0.shape[0], 1, 1, 1)
        if self.d.cfg.prediction == "x0":
            return x0
        a = self.d.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0


@pytest.mark.parametrize("prediction", ["x0", "v"])
@pytest.mark.parametrize("steps", [1, 50])
def test_ddim_with_an_oracle_returns_the_clean_latent(prediction, steps):
    d = GaussianDiffusion(DiffusionConfig(prediction=prediction))
    x0 = torch.randn(2, 4, 3, 5)
    oracle = Oracle(d, x0)
    out = d.ddim_sample(oracle, torch.zeros_like(x0), steps=steps, generator=torch.Generator().manual_seed(0))
    assert oracle.calls == steps
    assert torch.allclose(out, x0, atol=1e-3)


def test_ddim_timesteps():
    d = GaussianDiffusion()
    assert d.ddim_timesteps(1) == [999]
    grid = d.ddim_timesteps(50)
    assert len(grid) == 50 and grid[0] == 999 and grid[-1] == 0 and grid == sorted(grid, reverse=True)
    assert len(d.ddim_timesteps(5000)) == 1000
    with pytest.raises(ValueError):
        d.ddim_timesteps(0)


@pytest.mark.parametrize("steps", [1, 20])
def test_ddim_is_deterministic_per_seed_with_guidance_and_eta(tiny_configs, steps):
    net = build(tiny_configs["ldm"]).eval()
    # an untrained U-Net outputs exactly zero (zero-initialised output layer): make it depend on its input
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    d = net.diffusion()
    cond = torch.randn(1, 16, 4, 8)

    def sample(seed: int) -> torch.Tensor:
        return d.ddim_sample(
            net, cond, steps=steps, eta=0.5, guidance_scale=3.0, generator=torch.Generator().manual_seed(seed)
        )

    a, b, c = sample(7), sample(7), sample(8)
    assert a.shape == cond.shape and bool(torch.isfinite(a).all())
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_guidance_uses_the_null_condition(tiny_configs):
    seen = []

    def spy(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(x[:, 16:].abs().flatten(1).sum(1))
        return torch.zeros(x.shape[0], 16, *x.shape[2:])

    d = GaussianDiffusion(DiffusionConfig(sampler=SamplerConfig(steps=3, guidance_scale=2.0)))
    d.ddim_sample(spy, torch.ones(2, 16, 2, 2), generator=torch.Generator().manual_seed(0))
    assert len(seen) == 3
    for sums in seen:  # conditional half first, then the all-zero unconditional half, in one batch
        assert sums.shape == (4,) and bool((sums[:2] > 0).all()) and bool((sums[2:] == 0).all())


def test_condition_dropout_rate():
    cond = torch.ones(20000, 2)
    dropped = drop_condition(cond, 0.1, torch.Generator().manual_seed(0))
    rate = (dropped[:, 0] == 0).float().mean().item()
    assert abs(rate - 0.1) < 0.01
    assert torch.equal(dropped[:, 0], dropped[:, 1])  # whole examples, not elements
    assert drop_condition(cond, 0.0) is cond


def test_training_loss_checks_shapes_and_is_reproducible(tiny_configs):
    net = build(tiny_configs["ldm"])
    d = net.diffusion()
    z, cond = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    l1 = d.training_loss(net, z, cond, torch.Generator().manual_seed(3))
    l2 = d.training_loss(net, z, cond, torch.Generator().manual_seed(3))
    assert l1.item() == l2.item() and math.isfinite(l1.item())
    with pytest.raises(ValueError, match="do not match"):
        d.training_loss(net, z, torch.randn(2, 16, 4, 5))
