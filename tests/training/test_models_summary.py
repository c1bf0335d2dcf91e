"""``hires models summary``: parameter counts and 5.12 s clip shapes, from the meta device."""

from __future__ import annotations

import json

import pytest

from pipelines.cli import main
from training.config import TRAIN_CONFIG_ROOT

PAPER_SHAPES = {
    "recovery": ({"degraded_stft": [1, 2, 256, 641]}, {"clean_stft": [1, 2, 256, 641]}),
    "autoencoder": ({"mel": [1, 256, 512]}, {"latent": [1, 16, 32, 64], "mel": [1, 256, 512]}),
    "vocoder": ({"mel": [1, 256, 512]}, {"waveform": [1, 245760]}),
    "ldm": (
        {"noisy_and_condition_latent": [1, 32, 32, 64], "timestep": [1]},
        {"prediction": [1, 16, 32, 64]},
    ),
}


def run(capsys, *argv: str) -> tuple[int, dict | str]:
    rc = main(["models", *argv])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else err)


@pytest.mark.parametrize("stage", sorted(PAPER_SHAPES))
def test_paper_summary(capsys, stage):
    rc, summary = run(capsys, "summary", stage)
    assert rc == 0
    assert summary["stage"] == stage
    assert summary["parameters"] == summary["trainable_parameters"] > 1_000_000
    assert summary["clip_seconds"] == 5.12
    assert (summary["inputs"], summary["outputs"]) == PAPER_SHAPES[stage]
    assert ("discriminator_parameters" in summary) == (stage in ("autoencoder", "vocoder"))


def test_tiny_summary_by_name_and_path(capsys):
    rc, by_name = run(capsys, "summary", "vocoder", "--config", "tiny")
    rc2, by_path = run(
        capsys, "summary", "vocoder", "--config", str(TRAIN_CONFIG_ROOT / "vocoder" / "tiny.yaml")
    )
    assert rc == rc2 == 0 and by_name == by_path
    assert by_name["parameters"] < 1_000_000
    assert by_name["outputs"]["waveform"] == [1, 245760]


def test_other_lengths_and_batch(capsys):
    rc, summary = run(capsys, "summary", "recovery", "--config", "tiny", "--seconds", "1.001", "--batch", "3")
    assert rc == 0
    assert summary["samples"] == 16016
    assert summary["outputs"]["clean_stft"] == [3, 2, 256, 16016 // 128 + 1]


def test_bad_config_is_a_one_line_error(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: ldm\nmodel: {name: ldm_unet, channel_mult: 3}\nfeatures: {mel: {}}\n")
    rc, err = run(capsys, "summary", "ldm", "--config", str(bad))
    assert rc == 2
    assert "bad.yaml: invalid config: model.channel_mult" in err and err.count("\n") == 1
    rc, err = run(capsys, "summary", "ldm", "--config", "huge")
    assert rc == 2 and "shipped: paper, tiny" in err


def test_list(capsys):
    rc, listing = run(capsys, "list")
    assert rc == 0
    assert listing["recovery"] == {"networks": ["ncsnpp_m"], "configs": ["paper", "tiny"]}


def test_summary_allocates_no_weights(paper_configs):
    import psutil

    from training.models.summary import summarize

    summarize(paper_configs["vocoder"])  # warm up imports and caches
    rss = psutil.Process().memory_info().rss
    summary = summarize(paper_configs["autoencoder"])  # 224 M parameters: 0.85 GB if they were allocated
    grown = psutil.Process().memory_info().rss - rss
    assert summary["fp32_megabytes"] > 800
    assert grown < 150 * 2**20, f"summary allocated {grown / 2**20:.0f} MiB"
