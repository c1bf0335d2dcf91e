"""Blocks shared by the networks: FIR up/down-sampling, self-attention, residual blocks, timestep embedding."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, groups: int, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with at most ``groups`` groups, reduced until it divides ``channels`` (tiny configs)."""
    groups = max(1, min(groups, channels))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=eps)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters: residual branches start as the identity (DDPM / LDM practice)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def fir_kernel_2d(taps: Sequence[float]) -> torch.Tensor:
    """Separable 2-D FIR kernel normalised to unit DC gain, from 1-D taps (e.g. [1, 3, 3, 1])."""
    k = torch.tensor([float(t) for t in taps], dtype=torch.float32)
    k2 = torch.outer(k, k)
    return k2 / k2.sum()


def _depthwise(x: torch.Tensor, kernel: torch.Tensor, stride: int) -> torch.Tensor:
    channels = x.shape[1]
    weight = (
        kernel.to(dtype=x.dtype, device=x.device).flip(0, 1)[None, None].expand(channels, 1, *kernel.shape)
    )
    return F.conv2d(x, weight, stride=stride, groups=channels)


def fir_downsample_2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Low-pass with ``kernel`` then keep every second row/column: ``(B, C, H, W) -> (B, C, H/2, W/2)``."""
    pad = kernel.shape[0] - 2
    x = F.pad(x, ((pad + 1) // 2, pad // 2, (pad + 1) // 2, pad // 2))
    return _depthwise(x, kernel, stride=2)


def fir_upsample_2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Zero-stuff by 2 then interpolate with ``kernel`` (gain 4 keeps the level): ``(H, W) -> (2H, 2W)``."""
    b, c, h, w = x.shape
    taps = kernel.shape[0]
    if taps % 2 == 0:
        # same result as the zero-stuffing below, without materialising the 4x larger zero-stuffed tensor
        weight = (kernel * 4).to(dtype=x.dtype, device=x.device)[None, None].expand(c, 1, taps, taps)
        return F.conv_transpose2d(x, weight, stride=2, padding=(taps - 2) // 2, groups=c)
    up = x.new_zeros(b, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    pad = kernel.shape[0] - 2
    up = F.pad(up, ((pad + 1) // 2 + 1, pad // 2, (pad + 1) // 2 + 1, pad // 2))
    return _depthwise(up, kernel * 4, stride=1)


def pad_to_multiple(
    x: torch.Tensor, multiple: int, dims: Sequence[int] = (-2, -1), value: float = 0.0
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Right-pad ``dims`` of ``x`` to a multiple of ``multiple``; returns the padded tensor and original sizes."""
    sizes = tuple(x.shape[d] for d in dims)
    pads = [0] * (2 * x.dim())
    for d, size in zip(dims, sizes, strict=True):
        d = d % x.dim()
        # F.pad lists the last dimension first
        pads[2 * (x.dim() - 1 - d) + 1] = (-size) % multiple
    if any(pads):
        x = F.pad(x, pads, value=value)
    return x, sizes


def crop_to(x: torch.Tensor, sizes: Sequence[int], dims: Sequence[int] = (-2, -1)) -> torch.Tensor:
    for d, size in zip(dims, sizes, strict=True):
        x = x.narrow(d, 0, size)
    return x


class SelfAttention2d(nn.Module):
    """Self-attention over all positions of a feature map (DDPM/NCSN++ style), residual.

    ``skip_rescale`` divides the residual sum by sqrt(2) (NCSN++); the output projection starts at zero so the
    block is the identity at initialisation.
    """

    def __init__(self, channels: int, groups: int = 32, heads: int = 1, skip_rescale: bool = False) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention: {channels} channels not divisible by {heads} heads")
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))
        self.heads = heads
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = (
            self.qkv(self.norm(x))
            .reshape(b, 3, self.heads, c // self.heads, h * w)
            .transpose(-1, -2)
            .unbind(1)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, hw, c/heads)
        out = self.proj(out.transpose(-1, -2).reshape(b, c, h, w))
        return (x + out) / math.sqrt(2.0) if self.skip_rescale else x + out


class ResBlock2d(nn.Module):
    """GroupNorm-SiLU-conv twice, optional embedding added between, 1x1 shortcut when channels change.

    Used by the VAE (no embedding) and the latent U-Net (timestep embedding).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        emb_dim: int | None = None,
        groups: int = 32,
        dropout: float = 0.0,
        zero_out: bool = False,
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch) if emb_dim else None
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if zero_out:
            zero_init(self.conv2)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None:
            if emb is None:
                raise ValueError("this residual block needs an embedding")
            h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(batch,) -> (batch, dim)`` of (possibly fractional) timesteps."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
