"""Fixtures for the training tests: seeded torch, tiny and paper stage configs."""

from __future__ import annotations

import pytest
import torch
from training_helpers import STAGES

from training.config import StageConfig, load_stage_config


@pytest.fixture(autouse=True)
def _seeded_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_configs() -> dict[str, StageConfig]:
    return {stage: load_stage_config(stage, "tiny") for stage in STAGES}


@pytest.fixture(scope="session")
def paper_configs() -> dict[str, StageConfig]:
    return {stage: load_stage_config(stage, "paper") for stage in STAGES}
