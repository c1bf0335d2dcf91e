"""Losses and distances of the GAN stages (vocoder, autoencoder): plain torch functions, no state.

* Adversarial: least-squares GAN (HiFi-GAN) and hinge (the patch-GAN of AudioLDM / taming) losses for the
  discriminator and the generator; discriminator outputs are lists with one logit tensor per sub-discriminator.
* :func:`feature_matching_loss`: L1 between the discriminator's feature maps of real and generated audio.
* :func:`mel_l1`, :func:`multi_resolution_stft_distance` (spectral convergence + log-magnitude L1, Parallel
  WaveGAN's auxiliary loss) for training and evaluation.
* :func:`adaptive_adversarial_weight` (taming's balance of reconstruction and adversarial gradients at the
  decoder's last layer) and :func:`gan_weight` (adversarial terms switched on at a start step).
* :func:`loss_weights`: the stage's ``train.loss`` weights, unknown names rejected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from datasets.config import ConfigError

# (n_fft, hop, win) at 48 kHz: Parallel WaveGAN's 24 kHz set (1024/120/600, 2048/240/1200, 512/50/240) with
# every length doubled, so each resolution spans the same time and frequency resolution
STFT_RESOLUTIONS_48K: tuple[tuple[int, int, int], ...] = (
    (2048, 240, 1200),
    (4096, 480, 2400),
    (1024, 100, 480),
)


def lsgan_discriminator_loss(real: Sequence[torch.Tensor], fake: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over sub-discriminators of ``mean((1 - D(real))^2) + mean(D(fake)^2)``."""
    _same_count(real, fake)
    return sum(
        (
            (1.0 - r.float()).square().mean() + f.float().square().mean()
            for r, f in zip(real, fake, strict=True)
        ),
        torch.zeros((), device=real[0].device),
    )


def lsgan_generator_loss(fake: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over sub-discriminators of ``mean((1 - D(G(x)))^2)``."""
    return sum(((1.0 - f.float()).square().mean() for f in fake), torch.zeros((), device=fake[0].device))


def hinge_discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """``(mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))) / 2`` (taming's ``hinge_d_loss``)."""
    return 0.5 * (F.relu(1.0 - real.float()).mean() + F.relu(1.0 + fake.float()).mean())


def hinge_generator_loss(fake: torch.Tensor) -> torch.Tensor:
    """``-mean(D(G(x)))``: the generator raises the discriminator's score of its output."""
    return -fake.float().mean()


def feature_matching_loss(
    real: Sequence[Sequence[torch.Tensor]], fake: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """Sum over sub-discriminators and layers of ``mean |F(real) - F(fake)|``; real features are targets."""
    _same_count(real, fake)
    total = torch.zeros((), device=fake[0][0].device)
    for real_maps, fake_maps in zip(real, fake, strict=True):
        _same_count(real_maps, fake_maps)
        for r, f in zip(real_maps, fake_maps, strict=True):
            total = total + (r.detach().float() - f.float()).abs().mean()
    return total


def mel_l1(pred: torch.Tensor, target: torch.Tensor, per_example: bool = False) -> torch.Tensor:
    """Mean absolute difference of log-mels ``(batch, mels, frames)``; ``per_example`` keeps the batch axis."""
    if pred.shape != target.shape:
        raise ValueError(f"mel shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    diff = (pred.float() - target.float()).abs()
    return diff.flatten(1).mean(dim=1) if per_example else diff.mean()


def stft_magnitude(wave: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
    """Linear magnitude ``(batch, n_fft/2+1, frames)`` of a centred Hann STFT of ``(batch, samples)``."""
    x = wave.float()
    if x.shape[-1] <= n_fft // 2:
        # reflect padding needs more than half a window; zeros are the honest continuation of a short clip
        x = F.pad(x, (0, n_fft // 2 + 1 - x.shape[-1]))
    window = torch.hann_window(win, device=x.device)
    spec = torch.stft(x, n_fft, hop, win, window=window, center=True, pad_mode="reflect", return_complex=True)
    return torch.sqrt(spec.real.square() + spec.imag.square() + 1e-9)  # eps: finite gradient at 0


def spectral_convergence(pred_mag: torch.Tensor, target_mag: torch.Tensor) -> torch.Tensor:
    """Per example ``||T - P||_F / ||T||_F`` over (freq, frames): ``(batch,)``."""
    num = (target_mag - pred_mag).flatten(1).norm(dim=1)
    return num / target_mag.flatten(1).norm(dim=1).clamp_min(1e-7)


def log_magnitude_distance(pred_mag: torch.Tensor, target_mag: torch.Tensor) -> torch.Tensor:
    """Per example mean ``|log T - log P|``: ``(batch,)``."""
    diff = torch.log(target_mag.clamp_min(1e-7)) - torch.log(pred_mag.clamp_min(1e-7))
    return diff.abs().flatten(1).mean(dim=1)


def multi_resolution_stft_distance(
    pred: torch.Tensor,
    target: torch.Tensor,
    resolutions: Sequence[tuple[int, int, int]] = STFT_RESOLUTIONS_48K,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral convergence and log-magnitude distance, each ``(batch,)`` averaged over ``resolutions``.

    Their sum is the multi-resolution STFT loss of Parallel WaveGAN (Yamamoto et al. 2020, eq. 4-6).
    """
    if pred.shape != target.shape:
        raise ValueError(f"waveform shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    sc = torch.zeros(pred.shape[0], device=pred.device)
    mag = torch.zeros(pred.shape[0], device=pred.device)
    for n_fft, hop, win in resolutions:
        p, t = stft_magnitude(pred, n_fft, hop, win), stft_magnitude(target, n_fft, hop, win)
        sc = sc + spectral_convergence(p, t)
        mag = mag + log_magnitude_distance(p, t)
    return sc / len(resolutions), mag / len(resolutions)


def gan_weight(weight: float, step: int, start_step: int) -> float:
    """``weight`` from ``start_step`` on, 0 before (taming's ``adopt_weight``)."""
    return weight if step >= start_step else 0.0


def adaptive_adversarial_weight(
    reconstruction: torch.Tensor, adversarial: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """``||grad rec|| / (||grad adv|| + 1e-4)`` at the decoder's last weight, clamped to ``[0, max_weight]``.

    Taming's adaptive weight (Esser et al. 2021, eq. 7): the adversarial gradient arriving at the output layer is
    scaled to the size of the reconstruction gradient. ``torch.autograd.grad`` reads the gradients without
    accumulating them into ``.grad`` (nor firing DDP's hooks); both graphs are kept for the real backward. The
    result is detached; under DDP average it over ranks so every replica optimises the same objective.
    """
    (rec_grad,) = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)
    (adv_grad,) = torch.autograd.grad(adversarial, last_layer, retain_graph=True)
    weight = rec_grad.float().norm() / (adv_grad.float().norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


def loss_weights(stage: str, given: Mapping[str, float], defaults: Mapping[str, float]) -> dict[str, float]:
    """``defaults`` updated with ``train.loss``; an unknown name or a negative weight is a :class:`ConfigError`."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(
            f"train.loss.{unknown[0]}: unknown loss weight for stage {stage}; known: {', '.join(sorted(defaults))}"
        )
    negative = sorted(k for k, v in given.items() if v < 0)
    if negative:
        raise ConfigError(f"train.loss.{negative[0]}: weight must be >= 0, got {given[negative[0]]}")
    return {**defaults, **{k: float(v) for k, v in given.items()}}


def _same_count(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b) or not a:
        raise ValueError(
            f"expected equal, non-empty lists of discriminator outputs, got {len(a)} and {len(b)}"
        )
