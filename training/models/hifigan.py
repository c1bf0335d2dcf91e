"""HiFi-GAN 48 kHz: generator (mel -> waveform, x480) and its discriminators (multi-period + multi-resolution).

Generator: transposed-convolution upsampling by ``upsample_rates`` (product = the mel hop, 480), each followed by
a multi-receptive-field fusion (MRF) of residual blocks with kernels ``resblock_kernel_sizes`` and dilations
``resblock_dilations``. Transposed convolutions are padded so that every stage multiplies the length exactly, so
``frames`` mel frames give exactly ``frames * 480`` samples. Weight normalisation is on for training;
:meth:`HiFiGANGenerator.remove_weight_norm` folds it away for inference.

Discriminators: MPD (periods 2, 3, 5, 7, 11; HiFi-GAN) and MRD (magnitude spectrograms at several STFT
resolutions; UnivNet), both returning per-sub-discriminator logits and feature maps for LSGAN and feature-matching
losses.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, model_validator
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from datasets.config import StrictModel
from training.models.registry import NetworkConfig, register

LRELU_SLOPE = 0.1


class VocoderDiscriminatorConfig(StrictModel):
    periods: list[int] = Field(default_factory=lambda: [2, 3, 5, 7, 11], min_length=1)
    # (n_fft, hop, win) per MRD sub-discriminator
    resolutions: list[tuple[int, int, int]] = Field(
        default_factory=lambda: [(2048, 240, 1200), (4096, 480, 2400), (1024, 100, 480)], min_length=1
    )
    channels: int = Field(32, gt=0)  # MRD width
    mpd_channels: list[int] = Field(default_factory=lambda: [32, 128, 512, 1024, 1024], min_length=2)


class HiFiGANConfig(NetworkConfig):
    name: Literal["hifigan"] = "hifigan"
    n_mels: int = Field(256, gt=0)
    upsample_rates: list[int] = Field(default_factory=lambda: [6, 5, 4, 2, 2], min_length=1)
    upsample_kernel_sizes: list[int] = Field(default_factory=lambda: [12, 10, 8, 4, 4], min_length=1)
    upsample_initial_channel: int = Field(1536, gt=0)
    resblock_kernel_sizes: list[int] = Field(default_factory=lambda: [3, 7, 11, 15], min_length=1)
    resblock_dilations: list[list[int]] = Field(default_factory=lambda: [[1, 3, 5]] * 4, min_length=1)
    discriminator: VocoderDiscriminatorConfig = VocoderDiscriminatorConfig()

    @model_validator(mode="after")
    def _check(self) -> HiFiGANConfig:
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes must have the same length")
        if any(k < u for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True)):
            raise ValueError("each upsample kernel must be at least its rate")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilations):
            raise ValueError("resblock_kernel_sizes and resblock_dilations must have the same length")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ValueError(f"upsample_initial_channel must be divisible by 2**{len(self.upsample_rates)}")
        return self

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsample_rates)


def _init_conv(module: nn.Module) -> None:
    if isinstance(module, nn.Conv1d | nn.ConvTranspose1d):
        nn.init.normal_(module.weight, 0.0, 0.01)


def _same_padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class MRFBlock(nn.Module):
    """HiFi-GAN ResBlock1: per dilation, leaky-ReLU -> dilated conv -> leaky-ReLU -> conv, residual."""

    def __init__(self, channels: int, kernel: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel, dilation=d, padding=_same_padding(kernel, d)))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel, padding=_same_padding(kernel)))
            for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


@register("hifigan")
class HiFiGANGenerator(nn.Module):
    """Log-mel ``(batch, n_mels, frames)`` -> waveform ``(batch, frames * prod(upsample_rates))`` in [-1, 1]."""

    stage = "vocoder"
    Config = HiFiGANConfig

    def __init__(self, cfg: HiFiGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.upsample_initial_channel
        self.conv_pre = weight_norm(nn.Conv1d(cfg.n_mels, ch, 7, padding=3))
        self.ups = nn.ModuleList()
        self.mrfs = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)):
            # (L-1)*rate - 2*pad + kernel + out_pad == L*rate for both parities of kernel - rate
            pad, out_pad = (kernel - rate + 1) // 2, (kernel - rate) % 2
            self.ups.append(
                weight_norm(
                    nn.ConvTranspose1d(
                        ch // 2**i, ch // 2 ** (i + 1), kernel, rate, padding=pad, output_padding=out_pad
                    )
                )
            )
            self.mrfs.append(
                nn.ModuleList(
                    MRFBlock(ch // 2 ** (i + 1), k, d)
                    for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations, strict=True)
                )
            )
        self.conv_post = weight_norm(nn.Conv1d(ch // 2 ** len(cfg.upsample_rates), 1, 7, padding=3))
        self.apply(_init_conv)

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    @staticmethod
    def check_features(cfg: BaseModel, features: BaseModel) -> list[str]:
        """Problems (``field: message``) between this config and the stage's features; empty if consistent."""
        assert isinstance(cfg, HiFiGANConfig)
        mel = getattr(features, "mel", None)
        if mel is None:
            return []
        problems = []
        if cfg.n_mels != mel.n_mels:
            problems.append(f"model.n_mels: {cfg.n_mels} != features.mel.n_mels {mel.n_mels}")
        if cfg.hop_length != mel.hop_length:
            problems.append(
                f"model.upsample_rates: product {cfg.hop_length} != features.mel.hop_length "
                f"{mel.hop_length} (one mel frame must become one hop of samples)"
            )
        return problems

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.dim() != 3 or mel.shape[1] != self.cfg.n_mels:
            raise ValueError(f"HiFi-GAN expects (batch, {self.cfg.n_mels}, frames), got {tuple(mel.shape)}")
        x = self.conv_pre(mel)
        for up, mrf in zip(self.ups, self.mrfs, strict=True):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            x = sum(block(x) for block in mrf) / len(mrf)
        x = self.conv_post(F.leaky_relu(x))  # HiFi-GAN uses the default slope (0.01) here
        return torch.tanh(x)[:, 0]

    def remove_weight_norm(self) -> None:
        """Fold the weight-norm parametrisations into plain weights (inference; same outputs)."""
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)

    @staticmethod
    def build_discriminator(cfg: BaseModel) -> nn.Module:
        assert isinstance(cfg, HiFiGANConfig)
        return VocoderDiscriminator(cfg.discriminator)


