"""Gaussian diffusion on VAE latents: noise schedule, x0/v objectives, condition dropout, DDIM sampler.

The denoiser sees ``cat([z_t, z_0])`` (noisy latent and the condition latent of the recovered signal) and the
timestep; with ``prediction: x0`` it predicts the clean latent directly (the paper's objective), with
``prediction: v`` it predicts ``v = sqrt(a) eps - sqrt(1 - a) x0``. During training the condition is replaced by
zeros with probability ``cond_dropout`` so one network also models the unconditional distribution, which
classifier-free guidance (``guidance_scale`` > 1) extrapolates from. All randomness goes through an explicit
``torch.Generator`` drawn on the CPU, so sampling is reproducible for a seed on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from datasets.config import StrictModel

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (cat([z_t, cond]), t) -> prediction


class SamplerConfig(StrictModel):
    steps: int = Field(50, ge=1)
    eta: float = Field(0.0, ge=0)
    guidance_scale: float = Field(1.0, ge=0)  # 1 = plain conditional sampling, > 1 = classifier-free guidance
    clip_x0: float | None = Field(None, gt=0)  # clamp predicted latents to +-clip_x0 (None: off)


class DiffusionConfig(StrictModel):
    timesteps: int = Field(1000, ge=2)
    schedule: Literal["cosine", "linear"] = "cosine"
    prediction: Literal["x0", "v"] = "x0"
    cond_dropout: float = Field(0.1, ge=0, le=1)
    sampler: SamplerConfig = SamplerConfig()


def cosine_alphas_cumprod(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule, betas clipped at ``max_beta``; float64 ``(timesteps,)``."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, dim=0)


def linear_alphas_cumprod(timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def drop_condition(cond: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each example's condition with probability ``p`` (the null condition for classifier-free guidance)."""
    if p <= 0:
        return cond
    keep = torch.rand(cond.shape[0], generator=generator) >= p
    return cond * keep.to(device=cond.device, dtype=cond.dtype).view(-1, *([1] * (cond.dim() - 1)))


def _randn(
    shape: torch.Size | tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    # drawn on the CPU: identical numbers for a seed whatever the device
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(
        device=like.device, dtype=like.dtype
    )


class GaussianDiffusion:
    """Schedule and objectives for ``cfg``; stateless apart from the schedule tensors."""

    def __init__(self, cfg: DiffusionConfig | None = None) -> None:
        self.cfg = cfg = cfg or DiffusionConfig()
        if cfg.schedule == "cosine":
            self.alphas_cumprod = cosine_alphas_cumprod(cfg.timesteps)
        else:
            self.alphas_cumprod = linear_alphas_cumprod(cfg.timesteps)

    @property
    def timesteps(self) -> int:
        return self.cfg.timesteps

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t.long().cpu()].to(device=like.device, dtype=torch.float32)
        return a.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``z_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise``."""
        a = self._abar(t, x0)
        return (a.sqrt() * x0.float() + (1 - a).sqrt() * noise.float()).to(x0.dtype)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.cfg.prediction == "x0":
            return x0
        a = self._abar(t, x0)
        return (a.sqrt() * noise.float() - (1 - a).sqrt() * x0.float()).to(x0.dtype)

    def predict_x0(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean-latent estimate implied by the network ``output`` at ``(x_t, t)``."""
        if self.cfg.prediction == "x0":
            return output.float()
        a = self._abar(t, x_t)
        return a.sqrt() * x_t.float() - (1 - a).sqrt() * output.float()

    def training_loss(
        self,
        model: Denoiser,
        x0: torch.Tensor,
        cond: torch.Tensor,
        generator: torch.Generator | None = None,
        t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MSE of the configured objective for clean latents ``x0`` given condition latents ``cond``."""
        if x0.shape[0] != cond.shape[0] or x0.shape[2:] != cond.shape[2:]:
            raise ValueError(f"latent {tuple(x0.shape)} and condition {tuple(cond.shape)} do not match")
        b = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.timesteps, (b,), generator=generator)
        t = t.to(x0.device)
        noise = _randn(x0.shape, generator, x0)
        x_t = self.q_sample(x0, t, noise)
        cond = drop_condition(cond, self.cfg.cond_dropout, generator)
        out = model(torch.cat([x_t, cond], dim=1), t)
        return F.mse_loss(out.float(), self.target(x0, noise, t).float())

    def ddim_timesteps(self, steps: int) -> list[int]:
        """Descending, evenly spaced timesteps from ``T - 1`` to 0 (``steps`` of them, or ``[T - 1]`` for one)."""
        if steps < 1:
            raise ValueError(f"DDIM needs at least one step, got {steps}")
        steps = min(steps, self.timesteps)
        if steps == 1:
            return [self.timesteps - 1]
        grid = torch.linspace(self.timesteps - 1, 0, steps, dtype=torch.float64).round().long().tolist()
        return list(dict.fromkeys(grid))

    @torch.no_grad()
    def ddim_sample(
        self,
        model: Denoiser,
        cond: torch.Tensor,
        steps: int | None = None,
        eta: float | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        clip_x0: float | None = None,
    ) -> torch.Tensor:
        """DDIM from pure noise to a clean latent shaped like ``cond``; unset arguments come from ``cfg.sampler``.

        Guidance combines the conditional and unconditional (zero condition) predictions as
        ``u + s (c - u)`` in the network's output space, both evaluated in one batch.
        """
        sc = self.cfg.sampler
        steps = sc.steps if steps is None else steps
        eta = sc.eta if eta is None else eta
        scale = sc.guidance_scale if guidance_scale is None else guidance_scale
        clip = sc.clip_x0 if clip_x0 is None else clip_x0
        x = _randn(cond.shape, generator, cond) if x_T is None else x_T.to(cond)
        schedule = self.ddim_timesteps(steps)
        b = cond.shape[0]
        for i, step in enumerate(schedule):
            t = torch.full((b,), step, dtype=torch.long, device=cond.device)
            if scale != 1.0:
                both = model(
                    torch.cat([torch.cat([x, x]), torch.cat([cond, torch.zeros_like(cond)])], dim=1),
                    torch.cat([t, t]),
                )
                c_out, u_out = both.float().chunk(2)
                out = u_out + scale * (c_out - u_out)
            else:
                out = model(torch.cat([x, cond], dim=1), t).float()
            a_t = float(self.alphas_cumprod[step])
            a_prev = float(self.alphas_cumprod[schedule[i + 1]]) if i + 1 < len(schedule) else 1.0
            x0 = self.predict_x0(out, x, t)
            if clip is not None:
                x0 = x0.clamp(-clip, clip)
            eps = (x.float() - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
            sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
            x_next = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
            if sigma > 0:
                x_next = x_next + sigma * _randn(x.shape, generator, x).float()
            x = x_next.to(cond.dtype)
        return x
