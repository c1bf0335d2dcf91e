"""Vocoder stage: HiFi-GAN 48 kHz from the clean log-mel, against MPD + multi-resolution discriminators.

Objective (HiFi-GAN, Kong et al. 2020, eq. 5-6): the discriminator minimises the least-squares GAN loss on real
and (detached) generated crops; the generator minimises ``mel * L1(log-mel) + feature_matching * FM + adversarial
* LSGAN`` (45, 2, 1 by default). Before ``train.gan_start_step`` the generator learns from the mel L1 alone and the
discriminator is neither run nor updated (it receives no gradient, so its optimiser step changes nothing).

The loop steps the optimisers after the whole step, so the generator's adversarial terms see the discriminator
of before this step's update (HiFi-GAN steps the discriminator first); the real crops' feature maps of the
discriminator pass are therefore reused as the feature-matching targets.

Crops are whole mel hops (``k * 480`` samples): the generator turns ``k`` frames into exactly the crop.
Evaluation vocodes the evaluation crops (each sample's first ``crop_samples``) and reports the mel L1 and the
multi-resolution STFT distance.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from training.config import StageConfig
from training.losses import (
    feature_matching_loss,
    loss_weights,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    mel_l1,
    multi_resolution_stft_distance,
)
from training.stages.base import EvalResult, Example, Optimizers, frozen_params, unwrap
from training.stages.mel_gan import MelGanStage

# HiFi-GAN V1 (jik876/hifi-gan train.py): loss_mel * 45, feature_loss * 2, generator_loss * 1
LOSS_WEIGHTS = {"mel": 45.0, "feature_matching": 2.0, "adversarial": 1.0}


class VocoderStage(MelGanStage):
    name = "vocoder"

    def __init__(self, cfg: StageConfig, device: torch.device, frozen: dict[str, Any] | None = None) -> None:
        weights = loss_weights(self.name, cfg.train.loss, LOSS_WEIGHTS)
        super().__init__(cfg, device, frozen)
        self.weights = weights
        self.hop = cfg.features.mel.hop_length  # type: ignore[union-attr]

    def _crop(self, wave: torch.Tensor) -> torch.Tensor:
        samples = wave.shape[-1] // self.hop * self.hop
        if samples == 0:
            raise ValueError(f"crop of {wave.shape[-1]} samples is shorter than one mel hop ({self.hop})")
        return wave[..., :samples]

    def train_step(self, batch: dict, step: int, opt: Optimizers) -> dict[str, float]:
        real = self._crop(batch["clean_48k"])
        generator, discriminator = self._module("generator"), self._module("discriminator")
        with torch.no_grad():
            target_mel = self._log_mel(real)
        fake = generator(target_mel)
        adversarial = step >= self.cfg.train.gan_start_step
        zero = torch.zeros((), device=real.device)
        d_loss, g_adv, g_fm = zero, zero, zero

        real_features: list[list[torch.Tensor]] = []
        if adversarial:
            # one pass over real and fake (the sub-discriminators treat examples independently)
            outputs = discriminator(torch.cat([real, fake.detach()]))
            n = real.shape[0]
            real_logits = [logits[:n] for logits, _ in outputs]
            fake_logits = [logits[n:] for logits, _ in outputs]
            d_loss = lsgan_discriminator_loss(real_logits, fake_logits)
            opt.backward("discriminator", d_loss)
            # the discriminator is only stepped after this call, so these are also the generator step's targets
            real_features = [[f[:n].detach() for f in maps] for _, maps in outputs]

        mel_loss = mel_l1(self._log_mel(fake), target_mel)
        g_loss = self.weights["mel"] * mel_loss
        if adversarial:
            plain = unwrap(discriminator)
            with frozen_params(plain):
                outputs = plain(fake)
            g_adv = lsgan_generator_loss([logits for logits, _ in outputs])
            g_fm = feature_matching_loss(real_features, [maps for _, maps in outputs])
            g_loss = g_loss + self.weights["adversarial"] * g_adv + self.weights["feature_matching"] * g_fm
        opt.backward("generator", g_loss)
        # the same keys every step, so metrics can be reduced across ranks and logged as continuous series
        return {
            "loss": float(g_loss.detach()),
            "mel_l1": float(mel_loss.detach()),
            "g_adversarial": float(g_adv.detach()),
            "g_feature_matching": float(g_fm.detach()),
            "d_loss": float(d_loss.detach()),
        }

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict], max_examples: int = 3) -> EvalResult:
        # the plain module: ranks may see different numbers of eval batches, and a DDP forward is a collective
        generator = unwrap(self._module("generator"))
        was_training = generator.training
        generator.eval()
        totals = {"mel_l1": 0.0, "stft_sc": 0.0, "stft_log_mag": 0.0}
        count = 0
        examples: list[Example] = []
        try:
            for batch in batches:
                clean = batch["clean_48k"].to(self.device)
                samples = clean.shape[-1]
                mel = self._log_mel(clean)
                output = generator(mel)[..., :samples]
                sc, log_mag = multi_resolution_stft_distance(output, clean)
                totals["mel_l1"] += float(mel_l1(self._log_mel(output), mel, per_example=True).sum())
                totals["stft_sc"] += float(sc.sum())
                totals["stft_log_mag"] += float(log_mag.sum())
                count += clean.shape[0]
                self._add_examples(examples, max_examples, batch, clean, output=output)
        finally:
            generator.train(was_training)
        metrics = {k: (v / count if count else float("nan")) for k, v in totals.items()}
        metrics["stft_distance"] = metrics["stft_sc"] + metrics["stft_log_mag"]
        return EvalResult(metrics=metrics, examples=examples)


STAGE = VocoderStage
