"""The ``train:`` section of a stage config: optimisation, schedule, precision, data, cadence, loss weights.

Every stage shares the same fields; ``loss`` holds the stage's own weights (validated by the stage module, which
knows its names). Paper configs cite the source of each value in a YAML comment; tiny configs are sized for a
2-core CPU.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from datasets.config import StrictModel


class OptimizerConfig(StrictModel):
    """AdamW for one trainable module (generators and discriminators each get their own)."""

    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    eps: float = Field(1e-8, gt=0)


class ScheduleConfig(StrictModel):
    """Linear warm-up from 0, then ``decay`` to ``min_lr_ratio * lr`` at ``steps`` (``constant``: no decay).

    A warm-up longer than the run (``--steps`` below it, e.g. a smoke test) is allowed: the peak is never reached.
    """

    warmup_steps: int = Field(0, ge=0)
    decay: Literal["cosine", "linear", "exponential", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    gamma: float = Field(
        0.999, gt=0, le=1
    )  # per-step factor of the exponential decay (HiFi-GAN: 0.999/epoch)


class EmaConfig(StrictModel):
    enabled: bool = False
    decay: float = Field(0.9999, gt=0, lt=1)
    start_step: int = Field(0, ge=0)


class TrainConfig(StrictModel):
    batch_size: int = Field(4, ge=1)  # per worker
    crop_seconds: float = Field(5.12, gt=0)  # rounded down to a multiple of the 480-sample hop at 48 kHz
    steps: int = Field(1000, ge=1)
    grad_accum: int = Field(1, ge=1)
    grad_clip: float | None = Field(1.0, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"  # bf16/fp16 autocast on GPU only; CPU runs fp32
    optimizer: OptimizerConfig = OptimizerConfig()
    discriminator_optimizer: OptimizerConfig | None = None  # GAN stages; None: same as optimizer
    schedule: ScheduleConfig = ScheduleConfig()
    ema: EmaConfig = EmaConfig()
    gan_start_step: int = Field(0, ge=0)  # adversarial losses join after this step (GAN stages)
    loss: dict[str, float] = Field(default_factory=dict)  # stage-specific weights, checked by the stage
    input_loudness_lufs: float | None = -20.0  # degraded input normalised as restore will see it
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(500, ge=1)
    eval_samples: int = Field(8, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    num_threads: int = Field(2, ge=1)  # decode threads per worker
    # ldm: DDIM steps of the evaluation sampler (None: model.diffusion.sampler.steps)
    eval_sampler_steps: int | None = Field(None, ge=1)
    # ldm: mel -> latent downsampling of the autoencoder this LDM is built for (checked at start; None: any)
    latent_downsample: int | None = Field(None, ge=1)

    @property
    def crop_samples(self) -> int:
        """Crop length at 48 kHz, a multiple of 480 (one mel hop, and exactly three 16 kHz samples per ten)."""
        return max(480, int(self.crop_seconds * 48000) // 480 * 480)
