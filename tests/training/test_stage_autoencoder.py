"""Autoencoder stage, driven the way the loop drives it: build -> trainable() -> bind -> train_step / evaluate."""

from __future__ import annotations

import math

import pytest
import torch
from gan_helpers import (
    RecordingOptimizers,
    build_bound,
    check_bf16_autocast,
    check_gan_phases,
    fixed_batch,
    run_ddp,
    tiny_config,
    train,
)

from datasets.config import ConfigError
from training.stages import get_stage


def test_stage_declaration():
    cls = get_stage("autoencoder")
    assert cls.name == "autoencoder" and cls.streams == ("clean_48k",)
    assert cls.inference_modules == ("generator",)
    stage = cls(tiny_config("autoencoder", 0), torch.device("cpu"))
    assert list(stage.trainable()) == ["discriminator", "generator"]  # update order
    assert stage.model_meta() == {"latent_channels": 16, "latent_downsample": 8}


def test_reconstruction_falls_on_a_fixed_batch_before_the_gan():
    stage, modules = build_bound("autoencoder", tiny_config("autoencoder", 1000))
    metrics = train(stage, RecordingOptimizers(modules, lr=3e-3), fixed_batch(), range(12))
    first, last = metrics[0]["mel_l1"], min(m["mel_l1"] for m in metrics[-3:])
    assert last < 0.6 * first, [round(m["mel_l1"], 3) for m in metrics]
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert all(m["d_loss"] == 0.0 and m["adversarial_weight"] == 0.0 for m in metrics)
    # AudioLDM's reductions: L1 summed over the 256 x 32 mel of each example
    assert metrics[-1]["reconstruction"] == pytest.approx(256 * 32 * metrics[-1]["mel_l1"], rel=1e-3)


def test_gan_phases_and_gradient_isolation():
    metrics = check_gan_phases("autoencoder", start=2, steps=4)
    for m in metrics[2:]:
        assert m["d_loss"] > 0 and 0 < m["adversarial_weight"] <= 0.5 * 1e4
        expected = m["reconstruction"] + 1000.0 * m["kl"] + m["adversarial_weight"] * m["g_adversarial"]
        assert m["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-3)


def test_fixed_adversarial_weight():
    cfg = tiny_config("autoencoder", 0, loss={"adaptive": 0.0, "adversarial": 0.25})
    stage, modules = build_bound("autoencoder", cfg)
    metrics = train(stage, RecordingOptimizers(modules), fixed_batch(), range(2))
    assert all(m["adversarial_weight"] == 0.25 for m in metrics)


def test_generator_keeps_learning_with_the_gan():
    stage, modules = build_bound("autoencoder", tiny_config("autoencoder", 3))
    metrics = train(stage, RecordingOptimizers(modules, lr=3e-3), fixed_batch(), range(12))
    assert min(m["mel_l1"] for m in metrics[-3:]) < 0.7 * metrics[0]["mel_l1"], [m["mel_l1"] for m in metrics]


def test_evaluate_full_length_samples():
    stage, modules = build_bound("autoencoder", tiny_config("autoencoder", 0))
    batch = fixed_batch(seed=3, samples=48000 + 123)  # 101 frames: not a multiple of the downsampling
    result = stage.evaluate([batch, fixed_batch(seed=4, batch=1, samples=24000)], max_examples=2)
    assert set(result.metrics) == {"mel_l1", "kl"}
    assert all(math.isfinite(v) and v > 0 for v in result.metrics.values()), result.metrics
    assert len(result.examples) == 2
    ex = result.examples[0]
    assert ex.key == "utt3-0" and ex.sample_rate == 48000 and ex.clean.shape == (48123,)
    assert ex.output is None  # no vocoder in this stage: the reconstruction is a mel
    assert ex.output_mel is not None and ex.output_mel.shape == (256, 101)
    assert all(m.training for m in modules.values())  # evaluate restores training mode


def test_evaluate_uses_the_posterior_mode():
    stage, _ = build_bound("autoencoder", tiny_config("autoencoder", 0))
    batch = fixed_batch(seed=5, batch=1)
    first, second = stage.evaluate([batch]), stage.evaluate([batch])
    assert first.metrics == second.metrics


@pytest.mark.parametrize(
    ("loss", "match"),
    [
        (
            {"kl_weight": 1.0},
            r"train\.loss\.kl_weight: unknown loss weight for stage autoencoder; known: adaptive",
        ),
        ({"kl": -1.0}, r"train\.loss\.kl: weight must be >= 0"),
        ({"adaptive": 0.5}, r"train\.loss\.adaptive: 1 \(adaptive weight\) or 0 \(fixed\)"),
    ],
)
def test_bad_loss_weights_are_config_errors(loss, match):
    with pytest.raises(ConfigError, match=match):
        get_stage("autoencoder")(tiny_config("autoencoder", 0, loss=loss), torch.device("cpu"))


def test_ddp_two_ranks_stay_in_sync(tmp_path):
    # BatchNorm in the patch-GAN, two discriminator passes per step and the all-reduced adaptive weight
    ranks = run_ddp("autoencoder", tmp_path, steps=4, start=2)
    assert ranks[0]["checksums"] == ranks[1]["checksums"]
    assert ranks[0]["calls"] == ["generator"] * 2 + ["discriminator", "generator"] * 2
    # the adaptive weight is averaged over ranks: every rank uses the same one
    assert [m["adversarial_weight"] for m in ranks[0]["metrics"]] == [
        m["adversarial_weight"] for m in ranks[1]["metrics"]
    ]
    assert ranks[0]["metrics"][0]["mel_l1"] != ranks[1]["metrics"][0]["mel_l1"]


def test_bf16_autocast():
    check_bf16_autocast("autoencoder")
