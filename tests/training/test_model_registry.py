"""Registry: config names map to networks; a new network is one class plus a decorator."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from torch import nn

from datasets.config import ConfigError
from training.models import build, build_discriminator, names, registry
from training.models.ncsnpp import NCSNppConfig, NCSNppM


def test_builtin_networks_per_stage():
    assert names("recovery") == ["ncsnpp_m"]
    assert names("autoencoder") == ["mel_vae"]
    assert names("vocoder") == ["hifigan"]
    assert names("ldm") == ["ldm_unet"]


def test_build_accepts_stage_config_network_config_and_mapping(tiny_configs):
    cfg = tiny_configs["recovery"]
    for source in (cfg, cfg.model, cfg.model.model_dump()):
        net = build(source)
        assert isinstance(net, NCSNppM) and net.cfg == cfg.model


def test_build_mapping_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"model\.name: unknown network 'unet3d'"):
        build({"name": "unet3d"})
    with pytest.raises(ConfigError, match=r"<model>: invalid config: nf"):
        build({"name": "ncsnpp_m", "nf": -1})
    with pytest.raises(ConfigError, match="missing 'name'"):
        build({"nf": 3})


def test_discriminators(tiny_configs):
    assert build_discriminator(tiny_configs["recovery"]) is None
    assert build_discriminator(tiny_configs["ldm"]) is None
    assert isinstance(build_discriminator(tiny_configs["vocoder"]), nn.Module)
    assert isinstance(build_discriminator(tiny_configs["autoencoder"]), nn.Module)


def test_register_a_new_network_and_reject_bad_ones():
    class LinearConfig(registry.NetworkConfig):
        name: Literal["linear_test"] = "linear_test"
        width: int = 3

    @registry.register("linear_test")
    class LinearNet(nn.Module):
        stage = "ldm"
        Config = LinearConfig

        def __init__(self, cfg: LinearConfig) -> None:
            super().__init__()
            self.lin = nn.Linear(cfg.width, cfg.width)

    try:
        assert "linear_test" in names("ldm")
        assert build({"name": "linear_test", "width": 5}).lin.in_features == 5
        with pytest.raises(ValueError, match="already registered"):
            registry.register("linear_test")(NCSNppM)
    finally:
        registry._NETWORKS.pop("linear_test")

    class NoStage(nn.Module):
        Config = NCSNppConfig

    with pytest.raises(TypeError, match="stage"):
        registry.register("x")(NoStage)


def test_meta_device_build_allocates_nothing(paper_configs):
    with torch.device("meta"):
        net = build(paper_configs["vocoder"])
    assert all(p.is_meta for p in net.parameters())
