"""Every stage trains on Ray Train with two workers (tiny configs, a few steps, a generated shard set), in the
order the pipeline needs them: recovery, autoencoder and vocoder from the shards, then ldm on the frozen recovery
and autoencoder models. Each model directory loads and maps inputs to outputs of the right shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_fixtures import write_shard_set
from train_run_helpers import request

from training import launcher
from training.features import LogMel
from training.model_dir import load_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("stages")
    shards = write_shard_set(root / "shards", [("train", 3), ("train", 3), ("valid", 2)])
    out = str(root / "train")
    models: dict[str, str] = {}
    for stage in ("recovery", "autoencoder", "vocoder", "ldm"):
        frozen = {"recovery": models.get("recovery"), "autoencoder": models.get("autoencoder")}
        req = request(
            str(shards), out, 3, stage=stage, tracking_uri="none", models=frozen if stage == "ldm" else {}
        )
        summary = launcher.run_training(req)
        assert summary.status == "trained" and summary.final_step == 3, stage
        assert summary.model_dir and Path(summary.model_dir, "weights.safetensors").is_file()
        models[stage] = summary.model_dir
    return models


@pytest.mark.slow
def test_every_stage_trains_with_two_workers_and_its_model_loads(trained):
    wave = 0.1 * torch.randn(1, 48000 * 32 // 100)  # 0.32 s at 48 kHz: 32 mel frames
    rec = load_model(trained["recovery"])
    assert rec.stage == "recovery" and rec.meta["step"] == 3 and rec.meta["world_size"] == 2
    bins = rec.config.features.stft.n_fft // 2 + 1
    spec = torch.randn(1, 2, bins, 64)
    assert rec.network(spec).shape == spec.shape

    vae = load_model(trained["autoencoder"])
    mel = LogMel(vae.config.features.mel)(wave)
    assert mel.shape == (1, 256, 32)
    z = vae.network.encode(mel).mode()
    assert z.shape == (1, 16, 32, 4)
    assert vae.network.decode(z).shape == (1, 256, 32)

    voc = load_model(trained["vocoder"])
    assert voc.network(mel).shape[-1] == 32 * 480

    ldm = load_model(trained["ldm"])
    assert ldm.scale_factor is not None and ldm.scale_factor > 0
    out = ldm.network(torch.cat([z, z], dim=1), torch.tensor([10]))
    assert out.shape == z.shape
