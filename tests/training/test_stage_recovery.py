"""Recovery stage (tiny): the loss falls on a fixed batch, evaluation metrics, a short run's model directory."""

from __future__ import annotations

import pytest
import torch
from loop_helpers import MemoryBatches, local_context, loop_config, make_batch, stage_config

from datasets.config import ConfigError
from training.features import ComplexSTFT
from training.loop import run
from training.model_dir import load_model
from training.optim import TrainOptimizers
from training.stages import get_stage
from training.stages.recovery import enhance, si_sdr

STREAMS = ("clean_16k", "degraded_16k")


def test_si_sdr_known_values():
    x = torch.randn(2, 8000)
    assert (si_sdr(3.0 * x, x) > 80).all()  # scale invariant
    noise = torch.randn(2, 8000)
    noise = noise - (noise * x).sum(-1, keepdim=True) / x.square().sum(-1, keepdim=True) * x  # orthogonal
    noise = noise / noise.norm(dim=-1, keepdim=True) * x.norm(dim=-1, keepdim=True) / 10  # 20 dB below
    assert si_sdr(x + noise, x) == pytest.approx(torch.tensor([20.0, 20.0]), abs=0.05)


def test_loss_falls_on_a_fixed_batch():
    # the direct form from random weights (the tiny config's residual form starts at the identity's loss)
    cfg = stage_config(
        "recovery",
        steps=8,
        **{"schedule.warmup_steps": 0, "schedule.decay": "constant", "optimizer.lr": 1e-3},
    )
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"residual": False})})
    stage = get_stage("recovery")(cfg, torch.device("cpu"))
    stage.bind(stage.trainable())
    opt = TrainOptimizers(stage.ddp, {"network": cfg.train.optimizer}, cfg.train, "cpu", stage.ema_modules)
    batch = make_batch(STREAMS, 2, 24000, seed=5)
    losses = []
    for step in range(8):
        losses.append(stage.train_step(batch, step, opt)["loss"])
        opt.step()
    assert losses[-1] < 0.5 * losses[0], losses


def test_evaluate_reports_si_sdr_and_examples():
    cfg = stage_config("recovery")
    stage = get_stage("recovery")(cfg, torch.device("cpu"))
    stage.bind(stage.trainable())
    result = stage.evaluate([make_batch(STREAMS, 2, 24000, seed=1), make_batch(STREAMS, 2, 24000, seed=2)], 3)
    m = result.metrics
    assert m["si_sdr_improvement"] == pytest.approx(m["si_sdr"] - m["si_sdr_input"])
    assert len(result.examples) == 3
    ex = result.examples[0]
    assert ex.sample_rate == 16000 and ex.output.shape == ex.clean.shape == (8000,)


def test_unknown_loss_weight_is_a_config_error():
    cfg = stage_config("recovery", loss={"l1": 1.0})
    with pytest.raises(
        ConfigError, match=r"train\.loss\.l1: unknown loss weight for stage recovery; known: mse"
    ):
        get_stage("recovery")(cfg, torch.device("cpu"))


def test_short_run_writes_a_loadable_model(tmp_path):
    cfg = stage_config("recovery", steps=3, checkpoint_every=2, eval_every=100)
    reports: list = []
    out = run(
        loop_config(cfg, run_dir=tmp_path / "run"), local_context(MemoryBatches(STREAMS), reports=reports)
    )
    assert [r[0]["step"] for r in reports] == [2, 3]
    loaded = load_model(tmp_path / "run" / "model")
    assert loaded.meta["step"] == 3 and loaded.meta["code_version"] == "test"
    assert loaded.meta["shards"] == {"index_sha256": "abc", "path": "/nowhere"}
    assert set(loaded.meta["metrics"]) == {"si_sdr", "si_sdr_input", "si_sdr_improvement", "mse"}
    # the model holds the EMA weights (StoRM keeps an EMA of the predictive network)
    live = out["stage"].network.state_dict()
    assert any(not torch.equal(live[k], v) for k, v in loaded.network.state_dict().items())
    degraded = torch.randn(2, 8000) * 0.1
    stft = ComplexSTFT(loaded.config.features.stft)
    assert enhance(loaded.network, stft, degraded).shape == (2, 8000)
