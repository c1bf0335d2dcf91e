"""Fixtures for the training tests: seeded torch, tiny and paper stage configs."""

from __future__ import annotations

import pytest
import torch
from training_helpers import STAGES

from training.config import StageConfig, load_stage_config


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # The networks here are tiny: one intra-op thread is as fast on an idle 2-core machine and avoids
    # OpenMP spin-wait collapse (10-25x slower steps) when other processes share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
