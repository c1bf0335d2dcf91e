"""Fixtures for the pipeline tests: a tiny demo corpus with noise and RIR banks, one shared local Ray, and a
reference synthesis run that the reproducibility, cluster, S3 and job tests compare their output against."""

from __future__ import annotations

from pathlib import Path

import pytest
from synth_helpers import SAMPLES_PER_SHARD, SEED


@pytest.fixture(scope="session")
def demo_inputs(tmp_path_factory) -> dict[str, str]:
    """Manifests of 1.5 min of demo speech (4 speakers), 1 min of noise and 4 simulated rooms."""
    from datasets.banks import make_noise_bank, make_rir_bank
    from datasets.demo import make_demo_corpus

    root = tmp_path_factory.mktemp("synth_inputs")
    return {
        "clean": str(make_demo_corpus(root / "clean", minutes=1.5, seed=0, speakers=4, progress=False)),
        "noise": str(make_noise_bank(root / "noise", minutes=1.0, seed=0, progress=False)),
        "rir": str(make_rir_bank(root / "rir", count=4, seed=0, progress=False)),
    }


@pytest.fixture(scope="session")
def _ray_state():
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_session(_ray_state):
    """One local Ray (2 CPUs) shared by the tests; re-started if a test had to shut it down."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray


@pytest.fixture
def synth_cfg():
    from datasets.synth_config import load_synth_config

    return load_synth_config(overrides={"shards.samples_per_shard": SAMPLES_PER_SHARD})


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, demo_inputs, _ray_state) -> Path:
    """One uninterrupted run on the shared local Ray (2 workers): what every other run must reproduce."""
    import ray

    from datasets.synth_config import load_synth_config
    from pipelines.synth_run import run_synth

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = tmp_path_factory.mktemp("reference") / "run"
    cfg = load_synth_config(overrides={"shards.samples_per_shard": SAMPLES_PER_SHARD})
    run_synth(**demo_inputs, out=str(out), cfg=cfg, seed=SEED, progress=False)
    return out
