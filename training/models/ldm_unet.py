"""U-Net denoiser for latent diffusion on mel-VAE latents (LDM ``openaimodel`` layout).

Input ``cat([z_t, z_0])`` (noisy latent + condition latent, 32 channels for the paper) and integer timesteps;
output the prediction selected by ``diffusion.prediction`` (16 channels). Residual blocks take a timestep
embedding; spatial transformers (self-attention + GEGLU feed-forward, depth ``transformer_depth``; no
cross-attention because the condition enters by concatenation) sit at the downsampling factors listed in
``attention_resolutions`` and in the middle. Latent sizes that are not multiples of the total downsampling are
padded inside and cropped back.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from training.models.diffusion import DiffusionConfig, GaussianDiffusion
from training.models.layers import (
    ResBlock2d,
    crop_to,
    group_norm,
    pad_to_multiple,
    timestep_embedding,
    zero_init,
)
from training.models.registry import NetworkConfig, register


class LatentUNetConfig(NetworkConfig):
    name: Literal["ldm_unet"] = "ldm_unet"
    in_channels: int = Field(32, gt=0)
    out_channels: int = Field(16, gt=0)
    model_channels: int = Field(128, gt=0)
    channel_mult: list[int] = Field(default_factory=lambda: [1, 2, 3, 5], min_length=1)
    num_res_blocks: int = Field(2, ge=1)
    attention_resolutions: list[int] = Field(default_factory=lambda: [8, 4, 2])
    num_head_channels: int = Field(32, gt=0)
    transformer_depth: int = Field(1, ge=1)
    norm_groups: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    diffusion: DiffusionConfig = DiffusionConfig()

    @model_validator(mode="after")
    def _check(self) -> LatentUNetConfig:
        for m in self.channel_mult:
            if (self.model_channels * m) % self.num_head_channels:
                raise ValueError(
                    f"model_channels * {m} is not a multiple of num_head_channels {self.num_head_channels}"
                )
        if self.in_channels <= self.out_channels:
            raise ValueError("in_channels must hold the noisy latent and the condition (in > out)")
        return self


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ff_in = nn.Linear(dim, 2 * 4 * dim)  # GEGLU: value and gate
        self.ff_out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        value, gate = self.ff_in(self.norm2(x)).chunk(2, dim=-1)
        return x + self.ff_out(value * F.gelu(gate))


class SpatialTransformer(nn.Module):
    """GroupNorm -> 1x1 in -> transformer blocks over positions -> zero-initialised 1x1 out, residual."""

    def __init__(self, channels: int, head_channels: int, depth: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.blocks = nn.ModuleList(
            TransformerBlock(channels, channels // head_channels) for _ in range(depth)
        )
        self.proj_out = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens)
        return x + self.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w))


class _Step(nn.Module):
    """One U-Net stage: a residual block (with embedding) optionally followed by a spatial transformer."""

    def __init__(self, res: ResBlock2d, attn: SpatialTransformer | None) -> None:
        super().__init__()
        self.res, self.attn = res, attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


@register("ldm_unet")
class LatentUNet(nn.Module):
    """``forward(x (batch, in, h, w), t (batch,)) -> (batch, out, h, w)``; see module docstring."""

    stage = "ldm"
    Config = LatentUNetConfig

    def __init__(self, cfg: LatentUNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mc, g = cfg.model_channels, cfg.norm_groups
        emb_dim = 4 * mc
        self.multiple = 2 ** (len(cfg.channel_mult) - 1)
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def step(i: int, o: int, ds: int) -> _Step:
            attn = (
                SpatialTransformer(o, cfg.num_head_channels, cfg.transformer_depth, g)
                if ds in cfg.attention_resolutions
                else None
            )
            return _Step(ResBlock2d(i, o, emb_dim, g, cfg.dropout, zero_out=True), attn)

        self.conv_in = nn.Conv2d(cfg.in_channels, mc, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch, ds = [mc], mc, 1
        for level, m in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(step(ch, mc * m, ds))
                ch = mc * m
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                ds *= 2
        self.mid_res1 = ResBlock2d(ch, ch, emb_dim, g, cfg.dropout, zero_out=True)
        self.mid_attn = SpatialTransformer(ch, cfg.num_head_channels, cfg.transformer_depth, g)
        self.mid_res2 = ResBlock2d(ch, ch, emb_dim, g, cfg.dropout, zero_out=True)
        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                self.up.append(step(ch + skips.pop(), mc * cfg.channel_mult[level], ds))
                ch = mc * cfg.channel_mult[level]
                if level and i == cfg.num_res_blocks:
                    self.up.append(
                        nn.Sequential(
                            nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)
                        )
                    )
                    ds //= 2
        self.out = nn.Sequential(
            group_norm(ch, g), nn.SiLU(), zero_init(nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        )

    def diffusion(self) -> GaussianDiffusion:
        """The schedule/objective/sampler this network was configured to be trained and sampled with."""
        return GaussianDiffusion(self.cfg.diffusion)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"latent U-Net expects (batch, {self.cfg.in_channels}, h, w), got {tuple(x.shape)}"
            )
        x, sizes = pad_to_multiple(x, self.multiple)
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(x.dtype))
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, _Step) else layer(h)
            hs.append(h)
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, emb)), emb)
        for layer in self.up:
            h = layer(torch.cat([h, hs.pop()], dim=1), emb) if isinstance(layer, _Step) else layer(h)
        return crop_to(self.out(h), sizes)
