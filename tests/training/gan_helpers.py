"""Shared by the GAN stage tests: an optimiser handle that records where each backward sends gradients, a fixed
batch, and a two-process gloo DDP run of a stage (imported by module name; pytest puts this folder on sys.path)."""

from __future__ import annotations

import datetime
import json
import math
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.config import StageConfig, load_stage_config
from training.stages import Stage, get_stage

CROP = 32 * 480  # 0.32 s at 48 kHz: 32 mel frames


def grads(module: nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.detach().clone() for p in module.parameters()]


def grads_changed(before: list[torch.Tensor | None], after: list[torch.Tensor | None]) -> bool:
    for b, a in zip(before, after, strict=True):
        if (b is None) != (a is None) or (a is not None and not torch.equal(a, b)):
            return True
    return False


class RecordingOptimizers:
    """AdamW per module, stepped by the test after each ``train_step``; records every ``backward`` call.

    ``calls`` lists ``(name, {module: whether its gradients changed})`` per backward, so a test sees that the
    generator's loss never reaches the discriminator's parameters.
    """

    def __init__(self, modules: dict[str, nn.Module], lr: float = 1e-3) -> None:
        self.modules = modules
        self.optimizers = {n: torch.optim.AdamW(m.parameters(), lr=lr) for n, m in modules.items()}
        self.calls: list[tuple[str, dict[str, bool]]] = []

    def backward(self, name: str, loss: torch.Tensor) -> None:
        assert loss.dim() == 0 and loss.requires_grad, (name, loss)
        before = {n: grads(m) for n, m in self.modules.items()}
        loss.backward()
        self.calls.append((name, {n: grads_changed(before[n], grads(m)) for n, m in self.modules.items()}))

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)


def tiny_config(stage: str, gan_start_step: int, **train: object) -> StageConfig:
    overrides = {"train.gan_start_step": gan_start_step, **{f"train.{k}": v for k, v in train.items()}}
    return load_stage_config(stage, "tiny", overrides)


def fixed_batch(seed: int = 0, batch: int = 2, samples: int = CROP) -> dict:
    """Speech-like test signal: a gliding harmonic tone plus a little noise, different per example."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples, dtype=torch.float64) / 48000
    waves = []
    for i in range(batch):
        f0 = 120.0 + 40.0 * i + 30.0 * float(torch.rand((), generator=gen))
        phase = 2 * math.pi * (f0 * t + 20.0 * t**2)
        tone = sum(torch.sin(k * phase) / k for k in range(1, 6))
        waves.append(0.2 * tone.float() + 0.01 * torch.randn(samples, generator=gen))
    return {"clean_48k": torch.stack(waves), "keys": [f"utt{seed}-{i}" for i in range(batch)]}


def checksum(module: nn.Module) -> list[float]:
    return [float(p.detach().double().sum()) for p in module.parameters()]


def build_bound(stage_name: str, cfg: StageConfig) -> tuple[Stage, dict[str, nn.Module]]:
    """The loop's order: build -> trainable() -> bind(name -> module)."""
    stage = get_stage(stage_name)(cfg, torch.device("cpu"))
    modules = stage.trainable()
    stage.bind(modules)
    return stage, modules


def ddp_worker(
    rank: int, world: int, stage_name: str, init_file: str, out_dir: str, steps: int, start: int
) -> None:
    """One rank: its own initial weights and data, each module in its own DDP wrapper (no unused-parameter search)."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        torch.manual_seed(100 + rank)  # different initial weights: DDP must broadcast rank 0's
        stage = get_stage(stage_name)(tiny_config(stage_name, start), torch.device("cpu"))
        modules = stage.trainable()
        wrapped = {name: DistributedDataParallel(module) for name, module in modules.items()}
        stage.bind(wrapped)
        opt = RecordingOptimizers(modules)
        batch = fixed_batch(seed=rank)  # different data per rank: gradients must be averaged
        metrics = []
        for step in range(steps):
            metrics.append(stage.train_step(batch, step, opt))
            opt.step()
        result = {
            "checksums": {name: checksum(module) for name, module in modules.items()},
            "calls": [name for name, _ in opt.calls],
            "metrics": metrics,
        }
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def spawn_ranks(stage_name: str, out_dir: str, steps: int, start: int, world: int) -> None:
    import torch.multiprocessing as mp

    args = (world, stage_name, str(Path(out_dir) / "init"), out_dir, steps, start)
    mp.spawn(ddp_worker, args=args, nprocs=world, join=True)


def run_ddp(stage_name: str, tmp_path: Path, steps: int, start: int, world: int = 2) -> list[dict]:
    """``world`` gloo ranks running ``steps`` steps with the GAN from ``start``; their results per rank.

    The ranks are spawned from a child interpreter, so multiprocessing's resource tracker ends with it.
    """
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import gan_helpers; "
        f"gan_helpers.spawn_ranks({stage_name!r}, {str(tmp_path)!r}, {steps}, {start}, {world})"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]


def train(stage: Stage, opt: RecordingOptimizers, batch: dict, steps: range) -> list[dict[str, float]]:
    """``train_step`` per step, then the optimisers step and zero their gradients (the loop's order)."""
    metrics = []
    for step in steps:
        metrics.append(stage.train_step(batch, step, opt))
        opt.step()
    return metrics


def check_gan_phases(stage_name: str, start: int = 2, steps: int = 5) -> list[dict[str, float]]:
    """Before ``start`` only the generator learns; from it the discriminator first, then the generator, whose
    backward never reaches the discriminator's parameters; the discriminator is updated from ``start`` on."""
    stage, modules = build_bound(stage_name, tiny_config(stage_name, start))
    opt = RecordingOptimizers(modules)
    batch = fixed_batch()
    disc = modules["discriminator"]
    metrics = []
    for step in range(steps):
        opt.calls.clear()
        before = checksum(disc)
        metrics.append(stage.train_step(batch, step, opt))
        opt.step()
        if step < start:
            assert opt.calls == [("generator", {"discriminator": False, "generator": True})], (
                step,
                opt.calls,
            )
            assert checksum(disc) == before, f"discriminator updated before the GAN start (step {step})"
        else:
            assert opt.calls == [
                ("discriminator", {"discriminator": True, "generator": False}),
                ("generator", {"discriminator": False, "generator": True}),
            ], (step, opt.calls)
            assert checksum(disc) != before, f"discriminator not updated at step {step}"
        # frozen_params restored the flags
        assert all(p.requires_grad for p in disc.parameters())
    assert all(m.keys() == metrics[0].keys() for m in metrics), "metric keys change between steps"
    assert all(math.isfinite(v) for m in metrics for v in m.values()), metrics
    return metrics


def check_bf16_autocast(stage_name: str) -> None:
    """The loop runs train_step and evaluate under autocast (bf16 on GPUs); CPU autocast exercises the same casts."""
    stage, modules = build_bound(stage_name, tiny_config(stage_name, 0))
    opt = RecordingOptimizers(modules)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        metrics = stage.train_step(fixed_batch(), 0, opt)
        result = stage.evaluate([fixed_batch(seed=1, batch=1)])
    opt.step()
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert all(math.isfinite(v) for v in result.metrics.values()), result.metrics
    assert [name for name, _ in opt.calls] == ["discriminator", "generator"]
    # the mel loss is computed in float32 whatever the autocast: the same value as outside it
    batch = fixed_batch(seed=2, batch=1)["clean_48k"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = stage._log_mel(batch)
    assert inside.dtype == torch.float32 and torch.equal(inside, stage._log_mel(batch))
