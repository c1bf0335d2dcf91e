"""LDM stage: a latent U-Net learns the clean mel latent from the latent of the recovered signal.

Frozen upstream models (``self.frozen``, loaded by the loop with :func:`training.model_dir.load_model`):
``recovery`` and ``autoencoder`` are required, a ``vocoder`` is optional (it turns evaluation outputs into audio).

Per batch (streams ``clean_48k`` and ``degraded_16k``)::

    z   = VAE.encode(mel48k(clean)).mode()                                        # clean latent
    z_0 = VAE.encode(mel48k(upsample48k(recovery(degraded16k)))).mode()          # condition latent

both multiplied by ``scale_factor`` = 1 / std of the clean latents of the first batches (LDM's ``scale_by_std``;
measured once in :meth:`LdmStage.setup` over every rank's batches, kept in checkpoints and in ``model.json``).
The objective is :meth:`training.models.diffusion.GaussianDiffusion.training_loss` (x0-prediction by default,
condition dropout for classifier-free guidance). The network keeps an EMA copy (``train.ema``).

Evaluation: DDIM from noise conditioned on ``z_0`` (``train.eval_sampler_steps`` steps), latent MSE against ``z``
(scaled space), mel L1 of the VAE-decoded sample against the clean mel, and for reference the mel L1 of the
decoded condition and of the VAE's own reconstruction of ``z``.

:func:`check_compatible` is also what the driver calls before any worker starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datasets.errors import IncompatibleError
from training.config import StageConfig
from training.features import ComplexSTFT, LogMel, resample
from training.losses import loss_weights
from training.models import build
from training.models.diffusion import GaussianDiffusion
from training.stages.base import EvalResult, Example, Optimizers, Stage, float32_log_mel, unwrap
from training.stages.recovery import enhance

LOSS_WEIGHTS = {"diffusion": 1.0}
EVAL_SEED = 1234  # DDIM noise of evaluation: the same draw at every evaluation, independent of training RNG


def _name(loaded: Any, fallback: str) -> str:
    return str(getattr(loaded, "source", "") or fallback)


def vae_downsample(vae_cfg: StageConfig) -> int:
    """Mel -> latent downsampling factor of a mel VAE config (``2 ** (len(ch_mult) - 1)``)."""
    return 2 ** (len(vae_cfg.model.ch_mult) - 1)  # type: ignore[attr-defined]


def check_compatible(
    ldm_cfg: StageConfig,
    recovery: Any,
    autoencoder: Any,
    vocoder: Any | None = None,
    ldm_name: str = "the ldm config",
) -> None:
    """Raise :class:`IncompatibleError` (one line naming both models) unless the frozen models fit the LDM.

    ``recovery``/``autoencoder``/``vocoder`` are :class:`training.model_dir.LoadedModel` (anything with
    ``stage``, ``config`` and ``source``). Checked: each model's stage; the VAE's latent channels against the
    U-Net (``in_channels = 2 * z``, ``out_channels = z``) and its downsampling against ``train.latent_downsample``;
    the mel settings of autoencoder, vocoder and ldm; the recovery network's 16 kHz front-end.
    """
    for role, loaded in (("recovery", recovery), ("autoencoder", autoencoder), ("vocoder", vocoder)):
        if loaded is not None and loaded.stage != role:
            raise IncompatibleError(
                f"{_name(loaded, role)} is a model of stage {loaded.stage}, but {ldm_name} needs a model of stage "
                f"{role} there"
            )
    vae_name = _name(autoencoder, "the autoencoder")
    z = autoencoder.config.model.z_channels
    unet = ldm_cfg.model
    if unet.in_channels != 2 * z or unet.out_channels != z:  # type: ignore[attr-defined]
        raise IncompatibleError(
            f"autoencoder {vae_name} has {z} latent channels, but {ldm_name} has in_channels "
            f"{unet.in_channels} / out_channels {unet.out_channels} (expected {2 * z} / {z})"  # type: ignore[attr-defined]
        )
    factor = vae_downsample(autoencoder.config)
    expected = ldm_cfg.train.latent_downsample
    if expected is not None and factor != expected:
        raise IncompatibleError(
            f"autoencoder {vae_name} downsamples mels by {factor}, but {ldm_name} expects "
            f"train.latent_downsample {expected}"
        )
    mel = ldm_cfg.features.mel
    for role, loaded in (("autoencoder", autoencoder), ("vocoder", vocoder)):
        if loaded is None:
            continue
        other = loaded.config.features.mel
        if other != mel:
            diff = [
                f"{k} {getattr(other, k)} != {getattr(mel, k)}"
                for k in type(mel).model_fields
                if getattr(other, k) != getattr(mel, k)
            ]
            raise IncompatibleError(
                f"{role} {_name(loaded, role)} and {ldm_name} disagree on features.mel: {', '.join(diff)}"
            )
    stft = recovery.config.features.stft
    if stft is None or stft.sample_rate != 16000:
        raise IncompatibleError(
            f"recovery {_name(recovery, 'model')} works at {getattr(stft, 'sample_rate', None)} Hz, but {ldm_name} "
            "feeds it 16 kHz degraded audio"
        )


class LdmStage(Stage):
    name = "ldm"
    streams = ("clean_48k", "degraded_16k")
    ema_modules = ("network",)
    inference_modules = ("network",)
    requires = ("recovery", "autoencoder")
    optional = ("vocoder",)
    setup_batches = 4  # batches whose clean latents set scale_factor

    def __init__(self, cfg: StageConfig, device: torch.device, frozen: dict | None = None) -> None:
        super().__init__(cfg, device, frozen)
        missing = [n for n in self.requires if n not in self.frozen]
        if missing:
            raise ValueError(f"ldm stage needs frozen models: {', '.join(missing)}")
        self.weights = loss_weights(self.name, cfg.train.loss, LOSS_WEIGHTS)
        rec, vae, voc = self.frozen["recovery"], self.frozen["autoencoder"], self.frozen.get("vocoder")
        check_compatible(cfg, rec, vae, voc)
        self.recovery = rec.network.to(device).eval().requires_grad_(False)
        self.rec_stft = ComplexSTFT(rec.config.features.stft).to(device)
        self.rec_rate = rec.config.features.stft.sample_rate
        self.vae = vae.network.to(device).eval().requires_grad_(False)
        self.vocoder = voc.network.to(device).eval().requires_grad_(False) if voc is not None else None
        self.mel = LogMel(cfg.features.mel).to(device)
        self.sample_rate = cfg.features.mel.sample_rate  # type: ignore[union-attr]
        self.network = build(cfg).to(device)
        self.diffusion = GaussianDiffusion(cfg.model.diffusion)  # type: ignore[attr-defined]
        self.scale_factor: float | None = None

    def trainable(self) -> dict[str, nn.Module]:
        return {"network": self.network}

    # ----- latents -------------------------------------------------------------------------------------------
    def upsampled_recovery(self, degraded_16k: torch.Tensor, samples: int) -> torch.Tensor:
        """Recovery output at 48 kHz, cut or zero-padded to ``samples``."""
        rec = enhance(self.recovery, self.rec_stft, degraded_16k)
        up = resample(rec.float(), self.rec_rate, self.sample_rate)
        return F.pad(up, (0, max(samples - up.shape[-1], 0)))[..., :samples]

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        return float32_log_mel(self.mel, wave, self.device)

    @torch.no_grad()
    def raw_latents(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unscaled clean latent, condition latent, and the clean log-mel of ``batch``."""
        clean = batch["clean_48k"]
        mel_clean = self.log_mel(clean)
        z = self.vae.encode(mel_clean).mode().float()
        cond_wave = self.upsampled_recovery(batch["degraded_16k"], clean.shape[-1])
        c = self.vae.encode(self.log_mel(cond_wave)).mode().float()
        return z, c, mel_clean

    def _scale(self) -> float:
        if self.scale_factor is None:
            raise RuntimeError("scale_factor is not set: setup() runs before the first step of a fresh run")
        return self.scale_factor

    # ----- hooks ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def setup(self, first_batches: Iterable[dict]) -> None:
        """``scale_factor`` = 1 / std of the clean latents of the first batches of every rank."""
        total = torch.zeros(3, dtype=torch.float64)
        for batch in first_batches:
            z = self.vae.encode(self.log_mel(batch["clean_48k"].to(self.device))).mode().double().cpu()
            total += torch.stack(
                [z.sum(), z.square().sum(), torch.tensor(float(z.numel()), dtype=torch.float64)]
            )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # one value on every rank (the backend reduces on its own device type)
            dev = self.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
            t = total.to(dev)
            torch.distributed.all_reduce(t)
            total = t.cpu()
        s, s2, n = total.tolist()
        if n < 2:
            raise ValueError("no batches to measure the latent scale factor on")
        var = (s2 - s * s / n) / (n - 1)
        self.scale_factor = float(1.0 / max(var, 1e-12) ** 0.5)

    def state_dict(self) -> dict[str, Any]:
        return {"scale_factor": self.scale_factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        value = state.get("scale_factor")
        self.scale_factor = float(value) if value is not None else None

    def model_meta(self) -> dict[str, Any]:
        return {"scale_factor": self.scale_factor}

    # ----- training and evaluation -----------------------------------------------------------------------------
    def train_step(self, batch: dict, step: int, opt: Optimizers) -> dict[str, float]:
        z, c, _ = self.raw_latents(batch)
        s = self._scale()
        loss = self.diffusion.training_loss(self.ddp["network"], z * s, c * s)
        opt.backward("network", self.weights["diffusion"] * loss)
        value = float(loss.detach())
        return {"loss": value, "loss/diffusion": value}

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict], max_examples: int = 3) -> EvalResult:
        network = unwrap(self.ddp.get("network", self.network))
        was_training = network.training
        network.eval()
        s = self._scale()
        steps = self.cfg.train.eval_sampler_steps or self.diffusion.cfg.sampler.steps
        generator = torch.Generator().manual_seed(EVAL_SEED)
        sums = {"latent_mse": 0.0, "mel_l1": 0.0, "mel_l1_condition": 0.0, "mel_l1_vae": 0.0}
        n = 0
        examples: list[Example] = []
        try:
            for batch in batches:
                batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                z, c, mel_clean = self.raw_latents(batch)
                sample = self.diffusion.ddim_sample(network, c * s, steps=steps, generator=generator) / s
                sizes = tuple(mel_clean.shape[-2:])
                mel_out = self.vae.decode(sample)[..., : sizes[0], : sizes[1]]
                b = z.shape[0]
                sums["latent_mse"] += float(F.mse_loss(sample * s, z * s)) * b
                sums["mel_l1"] += float(F.l1_loss(mel_out, mel_clean)) * b
                mel_cond = self.vae.decode(c)[..., : sizes[0], : sizes[1]]
                sums["mel_l1_condition"] += float(F.l1_loss(mel_cond, mel_clean)) * b
                mel_vae = self.vae.decode(z)[..., : sizes[0], : sizes[1]]
                sums["mel_l1_vae"] += float(F.l1_loss(mel_vae, mel_clean)) * b
                n += b
                if len(examples) < max_examples:
                    clean = batch["clean_48k"]
                    degraded = resample(batch["degraded_16k"].float(), self.rec_rate, self.sample_rate)
                    wave = self.vocoder(mel_out) if self.vocoder is not None else None
                    keys = batch.get("keys") or [f"example{i}" for i in range(b)]
                    for i in range(min(b, max_examples - len(examples))):
                        examples.append(
                            Example(
                                key=str(keys[i]),
                                clean=clean[i].float().cpu().numpy(),
                                degraded=degraded[i, : clean.shape[-1]].float().cpu().numpy(),
                                output=None
                                if wave is None
                                else wave[i].float().cpu().numpy().astype(np.float32),
                                sample_rate=self.sample_rate,
                                output_mel=mel_out[i].float().cpu().numpy(),
                            )
                        )
        finally:
            network.train(was_training)
        if n == 0:
            return EvalResult(metrics={}, examples=[])
        return EvalResult(metrics={k: v / n for k, v in sums.items()}, examples=examples)


STAGE = LdmStage
