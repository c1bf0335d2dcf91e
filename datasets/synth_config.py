"""Typed configuration of the synthesis job (``configs/synth/default.yaml``).

Sections: ``segment`` (how clean utterances are cut into fixed-length samples), ``shards`` (how samples are
grouped and encoded), ``banks`` (which bank files may be drawn), ``ray`` (execution only: CPUs per task; it never
changes the output bytes and is therefore left out of the output identity, see :func:`output_sha256`) and
``chain`` (the degradation chain, owned by :mod:`degradations`). Defaults here equal the shipped YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from datasets.config import CONFIG_ROOT, StrictModel, canonical_json, load_config
from degradations import ChainConfig

DEFAULT_CONFIG = CONFIG_ROOT / "synth" / "default.yaml"


class SegmentConfig(StrictModel):
    """Cutting clean utterances into samples of exactly ``seconds`` at ``sample_rate``."""

    seconds: float = Field(5.12, gt=0, description="sample length (5.12 s = 245 760 samples at 48 kHz)")
    sample_rate: int = Field(48000, gt=0, description="rate of the rendered audio in the shards")
    tail: Literal["pad", "drop"] = Field(
        "pad",
        description="last piece of an utterance: zero-pad it to full length (valid length recorded) "
        "or always drop it",
    )
    min_tail_seconds: float = Field(
        1.0, ge=0, description="with tail=pad, pieces shorter than this are dropped"
    )

    @property
    def samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    @model_validator(mode="after")
    def _tail_shorter_than_segment(self) -> SegmentConfig:
        if self.min_tail_seconds > self.seconds:
            raise ValueError(f"min_tail_seconds ({self.min_tail_seconds}) exceeds seconds ({self.seconds})")
        return self


class ShardsConfig(StrictModel):
    """Grouping of samples into WebDataset tars and their audio encoding."""

    samples_per_shard: int | Literal["auto"] = Field(
        "auto",
        description="samples per tar (the last shard of a split may hold fewer); 'auto': from the corpus size "
        "alone, see datasets.synth_plan.auto_samples_per_shard",
    )
    split_shards: bool = Field(
        True,
        description="start a new shard at each split (train/valid/test), so a shard holds one split only",
    )
    flac_subtype: Literal["PCM_16", "PCM_24"] = Field("PCM_24", description="FLAC sample format")

    @field_validator("samples_per_shard")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be >= 1 or 'auto'")
        return value


class RayConfig(StrictModel):
    """Execution settings: how shard tasks are scheduled. They never change the output.

    Retries need no setting: Ray Data re-executes a task lost with its worker or node (system failures) as often
    as needed, while an exception raised by the rendering code itself fails the job at once.
    """

    cpus_per_task: float = Field(1.0, gt=0, description="CPUs reserved by one shard-rendering task")


class BanksConfig(StrictModel):
    """Which noise and RIR bank files planning may draw."""

    min_sample_rate: int | None = Field(
        None,
        gt=0,
        description="draw only bank files recorded at this rate or above; null: the output rate (a file "
        "below it, upsampled, would band-limit the degraded input unlabelled); each sample's json records the "
        "native rates it used",
    )


class SynthConfig(StrictModel):
    """Everything that defines a synthesised corpus besides the manifests and the seed."""

    segment: SegmentConfig = SegmentConfig()
    shards: ShardsConfig = ShardsConfig()
    ray: RayConfig = RayConfig()
    banks: BanksConfig = BanksConfig()
    chain: ChainConfig = Field(default_factory=ChainConfig)


def load_synth_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    flags: dict[str, str] | None = None,
) -> SynthConfig:
    """Load a synth config (default: the shipped ``configs/synth/default.yaml``) with dotted overrides; ``flags``
    names the command-line flag of an override in errors (default ``--set KEY=VALUE``)."""
    return load_config(
        SynthConfig, path if path is not None else DEFAULT_CONFIG, overrides=overrides, flags=flags
    )


def output_config(cfg: SynthConfig) -> dict:
    """The part of the config that determines the output bytes (everything but ``ray``), as JSON data."""
    data = cfg.model_dump(mode="json")
    data.pop("ray")
    return data


def output_sha256(cfg: SynthConfig) -> str:
    """sha256 of :func:`output_config` (canonical JSON): the config part of a run's identity."""
    import hashlib

    return hashlib.sha256(canonical_json(output_config(cfg)).encode()).hexdigest()
