"""What a training stage is: its networks, its step, its evaluation. The loop (:mod:`training.loop`) does the rest.

A stage builds its trainable modules (``trainable()``: name -> ``nn.Module``, each wrapped separately by
``ray.train.torch.prepare_model`` and given its own AdamW and schedule) and its frozen ones. The loop hands the
wrapped modules back with :meth:`Stage.bind`; the stage runs forward passes through ``self.ddp[name]``.

One training step (:meth:`Stage.train_step`) sees one micro-batch and calls ``opt.backward(name, loss)`` for each
loss it produces; after ``grad_accum`` micro-batches the loop clips, steps and zeroes every optimiser
(:class:`Optimizers`). GAN stages update the discriminator first (generator output detached), then the generator;
for the generator's adversarial and feature-matching terms they call the discriminator's *unwrapped* module
(``self.ddp[name].module`` when wrapped, see :func:`unwrap`) with its parameters frozen (:func:`frozen_params`),
so DDP never waits for gradients that do not come and ``find_unused_parameters`` is never needed.

The loop runs ``train_step`` and ``evaluate`` under autocast (bf16 on GPU when ``train.precision`` asks; fp32 on
the CPU) and ``evaluate`` on rank 0 only, with the EMA weights swapped in: evaluation must call the unwrapped
modules (:func:`unwrap`) and no collective.

Batches are dicts of float32 tensors ``(batch, samples)`` on the stage's device named by the data streams the stage
declares in ``streams`` (``clean_48k``, ``degraded_48k``, ``clean_16k``, ``degraded_16k``) plus ``keys``.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from training.config import StageConfig


class Optimizers(Protocol):
    """The loop's handle on the optimisers: ``backward`` scales (fp16, accumulation) and back-propagates."""

    def backward(self, name: str, loss: torch.Tensor) -> None: ...


@dataclass
class Example:
    """One evaluation example for tracking: 1-D float32 arrays at ``sample_rate`` (output may be ``None``)."""

    key: str
    clean: np.ndarray
    degraded: np.ndarray
    output: np.ndarray | None
    sample_rate: int
    # a log-mel (n_mels, frames) of the output when the stage produces no waveform (ldm without a vocoder)
    output_mel: np.ndarray | None = None


@dataclass
class EvalResult:
    metrics: dict[str, float]
    examples: list[Example] = field(default_factory=list)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (or the module itself)."""
    return getattr(module, "module", module)


def float32_log_mel(mel: nn.Module, wave: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``mel(wave)`` in float32 even under the loop's bf16 autocast: the filterbank matmul would otherwise round
    a loss target or a VAE input."""
    with torch.autocast(device.type, enabled=False):
        return mel(wave.float())


@contextlib.contextmanager
def frozen_params(module: nn.Module) -> Iterator[None]:
    """Temporarily stop gradients into ``module``'s parameters (e.g. the discriminator in a generator step)."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class Stage(ABC):
    """Base of the four stages; each module defines ``STAGE`` and is listed by name in :mod:`training.stages`."""

    name: ClassVar[str]
    streams: ClassVar[tuple[str, ...]]
    # trainable modules that keep an EMA copy when ``train.ema.enabled`` (the inference weights then use it)
    ema_modules: ClassVar[tuple[str, ...]] = ()
    # trainable modules whose weights form the inference model (``weights.safetensors``); GAN discriminators not
    inference_modules: ClassVar[tuple[str, ...]] = ()
    # frozen upstream models the stage needs (ldm: recovery, autoencoder), loaded by the loop with load_model
    requires: ClassVar[tuple[str, ...]] = ()
    # frozen models used when given (ldm: a vocoder turns evaluation outputs into audio), loaded the same way
    optional: ClassVar[tuple[str, ...]] = ()
    # how many of the first training batches :meth:`setup` sees (they are trained on afterwards as usual)
    setup_batches: ClassVar[int] = 0

    def __init__(self, cfg: StageConfig, device: torch.device, frozen: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.device = device
        self.frozen = frozen or {}
        self.ddp: dict[str, nn.Module] = {}

    @abstractmethod
    def trainable(self) -> dict[str, nn.Module]:
        """Name -> module to train, in update order (e.g. ``discriminator`` before ``generator``)."""

    def bind(self, wrapped: dict[str, nn.Module]) -> None:
        """Receive the (possibly DDP-wrapped) trainable modules; forward passes go through these."""
        self.ddp = dict(wrapped)

    def optimizer_config(self, name: str):
        """The AdamW settings of module ``name`` (discriminators may have their own)."""
        t = self.cfg.train
        if name == "discriminator" and t.discriminator_optimizer is not None:
            return t.discriminator_optimizer
        return t.optimizer

    @abstractmethod
    def train_step(self, batch: dict, step: int, opt: Optimizers) -> dict[str, float]:
        """One micro-batch: losses via ``opt.backward``; returns scalar metrics (``loss`` is the headline)."""

    @abstractmethod
    def evaluate(self, batches: Iterable[dict], max_examples: int = 3) -> EvalResult:
        """Stage metrics over ``batches`` (no gradients, eval mode) and up to ``max_examples`` examples."""

    def setup(self, first_batches: Iterable[dict]) -> None:  # noqa: B027 - optional hook
        """Called once before the first step of a fresh run, on every rank, with the first ``setup_batches``
        training batches (ldm measures its latent scale factor here; a collective is allowed)."""

    def state_dict(self) -> dict[str, Any]:
        """Stage state outside its modules that checkpoints must keep (tensors or plain values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`state_dict`."""

    def model_meta(self) -> dict[str, Any]:
        """Extra fields for ``model.json`` (ldm: ``scale_factor``)."""
        return {}
