"""Model directories: the inference weights of a trained stage and everything needed to rebuild its network.

A model directory (``OUT/<run>/model/``, local or ``s3://``) holds two files and no pickle:

* ``weights.safetensors`` - the inference weights (EMA where the stage keeps one; generators only), the plain
  ``state_dict`` of the stage's network as :func:`training.models.build` constructs it;
* ``model.json`` - ``format``/``format_version``, ``stage``, ``config`` (the resolved stage config: network,
  features, train), ``step``, ``scale_factor`` (ldm), ``code_version``, ``shards`` (index sha256 and path),
  ``metrics`` (final evaluation) and whatever else the stage adds.

:func:`load_model` accepts a local directory, an ``s3://`` (any fsspec URI) directory, or an MLflow model URI
``models:/hires-<stage>/<version>`` / ``models:/hires-<stage>@<alias>`` (downloaded by
:func:`training.tracking.download_model`). Restore, the ldm stage and ``--init`` use it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from datasets import storage
from datasets.audio import is_uri
from datasets.config import format_validation_error
from datasets.errors import DataError
from training.config import StageConfig
from training.models import registry

FORMAT = "hires-model"
FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
META = "model.json"


@dataclass
class LoadedModel:
    """A model directory loaded for inference: the network is in eval mode, on the CPU, without gradients."""

    stage: str
    config: StageConfig
    network: nn.Module
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the directory or URI it was loaded from (error messages name it)

    @property
    def scale_factor(self) -> float | None:
        value = self.meta.get("scale_factor")
        return float(value) if value is not None else None


def save_model_dir(
    path: str,
    stage: str,
    stage_config: StageConfig | dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    meta: dict[str, Any] | None = None,
) -> str:
    """Write ``weights.safetensors`` and ``model.json`` under ``path`` (local or URI); returns ``path``.

    ``state_dict`` are the network's inference weights; ``meta`` adds fields to ``model.json`` (``step``,
    ``scale_factor``, ``code_version``, ``shards``, ``metrics``, ...). The weights are published before the
    JSON, so a directory with a ``model.json`` is complete.
    """
    from safetensors.torch import save

    cfg = stage_config if isinstance(stage_config, StageConfig) else StageConfig.model_validate(stage_config)
    if cfg.stage != stage:
        raise ValueError(f"stage {stage!r} does not match its config's stage {cfg.stage!r}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "network": cfg.model.name,  # type: ignore[attr-defined]
        "config": cfg.model_dump(mode="json"),
        **(meta or {}),
    }
    storage.makedirs(path)
    storage.write_bytes(storage.join(path, WEIGHTS), save(tensors))
    storage.write_bytes(
        storage.join(path, META), (json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n").encode()
    )
    return path


def _local_dir(model: str, tracking_uri: str | None) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """A local directory holding the model files (downloaded for URIs; the temp dir is the caller's to clean)."""
    if str(model).startswith("models:/"):
        from training.tracking import download_model  # lazy: MLflow only when a models:/ URI is used

        tmp = tempfile.TemporaryDirectory(prefix="hires-model-")
        return Path(download_model(str(model), tracking_uri, dst=tmp.name)), tmp
    if is_uri(str(model)):
        tmp = tempfile.TemporaryDirectory(prefix="hires-model-")
        for name in (META, WEIGHTS):
            src = storage.join(str(model), name)
            if not storage.exists(src):
                tmp.cleanup()
                raise DataError(f"{model}: not a model directory (no {name})")
            Path(tmp.name, name).write_bytes(storage.read_bytes(src))
        return Path(tmp.name), tmp
    return Path(os.path.expanduser(str(model))), None


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    """The parsed ``model.json`` of a local model directory (DataError naming the file when unusable)."""
    path = Path(model_dir) / META
    if not path.is_file():
        raise DataError(f"{model_dir}: not a model directory (no {META})")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not a hires model description (format must be {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: format_version {meta.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
        )
    return meta


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; anything else (a pickle, a truncated file) is a DataError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(
            f"{path}: not a safetensors file ({e}); model weights are never read from pickles"
        ) from None


def stage_config_of(data: Any, source: str) -> StageConfig:
    """The stage config of a model; a ``train`` section written by another code version (fields added or
    renamed since) does not stop inference, which never reads it: the defaults stand in for it."""
    try:
        return StageConfig.model_validate(data)
    except ValidationError as e:
        only_train = all(err["loc"] and err["loc"][0] == "train" for err in e.errors())
        if not (only_train and isinstance(data, dict)):
            raise DataError(format_validation_error(source, e)) from None
    try:
        return StageConfig.model_validate({k: v for k, v in data.items() if k != "train"})
    except ValidationError as e:
        raise DataError(format_validation_error(source, e)) from None


def load_model(model: str | Path, tracking_uri: str | None = None) -> LoadedModel:
    """Load a model directory / ``s3://`` directory / ``models:/`` URI (see the module docstring).

    ``tracking_uri`` is the MLflow registry of a ``models:/`` URI (``None``: ``$MLFLOW_TRACKING_URI``).
    """
    local, tmp = _local_dir(str(model), tracking_uri)
    try:
        meta = read_meta(local)
        cfg = stage_config_of(meta.get("config"), f"{model}/{META}: config")
        if meta.get("stage") != cfg.stage:
            raise DataError(f"{model}/{META}: stage {meta.get('stage')!r} != config stage {cfg.stage!r}")
        weights_path = local / WEIGHTS
        if not weights_path.is_file():
            raise DataError(f"{model}: not a model directory (no {WEIGHTS})")
        weights = load_weights(weights_path)
    finally:
        if tmp is not None:
            tmp.cleanup()
    network = registry.build(cfg)
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise DataError(
            f"{model}/{WEIGHTS}: weights do not fit network {cfg.model.name!r} ({first})"
        ) from None  # type: ignore[attr-defined]
    network.eval().requires_grad_(False)
    return LoadedModel(stage=cfg.stage, config=cfg, network=network, meta=meta, source=str(model))
