"""Helpers of the loop/stage tests: a deterministic in-memory batch source, a local loop context, tiny models.

The batch source stands in for :mod:`training.data`: batch ``i`` of epoch ``e`` on rank ``r`` depends only on
``(seed, r, e, i)``, so a run resumed at ``(e, i)`` sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from training import checkpoint as ckpt
from training.config import StageConfig, load_stage_config
from training.features import resample
from training.loop import Context, run
from training.model_dir import save_model_dir
from training.models import build

CROP = 24000  # 0.5 s at 48 kHz


def make_batch(streams: tuple[str, ...], batch_size: int, crop: int, seed: int) -> dict[str, Any]:
    """Speech-like test pairs: a few harmonics with a slow envelope (clean) plus noise and a low-pass (degraded)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(crop, dtype=torch.float64) / 48000
    clean = []
    for _ in range(batch_size):
        f0 = 100 + 150 * torch.rand(1, generator=g, dtype=torch.float64)
        wave = sum(torch.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 6))
        env = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t + 6 * torch.rand(1, generator=g, dtype=torch.float64))
        clean.append((0.1 * wave * env).float())
    clean_48k = torch.stack(clean)
    noise = 0.03 * torch.randn(clean_48k.shape, generator=g)
    degraded_48k = resample(resample(clean_48k, 48000, 8000), 8000, 48000)[..., :crop] + noise
    out: dict[str, Any] = {
        "clean_48k": clean_48k,
        "degraded_48k": degraded_48k,
        "clean_16k": resample(clean_48k, 48000, 16000),
        "degraded_16k": resample(degraded_48k, 48000, 16000),
    }
    batch = {k: out[k].contiguous() for k in streams}
    batch["keys"] = [f"s{seed}_{i}" for i in range(batch_size)]
    return batch


class MemoryBatches:
    """``(epoch, start_batch, stats) -> batches``: ``per_epoch`` batches per epoch, determined by position."""

    def __init__(
        self, streams: tuple[str, ...], batch_size: int = 2, per_epoch: int = 3, rank: int = 0, seed: int = 0
    ) -> None:
        self.streams, self.batch_size, self.per_epoch, self.rank, self.seed = (
            streams,
            batch_size,
            per_epoch,
            rank,
            seed,
        )

    def batch(self, epoch: int, index: int) -> dict[str, Any]:
        seed = self.seed * 100003 + self.rank * 10007 + epoch * 101 + index
        return make_batch(self.streams, self.batch_size, CROP, seed)

    def __call__(self, epoch: int, start: int, stats: dict) -> Iterator[dict]:
        for i in range(start, self.per_epoch):
            yield self.batch(epoch, i)

    def eval(self, max_samples: int) -> Iterator[dict]:
        yield make_batch(self.streams, min(max_samples, self.batch_size), CROP, 999_999)


class RecordingLogger:
    def __init__(self) -> None:
        self.params: dict = {}
        self.metrics: list[tuple[int, dict]] = []
        self.audio: list[str] = []
        self.images: list[str] = []
        self.tags: dict = {}

    def log_params(self, flat: dict) -> None:
        self.params.update(flat)

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_audio(self, path: str, wave, sr: int) -> None:
        self.audio.append(path)

    def log_image(self, path: str, png: bytes) -> None:
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        self.images.append(path)

    def set_tags(self, tags: dict) -> None:
        self.tags.update(tags)

    def close(self) -> None: ...


def local_context(
    source: MemoryBatches,
    checkpoint_dir: str | Path | None = None,
    reports: list | None = None,
    save_to: Path | None = None,
    rank: int = 0,
    world: int = 1,
    logger: Any = None,
) -> Context:
    """A single-process (or torch.distributed) context; checkpoints are saved under ``save_to`` like Ray would."""
    reports = reports if reports is not None else []

    def prepare(module):
        if world > 1:
            return torch.nn.parallel.DistributedDataParallel(module)
        return module

    def report(metrics: dict, state: dict | None) -> None:
        path = None
        if state is not None and save_to is not None:
            path = save_to / f"checkpoint_{len(reports):03d}"
            ckpt.save_state(path, state)
        reports.append((dict(metrics), path))
        if world > 1:
            dist.barrier()

    def load_checkpoint():
        return ckpt.load_state(checkpoint_dir) if checkpoint_dir is not None else None

    return Context(
        rank=rank,
        world=world,
        device=torch.device("cpu"),
        train_batches=source,
        eval_batches=source.eval,
        prepare_model=prepare,
        report=report,
        load_checkpoint=load_checkpoint,
        logger=logger or RecordingLogger(),
    )


def stage_config(stage: str, **train: Any) -> StageConfig:
    return load_stage_config(stage, "tiny", {f"train.{k}": v for k, v in train.items()})


def loop_config(
    cfg: StageConfig, run_dir: Path | None = None, models: dict | None = None, seed: int = 0
) -> dict:
    return {
        "stage": cfg.stage,
        "stage_config": cfg.model_dump(mode="json"),
        "config_name": "tiny",
        "data": {"shards": None},
        "steps": cfg.train.steps,
        "seed": seed,
        "models": models or {},
        "run_dir": str(run_dir) if run_dir is not None else None,
        "run_name": "test",
        "mlflow": None,
        "lineage": {"code_version": "test", "shards_index_sha256": "abc", "shards": "/nowhere"},
    }


def random_model_dir(path: Path, stage: str, seed: int = 0, **meta: Any) -> Path:
    """A model directory of a tiny ``stage`` network with random weights."""
    torch.manual_seed(seed)
    cfg = load_stage_config(stage, "tiny")
    net = build(cfg)
    save_model_dir(str(path), stage, cfg, net.state_dict(), {"step": 0, **meta})
    return path


def ddp_worker(rank: int, world: int, port: int, out_dir: str, steps: int, grad_accum: int = 1) -> None:
    """One rank of the 2-process gloo test: trains recovery tiny, writes its parameters."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = stage_config(
            "recovery", steps=steps, checkpoint_every=2, eval_every=100, log_every=1, grad_accum=grad_accum
        )
        source = MemoryBatches(("clean_16k", "degraded_16k"), rank=rank)
        reports: list = []
        logger = RecordingLogger()
        ctx = local_context(source, reports=reports, rank=rank, world=world, logger=logger)
        out = run(loop_config(cfg, run_dir=Path(out_dir) / "run" if rank == 0 else None), ctx)
        net = out["stage"].network
        flat = torch.cat([p.detach().double().flatten() for p in net.parameters()])
        torch.save(
            {
                "sum": flat.sum().item(),
                "abs": flat.abs().sum().item(),
                "reports": len(reports),
                "logged": len(logger.metrics),
                "flat": flat,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()
