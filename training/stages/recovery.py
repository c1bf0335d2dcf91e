"""Recovery stage: the NCSN++M predictive network maps the degraded 16 kHz STFT to the clean one.

Both signals are at 16 kHz (streams ``degraded_16k``, ``clean_16k``; the degraded one loudness-normalised by the
loader, the clean one scaled by the same gain). The network sees the compressed complex STFT
(:class:`training.features.ComplexSTFT`: ``0.15 |X|^0.5 e^{j angle X}``) as real/imaginary channels and predicts
the compressed clean STFT.

Loss: the squared error of the complex compressed spectrogram. StoRM's predictive mode
(``sgmse/model.py``, ``loss_type='mse'``) uses ``0.5 * sum |X_hat - X|^2`` per example, averaged over the batch;
here the sum is a mean over bins and channels (``mse``), which has the same minimiser, leaves Adam's steps
unchanged (scale invariant), and keeps gradient-norm clipping and logged values independent of the crop length.

Evaluation: SI-SDR of the output waveform and of the degraded input against the clean signal, and their
difference (the improvement).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.config import StageConfig
from training.features import ComplexSTFT
from training.losses import loss_weights
from training.models import build
from training.stages.base import EvalResult, Example, Optimizers, Stage, unwrap

LOSS_WEIGHTS = {"mse": 1.0}


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SDR in dB per example, ``(..., samples) -> (...)`` (zero-mean signals, Le Roux et al.)."""
    est = estimate.double() - estimate.double().mean(-1, keepdim=True)
    ref = reference.double() - reference.double().mean(-1, keepdim=True)
    alpha = (est * ref).sum(-1, keepdim=True) / (ref.square().sum(-1, keepdim=True) + eps)
    target = alpha * ref
    noise = est - target
    return (10 * torch.log10((target.square().sum(-1) + eps) / (noise.square().sum(-1) + eps))).float()


def enhance(network: nn.Module, stft: ComplexSTFT, degraded_16k: torch.Tensor) -> torch.Tensor:
    """Run the recovery network on 16 kHz waveforms ``(batch, samples)``; returns the same shape."""
    spec = stft(degraded_16k)
    return stft.inverse(network(spec), degraded_16k.shape[-1])


class RecoveryStage(Stage):
    name = "recovery"
    streams = ("clean_16k", "degraded_16k")
    ema_modules = ("network",)
    inference_modules = ("network",)

    def __init__(self, cfg: StageConfig, device: torch.device, frozen: dict | None = None) -> None:
        super().__init__(cfg, device, frozen)
        self.weights = loss_weights(self.name, cfg.train.loss, LOSS_WEIGHTS)
        self.network = build(cfg).to(device)
        self.stft = ComplexSTFT(cfg.features.stft).to(device)

    def trainable(self) -> dict[str, nn.Module]:
        return {"network": self.network}

    def train_step(self, batch: dict, step: int, opt: Optimizers) -> dict[str, float]:
        clean, degraded = batch["clean_16k"], batch["degraded_16k"]
        target = self.stft(clean)
        estimate = self.ddp["network"](self.stft(degraded))  # the loop runs train_step under autocast
        mse = F.mse_loss(estimate.float(), target)
        opt.backward("network", self.weights["mse"] * mse)
        return {"loss": float(mse.detach()), "loss/mse": float(mse.detach())}

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict], max_examples: int = 3) -> EvalResult:
        network = unwrap(self.ddp.get("network", self.network))
        was_training = network.training
        network.eval()
        out_sdr, in_sdr, mse_sum, count = [], [], 0.0, 0
        examples: list[Example] = []
        try:
            for batch in batches:
                clean = batch["clean_16k"].to(self.device)
                degraded = batch["degraded_16k"].to(self.device)
                spec = self.stft(degraded)
                estimate_spec = network(spec)
                mse_sum += float(F.mse_loss(estimate_spec.float(), self.stft(clean), reduction="sum"))
                count += estimate_spec.numel()
                output = self.stft.inverse(estimate_spec, clean.shape[-1])
                out_sdr.append(si_sdr(output, clean).cpu())
                in_sdr.append(si_sdr(degraded, clean).cpu())
                for i in range(clean.shape[0]):
                    if len(examples) >= max_examples:
                        break
                    examples.append(
                        Example(
                            key=str(batch.get("keys", [f"example{len(examples)}"] * clean.shape[0])[i]),
                            clean=clean[i].float().cpu().numpy(),
                            degraded=degraded[i].float().cpu().numpy(),
                            output=output[i].float().cpu().numpy().astype(np.float32),
                            sample_rate=self.cfg.features.stft.sample_rate,  # type: ignore[union-attr]
                        )
                    )
        finally:
            network.train(was_training)
        if not out_sdr:
            return EvalResult(metrics={}, examples=[])
        out = torch.cat(out_sdr).mean().item()
        inp = torch.cat(in_sdr).mean().item()
        return EvalResult(
            metrics={
                "si_sdr": out,
                "si_sdr_input": inp,
                "si_sdr_improvement": out - inp,
                "mse": mse_sum / count,
            },
            examples=examples,
        )


STAGE = RecoveryStage
