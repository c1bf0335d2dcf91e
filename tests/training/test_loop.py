"""The training loop: schedule, EMA, checkpoint round trip (resumed == uninterrupted, bit for bit), logging."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from loop_helpers import MemoryBatches, RecordingLogger, local_context, loop_config, stage_config

from datasets.errors import DataError
from training import checkpoint as ckpt
from training.loop import run
from training.optim import EMA, lr_factor
from training.train_config import ScheduleConfig

STREAMS = ("clean_16k", "degraded_16k")


def test_lr_factor_warmup_then_decay():
    cos = ScheduleConfig(warmup_steps=4, decay="cosine", min_lr_ratio=0.1)
    f = [lr_factor(s, 14, cos) for s in range(15)]
    assert f[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert f[4] == pytest.approx(1.0)
    assert f[14] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[4:], f[5:], strict=False))
    lin = ScheduleConfig(warmup_steps=0, decay="linear", min_lr_ratio=0.0)
    assert lr_factor(5, 10, lin) == pytest.approx(0.5)
    assert lr_factor(7, 10, ScheduleConfig(decay="constant")) == 1.0
    exp = ScheduleConfig(decay="exponential", gamma=0.5, min_lr_ratio=0.2)
    assert [lr_factor(s, 10, exp) for s in range(4)] == pytest.approx([1.0, 0.5, 0.25, 0.2])


def test_ema_follows_litema_warmup():
    m = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = EMA(m, decay=0.9)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)  # decay min(0.9, 2/11)
    assert ema.shadow["weight"][0, 0].item() == pytest.approx(1 - 2 / 11)
    with ema.swapped_in(m):
        assert m.weight[0, 0].item() == pytest.approx(1 - 2 / 11)
    assert m.weight[0, 0].item() == 1.0


def test_rng_state_round_trip():
    ckpt.seed_everything(3)
    state = ckpt.rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.seed_everything(99)
    ckpt.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _final_state(tmp_path, name, cfg, checkpoint_dir=None):
    out = tmp_path / name
    out.mkdir()
    reports: list = []
    ctx = local_context(MemoryBatches(STREAMS, per_epoch=3), checkpoint_dir, reports, save_to=out)
    run(loop_config(cfg), ctx)
    return reports, ckpt.load_state(reports[-1][1])


def _assert_same(a, b, path=""):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resumed_run_equals_uninterrupted_run(tmp_path, grad_accum):
    # 4 steps over 3-batch epochs: the resume at step 2 lands mid-epoch (epoch 1 with grad_accum 2)
    cfg = stage_config(
        "recovery", steps=4, checkpoint_every=2, eval_every=100, log_every=1, grad_accum=grad_accum
    )
    reports, full = _final_state(tmp_path, "full", cfg)
    assert [r[0]["step"] for r in reports] == [2, 4]
    assert reports[-1][0]["done"] == 1 and reports[-1][0]["final_step"] == 4
    mid = reports[0][1]
    _, resumed = _final_state(tmp_path, "resumed", cfg, checkpoint_dir=mid)
    for key in ("modules", "optim", "stage_state", "rng", "step", "epoch", "batch"):
        _assert_same(full[key], resumed[key], key)


def test_checkpoint_is_weights_only_and_complete(tmp_path):
    cfg = stage_config("recovery", steps=2, checkpoint_every=1, eval_every=100)
    reports, state = _final_state(tmp_path, "run", cfg)
    assert set(state) >= {"modules", "optim", "stage_state", "rng", "step", "epoch", "batch", "world"}
    assert set(state["optim"]) == {"step", "optimizers", "ema", "scaler"}
    assert "network" in state["optim"]["ema"]  # recovery keeps an EMA (StoRM)
    assert set(state["rng"][0]) == {"torch", "cuda", "numpy", "python"}
    torch.load(reports[0][1] / ckpt.STATE_FILE, weights_only=True)  # no pickled objects inside


def test_unreadable_checkpoint_is_a_data_error(tmp_path):
    (tmp_path / ckpt.STATE_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="unreadable training checkpoint"):
        ckpt.load_state(tmp_path)


def test_metrics_params_examples_are_logged(tmp_path):
    cfg = stage_config("recovery", steps=2, checkpoint_every=10, eval_every=1, log_every=1)
    logger = RecordingLogger()
    ctx = local_context(MemoryBatches(STREAMS), logger=logger)
    out = run(loop_config(cfg, run_dir=tmp_path / "run"), ctx)
    steps = [s for s, m in logger.metrics if "loss" in m]
    assert steps == [1, 2]
    first = next(m for s, m in logger.metrics if "loss" in m)
    assert {"loss", "grad_norm/network", "lr/network", "samples_per_s", "data/skipped"} <= set(first)
    assert any("eval/si_sdr" in m for _, m in logger.metrics)
    assert logger.params["world_size"] == 1 and logger.params["stage_config.model.nf"] == 16
    assert (
        len([a for a in logger.audio if a.startswith("eval/step_00000001/")]) == 6
    )  # 2 examples x (clean, degraded, output)
    assert any(i.endswith("_spectrogram.png") for i in logger.images)
    assert logger.tags["hires.stage"] == "recovery"
    assert (tmp_path / "run" / "model" / "model.json").is_file()
    assert out["final_step"] == 2


def test_empty_epoch_is_a_data_error():
    cfg = stage_config("recovery", steps=2)
    ctx = local_context(MemoryBatches(STREAMS, per_epoch=0))
    with pytest.raises(DataError, match="no batches"):
        run(loop_config(cfg), ctx)


def test_init_weights_start_a_fresh_run(tmp_path):
    from loop_helpers import random_model_dir

    from datasets.errors import IncompatibleError
    from training.model_dir import load_model

    init = random_model_dir(tmp_path / "init", "recovery", seed=7)
    cfg = stage_config("recovery", steps=1, **{"optimizer.lr": 1e-12, "ema.enabled": False})
    config = loop_config(cfg)
    config["models"] = {"init": str(init)}
    out = run(config, local_context(MemoryBatches(STREAMS)))
    start = load_model(init).network.state_dict()
    trained = out["stage"].network.state_dict()
    assert all(torch.allclose(trained[k], v, atol=1e-6) for k, v in start.items())
    config["models"] = {"init": str(random_model_dir(tmp_path / "vae", "autoencoder"))}
    with pytest.raises(IncompatibleError, match="is a model of stage autoencoder, this run trains recovery"):
        run(config, local_context(MemoryBatches(STREAMS)))


def test_resume_with_another_world_size_starts_the_next_epoch(tmp_path):
    cfg = stage_config("recovery", steps=2, checkpoint_every=1, eval_every=100)
    reports, _ = _final_state(tmp_path, "run", cfg)
    state = ckpt.load_state(reports[0][1])
    assert (state["epoch"], state["batch"], state["world"]) == (0, 1, 1)
    state["world"] = 2  # as if written by a 2-worker group
    ckpt.save_state(tmp_path / "resized", {k: v for k, v in state.items() if k != "format_version"})
    seen = []

    class Source(MemoryBatches):
        def __call__(self, epoch, start, stats):
            seen.append((epoch, start))
            return super().__call__(epoch, start, stats)

    run(loop_config(cfg), local_context(Source(STREAMS), checkpoint_dir=tmp_path / "resized"))
    assert seen[0] == (1, 0)


class SkippingSource(MemoryBatches):
    """Counts one skipped (corrupt) sample per batch, as the shard loader does for a bad sample."""

    def __call__(self, epoch, start, stats):
        for batch in super().__call__(epoch, start, stats):
            stats["skipped"] = stats.get("skipped", 0) + 1
            yield batch


def test_skipped_samples_are_logged_and_survive_a_resume(tmp_path):
    cfg = stage_config("recovery", steps=3, checkpoint_every=1, eval_every=100, log_every=1)
    logger = RecordingLogger()
    reports: list = []
    run(loop_config(cfg), local_context(SkippingSource(STREAMS), None, reports, tmp_path, logger=logger))
    assert [m["data/skipped"] for _, m in logger.metrics if "loss" in m] == [1, 2, 3]
    resumed = RecordingLogger()
    run(loop_config(cfg), local_context(SkippingSource(STREAMS), reports[0][1], logger=resumed))
    assert [m["data/skipped"] for _, m in resumed.metrics if "loss" in m] == [2, 3]
