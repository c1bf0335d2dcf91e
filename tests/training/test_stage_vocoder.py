"""Vocoder stage, driven the way the loop drives it: build -> trainable() -> bind -> train_step / evaluate."""

from __future__ import annotations

import math

import pytest
import torch
from gan_helpers import (
    CROP,
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
    cls = get_stage("vocoder")
    assert cls.name == "vocoder" and cls.streams == ("clean_48k",)
    assert cls.inference_modules == ("generator",)
    stage = cls(tiny_config("vocoder", 0), torch.device("cpu"))
    assert list(stage.trainable()) == ["discriminator", "generator"]  # update order


def test_mel_loss_falls_on_a_fixed_batch_before_the_gan():
    stage, modules = build_bound("vocoder", tiny_config("vocoder", 1000))
    metrics = train(stage, RecordingOptimizers(modules, lr=2e-3), fixed_batch(), range(12))
    first, last = metrics[0]["mel_l1"], min(m["mel_l1"] for m in metrics[-3:])
    assert last < 0.6 * first, [round(m["mel_l1"], 3) for m in metrics]
    # beyond the first step's jump out of silence (an all-zero output sits at the log floor)
    assert last < 0.9 * metrics[1]["mel_l1"], [round(m["mel_l1"], 3) for m in metrics]
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert all(m["d_loss"] == 0.0 and m["g_adversarial"] == 0.0 for m in metrics)


def test_gan_phases_and_gradient_isolation():
    metrics = check_gan_phases("vocoder", start=2, steps=4)
    assert all(m["d_loss"] > 0 and m["g_feature_matching"] > 0 for m in metrics[2:])
    # the total is mel * 45 + feature matching * 2 + adversarial
    m = metrics[-1]
    assert m["loss"] == pytest.approx(
        45 * m["mel_l1"] + 2 * m["g_feature_matching"] + m["g_adversarial"], rel=1e-4
    )


def test_generator_keeps_learning_with_the_gan():
    stage, modules = build_bound("vocoder", tiny_config("vocoder", 3))
    metrics = train(stage, RecordingOptimizers(modules, lr=2e-3), fixed_batch(), range(12))
    assert min(m["mel_l1"] for m in metrics[-3:]) < 0.7 * metrics[0]["mel_l1"], [m["mel_l1"] for m in metrics]


def test_crop_is_cut_to_whole_hops_and_too_short_is_an_error():
    stage, modules = build_bound("vocoder", tiny_config("vocoder", 0))
    batch = fixed_batch(samples=CROP + 100)
    metrics = stage.train_step(batch, 0, RecordingOptimizers(modules))
    assert math.isfinite(metrics["loss"])
    with pytest.raises(ValueError, match="shorter than one mel hop"):
        stage.train_step(fixed_batch(samples=400), 0, RecordingOptimizers(modules))


def test_evaluate_full_length_samples():
    stage, modules = build_bound("vocoder", tiny_config("vocoder", 0))
    batch = fixed_batch(
        seed=3, samples=48000 + 123
    )  # not a multiple of the hop: the output is cut to the input
    result = stage.evaluate([batch, fixed_batch(seed=4, batch=1, samples=24000)], max_examples=2)
    assert set(result.metrics) == {"mel_l1", "stft_sc", "stft_log_mag", "stft_distance"}
    assert all(math.isfinite(v) and v > 0 for v in result.metrics.values()), result.metrics
    assert len(result.examples) == 2
    ex = result.examples[0]
    assert ex.key == "utt3-0" and ex.sample_rate == 48000
    assert ex.output is not None and ex.output.shape == ex.clean.shape == (48123,)
    assert ex.output.dtype.name == "float32"
    assert all(m.training for m in modules.values())  # evaluate restores training mode


def test_evaluate_nothing_gives_nan():
    stage, _ = build_bound("vocoder", tiny_config("vocoder", 0))
    result = stage.evaluate([])
    assert math.isnan(result.metrics["mel_l1"]) and result.examples == []


def test_unknown_loss_weight_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train\.loss\.mell: unknown loss weight for stage vocoder"):
        get_stage("vocoder")(tiny_config("vocoder", 0, loss={"mell": 45.0}), torch.device("cpu"))


def test_ddp_two_ranks_stay_in_sync(tmp_path):
    ranks = run_ddp("vocoder", tmp_path, steps=4, start=2)
    assert ranks[0]["checksums"] == ranks[1]["checksums"]
    assert ranks[0]["calls"] == ["generator"] * 2 + ["discriminator", "generator"] * 2
    # different data per rank: the losses differ, the parameters do not
    assert ranks[0]["metrics"][0]["mel_l1"] != ranks[1]["metrics"][0]["mel_l1"]


def test_bf16_autocast():
    check_bf16_autocast("vocoder")
