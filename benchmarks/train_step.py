"""Training throughput per stage, printed as JSON.

Two measurements, both through the real training loop (:func:`training.loop.run`):

* ``ray``: ``hires train`` on Ray Train (the launcher) with 1 and 2 workers, tiny configs on the CPU, reading a demo
  shard set built in a temporary folder: samples per second of the last logging window (steady state, after
  start-up), and the same per reserved CPU.
* ``in_process``: one process, synthetic batches (no data loading), the stage's own config and precision: samples
  per second, and on a GPU the peak memory at two batch sizes, from which the largest batch that fits in 80 GB is
  extrapolated (memory grows linearly with the batch). With ``--device cuda`` run it with ``--config paper``:
  paper configs in bf16 (the vocoder's paper config trains in fp32, as HiFi-GAN does).

    python benchmarks/train_step.py                                   # CPU: tiny, Ray 1 and 2 workers
    python benchmarks/train_step.py --skip-ray --device cuda --config paper --stages recovery ldm
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

STAGES = ("recovery", "autoencoder", "vocoder", "ldm")
GIB = 1024**3


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / GIB, 1)
    return info


def demo_shards(root: Path) -> Path:
    """A small demo shard set (3 minutes of demo speech), built once under ``root``."""
    from pipelines.demo import load_demo_config, run_demo

    cfg = load_demo_config(overrides={"train.enabled": False})
    run_demo(root, cfg, progress=False)
    return root / "shards"


def bench_ray(
    shards: Path, out: Path, stages: list[str], workers: list[int], steps: int, config: str
) -> list:
    from pipelines.ray_setup import init_ray
    from training.launcher import TrainRequest, run_training

    results = []
    started, _ = init_ray(None, None, quiet=True)
    try:
        models: dict[str, str | None] = {}
        for stage in stages:
            for w in workers:
                request = TrainRequest(
                    stage=stage,
                    out=str(out),
                    shards=str(shards),
                    config=config,
                    overrides={"train.log_every": max(1, steps // 3), "train.eval_every": 10 * steps},
                    workers=w,
                    steps=steps,
                    run_name=f"{stage}-{config}-w{w}",
                    tracking_uri="none",
                    models={"recovery": models.get("recovery"), "autoencoder": models.get("autoencoder")}
                    if stage == "ldm"
                    else {},
                )
                summary = run_training(request, connect=lambda _a: False)
                if w == workers[0]:
                    models[stage] = summary.model_dir
                sps = summary.metrics.get("samples_per_s")
                cpus = (summary.cpus_per_worker or 1.0) * w
                results.append(
                    {
                        "stage": stage,
                        "config": config,
                        "workers": w,
                        "cpus_per_worker": summary.cpus_per_worker,
                        "steps": summary.final_step,
                        "samples_per_s": round(sps, 3) if sps else None,
                        "samples_per_s_per_cpu": round(sps / cpus, 3) if sps else None,
                        "wall_s": round(summary.wall_s, 1),
                    }
                )
    finally:
        if started:
            import ray

            ray.shutdown()
    return results


def _synthetic_batch(streams, batch_size: int, crop: int, device: torch.device, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    clean = 0.1 * torch.randn(batch_size, crop, generator=g)
    degraded = clean + 0.03 * torch.randn(batch_size, crop, generator=g)
    waves = {"clean_48k": clean, "degraded_48k": degraded}
    waves["clean_16k"], waves["degraded_16k"] = clean[:, ::3].contiguous(), degraded[:, ::3].contiguous()
    batch = {k: waves[k].to(device) for k in streams}
    batch["keys"] = [f"b{seed}_{i}" for i in range(batch_size)]
    return batch


def _frozen_models(config: str, root: Path) -> dict[str, str]:
    """Randomly initialised recovery and autoencoder model directories (throughput does not need trained ones)."""
    from training.config import load_stage_config
    from training.model_dir import save_model_dir
    from training.models import build

    dirs = {}
    for stage in ("recovery", "autoencoder"):
        cfg = load_stage_config(stage, config)
        net = build(cfg.model)
        path = root / f"frozen-{stage}"
        save_model_dir(str(path), stage, cfg, net.state_dict(), {"step": 0, "scale_factor": None})
        dirs[stage] = str(path)
    return dirs


def init_single_process_group(device: torch.device) -> str:
    """A one-rank process group on ``device`` (nccl on a GPU, gloo on the CPU) on a free loopback port."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    return backend


def ddp_wrapper(device: torch.device):
    """What ``ray.train.torch.prepare_model`` does on a worker: move to the device and wrap in DDP."""
    from torch.nn.parallel import DistributedDataParallel

    def prepare(module: torch.nn.Module) -> torch.nn.Module:
        module = module.to(device)
        if not any(p.requires_grad for p in module.parameters()):
            return module
        return DistributedDataParallel(
            module, device_ids=[device.index or 0] if device.type == "cuda" else None
        )

    return prepare


