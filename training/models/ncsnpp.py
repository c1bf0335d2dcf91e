"""NCSN++M: the lighter NCSN++ U-Net (as in StoRM) used as the predictive recovery network at 16 kHz.

Input: real/imag of the compressed degraded STFT ``(batch, 2, freq, frames)``; output: the compressed clean STFT
in the same layout. The layout follows NCSN++ with ``resblock_type='biggan'``, ``fir=True``,
``progressive='output_skip'``, ``progressive_input='input_skip'`` (combine by sum), ``skip_rescale=True``, one
residual block per level and attention only in the middle. Any size works: frequency and time are padded to a
multiple of ``2**(levels - 1)`` inside and cropped back.

Parameter count. StoRM reports 27.8 M for NCSN++M; that figure is its *score* network: noise-conditioned
(Gaussian Fourier embedding of log sigma, two dense layers, one dense projection per residual block) with four
input channels. ``conditional: true, in_channels: 4`` reproduces that layout (27.74 M). The predictive recovery
network used here is not noise-conditioned, so it has no embedding layers and 24.98 M parameters (10.2 % below
the published figure); StoRM's predictive mode keeps those layers allocated but unused, which would also make
DDP fail on unused parameters.

``residual: true`` adds the input to the output (which needs ``in_channels == out_channels``) and zero-initialises
the output heads, so an untrained network is the identity and training learns the correction. The paper config
keeps StoRM's direct prediction; the tiny config uses the residual form, because a few hundred CPU steps of a
direct predictor stay far below the degraded input's SI-SDR, while the identity start can only improve on it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from training.models.layers import (
    SelfAttention2d,
    crop_to,
    fir_downsample_2d,
    fir_kernel_2d,
    fir_upsample_2d,
    group_norm,
    pad_to_multiple,
    zero_init,
)
from training.models.registry import NetworkConfig, register


class NCSNppConfig(NetworkConfig):
    name: Literal["ncsnpp_m"] = "ncsnpp_m"
    in_channels: int = Field(2, gt=0)
    out_channels: int = Field(2, gt=0)
    nf: int = Field(128, gt=0)
    ch_mult: list[int] = Field(default_factory=lambda: [1, 2, 2, 2], min_length=1)
    num_res_blocks: int = Field(1, ge=1)
    fir_kernel: list[float] = Field(default_factory=lambda: [1.0, 3.0, 3.0, 1.0], min_length=2)
    norm_groups: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    conditional: bool = False  # noise-level conditioning (score-model use); forward then needs ``sigma``
    fourier_scale: float = Field(16.0, gt=0)
    residual: bool = False  # output = input + network(input), starting as the identity (see module docstring)

    @model_validator(mode="after")
    def _residual_needs_matching_channels(self) -> NCSNppConfig:
        if self.residual and self.in_channels != self.out_channels:
            raise ValueError(
                f"residual needs in_channels == out_channels, got {self.in_channels} and {self.out_channels}"
            )
        return self


class BigGANBlock(nn.Module):
    """BigGAN-style residual block with optional FIR up/down-sampling of both paths; sum scaled by 1/sqrt(2)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None,
        groups: int,
        kernel: torch.Tensor,
        dropout: float = 0.0,
        up: bool = False,
        down: bool = False,
        emb_dim: int | None = None,
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.norm1 = group_norm(in_ch, min(groups, max(in_ch // 4, 1)))
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch) if emb_dim else None
        self.norm2 = group_norm(out_ch, min(groups, max(out_ch // 4, 1)))
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if (in_ch != out_ch or up or down) else None
        self.up, self.down = up, down
        self.register_buffer("kernel", kernel.clone(), persistent=False)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return fir_upsample_2d(x, self.kernel)
        if self.down:
            return fir_downsample_2d(x, self.kernel)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self._resample(F.silu(self.norm1(x)))
        x = self._resample(x)
        h = self.conv1(h)
        if self.emb is not None and emb is not None:
            h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.shortcut is not None:
            x = self.shortcut(x)
        return (x + h) / math.sqrt(2.0)


@register("ncsnpp_m")
class NCSNppM(nn.Module):
    """NCSN++M predictive U-Net on compressed complex spectrograms (see module docstring)."""

    stage = "recovery"
    Config = NCSNppConfig

    def __init__(self, cfg: NCSNppConfig) -> None:
        super().__init__()
        self.cfg = cfg
        nf, mult, groups = cfg.nf, cfg.ch_mult, cfg.norm_groups
        levels = len(mult)
        self.multiple = 2 ** (levels - 1)
        kernel = fir_kernel_2d(cfg.fir_kernel)
        self.register_buffer("kernel", kernel.clone(), persistent=False)

        emb_dim = 4 * nf if cfg.conditional else None
        if cfg.conditional:
            self.register_buffer("fourier", torch.randn(nf) * cfg.fourier_scale)
            self.embed = nn.Sequential(nn.Linear(2 * nf, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def block(i: int, o: int | None = None, **kw: bool) -> BigGANBlock:
            return BigGANBlock(i, o, groups, kernel, cfg.dropout, emb_dim=emb_dim, **kw)

        self.conv_in = nn.Conv2d(cfg.in_channels, nf, 3, padding=1)
        skips = [nf]
        ch = nf
        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        self.input_combiners = nn.ModuleList()
        for level, m in enumerate(mult):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(block(ch, nf * m))
                ch = nf * m
                skips.append(ch)
            self.down_blocks.append(blocks)
            if level != levels - 1:
                self.downsamplers.append(block(ch, down=True))
                # progressive input: the FIR-downsampled input spectrogram, projected and summed in
                self.input_combiners.append(nn.Conv2d(cfg.in_channels, ch, 1))
                skips.append(ch)

        self.mid = nn.ModuleList(
            [block(ch), SelfAttention2d(ch, min(groups, ch // 4), skip_rescale=True), block(ch)]
        )

        head_init = zero_init if cfg.residual else (lambda conv: conv)
        self.up_blocks = nn.ModuleList()
        self.output_heads = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for level in reversed(range(levels)):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                out = nf * mult[level]
                blocks.append(block(ch + skips.pop(), out))
                ch = out
            self.up_blocks.append(blocks)
            # progressive output: every level predicts the output at its resolution, summed up the pyramid
            self.output_heads.append(
                nn.Sequential(
                    group_norm(ch, min(groups, max(ch // 4, 1))),
                    nn.SiLU(),
                    head_init(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)),
                )
            )
            if level != 0:
                self.upsamplers.append(block(ch, up=True))
        if skips:
            raise AssertionError("NCSN++M skip bookkeeping is inconsistent")

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, in_channels, freq, frames) -> (batch, out_channels, freq, frames)``.

        ``sigma`` (batch,) is the noise level, required when the config is ``conditional`` and ignored otherwise.
        """
        if x.dim() != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"NCSN++M expects (batch, {self.cfg.in_channels}, freq, frames), got {tuple(x.shape)}"
            )
        emb = None
        if self.cfg.conditional:
            if sigma is None:
                raise ValueError("this NCSN++M is noise-conditional: pass sigma (batch,)")
            proj = torch.log(sigma.float())[:, None] * self.fourier[None] * (2 * math.pi)
            emb = self.embed(torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)).to(x.dtype)
        x, sizes = pad_to_multiple(x, self.multiple)
        pyramid_in = x
        hs = [self.conv_in(x)]
        h = hs[-1]
        for level, blocks in enumerate(self.down_blocks):
            for blk in blocks:
                h = blk(h, emb)
                hs.append(h)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h, emb)
                pyramid_in = fir_downsample_2d(pyramid_in, self.kernel)
                h = h + self.input_combiners[level](pyramid_in)
                hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        pyramid = None
        for i, blocks in enumerate(self.up_blocks):
            for blk in blocks:
                h = blk(torch.cat([h, hs.pop()], dim=1), emb)
            head = self.output_heads[i](h)
            pyramid = head if pyramid is None else fir_upsample_2d(pyramid, self.kernel) + head
            if i < len(self.upsamplers):
                h = self.upsamplers[i](h, emb)
        out = crop_to(pyramid, sizes)
        return out + crop_to(x, sizes) if self.cfg.residual else out
