"""LDM stage (tiny) on frozen tiny recovery and VAE models: scale factor, loss, evaluation, resume, cross-checks."""

from __future__ import annotations

import pytest
import torch
from loop_helpers import (
    MemoryBatches,
    local_context,
    loop_config,
    make_batch,
    random_model_dir,
    stage_config,
)

from datasets.errors import IncompatibleError, UsageError
from training import checkpoint as ckpt
from training.config import load_stage_config
from training.loop import run
from training.model_dir import load_model, save_model_dir
from training.models import build
from training.optim import TrainOptimizers
from training.stages import get_stage
from training.stages.ldm import check_compatible

STREAMS = ("clean_48k", "degraded_16k")


@pytest.fixture(scope="module")
def frozen_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("frozen")
    return {
        "recovery": str(random_model_dir(root / "recovery", "recovery", seed=1)),
        "autoencoder": str(random_model_dir(root / "autoencoder", "autoencoder", seed=2)),
        "vocoder": str(random_model_dir(root / "vocoder", "vocoder", seed=3)),
    }


def _stage(frozen_dirs, cfg=None, vocoder=False):
    cfg = cfg or stage_config("ldm")
    names = ("recovery", "autoencoder", "vocoder") if vocoder else ("recovery", "autoencoder")
    frozen = {n: load_model(frozen_dirs[n]) for n in names}
    stage = get_stage("ldm")(cfg, torch.device("cpu"), frozen)
    stage.bind(stage.trainable())
    return stage


def test_scale_factor_is_one_over_clean_latent_std(frozen_dirs):
    stage = _stage(frozen_dirs)
    batches = [make_batch(STREAMS, 2, 24000, seed=s) for s in range(2)]
    stage.setup(batches)
    z = torch.cat([stage.raw_latents(b)[0] for b in batches])
    assert stage.scale_factor == pytest.approx(1.0 / z.double().std().item(), rel=1e-5)
    assert stage.state_dict() == {"scale_factor": stage.scale_factor} == stage.model_meta()


def test_latents_have_the_vae_layout(frozen_dirs):
    stage = _stage(frozen_dirs)
    z, c, mel = stage.raw_latents(make_batch(STREAMS, 2, 24000, seed=0))
    assert mel.shape == (2, 256, 50)
    assert z.shape == c.shape == (2, 16, 32, 7)


def test_loss_falls_on_a_fixed_batch(frozen_dirs):
    cfg = stage_config("ldm", steps=10, **{"schedule.warmup_steps": 0})
    stage = _stage(frozen_dirs, cfg)
    batch = make_batch(STREAMS, 2, 24000, seed=4)
    stage.setup([batch])
    opt = TrainOptimizers(stage.ddp, {"network": cfg.train.optimizer}, cfg.train, "cpu", stage.ema_modules)
    losses = []
    for step in range(10):
        torch.manual_seed(0)  # the same timesteps, noise and condition dropout every step
        losses.append(stage.train_step(batch, step, opt)["loss"])
        opt.step()
    assert losses[-1] < 0.7 * losses[0], losses


def test_evaluate_with_a_vocoder_gives_audio(frozen_dirs):
    stage = _stage(frozen_dirs, vocoder=True)
    batch = make_batch(STREAMS, 2, 24000, seed=0)
    stage.setup([batch])
    result = stage.evaluate([batch], max_examples=2)
    assert set(result.metrics) == {"latent_mse", "mel_l1", "mel_l1_condition", "mel_l1_vae"}
    ex = result.examples[0]
    assert ex.sample_rate == 48000 and ex.clean.shape == ex.degraded.shape == ex.output.shape == (24000,)
    assert ex.output_mel.shape == (256, 50)
    again = stage.evaluate([batch], max_examples=0)  # the sampler's noise is fixed: evaluations compare
    assert again.metrics == result.metrics


def test_resumed_run_equals_uninterrupted_run(tmp_path, frozen_dirs):
    cfg = stage_config("ldm", steps=4, checkpoint_every=2, eval_every=100, log_every=1)
    models = {k: frozen_dirs[k] for k in ("recovery", "autoencoder")}
    states = {}
    for name, start in (("full", None), ("resumed", "full")):
        (tmp_path / name).mkdir()
        reports: list = []
        start_dir = states[start][0][0][1] if start else None
        ctx = local_context(MemoryBatches(STREAMS), start_dir, reports, save_to=tmp_path / name)
        out = run(loop_config(cfg, run_dir=tmp_path / name / "run", models=models), ctx)
        states[name] = (reports, ckpt.load_state(reports[-1][1]), out)
    full, resumed = states["full"][1], states["resumed"][1]
    for key in ("modules", "stage_state", "step", "epoch", "batch"):
        assert str(full[key]) == str(resumed[key]), key
    for name, value in full["modules"]["network"].items():
        assert torch.equal(value, resumed["modules"]["network"][name]), name
    ema_a = full["optim"]["ema"]["network"]["shadow"]
    ema_b = resumed["optim"]["ema"]["network"]["shadow"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert torch.equal(full["rng"][0]["torch"], resumed["rng"][0]["torch"])
    loaded = load_model(tmp_path / "full" / "run" / "model")
    assert loaded.scale_factor == pytest.approx(full["stage_state"]["scale_factor"])
    assert loaded.meta["metrics"]["latent_mse"] > 0


def test_missing_frozen_model_is_a_usage_error():
    cfg = stage_config("ldm", steps=1)
    with pytest.raises(UsageError, match="needs a trained autoencoder model: pass --autoencoder"):
        run(loop_config(cfg, models={"recovery": "/x"}), local_context(MemoryBatches(STREAMS)))


def _loaded(tmp_path, stage, name, **overrides):
    cfg = load_stage_config(stage, "tiny", overrides)
    save_model_dir(str(tmp_path / name), stage, cfg, build(cfg).state_dict())
    return load_model(tmp_path / name)


def test_cross_stage_mismatches_name_both_models(tmp_path, frozen_dirs):
    ldm = load_stage_config("ldm", "tiny")
    rec = load_model(frozen_dirs["recovery"])
    vae = load_model(frozen_dirs["autoencoder"])
    check_compatible(ldm, rec, vae, load_model(frozen_dirs["vocoder"]))  # the tiny set fits

    vae8 = _loaded(tmp_path, "autoencoder", "vae8", **{"model.z_channels": 8})
    with pytest.raises(
        IncompatibleError, match=r"autoencoder .*vae8 has 8 latent channels, but the ldm config"
    ):
        check_compatible(ldm, rec, vae8)

    vae4 = _loaded(tmp_path, "autoencoder", "vae4", **{"model.ch_mult": [1, 2, 2]})
    with pytest.raises(
        IncompatibleError, match=r"vae4 downsamples mels by 4, but the ldm config expects .*8"
    ):
        check_compatible(ldm, rec, vae4)

    voc = _loaded(tmp_path, "vocoder", "voc", **{"features.mel.f_max": 16000.0})
    with pytest.raises(
        IncompatibleError, match=r"vocoder .*voc and the ldm config disagree on features.mel: f_max"
    ):
        check_compatible(ldm, rec, vae, voc)

    with pytest.raises(
        IncompatibleError,
        match=r"is a model of stage recovery, but the ldm config needs a model of stage autoencoder",
    ):
        check_compatible(ldm, rec, rec)
    lines = []
    try:
        check_compatible(ldm, rec, vae8)
    except IncompatibleError as e:
        lines = str(e).splitlines()
    assert len(lines) == 1
