"""Stage configs: ``configs/train/<stage>/<name>.yaml`` with a ``model`` and a ``features`` section.

``model.name`` picks a registered network (:mod:`training.models.registry`); the rest of ``model`` are that
network's hyper-parameters, validated by its own config model, so an error names the exact field
(``configs/train/recovery/paper.yaml: invalid config: model.nf: ...``). ``features`` holds the STFT (recovery) or
the log-mel (the 48 kHz stages) settings. ``train`` (:mod:`training.train_config`) holds optimisation, schedule,
precision, EMA, loss weights and cadence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import SerializeAsAny, field_validator

from datasets.config import CONFIG_ROOT, ConfigError, StrictModel, load_config, read_yaml
from training.features import MelConfig, StftConfig
from training.models import registry
from training.models.registry import NetworkConfig
from training.train_config import TrainConfig

TRAIN_CONFIG_ROOT = CONFIG_ROOT / "train"

# which front-end each stage consumes; its section must be present in the stage config
STAGE_FEATURES = {"recovery": "stft", "autoencoder": "mel", "vocoder": "mel", "ldm": "mel"}


class FeaturesConfig(StrictModel):
    stft: StftConfig | None = None
    mel: MelConfig | None = None


class StageConfig(StrictModel):
    """One training stage: ``model`` is validated by the config model of the network its ``name`` picks."""

    stage: Literal["recovery", "autoencoder", "vocoder", "ldm"]
    model: SerializeAsAny[NetworkConfig]
    features: FeaturesConfig = FeaturesConfig()
    train: TrainConfig = TrainConfig()

    @field_validator("model", mode="before")
    @classmethod
    def _network_config(cls, value: Any) -> Any:
        if isinstance(value, dict):
            if "name" not in value:
                raise ValueError(f"missing 'name' (registered networks: {', '.join(registry.names())})")
            if value["name"] not in registry.names():
                raise ValueError(
                    f"unknown network {value['name']!r}; registered: {', '.join(registry.names())}"
                )
            # nested ValidationError: pydantic reports its fields as model.<field>
            return registry.config_class(str(value["name"])).model_validate(value)
        return value


def resolve_stage_config_path(stage: str, path_or_name: str | Path) -> Path:
    """``"tiny"``/``"paper"`` (any bare name) -> ``configs/train/<stage>/<name>.yaml``; else a file path."""
    if stage not in registry.STAGES:
        raise ConfigError(f"unknown stage {stage!r}; expected one of {', '.join(registry.STAGES)}")
    text = str(path_or_name)
    if "/" not in text and not text.endswith((".yaml", ".yml")):
        path = TRAIN_CONFIG_ROOT / stage / f"{text}.yaml"
        if not path.is_file():
            shipped = sorted(p.stem for p in (TRAIN_CONFIG_ROOT / stage).glob("*.yaml"))
            raise FileNotFoundError(
                f"no config named {text!r} for stage {stage}; shipped: {', '.join(shipped)}"
            )
        return path
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    return path


def load_stage_config(
    stage: str, path_or_name: str | Path = "paper", overrides: dict[str, Any] | None = None
) -> StageConfig:
    """Load and validate a stage config; ``path_or_name`` is a YAML path or a shipped name (``tiny``, ``paper``)."""
    path = resolve_stage_config_path(stage, path_or_name)
    # the loader sets `stage` itself, so a file written for another stage must be caught before it is overridden
    declared = read_yaml(path).get("stage", stage)
    if declared != stage:
        raise ConfigError(f"{path}: invalid config: stage: file is for {declared!r}, loaded as {stage!r}")
    cfg = load_config(StageConfig, path, {"stage": stage, **(overrides or {})})
    cls = registry.network_class(cfg.model.name)  # type: ignore[attr-defined]
    if cls.stage != stage:  # type: ignore[attr-defined]
        raise ConfigError(
            f"{path}: invalid config: model.name: network {cfg.model.name!r} belongs to stage "  # type: ignore[attr-defined]
            f"{cls.stage}, not {stage}"  # type: ignore[attr-defined]
        )
    needed = STAGE_FEATURES[stage]
    if getattr(cfg.features, needed) is None:
        raise ConfigError(f"{path}: invalid config: features.{needed}: required for stage {stage}")
    check = getattr(cls, "check_features", None)
    problems = check(cfg.model, cfg.features) if check is not None else []
    if problems:
        raise ConfigError(f"{path}: invalid config: " + "; ".join(problems))
    return cfg