Outputs = list[tuple[torch.Tensor, list[torch.Tensor]]]


def _conv_stack(
    convs: nn.ModuleList, conv_post: nn.Module, h: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Leaky-ReLU conv stack of a discriminator: (flattened logits, every layer's output for feature matching)."""
    features = []
    for conv in convs:
        h = F.leaky_relu(conv(h), LRELU_SLOPE)
        features.append(h)
    h = conv_post(h)
    features.append(h)
    return h.flatten(1), features


class PeriodDiscriminator(nn.Module):
    """Folds the waveform into ``(frames, period)`` and applies 2-D convolutions along time (HiFi-GAN MPD)."""

    def __init__(self, period: int, channels: list[int] | None = None) -> None:
        super().__init__()
        self.period = period
        widths = [1, *(channels or [32, 128, 512, 1024, 1024])]
        last = len(widths) - 2
        # every layer but the last strides by 3 along time
        self.convs = nn.ModuleList(
            weight_norm(
                nn.Conv2d(widths[i], widths[i + 1], (5, 1), (3 if i < last else 1, 1), padding=(2, 0))
            )
            for i in range(len(widths) - 1)
        )
        self.conv_post = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, t = wave.shape
        if t % self.period:
            wave = F.pad(wave, (0, self.period - t % self.period), mode="reflect")
        x = wave.reshape(b, 1, -1, self.period)
        return _conv_stack(self.convs, self.conv_post, x)


class ResolutionDiscriminator(nn.Module):
    """2-D convolutions over a linear-magnitude spectrogram at one STFT resolution (UnivNet MRD)."""

    def __init__(self, n_fft: int, hop: int, win: int, channels: int = 32) -> None:
        super().__init__()
        if win > n_fft or hop > win:
            raise ValueError(f"MRD resolution needs hop <= win <= n_fft, got ({n_fft}, {hop}, {win})")
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(win), persistent=False)
        c = channels
        self.convs = nn.ModuleList(
            [
                weight_norm(nn.Conv2d(1, c, (3, 9), padding=(1, 4))),
                weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
                weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
                weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
                weight_norm(nn.Conv2d(c, c, (3, 3), padding=(1, 1))),
            ]
        )
        self.conv_post = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pad = (self.n_fft - self.hop) // 2
        x = F.pad(wave.float()[:, None], (pad, pad), mode="reflect")[:, 0]
        spec = torch.stft(
            x,
            self.n_fft,
            self.hop,
            win_length=self.window.shape[0],
            window=self.window,
            center=False,
            return_complex=True,
        )
        mag = torch.sqrt(spec.real.square() + spec.imag.square() + 1e-9)
        h = mag.transpose(1, 2)[:, None].to(wave.dtype)  # (batch, 1, frames, freq)
        return _conv_stack(self.convs, self.conv_post, h)


class VocoderDiscriminator(nn.Module):
    """MPD + MRD; ``forward(wave (batch, samples))`` -> list of ``(logits, feature maps)``, one per sub-model."""

    def __init__(self, cfg: VocoderDiscriminatorConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or VocoderDiscriminatorConfig()
        self.period = nn.ModuleList(PeriodDiscriminator(p, cfg.mpd_channels) for p in cfg.periods)
        self.resolution = nn.ModuleList(
            ResolutionDiscriminator(*r, channels=cfg.channels) for r in cfg.resolutions
        )

    def forward(self, wave: torch.Tensor) -> Outputs:
        if wave.dim() == 3:
            wave = wave[:, 0]
        return [d(wave) for d in self.period] + [d(wave) for d in self.resolution]
