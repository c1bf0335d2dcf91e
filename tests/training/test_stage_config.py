"""Stage configs: name resolution, strict validation with file/field in the message, cross-checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from training_helpers import STAGES

from datasets.config import ConfigError
from training.config import TRAIN_CONFIG_ROOT, load_stage_config, resolve_stage_config_path
from training.models import registry


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_shipped_configs_load(stage, name):
    cfg = load_stage_config(stage, name)
    assert cfg.stage == stage
    assert registry.network_class(cfg.model.name).stage == stage


@pytest.mark.parametrize("stage", STAGES)
def test_network_defaults_equal_paper_yaml(stage):
    cfg = load_stage_config(stage, "paper")
    assert type(cfg.model)(name=cfg.model.name) == cfg.model


def test_path_and_name_resolve_to_the_same_file():
    path = TRAIN_CONFIG_ROOT / "vocoder" / "tiny.yaml"
    assert resolve_stage_config_path("vocoder", "tiny") == path
    assert load_stage_config("vocoder", path) == load_stage_config("vocoder", "tiny")


def write(tmp_path: Path, stage: str, edit) -> Path:
    data = yaml.safe_load((TRAIN_CONFIG_ROOT / stage / "tiny.yaml").read_text())
    edit(data)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_bad_field_names_file_and_field(tmp_path):
    path = write(tmp_path, "recovery", lambda d: d["model"].update(nf="wide"))
    with pytest.raises(ConfigError, match=r"cfg.yaml: invalid config: model\.nf"):
        load_stage_config("recovery", path)


def test_unknown_key_is_an_error(tmp_path):
    path = write(tmp_path, "ldm", lambda d: d["model"]["diffusion"].update(shedule="cosine"))
    with pytest.raises(ConfigError, match=r"model\.diffusion\.shedule: unknown key"):
        load_stage_config("ldm", path)


def test_network_of_another_stage_is_rejected(tmp_path):
    path = write(tmp_path, "vocoder", lambda d: d.update(model={"name": "ncsnpp_m"}))
    with pytest.raises(ConfigError, match="belongs to stage recovery"):
        load_stage_config("vocoder", path)


def test_unknown_network_lists_registered(tmp_path):
    path = write(tmp_path, "ldm", lambda d: d["model"].update(name="dit"))
    with pytest.raises(ConfigError, match="unknown network 'dit'.*ldm_unet"):
        load_stage_config("ldm", path)


def test_vocoder_upsampling_must_equal_mel_hop(tmp_path):
    path = write(tmp_path, "vocoder", lambda d: d["features"]["mel"].update(hop_length=512))
    with pytest.raises(ConfigError, match="upsample_rates: product 480 != features.mel.hop_length 512"):
        load_stage_config("vocoder", path)


def test_missing_feature_section(tmp_path):
    path = write(tmp_path, "recovery", lambda d: d.pop("features"))
    with pytest.raises(ConfigError, match="features.stft: required"):
        load_stage_config("recovery", path)


def test_overrides_and_unknown_names():
    cfg = load_stage_config("recovery", "tiny", {"model.nf": 8})
    assert cfg.model.nf == 8
    with pytest.raises(FileNotFoundError, match="shipped: paper, tiny"):
        load_stage_config("recovery", "huge")
    with pytest.raises(ConfigError, match="unknown stage"):
        load_stage_config("mixing", "tiny")
