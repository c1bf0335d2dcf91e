"""Mel VAE (AutoencoderKL style) for 48 kHz log-mel spectrograms, and its patch-GAN discriminator.

The log-mel ``(batch, n_mels, frames)`` is treated as a one-channel image. The encoder halves both axes
``len(ch_mult) - 1`` times (8x for the paper config) and outputs the mean and log-variance of a diagonal Gaussian
with ``z_channels`` channels: 256 mels x 512 frames -> 16 x 32 x 64. Inputs whose sizes are not multiples of the
downsampling factor are padded with the log-mel floor (silence) and the decoder output is cropped back.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn

from datasets.config import StrictModel
from training.features import LOG_FLOOR
from training.models.layers import ResBlock2d, SelfAttention2d, crop_to, group_norm, pad_to_multiple
from training.models.registry import NetworkConfig, register


class PatchDiscriminatorConfig(StrictModel):
    channels: int = Field(64, gt=0)
    layers: int = Field(3, ge=1)


class MelVAEConfig(NetworkConfig):
    name: Literal["mel_vae"] = "mel_vae"
    in_channels: int = Field(1, gt=0)
    ch: int = Field(128, gt=0)
    ch_mult: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], min_length=1)
    num_res_blocks: int = Field(2, ge=1)
    z_channels: int = Field(16, gt=0)
    norm_groups: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    discriminator: PatchDiscriminatorConfig = PatchDiscriminatorConfig()


class DiagonalGaussian:
    """Posterior ``N(mean, exp(logvar))`` over latents ``(batch, z, h, w)``."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)  # keeps exp() finite early in training
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample; with a ``generator`` the noise is drawn on the generator's device."""
        if generator is None:
            noise = torch.randn_like(self.mean)
        else:
            noise = torch.randn(self.mean.shape, generator=generator, device=generator.device).to(self.mean)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to the standard normal, summed over latent dimensions: ``(batch,)``."""
        mean, logvar = self.mean.float(), self.logvar.float()  # a sum of ~1e4 terms: not in bf16
        return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3))


class _Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad: exact halving of even sizes


class _Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, ch: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.block1 = ResBlock2d(ch, ch, groups=groups, dropout=dropout)
        self.attn = SelfAttention2d(ch, groups)
        self.block2 = ResBlock2d(ch, ch, groups=groups, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.attn(self.block1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: MelVAEConfig) -> None:
        super().__init__()
        g, ch = cfg.norm_groups, cfg.ch
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        layers: list[nn.Module] = []
        in_ch = ch
        for level, m in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock2d(in_ch, ch * m, groups=g, dropout=cfg.dropout))
                in_ch = ch * m
            if level != len(cfg.ch_mult) - 1:
                layers.append(_Downsample(in_ch))
        self.down = nn.Sequential(*layers)
        self.mid = _Mid(in_ch, g, cfg.dropout)
        self.norm_out = group_norm(in_ch, g)
        self.conv_out = nn.Conv2d(in_ch, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: MelVAEConfig) -> None:
        super().__init__()
        g, ch = cfg.norm_groups, cfg.ch
        in_ch = ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, in_ch, 3, padding=1)
        self.mid = _Mid(in_ch, g, cfg.dropout)
        layers: list[nn.Module] = []
        for level in reversed(range(len(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResBlock2d(in_ch, ch * cfg.ch_mult[level], groups=g, dropout=cfg.dropout))
                in_ch = ch * cfg.ch_mult[level]
            if level != 0:
                layers.append(_Upsample(in_ch))
        self.up = nn.Sequential(*layers)
        self.norm_out = group_norm(in_ch, g)
        self.conv_out = nn.Conv2d(in_ch, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


@register("mel_vae")
class MelVAE(nn.Module):
    """``encode(mel) -> DiagonalGaussian``, ``decode(z) -> mel``; ``forward`` does both and crops to the input."""

    stage = "autoencoder"
    Config = MelVAEConfig

    def __init__(self, cfg: MelVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.downsample = 2 ** (len(cfg.ch_mult) - 1)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.z_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)

    def _as_image(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.dim() == 3 and self.cfg.in_channels == 1:
            mel = mel[:, None]
        if mel.dim() != 4 or mel.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"mel VAE expects (batch, n_mels, frames) or (batch, {self.cfg.in_channels}, n_mels, "
                f"frames), got {tuple(mel.shape)}"
            )
        return mel

    def latent_shape(self, n_mels: int, frames: int) -> tuple[int, int, int]:
        """``(z_channels, ceil(n_mels / f), ceil(frames / f))`` for downsampling factor ``f``."""
        f = self.downsample
        return (self.cfg.z_channels, -(-n_mels // f), -(-frames // f))

    def encode(self, mel: torch.Tensor) -> DiagonalGaussian:
        x, _ = pad_to_multiple(self._as_image(mel), self.downsample, value=math.log(LOG_FLOOR))
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent ``(batch, z, h, w)`` -> log-mel ``(batch, h*f, w*f)`` (one channel squeezed)."""
        out = self.decoder(self.post_quant_conv(z))
        return out[:, 0] if self.cfg.in_channels == 1 else out

    def forward(
        self, mel: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        sizes = tuple(mel.shape[-2:])
        posterior = self.encode(mel)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return crop_to(self.decode(z), sizes), posterior

    @staticmethod
    def build_discriminator(cfg: BaseModel) -> nn.Module:
        assert isinstance(cfg, MelVAEConfig)
        return PatchDiscriminator(cfg.in_channels, cfg.discriminator)


class PatchDiscriminator(nn.Module):
    """Patch-GAN (pix2pix ``NLayerDiscriminator``): one real/fake logit per receptive-field patch of the mel."""

    def __init__(self, in_channels: int = 1, cfg: PatchDiscriminatorConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or PatchDiscriminatorConfig()
        ch = cfg.channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, cfg.layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < cfg.layers else 1
            layers += [
                nn.Conv2d(ch * prev, ch * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(ch * mult),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(ch * mult, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        self.in_channels = in_channels

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.dim() == 3:
            mel = mel[:, None]
        return self.net(mel)
