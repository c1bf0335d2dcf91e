"""Training stages: one module per stage, registered by name (``recovery``, ``autoencoder``, ``vocoder``, ``ldm``)."""

from __future__ import annotations

import importlib

from training.stages.base import EvalResult, Example, Optimizers, Stage, frozen_params, unwrap

__all__ = ["EvalResult", "Example", "Optimizers", "Stage", "frozen_params", "get_stage", "unwrap"]

_MODULES = {
    "recovery": "training.stages.recovery",
    "autoencoder": "training.stages.autoencoder",
    "vocoder": "training.stages.vocoder",
    "ldm": "training.stages.ldm",
}


def get_stage(name: str) -> type[Stage]:
    """The :class:`Stage` subclass of stage ``name`` (its module defines ``STAGE``)."""
    if name not in _MODULES:
        raise KeyError(f"unknown stage {name!r}; expected one of {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name]).STAGE
