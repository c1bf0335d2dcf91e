"""Model directories: safetensors + model.json round trip, output shapes, URIs, and refusal of anything else."""

from __future__ import annotations

import io
import json

import fsspec
import pytest
import torch
from loop_helpers import random_model_dir

from datasets.errors import DataError
from training.config import load_stage_config
from training.model_dir import load_model, save_model_dir
from training.models import build


def test_round_trip_gives_same_network_and_shapes(tmp_path):
    path = random_model_dir(tmp_path / "m", "recovery", seed=1, scale_factor=None, metrics={"si_sdr": 3.5})
    loaded = load_model(path)
    assert loaded.stage == "recovery" and loaded.config.model.nf == 16
    assert not loaded.network.training
    assert all(not p.requires_grad for p in loaded.network.parameters())
    torch.manual_seed(1)
    ref = build(load_stage_config("recovery", "tiny"))
    for (k, a), (_, b) in zip(ref.state_dict().items(), loaded.network.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x = torch.randn(2, 2, 256, 63)
    assert loaded.network(x).shape == (2, 2, 256, 63)
    meta = json.loads((path / "model.json").read_text())
    assert meta["format"] == "hires-model" and meta["network"] == "ncsnpp_m"
    assert meta["metrics"] == {"si_sdr": 3.5} and meta["step"] == 0
    assert loaded.meta["config"]["features"]["stft"]["n_fft"] == 510


def test_ldm_model_keeps_scale_factor(tmp_path):
    loaded = load_model(random_model_dir(tmp_path / "m", "ldm", scale_factor=0.25))
    assert loaded.scale_factor == 0.25
    out = loaded.network(torch.randn(1, 32, 32, 7), torch.tensor([3]))
    assert out.shape == (1, 16, 32, 7)


def test_pickle_weights_are_refused(tmp_path):
    path = random_model_dir(tmp_path / "m", "recovery")
    buf = io.BytesIO()
    torch.save(build(load_stage_config("recovery", "tiny")).state_dict(), buf)
    (path / "weights.safetensors").write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="not a safetensors file.*never read from pickles"):
        load_model(path)


def test_missing_files_and_bad_json(tmp_path):
    with pytest.raises(DataError, match="no model.json"):
        load_model(tmp_path)
    path = random_model_dir(tmp_path / "m", "recovery")
    (path / "weights.safetensors").unlink()
    with pytest.raises(DataError, match="no weights.safetensors"):
        load_model(path)
    (path / "model.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_model(path)


def test_weights_of_another_network_are_a_data_error(tmp_path):
    path = random_model_dir(tmp_path / "m", "recovery")
    cfg = load_stage_config("recovery", "tiny", {"model.nf": 8})
    save_model_dir(str(tmp_path / "other"), "recovery", cfg, build(cfg).state_dict())
    (path / "weights.safetensors").write_bytes((tmp_path / "other" / "weights.safetensors").read_bytes())
    with pytest.raises(DataError, match="do not fit network 'ncsnpp_m'"):
        load_model(path)


def test_uri_directory(tmp_path):
    cfg = load_stage_config("recovery", "tiny")
    uri = "memory://hires-test/run/model"
    try:
        save_model_dir(uri, "recovery", cfg, build(cfg).state_dict(), {"step": 7})
        loaded = load_model(uri)
        assert loaded.meta["step"] == 7 and loaded.source == uri
        with pytest.raises(DataError, match="not a model directory"):
            load_model("memory://hires-test/nothing")
    finally:
        fsspec.filesystem("memory").rm("/hires-test", recursive=True)


def test_models_uri_delegates_to_tracking(tmp_path, monkeypatch):
    import training.tracking

    path = random_model_dir(tmp_path / "m", "recovery")
    seen = {}

    def fake_download(uri, tracking_uri, dst=None):
        seen.update(uri=uri, tracking_uri=tracking_uri)
        return str(path)

    monkeypatch.setattr(training.tracking, "download_model", fake_download)
    loaded = load_model("models:/hires-recovery/3", tracking_uri="sqlite:///x.db")
    assert loaded.stage == "recovery"
    assert seen == {"uri": "models:/hires-recovery/3", "tracking_uri": "sqlite:///x.db"}


def test_train_section_of_another_code_version_does_not_stop_loading(tmp_path):
    path = random_model_dir(tmp_path / "m", "recovery")
    meta = json.loads((path / "model.json").read_text())
    meta["config"]["train"]["renamed_option"] = 3
    (path / "model.json").write_text(json.dumps(meta))
    assert load_model(path).config.model.nf == 16
    meta["config"]["model"]["nf"] = "wide"
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"model.json: config: invalid config: model\.nf"):
        load_model(path)
