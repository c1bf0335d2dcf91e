"""Parameter counts and tensor shapes of a stage's network, computed on the meta device (no weights allocated)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.config import StageConfig
from training.features import mel_frames, stft_frames
from training.models.layers import count_parameters
from training.models.registry import build, build_discriminator

CLIP_SECONDS = 5.12


def _shape(t: torch.Tensor) -> list[int]:
    return [int(s) for s in t.shape]


def _io_shapes(cfg: StageConfig, model: nn.Module, seconds: float, batch: int) -> dict[str, Any]:
    """Run the network on empty meta tensors for a ``seconds`` clip: the shapes it really produces."""
    stage, feats, m = cfg.stage, cfg.features, cfg.model
    if stage == "recovery":
        st = feats.stft
        samples = round(seconds * st.sample_rate)
        x = torch.empty(batch, m.in_channels, st.freq_bins, stft_frames(samples, st.hop_length))
        y = model(x)
        return {
            "sample_rate": st.sample_rate,
            "samples": samples,
            "inputs": {"degraded_stft": _shape(x)},
            "outputs": {"clean_stft": _shape(y)},
        }
    mel = feats.mel
    samples = round(seconds * mel.sample_rate)
    frames = mel_frames(samples, mel.hop_length)
    info: dict[str, Any] = {"sample_rate": mel.sample_rate, "samples": samples}
    if stage == "autoencoder":
        x = torch.empty(batch, mel.n_mels, frames)
        posterior = model.encode(x)
        y = model.decode(posterior.mode())
        info.update(inputs={"mel": _shape(x)}, outputs={"latent": _shape(posterior.mean), "mel": _shape(y)})
    elif stage == "vocoder":
        x = torch.empty(batch, mel.n_mels, frames)
        info.update(inputs={"mel": _shape(x)}, outputs={"waveform": _shape(model(x))})
    elif stage == "ldm":
        f = 8  # the paper VAE's downsampling; latent = (z, n_mels/8, frames/8)
        latent = (m.out_channels, -(-mel.n_mels // f), -(-frames // f))
        x = torch.empty(batch, m.in_channels, *latent[1:])
        y = model(x, torch.zeros(batch, dtype=torch.long))
        info.update(
            inputs={"noisy_and_condition_latent": _shape(x), "timestep": [batch]},
            outputs={"prediction": _shape(y)},
        )
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return info


def summarize(cfg: StageConfig, seconds: float = CLIP_SECONDS, batch: int = 1) -> dict[str, Any]:
    """JSON-able summary: parameter counts (network, trainable, discriminator) and I/O shapes for a clip."""
    if seconds <= 0 or batch < 1:
        raise ValueError(f"need seconds > 0 and batch >= 1, got {seconds}, {batch}")
    with torch.device("meta"):
        model = build(cfg)
        discriminator = build_discriminator(cfg)
        shapes = _io_shapes(cfg, model, seconds, batch)
    out: dict[str, Any] = {
        "stage": cfg.stage,
        "network": cfg.model.name,  # type: ignore[attr-defined]
        "parameters": count_parameters(model),
        "trainable_parameters": count_parameters(model, trainable_only=True),
        "fp32_megabytes": round(count_parameters(model) * 4 / 2**20, 1),
    }
    if discriminator is not None:
        out["discriminator_parameters"] = count_parameters(discriminator)
    out["clip_seconds"] = seconds
    out.update(shapes)
    return out
