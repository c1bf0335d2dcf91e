"""What the autoencoder and vocoder stages share: a generator and its discriminator on the clean log-mel.

Both read the clean 48 kHz stream only, compute its log-mel in float32 (also under the loop's bf16 autocast),
train the discriminator before the generator and evaluate on clean input, so their evaluation examples carry the
clean waveform as the degraded one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.config import StageConfig
from training.features import LogMel
from training.models import registry
from training.stages.base import Example, Stage, float32_log_mel


class MelGanStage(Stage):
    """Base of the GAN stages on the clean log-mel: ``networks`` holds the config's network (``generator``) and its
    discriminator (``discriminator``, updated first)."""

    streams = ("clean_48k",)
    inference_modules = ("generator",)

    def __init__(self, cfg: StageConfig, device: torch.device, frozen: dict[str, Any] | None = None) -> None:
        super().__init__(cfg, device, frozen)
        assert cfg.features.mel is not None  # the config loader requires it for these stages
        self.mel = LogMel(cfg.features.mel).to(device)
        self.sample_rate = cfg.features.mel.sample_rate
        generator = registry.build(cfg)
        discriminator = registry.build_discriminator(cfg)
        if discriminator is None:
            raise ValueError(f"network {cfg.model.name!r} has no discriminator for the {self.name} stage")  # type: ignore[attr-defined]
        self.networks = {"discriminator": discriminator.to(device), "generator": generator.to(device)}

    def trainable(self) -> dict[str, nn.Module]:
        return dict(self.networks)  # the discriminator first: it is updated on the detached generator output

    def _module(self, name: str) -> nn.Module:
        return self.ddp.get(name, self.networks[name])

    def _log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        return float32_log_mel(self.mel, wave, self.device)

    def _add_examples(
        self,
        examples: list[Example],
        max_examples: int,
        batch: dict,
        clean: torch.Tensor,
        output: torch.Tensor | None = None,
        output_mel: torch.Tensor | None = None,
    ) -> None:
        """Append a batch's examples to ``examples`` until it holds ``max_examples``: the input is the clean mel,
        nothing is degraded, so the clean waveform stands for the degraded one. ``output`` (waveforms) and
        ``output_mel`` (log-mels) are per example of the batch, like ``clean``."""
        for i in range(clean.shape[0]):
            if len(examples) >= max_examples:
                break
            wave = clean[i].float().cpu().numpy()
            examples.append(
                Example(
                    key=str(batch["keys"][i]) if "keys" in batch else f"example_{len(examples)}",
                    clean=wave,
                    degraded=wave,
                    output=None if output is None else output[i].float().cpu().numpy(),
                    sample_rate=self.sample_rate,
                    output_mel=None if output_mel is None else output_mel[i].float().cpu().numpy(),
                )
            )
