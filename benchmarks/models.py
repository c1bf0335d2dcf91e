"""Network throughput: forward + backward samples per second for each stage's network, JSON on stdout.

    .venv/bin/python benchmarks/models.py                       # tiny configs on the CPU
    .venv/bin/python benchmarks/models.py --configs tiny paper  # + paper configs (bf16 autocast on CUDA)
    .venv/bin/python benchmarks/models.py --out bench.json --stages vocoder --batch 2

One "sample" is one 5.12 s training clip (``--seconds``) in the stage's own representation: the 16 kHz
compressed STFT for recovery, the 48 kHz log-mel for the VAE and the vocoder (generator only; discriminators
are not included), a (noisy, condition) latent pair for the LDM with its diffusion training loss. A step is
forward, a scalar loss, backward and an Adam update. Paper configs run only when a GPU is present unless
``--force-paper`` is given (they need several GB and minutes per step on a CPU). Figures are the median
over ``--steps`` timed steps after ``--warmup`` untimed ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from training.config import StageConfig, load_stage_config  # noqa: E402
from training.features import mel_frames, stft_frames  # noqa: E402
from training.models import build  # noqa: E402
from training.models.layers import count_parameters  # noqa: E402

STAGES = ("recovery", "autoencoder", "vocoder", "ldm")
LATENT_DOWNSAMPLE = 8  # the mel VAE's (paper and tiny) downsampling in mel and time


def make_step(cfg: StageConfig, net: torch.nn.Module, batch: int, seconds: float, device: torch.device):
    """A closure computing one training loss on random inputs shaped like a ``seconds`` clip."""
    m, feats = cfg.model, cfg.features
    gen = torch.Generator().manual_seed(0)
    if cfg.stage == "recovery":
        frames = stft_frames(round(seconds * feats.stft.sample_rate), feats.stft.hop_length)
        x = torch.randn(batch, m.in_channels, feats.stft.freq_bins, frames, generator=gen).to(device)
        y = torch.randn(batch, m.out_channels, feats.stft.freq_bins, frames, generator=gen).to(device)
        return lambda: F.mse_loss(net(x).float(), y)
    frames = mel_frames(round(seconds * feats.mel.sample_rate), feats.mel.hop_length)
    mel = (torch.randn(batch, feats.mel.n_mels, frames, generator=gen) - 5.0).to(device)
    if cfg.stage == "autoencoder":

        def vae_loss() -> torch.Tensor:
            recon, posterior = net(mel)
            return F.l1_loss(recon.float(), mel) + 1e-6 * posterior.kl().float().mean()

        return vae_loss
    if cfg.stage == "vocoder":
        target = torch.randn(batch, frames * feats.mel.hop_length, generator=gen).clamp(-1, 1).to(device)
        return lambda: F.l1_loss(net(mel).float(), target)
    latent = (
        batch,
        m.out_channels,
        -(-feats.mel.n_mels // LATENT_DOWNSAMPLE),
        -(-frames // LATENT_DOWNSAMPLE),
    )
    z, cond = torch.randn(latent, generator=gen).to(device), torch.randn(latent, generator=gen).to(device)
    diffusion = net.diffusion()
    return lambda: diffusion.training_loss(net, z, cond, gen)


def bench(
    stage: str,
    config: str,
    device: torch.device,
    bf16: bool,
    batch: int,
    seconds: float,
    steps: int,
    warmup: int,
) -> dict:
    cfg = load_stage_config(stage, config)
    net = build(cfg).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss_fn = make_step(cfg, net, batch, seconds, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{stage}/{config}: non-finite loss at step {i}")
    step_s = statistics.median(times)
    out = {
        "stage": stage,
        "config": config,
        "network": cfg.model.name,
        "device": device.type,
        "dtype": "bf16-autocast" if bf16 else "fp32",
        "parameters": count_parameters(net),
        "batch": batch,
        "clip_seconds": seconds,
        "step_s": round(step_s, 4),
        "samples_per_s": round(batch / step_s, 3),
        "x_realtime": round(batch * seconds / step_s, 2),
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs", nargs="+", default=None, help="tiny and/or paper (default: tiny, + paper on GPU)"
    )
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--batch", type=int, default=None, help="clips per step (default: 1 tiny/CPU, 4 on GPU)"
    )
    parser.add_argument("--seconds", type=float, default=5.12)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--bf16", action="store_true", help="bf16 autocast on the CPU too (always on for CUDA)"
    )
    parser.add_argument("--force-paper", action="store_true", help="allow paper configs on the CPU")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    configs = args.configs or (["tiny", "paper"] if device.type == "cuda" else ["tiny"])
    results, skipped = [], []
    for config in configs:
        if config == "paper" and device.type != "cuda" and not args.force_paper:
            skipped.append({"config": config, "reason": "no GPU (use --force-paper to run on the CPU)"})
            continue
        bf16 = device.type == "cuda" or args.bf16
        batch = args.batch or (4 if device.type == "cuda" else 1)
        for stage in args.stages:
            results.append(bench(stage, config, device, bf16, batch, args.seconds, args.steps, args.warmup))
            print(json.dumps(results[-1]), file=sys.stderr)
    report = {
        "benchmark": "models",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "results": results,
        "skipped": skipped,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
