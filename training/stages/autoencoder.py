"""Autoencoder stage: the mel VAE on clean 48 kHz log-mels, with a patch-GAN after ``train.gan_start_step``.

Objective (AudioLDM's ``LPIPSWithDiscriminator`` without the image-perceptual LPIPS term, which needs pretrained
VGG weights and has no meaning for mels), with AudioLDM's reductions so its published weights keep their meaning:
the L1 reconstruction of the log-mel is *summed* over mel bins and frames, the KL to N(0, I) is *averaged* over
latent elements, each then averaged over the batch. (The balance therefore depends on the crop: a longer crop
weighs reconstruction more against the KL.) From the start step the patch-GAN joins with hinge losses; the generator's
adversarial term is scaled by ``adversarial`` times taming's adaptive weight (``adaptive: 1``; 0 uses the
fixed ``adversarial`` weight alone). The adaptive weight is averaged over DDP ranks, so every replica optimises the
same objective; it costs one all-reduce of a scalar per step once the GAN is on.

Before the start step the discriminator is neither run nor updated (AudioLDM multiplies its loss by 0 instead).
The loop steps the optimisers after the whole step, so the generator's adversarial term sees the discriminator
of before this step's update (AudioLDM steps the discriminator first).
Evaluation encodes the clean mels of the evaluation crops (each sample's first ``crop_samples``) to the posterior
mode and reports the mel L1 of the reconstruction.
The stage has no vocoder, so examples carry the reconstructed log-mel (``Example.output_mel``) and no output
wave (a Griffin-Lim preview would mostly show Griffin-Lim's own artefacts).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

from datasets.config import ConfigError
from training.config import StageConfig
from training.losses import (
    adaptive_adversarial_weight,
    hinge_discriminator_loss,
    hinge_generator_loss,
    loss_weights,
    mel_l1,
)
from training.stages.base import EvalResult, Example, Optimizers, frozen_params, unwrap
from training.stages.mel_gan import MelGanStage

# AudioLDM (haoheliu/AudioLDM-training-finetuning, audioldm_train/losses/contperceptual.py and
# config/2023_11_13_vae_autoencoder/16k_64.yaml): pixelloss_weight 1, disc_weight 0.5 with the adaptive weight;
# the KL weight of the 48 kHz / 256-mel VAE is set in configs/train/autoencoder/paper.yaml (its source there)
LOSS_WEIGHTS = {"reconstruction": 1.0, "kl": 1.0, "adversarial": 0.5, "adaptive": 1.0}


class AutoencoderStage(MelGanStage):
    name = "autoencoder"  # the generator is the VAE

    def __init__(self, cfg: StageConfig, device: torch.device, frozen: dict[str, Any] | None = None) -> None:
        weights = loss_weights(self.name, cfg.train.loss, LOSS_WEIGHTS)
        if weights["adaptive"] not in (0.0, 1.0):
            raise ConfigError(
                f"train.loss.adaptive: 1 (adaptive weight) or 0 (fixed), got {weights['adaptive']}"
            )
        super().__init__(cfg, device, frozen)
        self.weights = weights

    def train_step(self, batch: dict, step: int, opt: Optimizers) -> dict[str, float]:
        vae, discriminator = self._module("generator"), self._module("discriminator")
        with torch.no_grad():
            target = self._log_mel(batch["clean_48k"])
        recon, posterior = vae(target)
        recon = recon.float()
        # AudioLDM's reductions (module docstring): L1 summed per example, KL averaged per latent element
        reconstruction = (recon - target).abs().flatten(1).sum(dim=1).mean()
        kl = self._kl_per_element(posterior).mean()
        adversarial = step >= self.cfg.train.gan_start_step
        zero = torch.zeros((), device=target.device)
        d_loss, g_adv, d_weight = zero, zero, zero

        if adversarial:
            # two passes, as taming does: the patch-GAN's BatchNorm normalises real and fake batches separately
            d_loss = hinge_discriminator_loss(discriminator(target), discriminator(recon.detach()))
            opt.backward("discriminator", d_loss)

        nll = self.weights["reconstruction"] * reconstruction
        g_loss = nll + self.weights["kl"] * kl
        if adversarial:
            plain = unwrap(discriminator)
            with frozen_params(plain):
                g_adv = hinge_generator_loss(plain(recon))
            d_weight = self._adversarial_weight(nll, g_adv)
            g_loss = g_loss + d_weight * g_adv
        opt.backward("generator", g_loss)
        # the same keys every step, so metrics can be reduced across ranks and logged as continuous series
        return {
            "loss": float(g_loss.detach()),
            "mel_l1": float(mel_l1(recon.detach(), target)),
            "reconstruction": float(reconstruction.detach()),
            "kl": float(kl.detach()),
            "g_adversarial": float(g_adv.detach()),
            "adversarial_weight": float(d_weight),
            "d_loss": float(d_loss.detach()),
        }

    @staticmethod
    def _kl_per_element(posterior) -> torch.Tensor:
        """``(batch,)`` KL to N(0, I) averaged over the latent elements of each example."""
        return posterior.kl() / posterior.mean[0].numel()

    def _adversarial_weight(self, nll: torch.Tensor, g_adv: torch.Tensor) -> torch.Tensor:
        weight = torch.tensor(self.weights["adversarial"], device=nll.device)
        if not self.weights["adaptive"] or not self.weights["adversarial"]:
            return weight
        last_layer = unwrap(self._module("generator")).decoder.conv_out.weight
        adaptive = adaptive_adversarial_weight(nll, g_adv, last_layer)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(adaptive)  # every rank reaches this at the same step: the start step is shared
            adaptive = adaptive / dist.get_world_size()
        return weight * adaptive

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict], max_examples: int = 3) -> EvalResult:
        # the plain module: ranks may see different numbers of eval batches, and a DDP forward is a collective
        vae = unwrap(self._module("generator"))
        was_training = vae.training
        vae.eval()
        totals = {"mel_l1": 0.0, "kl": 0.0}
        count = 0
        examples: list[Example] = []
        try:
            for batch in batches:
                clean = batch["clean_48k"].to(self.device)
                mel = self._log_mel(clean)
                recon, posterior = vae(mel, sample_posterior=False)
                recon = recon.float()
                totals["mel_l1"] += float(mel_l1(recon, mel, per_example=True).sum())
                totals["kl"] += float(self._kl_per_element(posterior).sum())
                count += clean.shape[0]
                self._add_examples(examples, max_examples, batch, clean, output_mel=recon)
        finally:
            vae.train(was_training)
        metrics = {k: (v / count if count else float("nan")) for k, v in totals.items()}
        return EvalResult(metrics=metrics, examples=examples)

    def model_meta(self) -> dict[str, Any]:
        vae = self.networks["generator"]
        return {"latent_channels": vae.cfg.z_channels, "latent_downsample": vae.downsample}  # type: ignore[union-attr]


STAGE = AutoencoderStage