def bench_in_process(
    stage: str, config: str, device: torch.device, steps: int, batch_size: int | None, ddp: bool = False
) -> dict:
    from training.config import load_stage_config
    from training.loop import Context, _NullLogger, run
    from training.stages import get_stage

    cfg = load_stage_config(stage, config)
    t = cfg.train
    batch = batch_size or t.batch_size
    stage_cls = get_stage(stage)
    overrides = {
        "batch_size": batch,
        "log_every": steps,
        "eval_every": 10 * steps,
        "checkpoint_every": 10 * steps,
        "eval_samples": 1,
    }
    cfg = cfg.model_copy(update={"train": t.model_copy(update=overrides)})
    metrics: list[dict] = []

    class Logger(_NullLogger):  # keeps the metrics, drops the rest
        def log_metrics(self, m, step):
            metrics.append(dict(m))

    def train_batches(epoch, start, stats):
        for i in range(start, 10**9):
            yield _synthetic_batch(stage_cls.streams, batch, t.crop_samples, device, i)

    def eval_batches(max_samples):
        yield _synthetic_batch(stage_cls.streams, 1, t.crop_samples, device, -1)

    with tempfile.TemporaryDirectory() as tmp:
        models = _frozen_models(config, Path(tmp)) if stage == "ldm" else {}
        ctx = Context(
            rank=0,
            world=1,
            device=device,
            train_batches=train_batches,
            eval_batches=eval_batches,
            prepare_model=ddp_wrapper(device) if ddp else (lambda m: m),
            report=lambda metrics_, state: None,
            load_checkpoint=lambda: None,
            logger=Logger(),
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        begin = time.perf_counter()
        run(
            {"stage": stage, "stage_config": cfg.model_dump(mode="json"), "steps": steps, "models": models},
            ctx,
        )
        wall = time.perf_counter() - begin
    window = next((m for m in metrics if "samples_per_s" in m), {})
    out = {
        "stage": stage,
        "config": config,
        "precision": t.precision if device.type == "cuda" else "fp32",
        "device": str(device),
        "batch_size": batch,
        "crop_samples": t.crop_samples,
        "steps": steps,
        "ddp": ddp,
        "samples_per_s": round(window.get("samples_per_s", 0.0), 3),
        "wall_s": round(wall, 1),
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
    return out


def largest_batch(a: dict, b: dict, memory_gib: float = 80.0, headroom: float = 0.9) -> int | None:
    """Largest per-GPU batch in ``memory_gib`` from peak memory at two batch sizes (linear in the batch)."""
    db = b["batch_size"] - a["batch_size"]
    dm = b["peak_memory_gib"] - a["peak_memory_gib"]
    if db <= 0 or dm <= 0:
        return None
    per_sample = dm / db
    fixed = a["peak_memory_gib"] - per_sample * a["batch_size"]
    return int((memory_gib * headroom - fixed) / per_sample)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--config", default="tiny", help="stage config name (tiny, paper) or file")
    parser.add_argument("--steps", type=int, default=12, help="steps per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray Train worker counts")
    parser.add_argument("--device", default="cpu", help="in-process device: cpu or cuda")
    parser.add_argument("--skip-ray", action="store_true", help="only the in-process measurement")
    parser.add_argument(
        "--ddp",
        action="store_true",
        help="in-process runs wrap the networks in DDP over a one-rank process group (nccl on a GPU, gloo on "
        "the CPU): the collective path of a multi-GPU run, on one device",
    )
    parser.add_argument("--shards", type=Path, help="shard set for the Ray runs (default: a fresh demo set)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1 if args.device == "cpu" else torch.get_num_threads())

    report: dict = {"benchmark": "train_step", "machine": machine(), "in_process": [], "ray": []}
    device = torch.device(args.device)
    if args.ddp:
        report["process_group"] = init_single_process_group(device)
    for stage in args.stages:
        first = bench_in_process(stage, args.config, device, args.steps, None, args.ddp)
        report["in_process"].append(first)
        if device.type == "cuda":
            second = bench_in_process(
                stage, args.config, device, args.steps, 2 * first["batch_size"], args.ddp
            )
            report["in_process"].append(second)
            first["largest_batch_per_80gb"] = largest_batch(first, second)
    if not args.skip_ray:
        with tempfile.TemporaryDirectory() as tmp:
            shards = args.shards or demo_shards(Path(tmp) / "demo")
            report["ray"] = bench_ray(
                shards, Path(tmp) / "train", args.stages, args.workers, args.steps, args.config
            )
    if args.ddp:
        torch.distributed.destroy_process_group()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
